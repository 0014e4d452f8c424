// SPDX-License-Identifier: MPL-2.0
//! Benchmarks vmemexport against upstream's copy paths, inside the VM testbed (`make bench`).
//! Figures, not pass/fail: results go to RESULTS_DIR as bench.json, bench.csv and bench.md.
//!
//!     bench RESULTS_DIR [--quick] [--note TEXT]   (TEXT: the conditions of the run, into bench.md)
//!     bench RESULTS_DIR --only SET   (one set of section 5 alone, into bench-SET.{md,json,csv}:
//!                                     `yuv` on kernel 7.x, `gl` on GStreamer 1.28)
//!     bench --plot-only RESULTS_DIR/bench.json   (redraws bench.png, bench-e2e.png, bench-decoder.png)
//!
//! 1. vmemexport alone: per-frame time between its sink and src pads, zero-copy path vs its
//!    copy fallback (`propose-pool=false pin-system-memory=false`), at 640x480 .. 3840x2160, NV12 and BGRx.
//! 2. End to end at 1280x720 (the size vicodec encodes): CPU time per frame of the whole
//!    process, ours vs upstream, raw and with the producer's own cost (videotestsrc ! fakesink
//!    at the same caps) subtracted; peak RSS; most dma-buf fds open at once.
//! 3. Syscalls per frame in steady state (strace -c on gst-launch, 2N frames minus N frames).
//! 4. Frames from other memory (page-aligned application frames, a decoder's pool): the
//!    vmemexp module's pinned export against the copy fallback, 640x480 .. 3840x2160 (needs
//!    /dev/vmemexp: tests/vm/bench loads the module).
//! 5. A software decoder (avdec_h264, 1280x720 H.264 made by x264enc) into a display (kmssink)
//!    and into an encoder (v4l2fwhtenc), with vmemexport and on upstream's copy path: CPU time,
//!    bytes copied and memory held per arm, each arm in a child process of its own
//!    (bench/decoder). Copies are counted from GStreamer's log and by an LD_PRELOAD counter of
//!    memcpy (bench/memcpy-count). `make bench` also runs the set `yuv` (the decoder straight
//!    to a YUV plane, and a tee to display and encoder) on kernel 7.x and `gl` (glupload's own
//!    udmabuf pool against vmemexport's) on GStreamer 1.28.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

mod decoder;
mod driver;
mod pinned;
mod plot;
use driver::{launch, run};

const REPS: usize = 3;

fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn dmabuf_fds() -> usize {
    std::fs::read_dir("/proc/self/fdinfo")
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .filter(|i| i.contains("exp_name:"))
                .count()
        })
        .unwrap_or(0)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median, min, max of repeated measurements.
#[derive(Clone, Copy, Default)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(mut v: Vec<f64>) -> Stat {
    let m = median(&mut v);
    Stat {
        median: m,
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// Per-frame microseconds spent inside `element` (sink pad to src pad) after warm-up, and
/// its copies if it is vmemexport.
fn element_cost(caps: &str, frames: u32, element: &str) -> (f64, u64) {
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} pattern=black ! {caps} ! {element} name=v ! fakesink"
    ));
    let v = pipeline.by_name("v").unwrap();
    let samples = driver::time_inside(&v);
    run(&pipeline);
    let copies = if element.starts_with("vmemexport") {
        v.property::<gst::Structure>("stats")
            .get::<u64>("copies")
            .unwrap()
    } else {
        0
    };
    let mut s = samples.lock().unwrap().clone();
    // The first frames of the zero-copy path include each pool buffer's one-time export.
    let warm = s.split_off(s.len().min(5));
    (median(&mut if warm.is_empty() { s } else { warm }), copies)
}

struct EndToEnd {
    name: &'static str,
    upstream: String,
    ours: String,
    producer: String,
}

struct Measured {
    cpu_us: Stat,
    wall_ms: Stat,
    rss_kib: u64,
    max_dmabufs: usize,
}

