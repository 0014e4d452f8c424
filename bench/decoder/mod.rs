// SPDX-License-Identifier: MPL-2.0
//! Section 5 of the benchmark: a software decoder (avdec_h264, 1280x720) into a display
//! (kmssink on vkms) and into an encoder (v4l2fwhtenc on vicodec), with vmemexport against
//! upstream's copy path.
//!
//! Each arm runs in a child process of its own (`bench --decoder-arm ARM STREAM FRAMES
//! [--count-copies]`), so its CPU time, peak RSS and dma-bufs are its own and not what earlier
//! sections left behind. The H.264 stream is encoded once (x264enc, I420 forced) into a file.
//!
//! Bytes copied come from GStreamer's own copy functions, which log every copy to the
//! GST_PERFORMANCE category: `gst_video_frame_copy_plane` (frame copies: kmssink's "frame copy",
//! the V4L2 pool's "slow copy into buffer", a decoder copying out of its own buffers,
//! vmemexport's copy fallback) and `_sysmem_copy` (deep copies of system memory). That logging
//! costs CPU, so copies are counted in a run of their own, never in a timed run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use serde_json::{Value, json};

use crate::driver::{launch, run, run_for};

pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 720;

/// One pipeline: upstream's copy path, then the ways through vmemexport.
pub struct Case {
    pub name: &'static str,
    /// (variant, label, what follows `avdec_h264`); the first is upstream's.
    pub arms: &'static [(&'static str, &'static str, &'static str)],
}

/// The display needs RGB (vkms 6.12 scans out RGB only), so both display arms convert to BGRx;
/// videoconvert writes into the buffers of what follows it: kmssink's dumb buffers, or
/// vmemexport's exportable pool. The encoder's third arm is vmemexport's copy fallback (its
/// pool not proposed upstream, no pinning): one copy into a dma-buf of the natural layout.
pub const CASES: [Case; 2] = [
    Case {
        name: "display (kmssink)",
        arms: &[
            (
                "upstream",
                "upstream (copy path)",
                "videoconvert ! video/x-raw,format=BGRx ! kmssink driver-name=vkms sync=false",
            ),
            (
                "ours",
                "vmemexport",
                "videoconvert ! video/x-raw,format=BGRx ! vmemexport name=v ! kmssink driver-name=vkms sync=false",
            ),
        ],
    },
    Case {
        name: "encoder (v4l2fwhtenc)",
        arms: &[
            ("upstream", "upstream (copy path)", "v4l2fwhtenc ! fakesink"),
            (
                "ours",
                "vmemexport",
                "vmemexport name=v ! v4l2fwhtenc output-io-mode=dmabuf-import ! fakesink",
            ),
            (
                "ours-copy",
                "vmemexport, copy fallback",
                "vmemexport name=v propose-pool=false pin-system-memory=false ! v4l2fwhtenc output-io-mode=dmabuf-import ! fakesink",
            ),
        ],
    },
];

fn arm_desc(arm: &str, stream: &str) -> Option<String> {
    let (case, variant) = arm.split_once('/')?;
    let case = CASES.get(case.parse::<usize>().ok()?)?;
    let tail = case.arms.iter().find(|a| a.0 == variant)?.2;
    Some(format!(
        "filesrc location={stream} ! video/x-h264,stream-format=byte-stream ! h264parse ! avdec_h264 ! {tail}"
    ))
}

/// Encodes `frames` frames of 1280x720 I420 (a moving test pattern) to an H.264 byte stream.
pub fn encode(path: &std::path::Path, frames: u32) {
    run(&launch(&format!(
        "videotestsrc num-buffers={frames} horizontal-speed=8 ! \
         video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate=30/1 ! \
         x264enc speed-preset=ultrafast key-int-max=30 ! \
         video/x-h264,profile=constrained-baseline,stream-format=byte-stream ! filesink location={}",
        path.display()
    )));
}

/// Sizes of the dma-bufs this process holds fds of, each counted once (by inode).
fn dmabuf_bytes_in_fds() -> u64 {
    let mut seen = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") {
        for e in dir.flatten() {
            let Ok(info) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            if !info.contains("exp_name:") {
                continue;
            }
            let field = |k: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let (Some(ino), Some(size)) = (field("ino:"), field("size:")) {
                seen.insert(ino, size);
            }
        }
    }
    seen.values().sum()
}

