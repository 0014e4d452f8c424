// SPDX-License-Identifier: MPL-2.0
//! Soak and fault run, inside the VM testbed (`make soak`; the VM suite runs a shorter one).
//!
//!     soak [--frames N] [--cycles N] [--report FILE]
//!
//! 1. Streams: N small frames (64x48 BGRx) through `vmemexport ! dmabufsink`, three ways:
//!    memfd + udmabuf with a PRIME import into vkms and a client process checking every
//!    frame's pixels over the socket; heapalloc's system heap into vgem; the CMA heap.
//!    Open fds and RSS after warm-up, at the end, and after the pipeline is gone.
//! 2. Cycles: N NULL->PLAYING->NULL cycles of one pipeline; fds and RSS before and after.
//! 3. Bad input: each fault tried, with its outcome (an element error that says what to do,
//!    or a counted copy with every pixel intact).
//! 4. Leaks: everything runs under GST_TRACERS=leaks; after gst::deinit() the tracer must
//!    list no object alive.
//!
//! One line per check; exits non-zero if any check fails.

use std::fmt::Write as _;
use std::io::BufRead;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_video::prelude::*;

mod driver;
use driver::{appsrc, launch};

const CAPS: &str = "video/x-raw,format=BGRx,width=64,height=48,framerate=30/1";
/// Growth of the resident set tolerated between warm-up and the end of a run.
const RSS_SLACK_KIB: u64 = 2 * 1024;

#[derive(Clone, Copy)]
struct Usage {
    fds: usize,
    rss_kib: u64,
}

fn usage() -> Usage {
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0);
    Usage {
        // Minus the fd read_dir itself holds.
        fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() - 1),
        rss_kib,
    }
}

/// The index of the frame at `pts` in a 30 fps stream from 0.
fn frame_index(pts: u64) -> usize {
    ((u128::from(pts) * 30 + 500_000_000) / 1_000_000_000) as usize
}