fn measure(desc: &str, frames: u32) -> Measured {
    let (mut cpu, mut wall) = (Vec::new(), Vec::new());
    let mut rss = 0;
    let max_dmabufs = Arc::new(Mutex::new(0usize));
    for _ in 0..REPS {
        let pipeline = launch(desc);
        let m = max_dmabufs.clone();
        if let Some(sink) = pipeline.iterate_sinks().into_iter().flatten().next() {
            let n = Arc::new(Mutex::new(0u32));
            sink.static_pad("sink")
                .unwrap()
                .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                    let mut n = n.lock().unwrap();
                    *n += 1;
                    if *n % 10 == 5 {
                        let mut m = m.lock().unwrap();
                        *m = (*m).max(dmabuf_fds());
                    }
                    gst::PadProbeReturn::Ok
                });
        }
        reset_peak_rss();
        let (c0, w0) = (cpu_time(), Instant::now());
        run(&pipeline);
        cpu.push((cpu_time() - c0).as_secs_f64() * 1e6 / f64::from(frames));
        wall.push(w0.elapsed().as_secs_f64() * 1e3 / f64::from(frames));
        rss = rss.max(peak_rss_kib());
    }
    let max_dmabufs = *max_dmabufs.lock().unwrap();
    Measured {
        cpu_us: stat(cpu),
        wall_ms: stat(wall),
        rss_kib: rss,
        max_dmabufs,
    }
}