/// All dma-bufs alive in the system (debugfs bufinfo's "Total N objects, M bytes"): in the
/// guest nothing else runs, so these are the arm's, including those only the kernel still
/// holds (a framebuffer, a queued V4L2 buffer). None when debugfs is not mounted.
fn dmabuf_bytes_system() -> Option<u64> {
    let text = std::fs::read_to_string("/sys/kernel/debug/dma_buf/bufinfo").ok()?;
    // Each buffer has its own "Total N devices attached" line: the sum is the last line.
    let total = text
        .lines()
        .rfind(|l| l.starts_with("Total ") && l.ends_with(" bytes"))?;
    let words: Vec<&str> = total.split_whitespace().collect();
    words.get(3)?.parse().ok()
}

/// Copies seen in GST_PERFORMANCE: bytes by copy function, and the messages that announce a
/// copy, by object.
#[derive(Default)]
struct CopyLog {
    frame_copy_bytes: u64,
    memory_copy_bytes: u64,
    announced: BTreeMap<String, u64>,
}

fn record(log: &mut CopyLog, function: &str, object: Option<String>, message: &str) {
    let number_after = |key: &str| -> Option<u64> {
        let rest = &message[message.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    match function {
        "gst_video_frame_copy_plane" => {
            // "copy plane N, w:W h:H": W is the row's length in bytes.
            if let (Some(w), Some(h)) = (number_after("w:"), number_after("h:")) {
                log.frame_copy_bytes += w * h;
            }
        }
        "_sysmem_copy" => log.memory_copy_bytes += number_after("memcpy ").unwrap_or(0),
        // Metadata copies (caps, structures, buffer headers) and adapter reads of the
        // compressed stream are not frame data.
        "gst_structure_copy"
        | "_gst_caps_copy"
        | "gst_mini_object_make_writable"
        | "copy_into_unchecked" => {}
        _ if message.to_ascii_lowercase().contains("copy") => {
            let who = object.unwrap_or_else(|| function.to_string());
            *log.announced
                .entry(format!("{who}: {message}"))
                .or_default() += 1;
        }
        _ => {}
    }
}

/// The child: runs one arm once and prints its figures as one JSON line.
pub fn child_main(args: &[String]) {
    let (arm, stream, frames) = match args {
        [arm, stream, frames, ..] => (arm, stream, frames.parse::<u64>().expect("FRAMES")),
        _ => panic!("usage: bench --decoder-arm CASE/VARIANT STREAM FRAMES [--count-copies]"),
    };
    let count_copies = args.iter().any(|a| a == "--count-copies");
    gst::init().unwrap();
    gstvmem::plugin_register_static().unwrap();
    let desc = arm_desc(arm, stream).expect("unknown arm");
    let copies = Arc::new(Mutex::new(CopyLog::default()));
    if count_copies {
        gst::log::remove_default_log_function();
        gst::log::set_active(true);
        gst::log::set_threshold_for_name("GST_PERFORMANCE", gst::DebugLevel::Memdump);
        let c = copies.clone();
        gst::log::add_log_function(move |cat, _, _, function, _, object, message| {
            if cat.name() != "GST_PERFORMANCE" {
                return;
            }
            if let Some(m) = message.get() {
                record(
                    &mut c.lock().unwrap(),
                    function.as_str(),
                    object.map(|o| o.to_string()),
                    m.as_str(),
                );
            }
        });
    }
    let pipeline = launch(&desc);
    let seen = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    if let Some(sink) = pipeline.iterate_sinks().into_iter().flatten().next() {
        let seen = seen.clone();
        sink.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                let mut s = seen.lock().unwrap();
                s.0 += 1;
                // Sampling reads every fd's fdinfo: only in the untimed run.
                if count_copies && s.0 % 10 == 5 {
                    s.1 = s.1.max(dmabuf_bytes_in_fds());
                    s.2 = s.2.max(dmabuf_bytes_system().unwrap_or(0));
                }
                gst::PadProbeReturn::Ok
            });
    }
    crate::reset_peak_rss();
    let (c0, w0) = (crate::cpu_time(), Instant::now());
    let result = run_for(&pipeline, Duration::from_secs(900));
    let (cpu, wall) = (crate::cpu_time() - c0, w0.elapsed());
    let stats = pipeline
        .by_name("v")
        .map(|v| v.property::<gst::Structure>("stats"));
    let stat = |k: &str| stats.as_ref().and_then(|s| s.get::<u64>(k).ok());
    let (frames_seen, fd_bytes, sys_bytes) = *seen.lock().unwrap();
    let log = copies.lock().unwrap();
    let out = json!({
        "arm": arm,
        "error": result.error,
        "frames": frames,
        "frames_seen": frames_seen,
        "cpu_us_per_frame": cpu.as_secs_f64() * 1e6 / frames as f64,
        "wall_ms_per_frame": wall.as_secs_f64() * 1e3 / frames as f64,
        "peak_rss_kib": crate::peak_rss_kib(),
        "dmabuf_fd_bytes_max": count_copies.then_some(fd_bytes),
        "dmabuf_system_bytes_max": (count_copies && dmabuf_bytes_system().is_some()).then_some(sys_bytes),
        "frame_copy_bytes": count_copies.then_some(log.frame_copy_bytes),
        "memory_copy_bytes": count_copies.then_some(log.memory_copy_bytes),
        "copies_announced": count_copies.then(|| log.announced.clone()),
        "vmemexport_copies": stat("copies"),
        "vmemexport_bytes_copied": stat("bytes-copied"),
        "vmemexport_exported": stat("exported"),
    });
    println!("DECODER-ARM {out}");
}