fn pool_text(exported: usize) -> String {
    if exported == 0 {
        String::new()
    } else {
        format!(", {exported} pool buffers")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

struct Report {
    lines: Vec<String>,
    failed: usize,
}

impl Report {
    fn check(&mut self, ok: bool, what: String) {
        let line = format!("{} {what}", if ok { "ok  " } else { "FAIL" });
        println!("{line}");
        self.lines.push(line);
        if !ok {
            self.failed += 1;
        }
    }
}

/// What a run ended with: the first error, and every warning.
#[derive(Default)]
struct Ended {
    error: Option<String>,
    warnings: Vec<String>,
}

/// Plays to EOS or an error (then NULL), calling `tick` every 100 ms while it plays.
fn play(pipeline: &gst::Pipeline, mut tick: impl FnMut()) -> Ended {
    let mut ended = Ended::default();
    let bus = pipeline.bus().unwrap();
    let _ = pipeline.set_state(gst::State::Playing);
    let deadline = Instant::now() + Duration::from_secs(3600);
    while Instant::now() < deadline {
        tick();
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        let text = |e: &gst::glib::Error, d: Option<gst::glib::GString>| {
            format!("{e} -- {}", d.map(|d| d.to_string()).unwrap_or_default())
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                ended.error = Some(text(&e.error(), e.debug()));
                break;
            }
            gst::MessageView::Warning(w) => ended.warnings.push(text(&w.error(), w.debug())),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    ended
}

fn stat(pipeline: &gst::Pipeline, element: &str, field: &str) -> u64 {
    let s = pipeline
        .by_name(element)
        .unwrap()
        .property::<gst::Structure>("stats");
    s.get::<u64>(field).unwrap_or(0)
}

/// The checksum dmabufsink's clients compute (FNV-1a over the frame's bytes).
fn checksum(bytes: &[u8]) -> u64 {
    gstvmem::dmabufsink::protocol::checksum(bytes)
}

/// N frames through one `vmemexport ! dmabufsink`; with `client`, a client process reads every
/// frame over the socket and its checksums are compared with the producer's.
fn stream(report: &mut Report, label: &str, opts: &str, sink: &str, frames: u64, client: bool) {
    let sock = format!("/tmp/vmem-soak-{}.sock", std::process::id());
    let socket = if client {
        format!(" socket-path={sock} max-pending=2")
    } else {
        String::new()
    };
    let before = usage();
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! {CAPS} ! vmemexport name=v {opts} ! \
         dmabufsink name=s sync=false {sink}{socket}"
    ));
    // The producer's checksum of each frame, read from its system-memory mapping, by frame
    // index. Allocated and touched now, so the soak's own bookkeeping does not grow its RSS.
    let produced: Arc<Vec<AtomicU64>> = Arc::new(
        (0..if client { frames } else { 0 })
            .map(|_| AtomicU64::new(u64::MAX))
            .collect(),
    );
    let count = Arc::new(AtomicU64::new(0));
    let (store, counter) = (produced.clone(), count.clone());
    pipeline
        .by_name("v")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let buf = info.buffer().unwrap();
            if client {
                let map = buf.map_readable().unwrap();
                let pts = buf.pts().map_or(u64::MAX, |t| t.nseconds());
                if let Some(slot) = store.get(frame_index(pts)) {
                    slot.store(checksum(&map), Ordering::Relaxed);
                }
            }
            counter.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    let mut child = None;
    if client {
        pipeline.set_state(gst::State::Paused).unwrap();
        let _ = pipeline.state(gst::ClockTime::from_seconds(30));
        let exe = std::env::current_exe().unwrap();
        // The plugin's dmabuf_client example, built in the same profile's examples/.
        let mut c = Command::new(exe.with_file_name("examples").join("dmabuf_client"))
            .arg(&sock)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the plugin's dmabuf_client example (cargo build --examples)");
        // Wait until it is connected, so it sees every frame.
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert!(first.starts_with("connected"), "client: {first}");
        // Compares as the client reports: a frame is checksummed by the producer before it
        // reaches the sink, so its checksum is there when the client's line arrives.
        let produced = produced.clone();
        let reader = std::thread::spawn(move || {
            let (mut got, mut bad) = (0u64, 0u64);
            for line in out.lines().map_while(Result::ok) {
                // frame <n> pts <ns> <w>x<h> <fourcc> fds <n> checksum <hex>
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.first() == Some(&"frame") && f.len() == 10 {
                    let pts: u64 = f[3].parse().unwrap();
                    let sum = u64::from_str_radix(f[9], 16).unwrap();
                    got += 1;
                    let expected = produced.get(frame_index(pts));
                    if expected.map(|e| e.load(Ordering::Relaxed)) != Some(sum) {
                        bad += 1;
                    }
                }
            }
            (got, bad)
        });
        child = Some((c, reader));
    }
    let warm_at = (frames / 10).max(50);
    let started = Instant::now();
    // Pool buffers so far: each holds fds (memfd, its dma-buf, the sink's import), and a
    // lagging client may make the pool grow, up to a bound set by max-pending.
    let pool = || stat(&pipeline, "v", "exported") as usize;
    let mut warm = None;
    let mut last = (before, 0);
    let ended = play(&pipeline, || {
        let n = count.load(Ordering::Relaxed);
        if warm.is_none() && n >= warm_at {
            warm = Some((usage(), pool()));
        }
        if n < frames {
            last = (usage(), pool());
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let (end, end_pool) = last;
    let (copies, handled, sent, dropped) = (
        stat(&pipeline, "v", "copies"),
        stat(&pipeline, "v", "frames"),
        stat(&pipeline, "s", "frames-sent"),
        stat(&pipeline, "s", "frames-dropped"),
    );
    let imported = stat(&pipeline, "s", "frames");
    drop(pipeline);
    let after = usage();
    let (warm, warm_pool) = warm.unwrap_or(last);
    // fds other than the pool buffers' must not change after warm-up.
    let per_buffer = 3;
    let mut ok = ended.error.is_none()
        && imported == frames
        && handled == frames
        && copies == 0
        && end.fds - per_buffer * end_pool == warm.fds - per_buffer * warm_pool
        && after.fds == before.fds
        && end.rss_kib.saturating_sub(warm.rss_kib) < RSS_SLACK_KIB;
    let mut client_text = String::new();
    if let Some((mut c, reader)) = child {
        let status = c.wait().unwrap();
        let (got, bad) = reader.join().unwrap();
        ok &= status.success() && got == sent && bad == 0 && sent + dropped == frames;
        client_text = format!(
            "; the client process read {got} frames ({dropped} skipped while it lagged), {bad} \
             with other pixels"
        );
    }
    report.check(
        ok,
        format!(
            "stream {label}: {imported}/{frames} frames in {secs:.1} s ({:.0} us/frame), {copies} \
             copies{client_text}; fds {} -> {} (warm{}) -> {} (end{}) -> {} (after); RSS {} \
             (warm) -> {} (end){}",
            secs * 1e6 / frames as f64,
            before.fds,
            warm.fds,
            pool_text(warm_pool),
            end.fds,
            pool_text(end_pool),
            after.fds,
            mib(warm.rss_kib),
            mib(end.rss_kib),
            ended
                .error
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        ),
    );
}

/// The same pipeline cycled NULL -> PLAYING -> NULL `cycles` times.
fn cycles(report: &mut Report, cycles: u64) {
    let sock = format!("/tmp/vmem-soak-cycles-{}.sock", std::process::id());
    let pipeline = launch(&format!(
        "videotestsrc num-buffers=3 ! {CAPS} ! vmemexport ! dmabufsink sync=false \
         drm-device=driver:vkms socket-path={sock}"
    ));
    let mut errors = 0;
    let mut cycle = || {
        if play(&pipeline, || {}).error.is_some() {
            errors += 1;
        }
    };
    for _ in 0..10 {
        cycle(); // warm-up: registry, caches, the allocator's first use
    }
    let warm = usage();
    let started = Instant::now();
    for _ in 0..cycles {
        cycle();
    }
    let end = usage();
    report.check(
        errors == 0
            && end.fds == warm.fds
            && end.rss_kib.saturating_sub(warm.rss_kib) < RSS_SLACK_KIB,
        format!(
            "cycles: {cycles} NULL->PLAYING->NULL in {:.1} s, {errors} errors; fds {} -> {}; \
             RSS {} -> {}",
            started.elapsed().as_secs_f64(),
            warm.fds,
            end.fds,
            mib(warm.rss_kib),
            mib(end.rss_kib)
        ),
    );
}

fn frame_sum(buffer: &gst::BufferRef, info: &gst_video::VideoInfo) -> u64 {
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info).unwrap();
    let mut sum = 0xcbf2_9ce4_8422_2325u64;
    for p in 0..info.n_planes() {
        let stride = frame.plane_stride()[p as usize] as usize;
        let data = frame.plane_data(p).unwrap();
        let row = info.comp_pstride(p as u8) as usize * info.comp_width(p as u8) as usize;
        for y in 0..info.comp_height(p as u8) as usize {
            sum = sum.rotate_left(5) ^ checksum(&data[y * stride..y * stride + row]);
        }
    }
    sum
}

/// Pushes five 64x48 BGRx frames built by `make` through `vmemexport ! appsink`: copies made,
/// and whether every frame arrived as dma-buf memory with the same pixels.
fn push_frames(make: impl Fn(u8, &gst_video::VideoInfo) -> gst::Buffer) -> (u64, bool) {
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Bgrx, 64, 48)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .unwrap();
    let pipeline =
        launch("appsrc name=src format=time ! vmemexport name=v ! appsink name=out sync=false");
    let src = appsrc(&pipeline, &info);
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    let out_info = info.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buf = sample.buffer().unwrap();
                let sum = gstvmem::memory::is_all_dmabuf(buf).then(|| frame_sum(buf, &out_info));
                store.lock().unwrap().push(sum);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    let mut expected = Vec::new();
    for i in 0..5u8 {
        let buf = make(i, &info);
        expected.push(Some(frame_sum(&buf, &info)));
        src.push_buffer(buf).unwrap();
    }
    src.end_of_stream().unwrap();
    let ended = play(&pipeline, || {});
    let copies = stat(&pipeline, "v", "copies");
    (
        copies,
        ended.error.is_none() && *got.lock().unwrap() == expected,
    )
}

/// How a gst-launch-1.0 run is made different from this process.
#[derive(Clone, Copy)]
enum Wrap {
    /// A shell prefix that execs its arguments (e.g. in another mount namespace).
    Shell(&'static str),
    /// Another user (and group of the same number).
    User(u32),
}

/// gst-launch-1.0 with this plugin, optionally wrapped: its exit status and everything it
/// printed.
fn gst_launch(wrap: Option<Wrap>, pipeline: &str) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let prefix = match wrap {
        Some(Wrap::Shell(p)) => p,
        _ => "",
    };
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("{prefix} gst-launch-1.0 {pipeline}")])
        .env("HOME", "/tmp")
        .env_remove("GST_TRACERS")
        .env_remove("GST_DEBUG_FILE")
        .env("GST_DEBUG", "*:1");
    if let Some(Wrap::User(uid)) = wrap {
        cmd.uid(uid).gid(uid).env(
            "GST_REGISTRY",
            format!("/tmp/vmem-soak-registry-{uid}-{}.bin", std::process::id()),
        );
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A gst-launch-1.0 run that must fail, with every one of `needles` in what it printed.
fn expect_error(
    report: &mut Report,
    what: &str,
    wrap: Option<Wrap>,
    pipeline: &str,
    needles: &[&str],
) {
    let (ok, text) = gst_launch(wrap, pipeline);
    report.check(
        !ok && needles.iter().all(|n| text.contains(n)),
        format!("bad input: {what} -> error: {}", error_line(&text)),
    );
}

/// The line of gst-launch's output naming the error.
fn error_line(text: &str) -> String {
    text.lines()
        .find(|l| l.starts_with("ERROR:"))
        .map(|l| l.split(": ").skip(2).collect::<Vec<_>>().join(": "))
        .unwrap_or_else(|| text.lines().last().unwrap_or("").to_string())
}

fn bad_inputs(report: &mut Report) {
    // Frames at arbitrary (not page-aligned) addresses in the application's memory.
    let (copies, intact) = push_frames(|i, info| {
        let bytes: Vec<u8> = (0..info.size()).map(|b| (b as u8) ^ i).collect();
        gst::Buffer::from_mut_slice(bytes)
    });
    report.check(
        copies == 5 && intact,
        format!("bad input: frames in unaligned application memory -> {copies}/5 copied, counted, pixels intact: {intact}"),
    );

    let (copies, intact) = push_frames(|i, info| {
        let (stride, offset) = (300usize, 100usize);
        let mut bytes = vec![0xeeu8; offset + stride * 48];
        for y in 0..48 {
            for x in 0..64 * 4 {
                bytes[offset + y * stride + x] = (x as u8) ^ (y as u8).wrapping_mul(i + 1);
            }
        }
        let mut buf = gst::Buffer::from_mut_slice(bytes);
        gst_video::VideoMeta::add_full(
            buf.get_mut().unwrap(),
            gst_video::VideoFrameFlags::empty(),
            info.format(),
            64,
            48,
            &[offset],
            &[stride as i32],
        )
        .unwrap();
        buf
    });
    report.check(
        copies == 5 && intact,
        format!("bad input: odd stride (300) and plane offset (100) -> {copies}/5 copied, counted, pixels intact: {intact}"),
    );

    let (copies, intact) = push_frames(|i, info| {
        let bytes: Vec<u8> = (0..info.size())
            .map(|b| (b as u8).wrapping_mul(i + 3))
            .collect();
        let mut buf = gst::Buffer::new();
        let b = buf.get_mut().unwrap();
        b.append_memory(gst::Memory::from_slice(bytes[..1001].to_vec()));
        b.append_memory(gst::Memory::from_slice(bytes[1001..].to_vec()));
        buf
    });
    report.check(
        copies == 5 && intact,
        format!("bad input: each frame split over two memories -> {copies}/5 copied, counted, pixels intact: {intact}"),
    );

    // 8K RGBA: 132 MB per frame, over udmabuf's 64 MiB size_limit_mb.
    let big = "videotestsrc num-buffers=2 ! video/x-raw,format=RGBA,width=7680,height=4320";
    let pipeline = launch(&format!("{big} ! vmemexport name=v ! fakesink name=f"));
    let sums: Arc<Mutex<Vec<(bool, u64)>>> = Default::default();
    for (name, dma) in [("v", false), ("f", true)] {
        let store = sums.clone();
        pipeline
            .by_name(name)
            .unwrap()
            .static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                let buf = info.buffer().unwrap();
                let caps = pad.current_caps().unwrap();
                let (vi, _) = gstvmem::formats::video_info_from_caps(&caps).unwrap();
                let ok = !dma || gstvmem::memory::is_all_dmabuf(buf);
                store.lock().unwrap().push((ok, frame_sum(buf, &vi)));
                gst::PadProbeReturn::Ok
            });
    }
    let ended = play(&pipeline, || {});
    let copies = stat(&pipeline, "v", "copies");
    let sums = sums.lock().unwrap().clone();
    let (input, output): (Vec<_>, Vec<_>) = sums.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let intact = sums.len() == 4
        && sums.iter().all(|(ok, _)| *ok)
        && input.iter().zip(&output).all(|(a, b)| a.1.1 == b.1.1);
    let warning = ended.warnings.first().cloned().unwrap_or_default();
    report.check(
        ended.error.is_none() && copies == 2 && intact && warning.contains("size_limit_mb"),
        format!(
            "bad input: 8K RGBA frames over udmabuf's size limit -> {copies}/2 copied into dma-heap \
             memory, pixels intact: {intact}; warning: {}{}",
            warning.split(" -- ").next().unwrap_or(""),
            ended.error.map(|e| format!("; error: {e}")).unwrap_or_default()
        ),
    );
    expect_error(
        report,
        "the same with copy-fallback=false",
        None,
        &format!("{big} ! vmemexport copy-fallback=false ! fakesink"),
        &["size_limit_mb"],
    );
    expect_error(
        report,
        "8K frames from the 128 MiB CMA heap",
        None,
        &format!("{big} ! vmemexport backing=heap heap=reserved ! fakesink"),
        &["reserved"],
    );

    // /dev/udmabuf missing: a mount namespace whose /dev has only null, zero, dri and dma_heap.
    let hide = Wrap::Shell(
        "unshare -m sh -c 'set -e; d=/tmp/vmem-soak-dev; mkdir -p $d; \
         mount --bind /dev $d; mount -t tmpfs none /dev; \
         for n in null zero urandom; do touch /dev/$n; mount --bind $d/$n /dev/$n; done; \
         for n in dri dma_heap; do mkdir /dev/$n; mount --rbind $d/$n /dev/$n; done; \
         exec \"$0\" \"$@\"'",
    );
    let small = format!("videotestsrc num-buffers=5 ! {CAPS}");
    expect_error(
        report,
        "no /dev/udmabuf, backing=memfd",
        Some(hide),
        &format!("{small} ! vmemexport backing=memfd ! fakesink"),
        &["/dev/udmabuf is missing"],
    );
    let (ok, text) = gst_launch(Some(hide), &format!("{small} ! vmemexport ! fakesink"));
    report.check(
        ok,
        format!(
            "bad input: no /dev/udmabuf, backing=auto -> {}",
            if ok {
                "runs on the dma-heap instead".to_string()
            } else {
                error_line(&text)
            }
        ),
    );
    // A user without access to the devices (root's, mode 0600 in the testbed).
    expect_error(
        report,
        "user nobody",
        Some(Wrap::User(65534)),
        &format!("{small} ! vmemexport ! fakesink"),
        &[
            "permission denied on /dev/udmabuf",
            "permission denied on /dev/dma_heap/",
        ],
    );

    overrunning_layout(report);
    fd_exhaustion(report);
    socket_clients(report);
}

