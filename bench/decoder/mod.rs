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

/// A group of cases measured in one `make bench` VM run: the kernel and userland decide which
/// (vkms takes YUV from kernel 7.x on; 1.28's glupload offers its own udmabuf pool).
pub struct Set {
    /// `bench --only ID` (and the arms' ids, `ID/CASE/VARIANT`).
    pub id: &'static str,
    pub title: &'static str,
    pub cases: &'static [Case],
    /// What is particular to these cases, after the common notes.
    pub note: &'static str,
}

/// The sets: `main` runs in the default bench run (kernel 6.12), `yuv` on kernel 7.x, `gl` on
/// GStreamer 1.28.
pub const SETS: [Set; 3] = [
    // The display needs RGB (vkms 6.12 scans out RGB only), so both display arms convert to
    // BGRx; videoconvert writes into the buffers of what follows it: kmssink's dumb buffers,
    // or vmemexport's exportable pool. The encoder's third arm is vmemexport's copy fallback
    // (its pool not proposed upstream, no pinning): one copy into a dma-buf of the natural
    // layout.
    Set {
        id: "main",
        title: "A software decoder into a display and an encoder",
        cases: &[
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
        ],
        note: "Both display arms convert to BGRx (vkms on 6.12 scans out RGB only); videoconvert \
               writes into the buffers of the element after it when that element offers a pool.",
    },
    // Kernel 7.x: vkms's planes take I420, so the decoder's frames go to the display as they
    // are. Upstream: kmssink offers its dumb-buffer pool to the decoder.
    Set {
        id: "yuv",
        title: "A software decoder straight to a YUV plane, and to the display and an encoder at once",
        cases: &[
            Case {
                name: "display (kmssink, I420 plane)",
                arms: &[
                    (
                        "upstream",
                        "upstream (kmssink's dumb buffers)",
                        "kmssink driver-name=vkms sync=false",
                    ),
                    (
                        "ours",
                        "vmemexport",
                        "vmemexport name=v ! kmssink driver-name=vkms sync=false",
                    ),
                ],
            },
            Case {
                name: "display + encoder (tee)",
                arms: &[
                    (
                        "upstream",
                        "upstream (copy path)",
                        "tee name=t ! queue ! kmssink driver-name=vkms sync=false t. ! queue ! v4l2fwhtenc ! fakesink",
                    ),
                    (
                        "ours",
                        "vmemexport",
                        "vmemexport name=v ! tee name=t ! queue ! kmssink driver-name=vkms sync=false t. ! queue ! v4l2fwhtenc output-io-mode=dmabuf-import ! fakesink",
                    ),
                ],
            },
        ],
        note: "No conversion: vkms on this kernel takes the decoder's I420 on its plane. Upstream, \
               kmssink offers its own pool of dumb buffers to the decoder; with vmemexport the \
               decoder writes into vmemexport's exportable pool and kmssink imports those pages.",
    },
    // GStreamer 1.28: glupload offers its own udmabuf pool (GstVideoDmabufPool) upstream, so
    // plain 1.28 is already zero-copy into GL; vmemexport must not make that worse.
    Set {
        id: "gl",
        title: "A software decoder into GL on GStreamer 1.28: glupload's own udmabuf pool and vmemexport's",
        cases: &[Case {
            name: "GL (glupload)",
            arms: &[
                (
                    "upstream",
                    "plain 1.28 (glupload's pool)",
                    "glupload ! fakesink",
                ),
                (
                    "ours",
                    "vmemexport",
                    "vmemexport name=v ! glupload ! fakesink",
                ),
            ],
        }],
        note: "glupload imports through EGL (Mesa's llvmpipe on a GBM display on vgem, as in \
               tests/vm_consumers.rs); the uploaders it used are counted from its own log \
               (`uploader NAME returned`); `video/x-raw(memory:GLMemory)` after it makes it upload (it \
               would otherwise pass dma-bufs through to fakesink). On 1.28 it proposes a GstVideoDmabufPool (memfd + \
               udmabuf) to upstream, so without vmemexport the decoder can already render into \
               dma-bufs; with vmemexport, vmemexport's own pool is what the decoder renders into.",
    },
];

pub fn set(id: &str) -> Option<&'static Set> {
    SETS.iter().find(|s| s.id == id)
}