/// Runs one arm in a child process; its JSON line, or why there is none.
fn run_arm(arm: &str, stream: &std::path::Path, frames: u32, count: bool) -> Result<Value, String> {
    let mut cmd = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    cmd.arg("--decoder-arm")
        .arg(arm)
        .arg(stream)
        .arg(frames.to_string());
    if count {
        cmd.arg("--count-copies");
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("DECODER-ARM "))
        .ok_or_else(|| format!("{arm}: child exited with {} and no figures", out.status))?;
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    match v["error"].as_str() {
        // One line: the message goes into a table cell.
        Some(e) => Err(format!(
            "{arm}: {}",
            e.split_whitespace().collect::<Vec<_>>().join(" ")
        )),
        None => Ok(v),
    }
}

/// One arm's figures: medians of the timed runs, copies and memory from the counting run.
pub struct Arm {
    pub cpu_us: crate::Stat,
    pub wall_ms: f64,
    pub copied_bytes_per_frame: f64,
    pub frame_copy_bytes_per_frame: f64,
    pub memory_copy_bytes_per_frame: f64,
    pub peak_rss_kib: u64,
    pub dmabuf_fd_bytes: u64,
    pub dmabuf_system_bytes: Option<u64>,
    pub announced: Vec<(String, f64)>,
    pub vmemexport: Option<(u64, u64, u64)>,
    pub frames_seen: u64,
}

pub struct Row {
    pub case: &'static str,
    /// (variant, label, figures); the first is upstream's.
    pub arms: Vec<(&'static str, &'static str, Result<Arm, String>)>,
}

fn measure_arm(
    arm: &str,
    stream: &std::path::Path,
    frames: u32,
    reps: usize,
) -> Result<Arm, String> {
    let counted = run_arm(arm, stream, frames, true)?;
    let mut cpu = Vec::new();
    let mut wall = Vec::new();
    let mut rss = counted["peak_rss_kib"].as_u64().unwrap_or(0);
    for _ in 0..reps {
        let v = run_arm(arm, stream, frames, false)?;
        cpu.push(v["cpu_us_per_frame"].as_f64().unwrap_or(f64::NAN));
        wall.push(v["wall_ms_per_frame"].as_f64().unwrap_or(f64::NAN));
        rss = rss.max(v["peak_rss_kib"].as_u64().unwrap_or(0));
    }
    let n = f64::from(frames);
    let u = |k: &str| counted[k].as_u64().unwrap_or(0);
    let announced = counted["copies_announced"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0) / n))
                .collect()
        })
        .unwrap_or_default();
    Ok(Arm {
        cpu_us: crate::stat(cpu),
        wall_ms: crate::median(&mut wall),
        copied_bytes_per_frame: (u("frame_copy_bytes") + u("memory_copy_bytes")) as f64 / n,
        frame_copy_bytes_per_frame: u("frame_copy_bytes") as f64 / n,
        memory_copy_bytes_per_frame: u("memory_copy_bytes") as f64 / n,
        peak_rss_kib: rss,
        dmabuf_fd_bytes: u("dmabuf_fd_bytes_max"),
        dmabuf_system_bytes: counted["dmabuf_system_bytes_max"].as_u64(),
        announced,
        vmemexport: counted["vmemexport_copies"]
            .as_u64()
            .map(|c| (c, u("vmemexport_bytes_copied"), u("vmemexport_exported"))),
        frames_seen: u("frames_seen"),
    })
}

