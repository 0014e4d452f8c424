#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Find the dmaheap allocator by name and allocate dma-buf memory from Python.

Run with the plugin on GStreamer's path: GST_PLUGIN_PATH=target/release python3 heapalloc.py
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstAllocators", "1.0")
from gi.repository import Gst, GstAllocators  # noqa: E402

Gst.init(None)
# The allocator is registered when the plugin loads.
if not Gst.Plugin.load_by_name("vmem"):
    sys.exit("the vmem plugin is not on GST_PLUGIN_PATH")
allocator = Gst.Allocator.find("dmaheap")
if allocator is None:
    sys.exit("no allocator named dmaheap")
allocator.set_property("heap", sys.argv[1] if len(sys.argv) > 1 else "auto")
# DmaBufAllocator.alloc(fd, size) shadows the generic method: call GstAllocator's own.
mem = Gst.Allocator.alloc(allocator, 1 << 20, None)
if mem is None:
    sys.exit("allocation failed (see GST_DEBUG=dmaheap:4)")
assert GstAllocators.is_dmabuf_memory(mem)
ok, info = mem.map(Gst.MapFlags.READ)  # an mmap of the dma-buf, bracketed by DMA_BUF_IOCTL_SYNC
assert ok and len(info.data) == mem.size
mem.unmap(info)
print(f"dmaheap: allocated {mem.size} bytes of dma-buf memory from heap "
      f"{allocator.get_property('heap-name')} (fd {GstAllocators.dmabuf_memory_get_fd(mem)})")
