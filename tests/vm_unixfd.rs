// SPDX-License-Identifier: MPL-2.0
//! Upstream's unixfdsink/unixfdsrc (gst-plugins-bad, GStreamer 1.24+) carrying vmemexport's
//! dma-bufs from one process to another, and what a stalled client does to each way of sharing
//! frames: unixfdsink against dmabufsink (VM testbed, every userland; on 1.22, which has no
//! unixfd elements, their absence is what is checked).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;

const BGRX_VGA: &str = "video/x-raw,format=BGRx,width=640,height=480";
/// The plugin gst-launch-1.0 loads in the producer process (`cargo build --release`).
const PLUGIN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release");

fn socket_path(name: &str) -> String {
    format!("/tmp/vmem-unixfd-{name}-{}.sock", std::process::id())
}

/// Whether this GStreamer has unixfdsink and unixfdsrc: checked, not assumed, both ways. They
/// came in 1.24 (gst-plugins-bad's unixfd plugin): 1.22 must not have them, so that the tests
/// that stop here on 1.22 stop for that reason only, and every later userland must have them.
fn unixfd_elements() -> bool {
    let sink = gst::ElementFactory::find("unixfdsink").is_some();
    let src = gst::ElementFactory::find("unixfdsrc").is_some();
    let (major, minor) = gst_version();
    if (major, minor) < (1, 24) {
        assert!(
            !sink && !src,
            "GStreamer {major}.{minor} has unixfdsink {sink} / unixfdsrc {src}: they came in \
             1.24; run the unixfd tests here too"
        );
        false
    } else {
        assert!(
            sink && src,
            "GStreamer {major}.{minor} lacks unixfdsink ({sink}) or unixfdsrc ({src}): \
             gst-plugins-bad's unixfd plugin is part of the testbed from 1.24 on"
        );
        true
    }
}

/// The inodes of the dma-bufs process `pid` has open (fds whose link is `/dmabuf:...`), and
/// how many fds it has in all.
fn dmabuf_inodes(pid: u32) -> (BTreeSet<u64>, usize) {
    let mut inodes = BTreeSet::new();
    let mut fds = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let path = entry.unwrap().path();
        fds += 1;
        let Ok(link) = std::fs::read_link(&path) else {
            continue;
        };
        if link.to_string_lossy().starts_with("/dmabuf:")
            && let Ok(meta) = std::fs::metadata(&path)
        {
            inodes.insert(meta.ino());
        }
    }
    (inodes, fds)
}