fn arm_desc(arm: &str, stream: &str) -> Option<String> {
    let mut parts = arm.splitn(3, '/');
    let (set_id, case, variant) = (parts.next()?, parts.next()?, parts.next()?);
    let case = set(set_id)?.cases.get(case.parse::<usize>().ok()?)?;
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
    /// glupload's uploaders, by name: one `uploader NAME returned` line a buffer.
    uploaders: BTreeMap<String, u64>,
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
        gst::log::set_threshold_for_name("glupload", gst::DebugLevel::Log);
        let c = copies.clone();
        gst::log::add_log_function(move |cat, _, _, function, _, object, message| {
            if cat.name() == "glupload" {
                let m = message.get();
                let m = m.as_ref().map(|m| m.as_str()).unwrap_or_default();
                if let Some(name) = m
                    .strip_prefix("uploader ")
                    .and_then(|r| Some(&r[..r.find(" returned")?]))
                {
                    *c.lock()
                        .unwrap()
                        .uploaders
                        .entry(name.to_string())
                        .or_default() += 1;
                }
                return;
            }
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
        "uploaders": count_copies.then(|| log.uploaders.clone()),
        "vmemexport_copies": stat("copies"),
        "vmemexport_bytes_copied": stat("bytes-copied"),
        "vmemexport_exported": stat("exported"),
    });
    println!("DECODER-ARM {out}");
}

/// The LD_PRELOAD copy counter (bench/memcpy-count), built beside this binary by `make
/// bench`; None where it is missing.
fn memcpy_counter() -> Option<std::path::PathBuf> {
    let so = std::env::current_exe()
        .ok()?
        .with_file_name("libmemcpy_count.so");
    so.exists().then_some(so)
}

/// What the counter saw in one process: (all calls, bytes; calls of 64 KiB or more, bytes;
/// calls of 512 bytes up to 64 KiB, bytes).
#[derive(Clone, Copy, Default)]
pub struct Memcpy {
    pub bytes: u64,
    pub large_calls: u64,
    pub large_bytes: u64,
    pub line_bytes: u64,
}

fn read_memcpy(path: &std::path::Path, pid: u32) -> Option<Memcpy> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&pid.to_string()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    Some(Memcpy {
        bytes: *v.get(1)?,
        large_calls: *v.get(2)?,
        large_bytes: *v.get(3)?,
        line_bytes: *v.get(5)?,
    })
}