/// Encodes the stream once, then measures every arm.
pub fn measure(frames: u32, reps: usize) -> Vec<Row> {
    let stream = std::env::temp_dir().join(format!("vmem-bench-{}.h264", std::process::id()));
    encode(&stream, frames);
    let rows = CASES
        .iter()
        .enumerate()
        .map(|(i, case)| Row {
            case: case.name,
            arms: case
                .arms
                .iter()
                .map(|&(variant, label, _)| {
                    let arm = format!("{i}/{variant}");
                    (variant, label, measure_arm(&arm, &stream, frames, reps))
                })
                .collect(),
        })
        .collect();
    let _ = std::fs::remove_file(&stream);
    rows
}

fn mib(bytes: f64) -> f64 {
    bytes / 1048576.0
}

fn arm_json(case: &str, variant: &str, arm: &Result<Arm, String>) -> Value {
    match arm {
        Err(e) => json!({"case": case, "variant": variant, "error": e}),
        Ok(a) => json!({
            "case": case,
            "variant": variant,
            "error": null,
            "frames_seen": a.frames_seen,
            "cpu_us_per_frame": {"median": a.cpu_us.median, "min": a.cpu_us.min, "max": a.cpu_us.max},
            "wall_ms_per_frame": a.wall_ms,
            "copied_bytes_per_frame": a.copied_bytes_per_frame,
            "frame_copy_bytes_per_frame": a.frame_copy_bytes_per_frame,
            "memory_copy_bytes_per_frame": a.memory_copy_bytes_per_frame,
            "peak_rss_kib": a.peak_rss_kib,
            "dmabuf_fd_bytes_max": a.dmabuf_fd_bytes,
            "dmabuf_system_bytes_max": a.dmabuf_system_bytes,
            "copies_announced_per_frame": a.announced.iter().cloned().collect::<BTreeMap<_, _>>(),
            "vmemexport": a.vmemexport.map(|(c, b, e)| json!({"copies": c, "bytes_copied": b, "exported": e})),
        }),
    }
}