/// The counters of vmemexport's "stats at stop" debug line (its `Stats`, Debug-formatted)
/// in a GST_DEBUG=vmemexport:5 log.
fn vmemexport_stats_at_stop(log: &str) -> std::collections::BTreeMap<String, u64> {
    let line = log
        .lines()
        .rfind(|l| l.contains("stats at stop: Stats {"))
        .unwrap_or_else(|| panic!("no 'stats at stop' from vmemexport in:\n{log}"));
    let body = &line[line.find("Stats {").unwrap() + "Stats {".len()..];
    body.split(',')
        .filter_map(|field| {
            let (name, value) = field.split_once(':')?;
            Some((name.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// A child process, killed if the test ends before it.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A buffer reaching kmssink: its memories, how many are dma-buf memory, their exporters.
type Arrival = (usize, usize, Vec<Option<String>>);

/// Frames per run of the main test.
const FRAMES: usize = 30;

/// Process A (gst-launch-1.0): `videotestsrc ! vmemexport ! unixfdsink`; process B (this
/// one): `unixfdsrc ! kmssink`. Every frame reaches kmssink as a udmabuf dma-buf, the CRTC
/// scans out one of them, that dma-buf is open in process A (its own pages, not a copy), kmssink
/// imported and never copied, and A's vmemexport made no copy.
#[test]
#[ignore = "needs the VM testbed"]
fn unixfdsrc_into_kmssink_scans_out_the_producers_dmabufs() {
    init();
    // On 1.22 there is nothing to share frames with: what is checked there is that unixfdsink
    // and unixfdsrc are absent (a failing-able check, see unixfd_elements), not skipped.
    if !unixfd_elements() {
        return;
    }
    let path = socket_path("scanout");
    let _ = std::fs::remove_file(&path);
    // Process A: vmemexport's pool into unixfdsink, in gst-launch-1.0 with this build of
    // the plugin. It plays until it is interrupted (-e: EOS first, so vmemexport stops and
    // logs its stats); frames no client takes are dropped by unixfdsink.
    let log_path = format!("/tmp/vmem-unixfd-producer-{}.log", std::process::id());
    let producer_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let producer = Reaped(
        Command::new("gst-launch-1.0")
            .args(["-e", "videotestsrc", "is-live=true", "pattern=smpte", "!"])
            .args(BGRX_VGA.split(' '))
            .args(["!", "vmemexport", "!", "unixfdsink"])
            .arg(format!("socket-path={path}"))
            .env("GST_PLUGIN_PATH", PLUGIN_DIR)
            .env("GST_DEBUG", "vmemexport:5")
            .env("GST_DEBUG_NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("gst-launch-1.0"),
    );
    let pid_a = producer.0.id();
    // Listening once a connection is taken (unixfdsink binds, then listens).
    let deadline = Instant::now() + secs(120);
    while std::os::unix::net::UnixStream::connect(&path).is_err() {
        assert!(
            Instant::now() < deadline,
            "the producer does not listen on {path}:\n{}",
            producer_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Process B, this one: the frames from the socket straight into kmssink.
    let log = LogCapture::new(
        &["kmssink", "GST_PERFORMANCE", "unixfdsrc"],
        gst::DebugLevel::Log,
    );
    let pipeline = launch(&format!(
        "unixfdsrc socket-path={path} num-buffers={FRAMES} ! kmssink name=k driver-name=vkms \
         sync=false"
    ));
    let proof = ScanoutProof::install(&pipeline, "k");
    let arrivals: Arc<Mutex<Vec<Arrival>>> = Default::default();
    let store = arrivals.clone();
    element(&pipeline, "k")
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let buffer = info.buffer().unwrap();
            let fds: Vec<_> = buffer
                .iter_memories()
                .map(gstvmem::memory::dmabuf_fd)
                .collect();
            let exporters = fds
                .iter()
                .map(|fd| fd.and_then(gstvmem::kernel::dmabuf_exporter))
                .collect();
            let n_dmabuf = fds.iter().filter(|fd| fd.is_some()).count();
            store
                .lock()
                .unwrap()
                .push((buffer.n_memory(), n_dmabuf, exporters));
            gst::PadProbeReturn::Ok
        });
    let result = run_for(&pipeline, secs(120));
    assert!(
        result.error.is_none(),
        "consumer: {:?}\n{:#?}\nproducer:\n{}",
        result.error,
        log.matching("unixfdsrc", ""),
        producer_log()
    );

    // A is still running, its pipeline still holding its pool: its own dma-bufs now.
    let (a_inodes, _) = dmabuf_inodes(pid_a);
    let mut producer = producer;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid_a as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = producer.0.wait().unwrap();
    let text = producer_log();
    eprintln!("producer's dma-buf inodes while it ran: {a_inodes:?}");
    assert!(status.success(), "producer: {status}\n{text}");

    // Every frame reached kmssink as one dma-buf, exported by udmabuf in process A.
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), FRAMES, "frames into kmssink");
    for (i, (n_mem, n_dmabuf, exporters)) in arrivals.iter().enumerate() {
        assert!(
            *n_mem == 1 && *n_dmabuf == 1,
            "frame {i}: {n_mem} memories, {n_dmabuf} of them dma-buf"
        );
        assert_eq!(exporters[0].as_deref(), Some("udmabuf"), "frame {i}");
    }
    drop(arrivals);
    // The CRTC scans out one of the dma-bufs kmssink received, and that dma-buf is process
    // A's own: an inode among A's open fds, not a copy made in B.
    proof.assert_on_screen("unixfdsrc ! kmssink");
    let on_screen = proof.inode_on_screen("unixfdsrc ! kmssink");
    assert!(
        a_inodes.contains(&on_screen),
        "the scanned-out dma-buf (inode {on_screen}) is not among the producer's {a_inodes:?}"
    );
    // kmssink imported (PRIME + AddFB2), never copied; it shows the first frame twice
    // (preroll, then playback). unixfdsrc wraps every received fd in a new memory, so kmssink's
    // framebuffer cache (one per memory) seldom hits: it makes about one per frame.
    if let Some((new, reused)) = kmssink_imports(&log) {
        eprintln!("kmssink: {new} framebuffers made, {reused} reused");
        assert!(new >= 1);
        assert_eq!(new + reused, FRAMES + 1, "one import line per frame shown");
    }
    assert_eq!(log.count("GST_PERFORMANCE", "frame copy"), 0);
    // Process A's vmemexport made no copy: every frame left as its pool's own pages.
    let stats = vmemexport_stats_at_stop(&text);
    eprintln!("producer (pid {pid_a}) vmemexport at stop: {stats:?}");
    let get = |f: &str| {
        *stats
            .get(f)
            .unwrap_or_else(|| panic!("no {f} in the producer's stats: {stats:?}"))
    };
    assert!(get("frames") >= FRAMES as u64, "{stats:?}");
    assert_eq!(get("copies"), 0, "{stats:?}");
    assert_eq!(get("bytes_copied"), 0, "{stats:?}");
    assert_eq!(get("passthrough"), 0, "{stats:?}");
    assert!(get("exported") >= 1, "{stats:?}");
    assert_eq!(
        get("exported") + get("export_cache_hits"),
        get("frames"),
        "{stats:?}"
    );
    let _ = std::fs::remove_file(&log_path);
}

// ---- A stalled client: unixfdsink against dmabufsink ----

/// One second's look at the producer (this process).
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    /// Frames that reached the sink so far.
    frames: u64,
    /// Distinct dma-bufs open in this process (its pool's exports; a client here holds
    /// fds of the same dma-bufs).
    dmabufs: usize,
    fds: usize,
    rss_kib: u64,
    shmem_kib: u64,
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn sample(start: Instant, frames: &AtomicU64) -> Sample {
    let (inodes, fds) = dmabuf_inodes(std::process::id());
    Sample {
        at: start.elapsed(),
        frames: frames.load(Ordering::SeqCst),
        dmabufs: inodes.len(),
        fds,
        rss_kib: status_kib("VmRSS:"),
        shmem_kib: status_kib("RssShmem:"),
    }
}

/// The live producer of the stall runs into `sink`: 640x480 BGRx at 30 fps through vmemexport.
/// Counts the frames that reach the sink.
fn live_producer(sink: &str) -> (gst::Pipeline, Arc<AtomicU64>) {
    let pipeline = launch(&format!(
        "videotestsrc is-live=true pattern=smpte ! {BGRX_VGA},framerate=30/1 ! \
         vmemexport name=v ! {sink}"
    ));
    let frames = Arc::new(AtomicU64::new(0));
    let count = frames.clone();
    element(&pipeline, "s")
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            count.fetch_add(1, Ordering::SeqCst);
            gst::PadProbeReturn::Ok
        });
    (pipeline, frames)
}

/// Seconds each stall run lasts.
const STALL_SECS: u64 = 20;

fn sample_for(frames: &AtomicU64) -> Vec<Sample> {
    let start = Instant::now();
    let mut samples = vec![sample(start, frames)];
    for s in 1..=STALL_SECS {
        std::thread::sleep(Duration::from_secs(s).saturating_sub(start.elapsed()));
        samples.push(sample(start, frames));
    }
    samples
}

fn print_samples(what: &str, samples: &[Sample], stats: &str) {
    eprintln!("== {what}");
    eprintln!("t_s frames fps dmabufs fds rss_kib rss_shmem_kib");
    let mut prev: Option<&Sample> = None;
    for s in samples {
        let fps = prev.map_or(0.0, |p| {
            (s.frames - p.frames) as f64 / (s.at - p.at).as_secs_f64()
        });
        eprintln!(
            "{:.1} {} {:.1} {} {} {} {}",
            s.at.as_secs_f64(),
            s.frames,
            fps,
            s.dmabufs,
            s.fds,
            s.rss_kib,
            s.shmem_kib
        );
        prev = Some(s);
    }
    eprintln!("{stats}");
}

/// Sets `pipeline` to NULL in another thread: whether that returned within `wait`, and the
/// receiver that says when it does.
fn stop_in_background(pipeline: &gst::Pipeline, wait: Duration) -> (bool, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let p = pipeline.clone();
    std::thread::spawn(move || {
        p.set_state(gst::State::Null).unwrap();
        let _ = tx.send(());
    });
    (rx.recv_timeout(wait).is_ok(), rx)
}

/// What a stalled unixfdsrc client does to a live producer: `client` connects (it is started
/// once the sink listens) and never reads or releases. Returns the samples, vmemexport's
/// stats, whether the producer blocked (no frame for 5 s) and NULL did not return while the
/// client stalled, and the seconds NULL took after the client went.
fn unixfdsink_with_stalled_client(
    what: &str,
    client: impl FnOnce(&str) -> Box<dyn FnOnce()>,
) -> (Vec<Sample>, gst::Structure, bool, f64) {
    let path = socket_path("stall");
    let _ = std::fs::remove_file(&path);
    // wait-for-connection: no frame goes anywhere before the client is there.
    let (pipeline, frames) = live_producer(&format!(
        "unixfdsink name=s socket-path={path} wait-for-connection=true"
    ));
    // Taken now: while the client stalls, unixfdsink holds its object lock (it sends under
    // it), and looking an element up by name locks every child of the bin in turn.
    let v = element(&pipeline, "v");
    pipeline.set_state(gst::State::Playing).unwrap();
    wait_for_socket(&path);
    let disconnect = client(&path);
    let mut samples = sample_for(&frames);
    // Blocked, not just slow: no frame for 5 s in a row (a live 30 fps source), waited for
    // as long as it takes a loaded machine to fill the socket.
    let start = Instant::now();
    let deadline = start + secs(120);
    let mut still_since = (frames.load(Ordering::SeqCst), Instant::now());
    let blocked = loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = frames.load(Ordering::SeqCst);
        if now != still_since.0 {
            still_since = (now, Instant::now());
        } else if still_since.1.elapsed() >= secs(5) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    let mut last = sample(start, &frames);
    last.at += samples.last().unwrap().at;
    samples.push(last);
    let stats = v.property::<gst::Structure>("stats");
    print_samples(what, &samples, &stats.to_string());
    eprintln!("{what}: blocked (no frame for 5 s): {blocked}");
    let (stopped, rx) = stop_in_background(&pipeline, secs(5));
    let gone = Instant::now();
    disconnect();
    rx.recv_timeout(secs(60))
        .expect("NULL returns once the client is gone");
    let after = gone.elapsed().as_secs_f64();
    eprintln!(
        "{what}: NULL while the client stalls returned within 5 s: {stopped}; {after:.2} s \
         after the client went"
    );
    let _ = std::fs::remove_file(&path);
    (samples, stats, blocked && !stopped, after)
}

fn assert_unixfdsink_stalled(
    what: &str,
    samples: &[Sample],
    stats: &gst::Structure,
    blocked_and_unstoppable: bool,
) {
    let last = samples.last().unwrap();
    let get = |f: &str| stats.get::<u64>(f).unwrap();
    assert_eq!(get("copies"), 0, "{what}: {stats}");
    // No frame ever came back to the pool: each one sent is a dma-buf of its own, still held.
    assert_eq!(get("export-cache-hits"), 0, "{what}: {stats}");
    assert_eq!(get("exported"), get("frames"), "{what}: {stats}");
    assert!(
        last.dmabufs as u64 >= last.frames,
        "{what}: every frame sent is still a dma-buf alive here: {last:?}"
    );
    // Until the socket is full, then the producer blocks in unixfdsink's send, and cannot
    // be stopped while the client stays.
    assert!(
        blocked_and_unstoppable,
        "{what}: the producer went on, or stopped, while the client stalled"
    );
}

/// A stalled client of each: unixfdsink blocks its producer and keeps every frame it sent
/// (a dma-buf each) until the client goes, and cannot even be stopped until then; dmabufsink
/// times the client out and the producer keeps its rate with a bounded pool. The figures
/// (stderr) are kept in results/unixfd/compare.md.
#[test]
#[ignore = "needs the VM testbed"]
fn a_stalled_client_blocks_unixfdsink_not_dmabufsink() {
    init();

    // dmabufsink: a client that receives frames and never releases them, reconnecting
    // whenever it is cut off (so it stalls for the whole run).
    let path = socket_path("stall-dmabufsink");
    let hold_ms = 2000;
    let (pipeline, frames) = live_producer(&format!(
        "dmabufsink name=s socket-path={path} max-pending=4 hold-timeout={hold_ms}"
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    wait_for_socket(&path);
    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, connections, path) = (stop.clone(), connections.clone(), path.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(client) = gstvmem::dmabufsink::Client::connect(&path) else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let mut held = Vec::new();
                while let Ok(Some(frame)) = client.recv() {
                    held.push(frame);
                }
            }
        })
    };
    let samples = sample_for(&frames);
    let v_stats = element(&pipeline, "v").property::<gst::Structure>("stats");
    let s_stats = element(&pipeline, "s").property::<gst::Structure>("stats");
    print_samples(
        &format!("dmabufsink max-pending=4 hold-timeout={hold_ms}, a client that never releases"),
        &samples,
        &format!("{v_stats}\n{s_stats}"),
    );
    stop.store(true, Ordering::SeqCst);
    let (stopped, _) = stop_in_background(&pipeline, secs(20));
    client.join().unwrap();
    eprintln!(
        "dmabufsink: NULL returned within 20 s: {stopped}; the client connected {} times",
        connections.load(Ordering::SeqCst)
    );
    let get = |s: &gst::Structure, f: &str| s.get::<u64>(f).unwrap();
    assert!(stopped, "dmabufsink stops at once");
    assert!(
        get(&s_stats, "clients-timed-out") >= 2,
        "the stalled client was timed out, again and again: {s_stats}"
    );
    assert_eq!(get(&v_stats, "copies"), 0, "{v_stats}");
    // The pool stays small: frames come back (cache hits) and the dma-bufs alive stay bounded
    // by what a client may hold plus the pipeline's own.
    assert!(get(&v_stats, "export-cache-hits") > 0, "{v_stats}");
    let most = samples.iter().map(|s| s.dmabufs).max().unwrap();
    assert!(most <= 16, "dma-bufs alive stay bounded: {most}");
    // The producer kept going: the last five seconds added frames.
    let last = samples.last().unwrap();
    assert!(
        last.frames > samples[samples.len() - 6].frames,
        "the producer runs on beside a stalled client: {samples:?}"
    );

    // 1.22 has no unixfdsink: checked there, the dmabufsink half above still runs.
    if !unixfd_elements() {
        return;
    }
    // unixfdsink, a client that connects and never reads.
    let (samples, stats, blocked, _) =
        unixfdsink_with_stalled_client("unixfdsink, a client that never reads", |path| {
            let stream = std::os::unix::net::UnixStream::connect(path).unwrap();
            Box::new(move || drop(stream))
        });
    assert_unixfdsink_stalled("a client that never reads", &samples, &stats, blocked);

    // unixfdsink, a real unixfdsrc whose pipeline stops consuming: identity sleeps on its first
    // frame, the queue before it fills, and unixfdsrc stops reading the socket.
    let (samples, stats, blocked, _) = unixfdsink_with_stalled_client(
        "unixfdsink, gst-launch-1.0 unixfdsrc ! queue ! identity sleep-time=4000000000 ! fakesink",
        |path| {
            let child = Command::new("gst-launch-1.0")
                .args([
                    "-q",
                    "unixfdsrc",
                    &format!("socket-path={path}"),
                    "!",
                    "queue",
                    "!",
                    "identity",
                    "sleep-time=4000000000",
                    "!",
                    "fakesink",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gst-launch-1.0");
            let child = Reaped(child);
            Box::new(move || drop(child))
        },
    );
    assert_unixfdsink_stalled("a stalled unixfdsrc", &samples, &stats, blocked);
}