/// A dma-buf frame whose VideoMeta claims more rows than its memory holds.
fn overrunning_layout(report: &mut Report) {
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Bgrx, 64, 48)
        .build()
        .unwrap();
    let pipeline = launch("appsrc name=src format=time ! dmabufsink name=s");
    let src = appsrc(&pipeline, &info);
    // The plugin's registered allocator (this program loads the plugin, it does not link it).
    let allocator = gst::Allocator::find(Some("dmaheap")).expect("the vmem plugin");
    let mut buf = gst::Buffer::new();
    {
        let b = buf.get_mut().unwrap();
        b.append_memory(allocator.alloc(info.size(), None).unwrap());
        // 48 rows of 1024 bytes from a 12288-byte dma-buf.
        gst_video::VideoMeta::add_full(
            b,
            gst_video::VideoFrameFlags::empty(),
            info.format(),
            64,
            48,
            &[0],
            &[1024],
        )
        .unwrap();
    }
    src.push_buffer(buf).unwrap();
    src.end_of_stream().unwrap();
    let ended = play(&pipeline, || {});
    let error = ended.error.unwrap_or_default();
    report.check(
        error.contains("do not fit in its memory"),
        format!(
            "bad input: a VideoMeta whose planes overrun the dma-buf -> error: {}",
            error.split(" -- ").next().unwrap_or("")
        ),
    );
}