/// Section 5 into the results: a table per arm, the ratios within this run, and the notes
/// that say how each figure was obtained.
pub fn section(md: &mut String, csv: &mut String, json_out: &mut String, frames: u32, reps: usize) {
    use std::fmt::Write as _;
    let rows = measure(frames, reps);
    let _ = write!(
        md,
        "\n### A software decoder into a display and an encoder: avdec_h264, {WIDTH}x{HEIGHT}, {frames} frames\n\n\
         | pipeline | path | CPU per frame (ms) | bytes copied per frame | of which frame copies / memory copies | peak RSS (MiB) | dma-bufs alive, max (MiB) | vmemexport copies / exported |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    let mut json_rows = Vec::new();
    for row in &rows {
        for (variant, label, arm) in &row.arms {
            json_rows.push(arm_json(row.case, variant, arm));
            match arm {
                Err(e) => {
                    let _ = writeln!(md, "| {} | {label} | failed: {e} | | | | | |", row.case);
                }
                Ok(a) => {
                    let dmabufs = match a.dmabuf_system_bytes {
                        Some(s) => format!(
                            "{:.1} (fds: {:.1})",
                            mib(s as f64),
                            mib(a.dmabuf_fd_bytes as f64)
                        ),
                        None => format!("fds: {:.1}", mib(a.dmabuf_fd_bytes as f64)),
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {label} | {:.1} ({:.1}..{:.1}) | {:.2} MiB | {:.2} / {:.2} MiB | {:.0} | {dmabufs} | {} |",
                        row.case,
                        a.cpu_us.median / 1e3,
                        a.cpu_us.min / 1e3,
                        a.cpu_us.max / 1e3,
                        mib(a.copied_bytes_per_frame),
                        mib(a.frame_copy_bytes_per_frame),
                        mib(a.memory_copy_bytes_per_frame),
                        a.peak_rss_kib as f64 / 1024.0,
                        a.vmemexport
                            .map_or("-".to_string(), |(c, _, e)| format!("{c} / {e}")),
                    );
                    for (metric, v) in [
                        ("cpu_us_per_frame", a.cpu_us.median),
                        ("copied_bytes_per_frame", a.copied_bytes_per_frame),
                        ("peak_rss_kib", a.peak_rss_kib as f64),
                        ("dmabuf_fd_bytes_max", a.dmabuf_fd_bytes as f64),
                        (
                            "dmabuf_system_bytes_max",
                            a.dmabuf_system_bytes.map_or(f64::NAN, |b| b as f64),
                        ),
                    ] {
                        let (lo, hi) = if metric == "cpu_us_per_frame" {
                            (
                                format!("{:.1}", a.cpu_us.min),
                                format!("{:.1}", a.cpu_us.max),
                            )
                        } else {
                            (String::new(), String::new())
                        };
                        let _ = writeln!(
                            csv,
                            "decoder,{},{variant},{metric},{v:.1},{lo},{hi}",
                            row.case
                        );
                    }
                }
            }
        }
    }
    md.push_str("\nRatios within this run (upstream's copy path / the vmemexport arm):\n\n| pipeline | vmemexport arm | CPU per frame | bytes copied per frame | peak RSS |\n|---|---|---|---|---|\n");
    for row in &rows {
        let upstream = &row.arms[0].2;
        for (_, label, arm) in &row.arms[1..] {
            match (upstream, arm) {
                (Ok(u), Ok(o)) => {
                    let ratio = |a: f64, b: f64| {
                        if b > 0.0 {
                            format!("{:.2}x", a / b)
                        } else {
                            format!("{:.2} MiB vs 0", mib(a))
                        }
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {label} | {} | {} | {} |",
                        row.case,
                        ratio(u.cpu_us.median, o.cpu_us.median),
                        if o.copied_bytes_per_frame > 0.0 {
                            ratio(u.copied_bytes_per_frame, o.copied_bytes_per_frame)
                        } else {
                            format!("{:.2} MiB vs 0", mib(u.copied_bytes_per_frame))
                        },
                        ratio(u.peak_rss_kib as f64, o.peak_rss_kib as f64),
                    );
                }
                _ => {
                    let _ = writeln!(
                        md,
                        "| {} | {label} | not measured (an arm failed) | | |",
                        row.case
                    );
                }
            }
        }
    }
    md.push_str(
        "\nCopies each arm announced (GST_PERFORMANCE messages with an object, per frame):\n\n",
    );
    for row in &rows {
        for (_, label, arm) in &row.arms {
            if let Ok(a) = arm {
                let list = if a.announced.is_empty() {
                    "none".to_string()
                } else {
                    a.announced
                        .iter()
                        .map(|(k, v)| format!("`{}` x{v:.2}", k.trim()))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                let _ = writeln!(md, "- {}, {label}: {list}", row.case);
            }
        }
    }
    let _ = write!(
        md,
        "\nHow each figure is obtained. The stream ({frames} frames of a moving test pattern, x264enc \
         ultrafast, constrained baseline, I420 forced) is encoded once; every arm decodes it in a \
         child process of its own. CPU per frame: the child's user+sys CPU time \
         (CLOCK_PROCESS_CPUTIME_ID, all threads, kernel work done in its syscalls included: vicodec \
         encodes in the caller's ioctl) over the run, divided by the frames; median (min..max) of \
         {reps} runs. Bytes copied: in one more run of each arm, not timed, GStreamer's GST_PERFORMANCE \
         log at level 9 is read in-process: frame copies are the rows `gst_video_frame_copy_plane` \
         reports (kmssink's frame copy, the V4L2 pool's copy, a decoder copying out of its own \
         buffers, vmemexport's copy fallback), memory copies the bytes `_sysmem_copy` reports (deep \
         copies of system memory); caps, structure and buffer-header copies and the compressed \
         input are left out. Peak RSS: VmHWM, reset (clear_refs 5) just before the run; it counts \
         the pages the process maps: its heap, the memfd pages behind our dma-bufs, kmssink's mapped \
         dumb buffers and the V4L2 MMAP buffers the copy path writes into. dma-bufs alive: the \
         most at once, sampled every 10 frames in the counting run: all dma-bufs of the guest from \
         /sys/kernel/debug/dma_buf/bufinfo (nothing else runs there), and in brackets those the \
         process holds fds of (/proc/self/fdinfo, each buffer once). They are the part of that \
         memory shared with devices, already inside the RSS when mapped: do not add them. \
         The consumers' own buffers count where they export them: kmssink's dumb buffers and the \
         V4L2 MMAP buffers are dma-bufs too. \
         Both display arms convert to BGRx (vkms scans out RGB only); videoconvert writes into the \
         buffers of the element after it when that element offers a pool.\n"
    );
    let section = json!({"frames": frames, "reps": reps, "width": WIDTH, "height": HEIGHT, "arms": json_rows});
    let _ = writeln!(json_out, "  \"decoder\": {section}");
}
