#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Build a zero-copy display pipeline from Python and read vmemexport's counters.

    GST_PLUGIN_PATH=target/release python3 pipeline.py ["kmssink driver-name=vkms"]
"""
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

Gst.init(None)
sink = sys.argv[1] if len(sys.argv) > 1 else "kmssink driver-name=vkms sync=false"
pipeline = Gst.parse_launch(
    "videotestsrc num-buffers=30 ! video/x-raw,format=BGRx,width=640,height=480 ! "
    f"vmemexport name=v ! {sink}")
pipeline.set_state(Gst.State.PLAYING)
msg = pipeline.get_bus().timed_pop_filtered(Gst.CLOCK_TIME_NONE, Gst.MessageType.EOS | Gst.MessageType.ERROR)
if msg.type == Gst.MessageType.ERROR:
    sys.exit(f"error: {msg.parse_error()[0].message}")
stats = pipeline.get_by_name("v").get_property("stats")
pipeline.set_state(Gst.State.NULL)
print(f"vmemexport stats: {stats.to_string()}")