/// Runs `vmemexport ! dmabufsink` under ever lower `ulimit -n`: each run either works or ends
/// in an error naming the cause; afterwards every fd is back and the next run works.
fn fd_exhaustion(report: &mut Report) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let desc = format!(
        "videotestsrc num-buffers=20 ! {CAPS} ! vmemexport ! dmabufsink sync=false drm-device=driver:vkms"
    );
    let before = usage();
    let saved = getrlimit(Resource::Nofile);
    let mut outcomes: Vec<String> = Vec::new();
    let mut all_clear = true;
    for spare in [0u64, 1, 2, 3, 4, 6, 8, 12, 16, 32] {
        let pipeline = launch(&desc);
        let highest = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let limit = highest + spare; // the read_dir fd's number is free again
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(limit),
                maximum: saved.maximum,
            },
        )
        .unwrap();
        let ended = play(&pipeline, || {});
        setrlimit(Resource::Nofile, saved).unwrap();
        drop(pipeline);
        let outcome = match &ended.error {
            None => "ran".to_string(),
            Some(e) => {
                all_clear &= e.contains("file descriptors") || e.contains("Too many open files");
                e.split(" -- ").next().unwrap_or(e).to_string()
            }
        };
        if !outcomes.contains(&outcome) {
            outcomes.push(outcome);
        }
    }
    let again = play(&launch(&desc), || {}).error.is_none();
    let after = usage();
    report.check(
        all_clear && again && outcomes.len() > 1 && after.fds == before.fds,
        format!(
            "bad input: ulimit -n lowered to 0..32 spare fds -> {}; afterwards fds {} -> {}, next run ok: {again}",
            outcomes.join(" | "),
            before.fds,
            after.fds
        ),
    );
}