/// Syscalls per frame of `desc` in steady state: strace -c at 2N frames minus at N frames.
fn syscalls_per_frame(desc: &str, frames: u32) -> Option<f64> {
    let count = |n: u32| -> Option<f64> {
        let out = std::env::temp_dir().join(format!("vmem-strace-{}-{n}", std::process::id()));
        let status = std::process::Command::new("strace")
            .args(["-f", "-c", "-o"])
            .arg(&out)
            .arg("gst-launch-1.0")
            .arg("-q")
            .args(desc.replace("NUM", &n.to_string()).split_whitespace())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        let text = std::fs::read_to_string(&out).ok()?;
        let _ = std::fs::remove_file(&out);
        if !status.success() {
            return None;
        }
        text.lines()
            .find(|l| l.trim_end().ends_with("total"))
            .and_then(|l| l.split_whitespace().nth(3).and_then(|c| c.parse().ok()))
    };
    // A negative difference means the two runs did different work (a registry rescan in one
    // of them, a busy host): no figure rather than a wrong one.
    Some((count(2 * frames)? - count(frames)?) / f64::from(frames)).filter(|d| *d >= 0.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--decoder-arm") {
        decoder::child_main(&args[1..]);
        return;
    }
    if args.first().is_some_and(|a| a == "--plot-only") {
        let json = args
            .get(1)
            .expect("usage: bench --plot-only RESULTS_DIR/bench.json");
        for png in plot::plot_results(std::path::Path::new(json)).unwrap() {
            println!("{}", png.display());
        }
        return;
    }
    let dir = std::path::PathBuf::from(
        args.first()
            .expect("usage: bench RESULTS_DIR [--quick] [--note TEXT] [--only SET]"),
    );
    let quick = args.iter().any(|a| a == "--quick");
    let note = args
        .iter()
        .position(|a| a == "--note")
        .and_then(|i| args.get(i + 1));
    std::fs::create_dir_all(&dir).unwrap();
    gst::init().unwrap();
    gstvmem::plugin_register_static().unwrap();
    let version = gst::version_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();

    let mut json = format!(
        "{{\n  \"date\": \"{date}\",\n  \"gstreamer\": \"{version}\",\n  \"kernel\": \"{}\",\n  \"testbed\": \"qemu TCG, 2 vCPUs\",\n",
        kernel.trim()
    );
    let mut csv = String::from("section,case,variant,metric,median,min,max\n");
    let mut md = format!(
        "Measured {date} in the VM testbed (qemu TCG, 2 vCPUs, kernel {}, {version}); medians of {REPS} runs.\n\n",
        kernel.trim()
    );
    if let Some(note) = note {
        let _ = writeln!(md, "{note}\n");
        let _ = writeln!(
            json,
            "  \"note\": {},",
            serde_json::Value::from(note.as_str())
        );
    }

    // `--only SET`: one decoder set alone (make bench runs `yuv` on kernel 7.x and `gl` on
    // GStreamer 1.28), into bench-SET.{md,json,csv}.
    if let Some(id) = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
    {
        let set = decoder::set(id).unwrap_or_else(|| panic!("no decoder set '{id}'"));
        let (frames, reps) = if quick { (30, 1) } else { (60, REPS) };
        decoder::section(set, &mut md, &mut csv, &mut json, frames, reps);
        json.push_str("}\n");
        std::fs::write(dir.join(format!("bench-{id}.json")), json).unwrap();
        std::fs::write(dir.join(format!("bench-{id}.csv")), csv).unwrap();
        std::fs::write(dir.join(format!("bench-{id}.md")), &md).unwrap();
        println!("{md}");
        return;
    }

    // 1. vmemexport alone.
    let sizes: &[(u32, u32)] = if quick {
        &[(640, 480), (1920, 1080)]
    } else {
        &[(640, 480), (1280, 720), (1920, 1080), (3840, 2160)]
    };
    md.push_str("### vmemexport alone: time per frame inside the element\n\n");
    md.push_str("| format | size | zero-copy (us) | zero-copy, sync=false (us) | copy fallback (us) | copy / zero-copy | identity in its place (us) |\n|---|---|---|---|---|---|---|\n");
    json.push_str("  \"element\": [\n");
    let mut first = true;
    let mut vga_cost = std::collections::HashMap::new();
    for format in ["NV12", "BGRx"] {
        for &(w, h) in sizes {
            let caps = format!("video/x-raw,format={format},width={w},height={h},framerate=30/1");
            let frames = if w >= 3840 { 20 } else { 40 };
            let (mut zc, mut zn, mut cp, mut id) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..REPS {
                let (t, copies) = element_cost(&caps, frames, "vmemexport");
                assert_eq!(copies, 0, "zero-copy path copied");
                zc.push(t);
                zn.push(element_cost(&caps, frames, "vmemexport sync=false").0);
                let (t, copies) = element_cost(
                    &caps,
                    frames,
                    "vmemexport propose-pool=false pin-system-memory=false",
                );
                assert!(copies > 0, "copy path did not copy");
                cp.push(t);
                id.push(element_cost(&caps, frames, "identity").0);
            }
            let (zc, zn, cp, id) = (stat(zc), stat(zn), stat(cp), stat(id));
            if w == 640 {
                vga_cost.insert(format, (zc.median, zn.median, id.median));
            }
            let _ = writeln!(
                md,
                "| {format} | {w}x{h} | {:.0} | {:.0} | {:.0} | {:.1}x | {:.0} |",
                zc.median,
                zn.median,
                cp.median,
                cp.median / zc.median,
                id.median
            );
            for (variant, s) in [
                ("zero-copy", zc),
                ("zero-copy-nosync", zn),
                ("copy", cp),
                ("identity", id),
            ] {
                let _ = writeln!(
                    csv,
                    "element,{format} {w}x{h},{variant},us_per_frame,{:.1},{:.1},{:.1}",
                    s.median, s.min, s.max
                );
                let _ = write!(
                    json,
                    "{}    {{\"format\": \"{format}\", \"width\": {w}, \"height\": {h}, \"variant\": \"{variant}\", \"us_per_frame\": {{\"median\": {:.1}, \"min\": {:.1}, \"max\": {:.1}}}}}",
                    if first { "" } else { ",\n" },
                    s.median,
                    s.min,
                    s.max
                );
                first = false;
            }
            if w == sizes[sizes.len() - 1].0 {
                let _ = writeln!(
                    md,
                    "| {format} | {}x{} / 640x480 | ratio {:.2} | ratio {:.2} | | | ratio {:.2} |",
                    w,
                    h,
                    zc.median / vga_cost[format].0,
                    zn.median / vga_cost[format].1,
                    id.median / vga_cost[format].2
                );
            }
        }
    }
    json.push_str("\n  ],\n");

    // 2. End to end at 1280x720.
    let n = if quick { 15 } else { 30 };
    let bgrx = "video/x-raw,format=BGRx,width=1280,height=720,framerate=30/1";
    let i420 = "video/x-raw,format=I420,width=1280,height=720,framerate=30/1";
    let cases = [
        EndToEnd {
            name: "(a) display + encoder (tee)",
            upstream: format!(
                "videotestsrc num-buffers={n} ! {bgrx} ! tee name=t ! queue ! kmssink driver-name=vkms sync=false t. ! queue ! v4l2fwhtenc ! fakesink"
            ),
            ours: format!(
                "videotestsrc num-buffers={n} ! {bgrx} ! vmemexport ! tee name=t ! queue ! kmssink driver-name=vkms sync=false t. ! queue ! v4l2fwhtenc output-io-mode=dmabuf-import ! fakesink"
            ),
            producer: format!("videotestsrc num-buffers={n} ! {bgrx} ! fakesink"),
        },
        EndToEnd {
            name: "(b) encoder",
            upstream: format!("videotestsrc num-buffers={n} ! {i420} ! v4l2fwhtenc ! fakesink"),
            ours: format!(
                "videotestsrc num-buffers={n} ! {i420} ! vmemexport ! v4l2fwhtenc output-io-mode=dmabuf-import ! fakesink"
            ),
            producer: format!("videotestsrc num-buffers={n} ! {i420} ! fakesink"),
        },
        EndToEnd {
            name: "(c) display",
            upstream: format!(
                "videotestsrc num-buffers={n} ! {bgrx} ! kmssink driver-name=vkms sync=false"
            ),
            ours: format!(
                "videotestsrc num-buffers={n} ! {bgrx} ! vmemexport ! kmssink driver-name=vkms sync=false"
            ),
            producer: format!("videotestsrc num-buffers={n} ! {bgrx} ! fakesink"),
        },
    ];
    md.push_str("\n### End to end at 1280x720: CPU time per frame of the whole process\n\n");
    md.push_str("| pipeline | upstream (us) | ours (us) | upstream / ours | transfer only: upstream (us) | transfer only: ours (us) | peak RSS upstream / ours (MiB) | dma-bufs open (max) upstream / ours |\n|---|---|---|---|---|---|---|---|\n");
    json.push_str("  \"end_to_end\": [\n");
    for (i, case) in cases.iter().enumerate() {
        let up = measure(&case.upstream, n);
        let ours = measure(&case.ours, n);
        let prod = measure(&case.producer, n);
        let (tu, to) = (
            up.cpu_us.median - prod.cpu_us.median,
            ours.cpu_us.median - prod.cpu_us.median,
        );
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.0} | {:.0} / {:.0} | {} / {} |",
            case.name,
            up.cpu_us.median,
            ours.cpu_us.median,
            up.cpu_us.median / ours.cpu_us.median,
            tu,
            to,
            up.rss_kib as f64 / 1024.0,
            ours.rss_kib as f64 / 1024.0,
            up.max_dmabufs,
            ours.max_dmabufs
        );
        for (variant, m) in [("upstream", &up), ("ours", &ours), ("producer-only", &prod)] {
            let _ = writeln!(
                csv,
                "end_to_end,{},{variant},cpu_us_per_frame,{:.1},{:.1},{:.1}",
                case.name, m.cpu_us.median, m.cpu_us.min, m.cpu_us.max
            );
            let _ = writeln!(
                csv,
                "end_to_end,{},{variant},wall_ms_per_frame,{:.2},{:.2},{:.2}",
                case.name, m.wall_ms.median, m.wall_ms.min, m.wall_ms.max
            );
        }
        let _ = write!(
            json,
            "{}    {{\"case\": \"{}\", \"upstream_cpu_us\": {:.1}, \"ours_cpu_us\": {:.1}, \"producer_cpu_us\": {:.1}, \"upstream_rss_kib\": {}, \"ours_rss_kib\": {}, \"upstream_max_dmabufs\": {}, \"ours_max_dmabufs\": {}}}",
            if i == 0 { "" } else { ",\n" },
            case.name,
            up.cpu_us.median,
            ours.cpu_us.median,
            prod.cpu_us.median,
            up.rss_kib,
            ours.rss_kib,
            up.max_dmabufs,
            ours.max_dmabufs
        );
    }
    json.push_str("\n  ],\n");

    // 3. Syscalls per frame (gst-launch under strace).
    md.push_str("\n### Syscalls per frame in steady state (encoder pipeline, strace -c)\n\n| variant | syscalls/frame | bytes copied/frame |\n|---|---|---|\n");
    let frame_bytes = 1280 * 720 * 3 / 2;
    let plugin_path = std::env::var("GST_PLUGIN_PATH").unwrap_or_default();
    let sys_up = syscalls_per_frame(
        &format!("videotestsrc num-buffers=NUM ! {i420} ! v4l2fwhtenc ! fakesink"),
        20,
    );
    let sys_ours = syscalls_per_frame(
        &format!(
            "videotestsrc num-buffers=NUM ! {i420} ! vmemexport ! v4l2fwhtenc output-io-mode=dmabuf-import ! fakesink"
        ),
        20,
    );
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1}"));
    let _ = writeln!(
        md,
        "| upstream (copy into MMAP buffers) | {} | {frame_bytes} |",
        fmt(sys_up)
    );
    let _ = writeln!(md, "| vmemexport + dmabuf-import | {} | 0 |", fmt(sys_ours));
    let _ = writeln!(
        json,
        "  \"syscalls_per_frame\": {{\"upstream\": {}, \"ours\": {}, \"plugin_path\": \"{plugin_path}\"}},",
        sys_up.map_or("null".into(), |v| format!("{v:.1}")),
        sys_ours.map_or("null".into(), |v| format!("{v:.1}"))
    );
    let _ = writeln!(csv, "syscalls,encoder,upstream,per_frame,{},,", fmt(sys_up));
    let _ = writeln!(csv, "syscalls,encoder,ours,per_frame,{},,", fmt(sys_ours));

    // 4. Pinned exports (vmemexp) against the copy fallback.
    md.push_str(
        "\n### Frames from other memory: pinned export (vmemexp) vs copy, BGRx\n\n\
         | size | frame | pin + export + release (us) | memcpy (us) | in vmemexport: new frame each time, pinned (us) | frames reused, pinned once (us) | copy fallback (us) | copy / pinned |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    match pinned::measure(quick) {
        Ok(rows) => {
            json.push_str("  \"pinned\": [\n");
            for (i, r) in rows.iter().enumerate() {
                let _ = writeln!(
                    md,
                    "| {}x{} | {:.1} MiB | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}x |",
                    r.width,
                    r.height,
                    r.bytes as f64 / 1048576.0,
                    r.pin_us,
                    r.memcpy_us,
                    r.element_new_us,
                    r.element_reused_us,
                    r.element_copy_us,
                    r.element_copy_us / r.element_new_us
                );
                for (variant, v) in [
                    ("pin-export-release", r.pin_us),
                    ("memcpy", r.memcpy_us),
                    ("element-pinned-new", r.element_new_us),
                    ("element-pinned-reused", r.element_reused_us),
                    ("element-copy", r.element_copy_us),
                ] {
                    let _ = writeln!(
                        csv,
                        "pinned,BGRx {}x{},{variant},us_per_frame,{v:.1},,",
                        r.width, r.height
                    );
                }
                let _ = write!(
                    json,
                    "{}    {{\"width\": {}, \"height\": {}, \"pin_export_release_us\": {:.1}, \"memcpy_us\": {:.1}, \"element_pinned_new_us\": {:.1}, \"element_pinned_reused_us\": {:.1}, \"element_copy_us\": {:.1}, \"copy_fallback_copies\": {}}}",
                    if i == 0 { "" } else { ",\n" },
                    r.width,
                    r.height,
                    r.pin_us,
                    r.memcpy_us,
                    r.element_new_us,
                    r.element_reused_us,
                    r.element_copy_us,
                    r.copies
                );
            }
            json.push_str("\n  ],\n");
        }
        Err(why) => {
            let _ = writeln!(md, "| not measured: {why} | | | | | | | |");
            json.push_str("  \"pinned\": null,\n");
        }
    }

    // 5. A software decoder into a display and into an encoder.
    let (frames, reps) = if quick { (30, 1) } else { (60, REPS) };
    let main_set = decoder::set("main").unwrap();
    decoder::section(main_set, &mut md, &mut csv, &mut json, frames, reps);
    json.push_str("}\n");

    std::fs::write(dir.join("bench.json"), json).unwrap();
    std::fs::write(dir.join("bench.csv"), csv).unwrap();
    std::fs::write(dir.join("bench.md"), &md).unwrap();
    println!("{md}");
    plot::plot_results(&dir.join("bench.json")).unwrap();
}