/// Runs one arm in a child process; its JSON line, or why there is none. The counting run
/// also runs under the copy counter, when there is one.
fn run_arm(arm: &str, stream: &std::path::Path, frames: u32, count: bool) -> Result<Value, String> {
    let mut cmd = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    cmd.arg("--decoder-arm")
        .arg(arm)
        .arg(stream)
        .arg(frames.to_string());
    let counter = if count {
        cmd.arg("--count-copies");
        memcpy_counter().map(|so| {
            let out = std::env::temp_dir().join(format!(
                "vmem-memcpy-{}-{}.txt",
                std::process::id(),
                arm.replace('/', "-")
            ));
            let _ = std::fs::remove_file(&out);
            cmd.env("LD_PRELOAD", so).env("VMEM_MEMCPY_COUNT", &out);
            out
        })
    } else {
        None
    };
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id();
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("DECODER-ARM "))
        .ok_or_else(|| format!("{arm}: child exited with {} and no figures", out.status))?;
    let mut v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if let Some(path) = counter {
        if let Some(m) = read_memcpy(&path, pid) {
            v["memcpy"] = json!({
                "bytes": m.bytes,
                "large_calls": m.large_calls,
                "large_bytes": m.large_bytes,
                "line_bytes": m.line_bytes,
            });
        }
        let _ = std::fs::remove_file(&path);
    }
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
    /// The copy counter's figures for the whole counting run; None without the counter.
    pub memcpy: Option<Memcpy>,
    /// glupload's uploaders and how many buffers each took.
    pub uploaders: Vec<(String, u64)>,
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
        memcpy: counted["memcpy"].is_object().then(|| {
            let m = |k: &str| counted["memcpy"][k].as_u64().unwrap_or(0);
            Memcpy {
                bytes: m("bytes"),
                large_calls: m("large_calls"),
                large_bytes: m("large_bytes"),
                line_bytes: m("line_bytes"),
            }
        }),
        uploaders: counted["uploaders"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Encodes the stream once, then measures every arm of `set`.
pub fn measure(set: &Set, frames: u32, reps: usize) -> Vec<Row> {
    let stream = std::env::temp_dir().join(format!("vmem-bench-{}.h264", std::process::id()));
    encode(&stream, frames);
    let rows = set
        .cases
        .iter()
        .enumerate()
        .map(|(i, case)| Row {
            case: case.name,
            arms: case
                .arms
                .iter()
                .map(|&(variant, label, _)| {
                    let arm = format!("{}/{i}/{variant}", set.id);
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
            "memcpy_per_frame": a.memcpy.map(|m| {
                let n = a.frames_seen.max(1) as f64;
                json!({
                    "bytes": m.bytes as f64 / n,
                    "large_bytes": m.large_bytes as f64 / n,
                    "large_calls": m.large_calls as f64 / n,
                    "line_bytes": m.line_bytes as f64 / n,
                })
            }),
            "uploaders": a.uploaders.iter().cloned().collect::<BTreeMap<_, _>>(),
        }),
    }
}

/// Section 5 into the results: a table per arm, the ratios within this run, and the notes
/// that say how each figure was obtained.
pub fn section(
    set: &Set,
    md: &mut String,
    csv: &mut String,
    json_out: &mut String,
    frames: u32,
    reps: usize,
) {
    use std::fmt::Write as _;
    let rows = measure(set, frames, reps);
    let _ = write!(
        md,
        "\n### {}: avdec_h264, {WIDTH}x{HEIGHT}, {frames} frames\n\n\
         | pipeline | path | CPU per frame (ms) | bytes copied per frame | of which frame copies / memory copies | memcpy per frame: all / in calls >= 64 KiB / in calls of 512 B-64 KiB | peak RSS (MiB) | dma-bufs alive, max (MiB) | vmemexport copies / exported |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        set.title
    );
    let mut json_rows = Vec::new();
    for row in &rows {
        for (variant, label, arm) in &row.arms {
            json_rows.push(arm_json(row.case, variant, arm));
            match arm {
                Err(e) => {
                    let _ = writeln!(md, "| {} | {label} | failed: {e} | | | | | | |", row.case);
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
                    let memcpy = a.memcpy.map_or("not counted".to_string(), |m| {
                        let n = a.frames_seen.max(1) as f64;
                        format!(
                            "{:.2} / {:.2} / {:.2} MiB",
                            mib(m.bytes as f64 / n),
                            mib(m.large_bytes as f64 / n),
                            mib(m.line_bytes as f64 / n)
                        )
                    });
                    let _ = writeln!(
                        md,
                        "| {} | {label} | {:.1} ({:.1}..{:.1}) | {:.2} MiB | {:.2} / {:.2} MiB | {memcpy} | {:.0} | {dmabufs} | {} |",
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
                        (
                            "memcpy_bytes_per_frame",
                            a.memcpy
                                .map_or(f64::NAN, |m| m.bytes as f64 / a.frames_seen.max(1) as f64),
                        ),
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
                            "decoder-{},{},{variant},{metric},{v:.1},{lo},{hi}",
                            set.id, row.case
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
    let uploads: Vec<String> = rows
        .iter()
        .flat_map(|row| row.arms.iter().map(move |arm| (row.case, arm)))
        .filter_map(|(case, (_, label, arm))| {
            let a = arm.as_ref().ok().filter(|a| !a.uploaders.is_empty())?;
            let list = a
                .uploaders
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect::<Vec<_>>()
                .join(", ");
            Some(format!("- {case}, {label}: {list}\n"))
        })
        .collect();
    if !uploads.is_empty() {
        md.push_str("\nglupload's uploaders (buffers each took, counting run):\n\n");
        md.extend(uploads);
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
         input are left out. memcpy: the same run under an LD_PRELOAD counter \
         (bench/memcpy-count) of every memcpy, memmove and mempcpy call the process makes, \
         whoever calls it (GStreamer, FFmpeg, Mesa): all bytes, the bytes in calls of 64 KiB \
         or more (a plane at once), and in calls of 512 bytes to 64 KiB (row by row frame \
         copies, 1,280 bytes a row here), over the frames; copies made by a library's own \
         loops (orc, SIMD) are not seen. Peak RSS: VmHWM, reset (clear_refs 5) just before the run; it counts \
         the pages the process maps: its heap, the memfd pages behind our dma-bufs, kmssink's mapped \
         dumb buffers and the V4L2 MMAP buffers the copy path writes into. dma-bufs alive: the \
         most at once, sampled every 10 frames in the counting run: all dma-bufs of the guest from \
         /sys/kernel/debug/dma_buf/bufinfo (nothing else runs there), and in brackets those the \
         process holds fds of (/proc/self/fdinfo, each buffer once). They are the part of that \
         memory shared with devices, already inside the RSS when mapped: do not add them. \
         The consumers' own buffers count where they export them: kmssink's dumb buffers and the \
         V4L2 MMAP buffers are dma-bufs too. {}\n",
        set.note
    );
    let section = json!({"set": set.id, "frames": frames, "reps": reps, "width": WIDTH, "height": HEIGHT, "arms": json_rows});
    let _ = writeln!(json_out, "  \"decoder\": {section}");
}
