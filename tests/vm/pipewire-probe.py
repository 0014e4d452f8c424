#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""The two ends of make pipewire's measurement (tests/vm/pipewire runs them in the guest).

  pipewire-probe.py produce  --pipeline DESC --go FILE [--hold FILE] --out JSON
      Runs a producer pipeline whose last element is named `sink` (pipewiresink or fakesink)
      until EOS. Its first buffer (--gate-at N: the Nth) waits at the sink until FILE exists
      (the consumer is linked by then), so no later frame is rendered before the stream flows;
      FILE.waiting says it waits. Records what the sink's
      ALLOCATION query answered (pools, metas), what memory and pool the buffers reaching the
      sink come from, the process's own fds mid-stream (memfd names, dma-bufs) and
      vmemexport's `stats` when an element is named `v`. After EOS it waits for the --hold
      file (the consumer's --done) before it stops.
  pipewire-probe.py consume  --target NAME --frames N [--done FILE] --out JSON
      `pipewiresrc target-object=NAME ! appsink`: every frame's memory kind (dma-buf, fd,
      system) and what its fd is (/proc/self/fd link), at pipewiresrc's pad; the CRC-32 of the
      frames the application takes (the appsink keeps the newest), read through an mmap of the
      fd (no copy) or a map.
  pipewire-probe.py reference --frames N --caps CAPS --out JSON
      CRC-32s of the frames videotestsrc makes in-process: what the consumer must receive.
  pipewire-probe.py report --work DIR --arms "ARM..." --frames N --linker NAME --out DIR
      The records of every arm and the memcpy counter's lines as DIR/measure.md (and raw.json).

No copies of its own on the producer side (the memcpy counter measures the producer): the
probes read metadata only. /usr/bin/python3: Debian's, which has python3-gi.
"""
import argparse
import json
import mmap
import os
import re
import sys
import time
import zlib

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstAllocators", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import Gst, GstAllocators, GstApp  # noqa: E402,F401 (GstApp: appsink methods)


def fd_target(fd):
    """What an fd is, without the per-fd details: 'memfd:NAME', 'dmabuf', 'anon_inode:...'."""
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
    if link.startswith("/memfd:"):
        return "memfd:" + link[len("/memfd:"):].removesuffix(" (deleted)")
    if link.startswith("/dmabuf:") or link == "anon_inode:dmabuf":
        return "dmabuf"
    if link.startswith(("socket:", "pipe:")):
        return link.split(":")[0]
    if link.startswith("anon_inode:"):
        return link
    return "file"


def fd_census():
    """Counts of this process's fds by what they are."""
    counts = {}
    for name in os.listdir("/proc/self/fd"):
        kind = fd_target(int(name))
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def memory_kind(mem):
    if GstAllocators.is_dmabuf_memory(mem):
        return "dmabuf"
    if GstAllocators.is_fd_memory(mem):
        return "fd"
    return "system:" + (mem.allocator.mem_type if mem.allocator else "?")


def type_name(obj):
    return type(obj).__gtype__.name if obj is not None else None


