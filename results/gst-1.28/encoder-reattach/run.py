#!/usr/bin/env python3
# One pipeline, in this process: CPU time (getrusage, all threads) and kprobe hit counts
# around the PLAYING..EOS span, vmemexport's stats at EOS (if an element is named vx).
#   run.py LABEL 'PIPELINE'
# CAP_POOL=N: the ALLOCATION answer the element named src gets has its first pool's min and
# max set to N (pool_cap.py: a test of capping vmemexport's proposed pool, without rebuilding).
import json
import os
import resource
import sys
import time

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

PROFILE = "/sys/kernel/tracing/kprobe_profile"


def profile():
    hits = {}
    try:
        with open(PROFILE) as f:
            for line in f:
                name, n, _missed = line.split()
                hits[name] = int(n)
    except OSError:
        pass
    return hits


def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "utime": r.ru_utime,
        "stime": r.ru_stime,
        "minflt": r.ru_minflt,
        "majflt": r.ru_majflt,
        "nvcsw": r.ru_nvcsw,
        "nivcsw": r.ru_nivcsw,
    }


def delta(a, b):
    return {k: round(b[k] - a.get(k, 0), 6) for k in b if b[k] != a.get(k, 0)}


label, desc = sys.argv[1], sys.argv[2]
Gst.init(None)
pipeline = Gst.parse_launch(desc)
cap = int(os.environ.get("CAP_POOL", "0"))
capped = []


if cap:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import pool_cap  # noqa: E402

    pool_cap.cap_allocation(
        pipeline.get_by_name("src").get_static_pad("src"),
        cap,
        int(Gst.QueryType.ALLOCATION),
        int(Gst.PadProbeType.QUERY_DOWNSTREAM | Gst.PadProbeType.PULL),
        capped,
    )
bus = pipeline.get_bus()
frames = [0]
enc = pipeline.get_by_name("enc")
if enc is not None:

    def count(_pad, _info):
        frames[0] += 1
        return Gst.PadProbeReturn.OK

    enc.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, count)
pipeline.set_state(Gst.State.PAUSED)
pipeline.get_state(Gst.CLOCK_TIME_NONE)
# SYSCALL_HIST=FILE: a histogram of the guest's syscalls (by number and thread name) over
# the PLAYING..EOS span, written to FILE.
hist_out = os.environ.get("SYSCALL_HIST")
TRIGGER = "/sys/kernel/tracing/events/raw_syscalls/sys_enter/trigger"
HIST = "hist:keys=id.syscall,common_pid.execname:vals=hitcount:sort=hitcount.descending"
if hist_out:
    with open(TRIGGER, "w") as f:
        f.write(HIST)
p0, u0, t0, f0 = profile(), usage(), time.monotonic(), frames[0]
pipeline.set_state(Gst.State.PLAYING)
msg = bus.timed_pop_filtered(Gst.CLOCK_TIME_NONE, Gst.MessageType.EOS | Gst.MessageType.ERROR)
p1, u1, t1, f1 = profile(), usage(), time.monotonic(), frames[0]
if hist_out:
    with open("/sys/kernel/tracing/events/raw_syscalls/sys_enter/hist") as f, open(
        hist_out, "w"
    ) as out:
        out.write(f.read())
    with open(TRIGGER, "w") as f:
        f.write("!" + HIST)
err = None
if msg.type == Gst.MessageType.ERROR:
    err = str(msg.parse_error())
stats = None
vx = pipeline.get_by_name("vx")
if vx is not None:
    stats = vx.get_property("stats").to_string()
pipeline.set_state(Gst.State.NULL)
p2, u2 = profile(), usage()
print(
    "RESULT "
    + json.dumps(
        {
            "label": label,
            "pipeline": desc,
            "error": err,
            "frames_prerolled": f0,
            "frames_in_run": f1 - f0,
            "wall_s": round(t1 - t0, 3),
            "run": delta(u0, u1),
            "run_probes": delta(p0, p1),
            "teardown_probes": delta(p1, p2),
            "vmemexport_stats": stats,
            "capped": capped,
        }
    ),
    flush=True,
)