/// A client that sends garbage and one that vanishes mid-stream, beside a well-behaved one.
fn socket_clients(report: &mut Report) {
    use gstvmem::dmabufsink::Client;
    let sock = format!("/tmp/vmem-soak-clients-{}.sock", std::process::id());
    let frames = 60u64;
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} is-live=true ! {CAPS} ! vmemexport ! \
         dmabufsink name=s socket-path={sock} drop-policy=wait"
    ));
    pipeline.set_state(gst::State::Paused).unwrap();
    let good = Client::connect(&sock).unwrap();
    let garbage = Client::connect(&sock).unwrap();
    let vanishing = Client::connect(&sock).unwrap();
    let reader = std::thread::spawn(move || {
        let mut n = 0u64;
        while let Ok(Some(f)) = good.recv() {
            if f.checksum().is_ok() && good.release(&f).is_ok() {
                n += 1;
            }
        }
        n
    });
    let mut sent_garbage = false;
    let mut vanishing = Some(vanishing);
    let ended = play(&pipeline, || {
        if !sent_garbage {
            let _ = rustix::net::send(
                garbage.socket(),
                b"VMEM\xff\xff\xff\xffnot a message",
                rustix::net::SendFlags::empty(),
            );
            sent_garbage = true;
        } else if let Some(v) = vanishing.take() {
            let _ = v.recv();
            drop(v); // gone while holding a frame
        }
    });
    let got = reader.join().unwrap();
    let errors = stat(&pipeline, "s", "protocol-errors");
    report.check(
        ended.error.is_none() && got == frames && errors == 1,
        format!(
            "bad input: garbage from one client, another gone mid-stream -> protocol-errors {errors}, \
             the good client read {got}/{frames} frames"
        ),
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let frames: u64 = arg("--frames").map_or(100_000, |v| v.parse().unwrap());
    let n_cycles: u64 = arg("--cycles").map_or(1_000, |v| v.parse().unwrap());
    let leaks_log = format!("/tmp/vmem-soak-leaks-{}.log", std::process::id());
    // SAFETY: no other thread exists yet.
    unsafe {
        std::env::set_var("GST_TRACERS", "leaks");
        std::env::set_var("GST_DEBUG", "*:2,leaks:7,GST_TRACER:7");
        std::env::set_var("GST_DEBUG_FILE", &leaks_log);
        std::env::set_var("GST_DEBUG_NO_COLOR", "1");
    }
    gst::init().unwrap();
    let mut report = Report {
        lines: Vec::new(),
        failed: 0,
    };
    let header = format!(
        "soak: GStreamer {}, kernel {}, {frames} frames per stream, {n_cycles} cycles",
        {
            let (major, minor, micro, _) = gst::version();
            format!("{major}.{minor}.{micro}")
        },
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!("{header}");
    let started = Instant::now();
    stream(
        &mut report,
        "memfd+udmabuf -> vkms import + client process",
        "",
        "drm-device=driver:vkms",
        frames,
        true,
    );
    stream(
        &mut report,
        "heapalloc (system heap) -> vgem import",
        "backing=heap heap=system",
        "drm-device=driver:vgem",
        frames,
        false,
    );
    stream(
        &mut report,
        "heapalloc (CMA heap) -> vkms import",
        "backing=heap heap=reserved",
        "drm-device=driver:vkms",
        frames,
        false,
    );
    cycles(&mut report, n_cycles);
    bad_inputs(&mut report);
    // SAFETY: every GStreamer object of this program is gone.
    unsafe { gst::deinit() };
    let log = std::fs::read_to_string(&leaks_log).unwrap_or_default();
    let _ = std::fs::remove_file(&leaks_log);
    let listed = log.lines().find_map(|l| {
        l.split("listed ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse::<u64>()
            .ok()
    });
    let alive: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("object-alive, type-name=(string)") && !l.contains("%s"))
        .take(10)
        .collect();
    report.check(
        listed == Some(0),
        format!(
            "leaks tracer: {} objects alive after gst::deinit(){}",
            listed.map_or("no report: ".to_string() + "?", |n| n.to_string()),
            alive
                .iter()
                .map(|l| format!("\n    {l}"))
                .collect::<String>()
        ),
    );
    let summary = format!(
        "soak: {} checks, {} failed, {:.0} s",
        report.lines.len(),
        report.failed,
        started.elapsed().as_secs_f64()
    );
    println!("{summary}");
    if let Some(path) = arg("--report") {
        let mut md = format!("{header}\n\n");
        for l in &report.lines {
            let _ = writeln!(md, "    {l}");
        }
        let _ = writeln!(md, "\n{summary}");
        std::fs::write(&path, md).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