def wait_eos(pipeline, timeout_s):
    bus = pipeline.get_bus()
    msg = bus.timed_pop_filtered(timeout_s * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    if msg is None:
        return f"no EOS within {timeout_s} s"
    if msg.type == Gst.MessageType.ERROR:
        err, dbg = msg.parse_error()
        return f"error from {msg.src.get_name()}: {err.message} ({dbg})"
    return None


def allocation_answer(query):
    """What an answered ALLOCATION query offers upstream: pools, metas, allocators."""
    # The get_n_allocation_* calls add an empty array to the query's structure when the field
    # is missing, which a query held by Python may not take (a CRITICAL): ask only for fields
    # the element answered.
    st = query.get_structure()
    pools = []
    for i in range(query.get_n_allocation_pools() if st.has_field("pool") else 0):
        pool, size, lo, hi = query.parse_nth_allocation_pool(i)
        pools.append({"type": type_name(pool), "size": size, "min": lo, "max": hi})
    metas = [query.parse_nth_allocation_meta(i)[0].name
             for i in range(query.get_n_allocation_metas() if st.has_field("meta") else 0)]
    allocators = [type_name(query.parse_nth_allocation_param(i)[0])
                  for i in range(query.get_n_allocation_params() if st.has_field("allocator") else 0)]
    caps, _need_pool = query.parse_allocation()
    return {"caps": caps.to_string() if caps else None, "pools": pools, "metas": metas,
            "allocators": allocators}


def produce(args):
    pipeline = Gst.parse_launch(args.pipeline)
    sink = pipeline.get_by_name("sink")
    rec = {"pipeline": args.pipeline, "sink": type_name(sink), "pads": {},
           "gate_at": args.gate_at}
    state = {"go": None}

    # The sink pads of vmemexport (`v`) and of the sink: what each offers upstream in the
    # ALLOCATION query, and what memory, from which pool, reaches it.
    def watch(name):
        pad = pipeline.get_by_name(name).get_static_pad("sink")
        r = rec["pads"][name] = {"allocation": [], "buffers": 0, "memory": {}, "pool": {}}

        def on_query(_pad, info):
            query = info.get_query()
            # PULL: after the element answered.
            if query.type == Gst.QueryType.ALLOCATION and info.type & Gst.PadProbeType.PULL:
                r["allocation"].append(allocation_answer(query))
            return Gst.PadProbeReturn.OK

        def on_buffer(_pad, info):
            buf = info.get_buffer()
            if name == "sink" and state["go"] is None and r["buffers"] + 1 == args.gate_at:
                # Hold frame --gate-at until the consumer is linked (tests/vm/pipewire touches
                # the file): pipewiresink drops frames rendered before its stream flows.
                rec["caps_at_sink"] = pad.get_current_caps().to_string()
                open(args.go + ".waiting", "w").close()
                deadline = time.monotonic() + args.go_timeout
                while not os.path.exists(args.go) and time.monotonic() < deadline:
                    time.sleep(0.05)
                rec["go_seen"] = os.path.exists(args.go)
                state["go"] = time.monotonic()
            n = r["buffers"] = r["buffers"] + 1
            for i in range(buf.n_memory()):
                kind = memory_kind(buf.peek_memory(i))
                r["memory"][kind] = r["memory"].get(kind, 0) + 1
            pool = str(type_name(buf.pool))
            r["pool"][pool] = r["pool"].get(pool, 0) + 1
            if name == "sink" and n == args.census_at:
                rec["fds_mid_stream"] = fd_census()
            return Gst.PadProbeReturn.OK

        pad.add_probe(Gst.PadProbeType.QUERY_DOWNSTREAM | Gst.PadProbeType.PUSH
                      | Gst.PadProbeType.PULL, on_query)
        pad.add_probe(Gst.PadProbeType.BUFFER, on_buffer)

    for name in ("v", "sink"):
        if pipeline.get_by_name(name) is not None:
            watch(name)
    pipeline.set_state(Gst.State.PLAYING)
    rec["error"] = wait_eos(pipeline, args.timeout)
    rec["seconds_after_go"] = round(time.monotonic() - state["go"], 2) if state["go"] else None
    v = pipeline.get_by_name("v")
    if v is not None:
        stats = v.get_property("stats")
        rec["vmemexport_stats"] = {}
        for i in range(stats.n_fields()):
            key = stats.nth_field_name(i)
            value = stats.get_value(key)
            rec["vmemexport_stats"][key] = value.to_string() if isinstance(value, Gst.Structure) \
                else value
    rec["fds_at_eos"] = fd_census()
    # The link stays until the consumer is done: 0.3.65's pipewiresrc wraps the link's buffers
    # as plain memory inside PipeWire's mapping, which goes when the link does, and a frame the
    # consumer still held then faulted (SIGSEGV) when it was read.
    if args.hold:
        deadline = time.monotonic() + args.hold_timeout
        while not os.path.exists(args.hold) and time.monotonic() < deadline:
            time.sleep(0.1)
    pipeline.set_state(Gst.State.NULL)
    rec["pid"] = os.getpid()
    json.dump(rec, open(args.out, "w"), indent=1)
    return 1 if rec["error"] else 0


def crc_of(mem):
    """CRC-32 of a memory's bytes: through an mmap of its fd when it has one (no copy)."""
    if GstAllocators.is_fd_memory(mem):
        fd = GstAllocators.fd_memory_get_fd(mem)
        off = mem.offset
        with mmap.mmap(fd, off + mem.size, prot=mmap.PROT_READ) as m:
            with memoryview(m) as view:
                return zlib.crc32(view[off:off + mem.size])
    ok, info = mem.map(Gst.MapFlags.READ)
    try:
        return zlib.crc32(info.data)
    finally:
        mem.unmap(info)


def frame_crc(buf):
    """A frame's CRC-32: its memory's, or over its memories' CRCs when it has several."""
    crcs = [crc_of(buf.peek_memory(i)) for i in range(buf.n_memory())]
    if len(crcs) == 1:
        return crcs[0]
    return zlib.crc32(b"".join(c.to_bytes(4, "little") for c in crcs))


def consume(args):
    # media.type on both ends: WirePlumber 0.4 links a stream only to a target of the same
    # media.type, and neither pipewiresrc nor pipewiresink sets one. The appsink keeps only the
    # newest frame: the consumer never holds the link's buffers while it checksums one (a
    # producer in mode=provide stalls for good when they all sit on the consumer's side).
    desc = (f"pipewiresrc name=src target-object={args.target} "
            "stream-properties=p,media.type=Video,node.name=vmemtest-consumer ! "
            "appsink name=s sync=false max-buffers=1 drop=true")
    pipeline = Gst.parse_launch(desc)
    appsink = pipeline.get_by_name("s")
    rec = {"pipeline": desc, "frames": 0, "memory": {}, "fd_targets": {}, "crcs": [],
           "caps": None}
    inodes = set()
    seen = {"first": None, "last": None}

    # Every frame pipewiresrc pushes, at its src pad: what memory it is in.
    def on_buffer(_pad, info):
        buf = info.get_buffer()
        now = time.monotonic()
        seen["first"] = seen["first"] or now
        seen["last"] = now
        rec["frames"] += 1
        for i in range(buf.n_memory()):
            mem = buf.peek_memory(i)
            kind = memory_kind(mem)
            rec["memory"][kind] = rec["memory"].get(kind, 0) + 1
            if GstAllocators.is_fd_memory(mem):
                fd = GstAllocators.fd_memory_get_fd(mem)
                t = fd_target(fd)
                rec["fd_targets"][t] = rec["fd_targets"].get(t, 0) + 1
                st = os.fstat(fd)
                inodes.add((st.st_dev, st.st_ino))
        return Gst.PadProbeReturn.OK

    pipeline.get_by_name("src").get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, on_buffer)
    pipeline.set_state(Gst.State.PLAYING)
    start = time.monotonic()
    # The producer's EOS does not cross PipeWire: the stream ends at N frames, or when none
    # came for --idle seconds (--timeout before the first).
    while rec["frames"] < args.frames:
        now = time.monotonic()
        if seen["last"] is None and now - start > args.timeout:
            break
        if seen["last"] is not None and now - seen["last"] > args.idle:
            break
        sample = appsink.try_pull_sample(Gst.SECOND // 2)
        if sample is None:
            continue
        rec["caps"] = rec["caps"] or sample.get_caps().to_string()
        rec["crcs"].append(frame_crc(sample.get_buffer()))
    # The last frames still in the appsink.
    while (sample := appsink.try_pull_sample(Gst.SECOND // 2)) is not None:
        rec["crcs"].append(frame_crc(sample.get_buffer()))
    rec["seconds"] = round(seen["last"] - seen["first"], 2) if seen["first"] else None
    rec["distinct_inodes"] = len(inodes)
    rec["fds_at_end"] = fd_census()
    pipeline.set_state(Gst.State.NULL)
    rec["pid"] = os.getpid()
    json.dump(rec, open(args.out, "w"), indent=1)
    if args.done:
        open(args.done, "w").close()
    return 0


def reference(args):
    desc = (f"videotestsrc num-buffers={args.frames} pattern=ball ! {args.caps} ! "
            "appsink name=s sync=false")
    pipeline = Gst.parse_launch(desc)
    appsink = pipeline.get_by_name("s")
    pipeline.set_state(Gst.State.PLAYING)
    crcs = []
    while True:
        sample = appsink.try_pull_sample(60 * Gst.SECOND)
        if sample is None:
            break
        crcs.append(frame_crc(sample.get_buffer()))
    pipeline.set_state(Gst.State.NULL)
    json.dump({"pipeline": desc, "crcs": crcs}, open(args.out, "w"))
    return 0

ARM_TITLES = {
    "control": "videotestsrc ! fakesink",
    "control-vmemexport": "videotestsrc ! vmemexport ! fakesink",
    "pipewiresink": "videotestsrc ! pipewiresink",
    "vmemexport-pipewiresink": "videotestsrc ! vmemexport ! pipewiresink",
    "pipewiresink-provide": "videotestsrc ! pipewiresink mode=provide",
    "vmemexport-sysmem-pipewiresink": "videotestsrc ! vmemexport ! video/x-raw ! pipewiresink",
    "vmemexport-sysmem-pipewiresink-linked-first":
        "the same, the consumer linked before the first frame",
    "vmemexport-sysmem-pipewiresink-provide":
        "videotestsrc ! vmemexport ! video/x-raw ! pipewiresink mode=provide",
}

SOURCE = """\
## What pipewiresink's source says

Debian 12's gstreamer1.0-pipewire is PipeWire 0.3.65 (tag `0.3.65`, commit 9558a5d5e0,
2023-01-26), `src/gst/`:

- `gstpipewiresink.c`, `gst_pipewire_sink_render()`: a buffer whose `buffer->pool` is not the
  sink's own GstPipeWirePool is copied into one of the pool's buffers
  (`gst_buffer_pool_acquire_buffer`, `gst_buffer_map (b, &info, GST_MAP_WRITE)`,
  `gst_buffer_extract (buffer, 0, info.data, info.maxsize)`) and that copy is sent; a buffer
  from its pool is sent as it is (`do_send_buffer`). Frames rendered before the stream is
  STREAMING are dropped (`goto done_unlock`) before any copy.
- `gst_pipewire_sink_propose_allocation()`: offers that pool upstream
  (`gst_query_add_allocation_pool (query, pool, 0, 0, 0)`), no metas.
- `pool_activated()`: the sink's `SPA_PARAM_Buffers` allow `dataType` `MemFd | MemPtr`
  only: never `DmaBuf`, so the buffers of the link are PipeWire's shared memory whatever
  memory the frames came in.
- `gstpipewireformat.c`, `convert_1()` (for `gst_caps_to_format_all()`, which
  `gst_pipewire_sink_setcaps()` calls): caps with the `memory:DMABuf` feature get a mandatory
  `SPA_FORMAT_VIDEO_modifier` (INVALID or LINEAR) in the format the sink offers. A consumer
  whose format has a modifier asks for `DmaBuf` buffers only (`gstpipewiresrc.c`,
  `on_param_changed()`), which the sink does not give: the link cannot allocate its buffers.
- `gstpipewirepool.c`, `gst_pipewire_pool_wrap_buffer()`: wraps each PipeWire buffer's data
  as fd memory (MemFd), dma-buf memory (DmaBuf) or plain wrapped memory (MemPtr).
- `gstpipewiresrc.c`, `on_param_changed()`: the consumer accepts `DmaBuf` (and `MemFd |
  MemPtr` when the format has no modifier); `dequeue_buffer()` shares the memory unless
  `always-copy`.

Newer releases (tags `1.2.0`, `1.4.0`, `1.6.0` and `1.6.8`, the newest, 2026-07-09; the
development branch of 2026-08-21 is the same here):
`gst_pipewire_sink_render()` still copies every buffer that is not from its pool: since 1.4
(a4a9d3540, "gst: sink: copy frames if video buffer from other pool") with
`gst_video_frame_copy` for raw video and `gst_buffer_extract` otherwise (a `DMA_DRM` format
is not raw video there, so it takes `gst_buffer_extract`). `pool_activated()` asks for
`MemFd | MemPtr` up to 1.4 and for `MemFd` alone in 1.6. `propose_allocation()` offers the
pool (1.4 adds a `use-bufferpool` property, off by default for audio) and, in 1.6, VideoMeta.
The DMA_DRM work (f1b75fc6f, 2024, in 1.2) taught the caps conversion and pipewiresrc
about modifiers (`memory:DMABuf` caps still become a format with a modifier, for which
pipewiresrc asks `DmaBuf` only); the sink's buffers did not change. No release up to 1.6.8
sends a dma-buf from pipewiresink (read in the source, not run: the testbed has only
Debian 12's 0.3.65).
"""


def census_text(census, prefix):
    """The fds of a census whose kind starts with prefix, one 'name xN' each."""
    items = [(k, v) for k, v in census.items() if k.startswith(prefix)]
    if not items:
        return "none"
    return "; ".join(f"`{k}` x{v}" if v > 1 else f"`{k}`" for k, v in items)


def counts_of(path, pid):
    """The memcpy counter's line for pid: calls, bytes, large calls/bytes, line calls/bytes."""
    try:
        for line in open(path):
            f = line.split()
            if int(f[0]) == pid:
                return [int(x) for x in f[1:]]
    except OSError:
        pass
    return None


def sh(cmd):
    import subprocess
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def report(args):
    work, arms, frame = args.work, args.arms.split(), 1280 * 720 * 4
    ref = json.load(open(os.path.join(work, "reference.json")))["crcs"]
    ref_index = {}
    for i, c in enumerate(ref):
        ref_index.setdefault(c, i)
    rows = {}
    raw = {}
    raw_errors = {}
    for arm in arms:
        prod = json.load(open(os.path.join(work, f"{arm}.producer.json")))
        cons_path = os.path.join(work, f"{arm}.consumer.json")
        cons = json.load(open(cons_path)) if os.path.exists(cons_path) else None
        counts = counts_of(os.path.join(work, f"{arm}.counts"), prod["pid"])
        sinkpad = prod["pads"]["sink"]
        n = sinkpad["buffers"]
        r = rows[arm] = {}
        r["frames into the sink"] = f"{n}" + (f" ({prod['error']})" if prod.get("error") else "")
        if cons:
            r["frame held at the sink until the consumer was linked"] = str(prod.get("gate_at", 1))
        key = "frames out of the consumer's pipewiresrc / checksummed there: matching a videotestsrc frame"
        if cons:
            idx = [ref_index.get(c) for c in cons["crcs"]]
            known = [i for i in idx if i is not None]
            in_order = all(a < b for a, b in zip(known, known[1:]))
            r[key] = (f"{cons['frames']} in {cons['seconds']} s / {len(cons['crcs'])}: "
                      f"{len(known)}" + (", in order" if in_order and known else ""))
        else:
            r[key] = "- (no consumer)"
        if counts and n:
            calls, total, lcalls, lbytes, linecalls, linebytes = counts
            r["producer memcpy per frame: all calls"] = f"{total / n / 1e6:.2f} MB ({calls / n:.0f} calls)"
            r["producer memcpy per frame: calls >= 64 KiB"] = \
                f"{lbytes / n / 1e6:.2f} MB ({lcalls / n:.2f} calls)"
            r["producer memcpy per frame: 512 B to 64 KiB"] = \
                f"{linebytes / n / 1e6:.2f} MB ({linecalls / n:.0f} calls)"
            r["whole frames copied (bytes >= 64 KiB / frame size)"] = f"{lbytes / frame:.0f} for {n} frames"
        else:
            r["producer memcpy per frame: all calls"] = "not counted"
        r["caps into the sink"] = f"`{prod.get('caps_at_sink', '?')}`"
        r["memory into the sink / its pool"] = ", ".join(
            f"{k} x{v}" for k, v in sinkpad["memory"].items()) + " / " + ", ".join(
            f"{k} x{v}" for k, v in sinkpad["pool"].items())

        def offered(pad):
            if not pad["allocation"]:
                return "no answer"
            a = pad["allocation"][-1]
            pools = ", ".join(f"{p['type']} (size {p['size']}, min {p['min']}, max {p['max']})"
                              for p in a["pools"]) or "no pool"
            metas = ", ".join(a["metas"]) or "no metas"
            return f"{pools}; {metas}"

        r["the sink's ALLOCATION answer (upstream)"] = offered(sinkpad)
        if "v" in prod["pads"]:
            vpad = prod["pads"]["v"]
            r["vmemexport's ALLOCATION answer (to videotestsrc)"] = offered(vpad)
            r["memory into vmemexport / its pool"] = ", ".join(
                f"{k} x{v}" for k, v in vpad["memory"].items()) + " / " + ", ".join(
                f"{k} x{v}" for k, v in vpad["pool"].items())
            st = prod.get("vmemexport_stats", {})
            r["vmemexport stats: frames, exported, cache hits, copies, bytes copied"] = ", ".join(
                str(st.get(k, "?")) for k in ("frames", "exported", "export-cache-hits", "copies",
                                               "bytes-copied"))
        else:
            r["vmemexport's ALLOCATION answer (to videotestsrc)"] = "-"
            r["memory into vmemexport / its pool"] = "-"
            r["vmemexport stats: frames, exported, cache hits, copies, bytes copied"] = "-"
        try:
            # PipeWire dumps the Buffers params it could not intersect line by line
            # (pw_context_debug_port_params): shown here are the link's error and each side's
            # dataType flags (bit 1 MemPtr, 2 MemFd, 3 DmaBuf); raw.json has every line.
            lines_ = [line.strip() for line in open(os.path.join(work, f"{arm}.pwerrors"))]
            raw_errors[arm] = lines_
            errors, side, want = [], None, False
            for line in lines_:
                msg = re.sub(r"^\[E\]\[[0-9.]+\] *", "", line)
                m = re.search(r"params \S+: .*\((input|output) param\)", msg)
                if m:
                    side = m.group(1)
                    continue
                if "pw_context_debug_port_params" in msg:
                    if "BlockInfo:dataType" in msg:
                        want = True
                    elif want and (m := re.search(r"Int ([0-9]+)$", msg)):
                        names = [n for b, n in ((1, "MemPtr"), (2, "MemFd"), (3, "DmaBuf"))
                                 if int(m.group(1)) >> b & 1]
                        e = f"{side} port's Buffers dataType: {'|'.join(names)}"
                        if e not in errors:
                            errors.append(e)
                        want = False
                    continue
                msg = re.sub(r"^\S+ *\| \[ *[a-z-]+\.c: *[0-9]+ [a-z_]+\(\)\] ", "", msg)
                msg = re.sub(r"\([0-9.]+ -> [0-9.]+\) ", "", msg)
                msg = re.sub(r"0x[0-9a-f]+: ", "", msg)
                if msg not in errors:
                    errors.append(msg)
        except OSError:
            errors = []
        r["PipeWire daemon errors during the arm"] = "; ".join(
            f"`{e}`" for e in errors) if errors else "none"
        mid = prod.get("fds_mid_stream", {})
        r["producer fds mid-stream: memfds"] = census_text(mid, "memfd:")
        r["producer fds mid-stream: dma-bufs"] = str(mid.get("dmabuf", 0))
        if cons:
            r["consumer: memory of the frames"] = ", ".join(
                f"{k} x{v}" for k, v in cons["memory"].items()) + "".join(
                f"; fd `{k}` x{v}" for k, v in cons["fd_targets"].items())
            r["consumer fds at the end: memfds / dma-bufs"] = \
                census_text(cons["fds_at_end"], "memfd:") + f" / {cons['fds_at_end'].get('dmabuf', 0)}"
        else:
            r["consumer: memory of the frames"] = "-"
            r["consumer fds at the end: memfds / dma-bufs"] = "-"
        raw[arm] = {"producer": prod, "counts": counts, "pipewire_errors": raw_errors.get(arm, []),
                    "consumer": {k: v for k, v in (cons or {}).items() if k != "crcs"}}
    env = {
        "date": time.strftime("%Y-%m-%d"),
        "kernel": sh("uname -r"),
        "gstreamer": sh("gst-launch-1.0 --version | sed -n 's/^GStreamer //p'"),
        "pipewire": sh("pipewire --version | sed -n 's/.*Linked with libpipewire //p'"),
        "packages": sh("dpkg-query -W -f='${Package} ${Version}, ' pipewire wireplumber "
                       "gstreamer1.0-pipewire").rstrip(", "),
        "wireplumber": sh("wireplumber --version | sed -n 's/.*libwireplumber //p'"),
        "udmabuf": os.path.exists("/dev/udmabuf"),
        "vmemexp": os.path.exists("/dev/vmemexp"),
        "linker": args.linker,
    }
    raw_consumer_pipeline = next((raw[a]["consumer"]["pipeline"] for a in arms
                                  if raw[a]["consumer"].get("pipeline")), "-")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "raw.json"), "w") as f:
        json.dump({"env": env, "arms": raw}, f, indent=1)
    lines = [
        "# GStreamer into PipeWire: pipewiresink with and without vmemexport",
        "",
        "Written by `make pipewire` (tests/vm/pipewire): do not edit, run it again. Raw records:",
        "[raw.json](raw.json).",
        "",
        f"{env['date']}; VM testbed (qemu TCG, 2 vCPUs, 2 GiB), kernel {env['kernel']}; "
        f"GStreamer {env['gstreamer']}; libpipewire {env['pipewire']} ({env['packages']}); "
        f"linked by {env['linker']}; `/dev/udmabuf` {'present' if env['udmabuf'] else 'absent'}, "
        f"`/dev/vmemexp` {'present' if env['vmemexp'] else 'absent'} (not loaded: pool exports only).",
        "",
        f"Each arm: {args.frames} frames of 1280x720 BGRx (3,686,400 bytes), two processes. The "
        "producer (`tests/vm/pipewire-probe.py produce`) runs the pipeline below under the "
        "memcpy counter (bench/memcpy-count: every memcpy/memmove/mempcpy of the process); one "
        "frame (a row below says which) waits at the sink until the consumer is linked, since "
        "pipewiresink drops frames rendered before its stream flows, and after EOS the "
        "producer keeps the link until the consumer has stopped. The consumer (`tests/vm/pipewire-probe.py consume`) is "
        f"`{raw_consumer_pipeline}`: a pad probe on pipewiresrc records the memory of every "
        "frame it pushes; the application checksums (CRC-32) the frames it takes from the "
        "appsink (the newest each time), read through an mmap of the fd or a map, and looks "
        "them up among the frames videotestsrc makes in-process. A headless `pipewire` and "
        "`wireplumber` run in a temporary XDG_RUNTIME_DIR, on a private session bus "
        "(WirePlumber 0.4 exits without one).",
        "",
        "Pipelines (producer):",
        "",
    ]
    for arm in arms:
        lines.append(f"- {arm}: `{raw[arm]['producer']['pipeline']}`")
    lines += ["", "| | " + " | ".join(f"`{ARM_TITLES.get(a, a)}`" for a in arms) + " |",
              "|---|" + "---|" * len(arms)]
    keys = []
    for arm in arms:
        for k in rows[arm]:
            if k not in keys:
                keys.append(k)
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(str(rows[a].get(k, "-")).replace("|", "/")
                                             for a in arms) + " |")
    lines += ["", "The counter sees copies made through the C library's copy functions, "
              "whoever makes them. The 512 B to 64 KiB calls (a frame's worth in row-sized "
              "pieces) are the same in the fakesink control arms: they are made upstream of "
              "the sink (videotestsrc drawing the pattern), not by pipewiresink or vmemexport. "
              "A whole-frame copy shows as a call of 3,686,400 bytes (>= 64 KiB).", "", SOURCE]
    with open(os.path.join(args.out, "measure.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0


def main():
    Gst.init(None)
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("produce")
    a.add_argument("--pipeline", required=True)
    a.add_argument("--go", required=True)
    a.add_argument("--go-timeout", type=float, default=60)
    a.add_argument("--gate-at", type=int, default=1,
                   help="the frame (1: the first) that waits at the sink for the --go file")
    a.add_argument("--census-at", type=int, default=10)
    a.add_argument("--timeout", type=int, default=300)
    a.add_argument("--hold", help="after EOS, wait for this file before stopping")
    a.add_argument("--hold-timeout", type=float, default=120)
    a.add_argument("--out", required=True)
    a = sub.add_parser("consume")
    a.add_argument("--target", required=True)
    a.add_argument("--frames", type=int, required=True)
    a.add_argument("--timeout", type=float, default=120)
    a.add_argument("--idle", type=float, default=10)
    a.add_argument("--done", help="a file made once the consumer has stopped")
    a.add_argument("--out", required=True)
    a = sub.add_parser("reference")
    a.add_argument("--frames", type=int, required=True)
    a.add_argument("--caps", required=True)
    a.add_argument("--out", required=True)
    a = sub.add_parser("report")
    a.add_argument("--work", required=True)
    a.add_argument("--arms", required=True)
    a.add_argument("--frames", type=int, required=True)
    a.add_argument("--linker", required=True)
    a.add_argument("--out", required=True)
    args = p.parse_args()
    return {"produce": produce, "consume": consume, "reference": reference,
            "report": report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
