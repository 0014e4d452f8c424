// SPDX-License-Identifier: MPL-2.0
//! dmabufsink against the real kernel: PRIME import into vkms/vgem, frames shared with other
//! processes over its socket, and clients that misbehave (VM testbed, every userland).

mod common;

use std::os::fd::AsFd;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstvmem::dmabufsink::protocol;
use gstvmem::kernel;

const BGRX: &str = "video/x-raw,format=BGRx,width=320,height=240,framerate=30/1";
const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/debug/examples/dmabuf_client"
);

fn socket_path(name: &str) -> String {
    format!("/tmp/vmem-test-{name}-{}.sock", std::process::id())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The checksum a client computes, computed on the producer side from the same bytes.
fn producer_checksum(buffer: &gst::BufferRef) -> u64 {
    let mem = buffer.peek_memory(0);
    let fd = gstvmem::memory::dmabuf_fd(mem).expect("dma-buf memory");
    kernel::read_dmabuf(fd, mem.offset() + mem.size(), protocol::checksum).unwrap()
}

/// Records (frame number, checksum) of every buffer reaching element `at`'s sink pad.
fn record_checksums(pipeline: &gst::Pipeline, at: &str) -> Arc<Mutex<Vec<u64>>> {
    let sums = Arc::new(Mutex::new(Vec::new()));
    let store = sums.clone();
    element(pipeline, at).static_pad("sink").unwrap().add_probe(
        gst::PadProbeType::BUFFER,
        move |_, info| {
            store
                .lock()
                .unwrap()
                .push(producer_checksum(info.buffer().unwrap()));
            gst::PadProbeReturn::Ok
        },
    );
    sums
}

fn spawn_client(path: &str, args: &[&str]) -> Child {
    Command::new(CLIENT)
        .arg(path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the dmabuf_client example is built by cargo test")
}

/// Waits until the server has a queued connection: the client printed its hello line.
fn wait_connected(child: &mut Child) -> BufReader<std::process::ChildStdout> {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("connected"), "client said: {line}");
    out
}

#[test]
#[ignore = "needs the VM testbed"]
fn imports_every_dmabuf_into_vkms_and_vgem() {
    init();
    for driver in ["vkms", "vgem"] {
        let addfb = driver == "vkms"; // vgem has no KMS
        let pipeline = launch(&format!(
            "videotestsrc num-buffers=20 ! {BGRX} ! vmemexport name=v ! \
             dmabufsink name=s drm-device=driver:{driver} drm-addfb={addfb}"
        ));
        run(&pipeline);
        let (v, s) = (element(&pipeline, "v"), element(&pipeline, "s"));
        assert_eq!(stat(&s, "frames"), 20, "{driver}");
        assert_eq!(
            stat(&s, "imported"),
            stat(&v, "exported"),
            "{driver}: one import per dma-buf"
        );
        assert_eq!(stat(&s, "import-failures"), 0, "{driver}");
        assert_eq!(stat(&s, "addfb-failures"), 0, "{driver}");
        assert_eq!(stat(&v, "copies"), 0, "{driver}");
    }
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_missing_drm_device_is_a_clear_error() {
    init();
    let pipeline = launch(&format!(
        "videotestsrc num-buffers=1 ! {BGRX} ! vmemexport ! dmabufsink drm-device=driver:nonesuch"
    ));
    let error = run_for(&pipeline, secs(30)).error.expect("must fail");
    assert!(
        error.contains("Cannot open DRM device driver:nonesuch"),
        "{error}"
    );
}

/// Every frame, exactly: `drop-policy=wait` makes the pipeline wait for a client that lags
/// (under load the default `skip` may legitimately skip one).
#[test]
#[ignore = "needs the VM testbed"]
fn another_process_reads_the_same_pixels() {
    init();
    let path = socket_path("xproc");
    let frames = 30;
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! {BGRX} ! vmemexport name=v ! \
         dmabufsink name=s socket-path={path} drop-policy=wait"
    ));
    let producer = record_checksums(&pipeline, "s");
    pipeline.set_state(gst::State::Paused).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(30));
    let meta = std::fs::metadata(&path).expect("socket exists once the sink started");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let mut child = spawn_client(&path, &["--frames", &frames.to_string()]);
    let out = wait_connected(&mut child);
    run(&pipeline);
    let lines: Vec<String> = out.lines().map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let s = element(&pipeline, "s");
    let why = format!(
        "client: {status}, stderr {stderr:?}, {} lines; sink: frames-sent {}, frames-dropped {}",
        lines.len(),
        stat(&s, "frames-sent"),
        stat(&s, "frames-dropped")
    );
    assert!(status.success(), "{why}");
    let client: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.split("checksum ").nth(1))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .collect();
    let producer = producer.lock().unwrap().clone();
    assert_eq!(client.len(), frames, "{why}");
    assert_eq!(
        client, producer,
        "the client read other bytes than the producer sent"
    );
    assert!(lines[0].contains("320x240 XR24 fds 1"), "{}", lines[0]);
    assert_eq!(stat(&s, "frames-sent"), frames as u64);
    assert_eq!(stat(&s, "frames-dropped"), 0);
    assert_eq!(stat(&element(&pipeline, "v"), "copies"), 0);
    assert!(
        !std::path::Path::new(&path).exists(),
        "the socket file is removed at stop"
    );
}

#[test]
#[ignore = "needs the VM testbed"]
fn dead_and_stalled_clients_cost_the_pipeline_nothing() {
    init();
    let path = socket_path("bad");
    let frames = 120;
    let fds_before = open_fds();
    // A long hold-timeout: the stalled client must stay for the whole run.
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} ! {BGRX} ! vmemexport name=v ! dmabufsink name=s socket-path={path} max-pending=4 hold-timeout=600000"
    ));
    let fd_samples = Arc::new(Mutex::new(Vec::new()));
    let samples = fd_samples.clone();
    element(&pipeline, "s")
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            samples.lock().unwrap().push(open_fds());
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Paused).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(30));
    let mut stalled = spawn_client(&path, &["--stall"]);
    let stalled_out = wait_connected(&mut stalled);
    let mut doomed = spawn_client(&path, &["--no-release"]);
    let doomed_out = wait_connected(&mut doomed);
    pipeline.set_state(gst::State::Playing).unwrap();
    // Kill one client mid-stream; the other never reads at all.
    let mut lines = doomed_out.lines();
    for _ in 0..3 {
        lines.next().unwrap().unwrap();
    }
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let result = run_for(&pipeline, secs(300));
    assert!(result.error.is_none(), "{:?}", result.error);
    stalled.kill().unwrap();
    stalled.wait().unwrap();
    let s = element(&pipeline, "s");
    assert_eq!(stat(&s, "frames"), frames);
    assert_eq!(stat(&s, "clients-total"), 2);
    // The stalled client got max-pending frames and missed every later one.
    let dropped = stat(&s, "frames-dropped");
    assert!(
        dropped >= frames - 4,
        "the stalled client missed the rest: {dropped}"
    );
    let samples = fd_samples.lock().unwrap();
    // Bounded, not growing with frames: the pool grows to what the clients may hold (2 fds per
    // buffer: memfd and udmabuf), then stays; the later half never needs more than the earlier.
    let half = samples.len() / 2;
    let early = *samples[..half].iter().max().unwrap();
    let late = *samples[half..].iter().max().unwrap();
    assert!(
        late <= early + 4,
        "fds kept growing while clients misbehave: {early} then {late}"
    );
    assert!(late < 64, "fds bounded: {late}");
    drop(samples);
    drop(pipeline);
    // The clients' stdout pipes are ours to close; what remains must be what we had before.
    drop((stalled_out, lines, stalled, doomed));
    let listing: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        open_fds(),
        fds_before,
        "every fd is released after NULL: {listing:?}"
    );
}

#[test]
#[ignore = "needs the VM testbed"]
fn other_users_are_refused() {
    init();
    let path = socket_path("uid");
    let pipeline = launch(&format!(
        "videotestsrc num-buffers=60 is-live=true ! {BGRX} ! vmemexport ! dmabufsink name=s socket-path={path}"
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(30));
    let as_nobody = || run_as(65534, 65534, &path, &["--frames", "1"]);
    // The socket file is 0600: another user cannot even connect.
    let out = as_nobody();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // With the file opened up, the peer-uid check still refuses it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    assert!(!out.status.success(), "{out:?}");
    let s = element(&pipeline, "s");
    assert_eq!(stat(&s, "clients-refused"), 1);
    assert_eq!(stat(&s, "clients-total"), 0);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
#[ignore = "needs the VM testbed"]
fn garbage_from_a_client_disconnects_only_that_client() {
    init();
    let path = socket_path("garbage");
    let pipeline = launch(&format!(
        "videotestsrc num-buffers=90 is-live=true ! {BGRX} ! vmemexport ! dmabufsink name=s socket-path={path}"
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(30));
    let hostile = gstvmem::dmabufsink::Client::connect(&path).unwrap();
    let good = gstvmem::dmabufsink::Client::connect(&path).unwrap();
    for c in [&hostile, &good] {
        // A broken server must fail this test, not hang it.
        rustix::net::sockopt::set_socket_timeout(
            c.socket(),
            rustix::net::sockopt::Timeout::Recv,
            Some(std::time::Duration::from_secs(20)),
        )
        .unwrap();
    }
    let first = good.recv().unwrap().expect("a frame");
    good.release(&first).unwrap();
    kernel::send_with_fds(
        hostile.socket(),
        b"\x00\x01garbage",
        &[],
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    // The server may already have cut the client off (EPIPE): that is the point.
    let _ = kernel::send_with_fds(
        hostile.socket(),
        &[0xffu8; 200],
        &[],
        rustix::net::SendFlags::empty(),
    );
    // The good client keeps receiving; the hostile one is cut off.
    for _ in 0..5 {
        let f = good.recv().unwrap().expect("frames keep coming");
        good.release(&f).unwrap();
    }
    let mut hostile_ended = false;
    for _ in 0..200 {
        match hostile.recv() {
            Ok(Some(_)) => continue,
            _ => {
                hostile_ended = true;
                break;
            }
        }
    }
    assert!(hostile_ended, "the hostile client must be disconnected");
    let s = element(&pipeline, "s");
    assert_eq!(stat(&s, "protocol-errors"), 1);
    // Releases are read by the socket thread: give it a moment for the last one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while stat(&s, "frames-released") < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(stat(&s, "frames-released"), 6);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
#[ignore = "needs the VM testbed"]
fn system_memory_is_refused_with_the_fix() {
    init();
    let pipeline = launch(&format!("videotestsrc num-buffers=3 ! {BGRX} ! dmabufsink"));
    let error = run_for(&pipeline, secs(30))
        .error
        .expect("system memory must be refused");
    assert!(
        error.contains("not a dma-buf") && error.contains("put vmemexport in front of it"),
        "{error}"
    );
    let pipeline = launch(&format!(
        "videotestsrc num-buffers=3 ! {BGRX} ! dmabufsink name=s allow-non-dmabuf=true"
    ));
    run(&pipeline);
    assert_eq!(stat(&element(&pipeline, "s"), "non-dmabuf"), 3);
}

/// Times at which buffers reached element `at`'s sink pad.
fn record_arrivals(pipeline: &gst::Pipeline, at: &str) -> Arc<Mutex<Vec<Instant>>> {
    let times = Arc::new(Mutex::new(Vec::new()));
    let store = times.clone();
    element(pipeline, at).static_pad("sink").unwrap().add_probe(
        gst::PadProbeType::BUFFER,
        move |_, _| {
            store.lock().unwrap().push(Instant::now());
            gst::PadProbeReturn::Ok
        },
    );
    times
}

/// Plays `pipeline` to EOS, calls `at_eos` before it goes to NULL, then sets it to NULL.
fn run_for_then(pipeline: &gst::Pipeline, timeout: Duration, at_eos: impl FnOnce()) -> RunResult {
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_mseconds(timeout.as_millis() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    at_eos();
    let mut result = RunResult::default();
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => {}
        Some(gst::MessageView::Error(e)) => result.error = Some(e.error().to_string()),
        _ => result.error = Some(format!("no EOS within {timeout:?}")),
    }
    pipeline.set_state(gst::State::Null).unwrap();
    result
}

/// Frames per second and the longest gap between two frames.
fn pace(times: &[Instant]) -> (f64, Duration) {
    let gaps = times.windows(2).map(|w| w[1] - w[0]);
    let longest = gaps.max().unwrap_or_default();
    let span = (*times.last().unwrap() - times[0]).as_secs_f64();
    ((times.len() - 1) as f64 / span, longest)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client that sends release messages as fast as two threads can, from before the stream
/// starts: it must be cut off (an unknown release is a protocol error) and cost the pipeline
/// neither frame rate nor latency.
#[test]
#[ignore = "needs the VM testbed"]
fn a_flooding_client_is_cut_off_and_the_pipeline_keeps_its_pace() {
    init();
    let path = socket_path("flood");
    let frames = 90;
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} is-live=true ! {BGRX} ! vmemexport ! \
         dmabufsink name=s socket-path={path}"
    ));
    let arrivals = record_arrivals(&pipeline, "s");
    pipeline.set_state(gst::State::Paused).unwrap();
    let flooder = Arc::new(gstvmem::dmabufsink::Client::connect(&path).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let (flooder, stop) = (flooder.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let msg = protocol::Message::Release {
                        frame_number: (t << 32) | sent,
                    }
                    .encode();
                    if kernel::send_with_fds(
                        flooder.socket(),
                        &msg,
                        &[],
                        rustix::net::SendFlags::empty(),
                    )
                    .is_err()
                    {
                        // Cut off, unless the pipeline had already stopped.
                        return (sent, !stop.load(Ordering::Relaxed));
                    }
                    sent += 1;
                }
                (sent, false)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let result = run_for_then(&pipeline, secs(120), || stop.store(true, Ordering::Relaxed));
    let outcomes: Vec<(u64, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let (fps, longest) = pace(&arrivals.lock().unwrap());
    println!(
        "flood: {} releases sent, cut off: {:?}; pipeline {fps:.1} fps, longest gap {longest:?}",
        outcomes.iter().map(|(n, _)| n).sum::<u64>(),
        outcomes.iter().map(|(_, cut)| cut).collect::<Vec<_>>()
    );
    assert!(result.error.is_none(), "{:?}", result.error);
    let s = element(&pipeline, "s");
    assert_eq!(stat(&s, "frames"), frames);
    assert!(
        outcomes.iter().all(|(_, cut)| *cut),
        "the flooder must be disconnected: {outcomes:?}"
    );
    assert_eq!(
        stat(&s, "protocol-errors"),
        1,
        "the flooder is a protocol error"
    );
    assert!(fps > 20.0, "a 30 fps live stream slowed to {fps:.1} fps");
    assert!(
        longest < Duration::from_millis(500),
        "a frame waited {longest:?}"
    );
}

/// Lowers this process's soft fd limit to `spare` above what is open now, for a scope.
struct FdLimit(rustix::process::Rlimit);

impl FdLimit {
    fn spare(spare: u64) -> FdLimit {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let old = getrlimit(Resource::Nofile);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(open_fds() as u64 + spare),
                maximum: old.maximum,
            },
        )
        .unwrap();
        FdLimit(old)
    }
}

impl Drop for FdLimit {
    fn drop(&mut self) {
        rustix::process::setrlimit(rustix::process::Resource::Nofile, self.0).unwrap();
    }
}

/// 500 idle connections from another process, against a producer with 200 spare fds: past
/// max-clients they are refused at once, so the pipeline never runs out of fds.
#[test]
#[ignore = "needs the VM testbed"]
fn idle_connections_past_max_clients_are_refused_and_the_pipeline_runs() {
    init();
    let path = socket_path("hoard");
    let frames = 60;
    let connections = 500;
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} is-live=true ! {BGRX} ! vmemexport name=v ! \
         dmabufsink name=s socket-path={path}"
    ));
    let arrivals = record_arrivals(&pipeline, "s");
    pipeline.set_state(gst::State::Paused).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(30));
    let limit = FdLimit::spare(200);
    let fds_before = open_fds();
    // The hoarder is another process with fds of its own: not our lowered limit.
    let mut hoarder = Command::new("sh")
        .args([
            "-c",
            "ulimit -Sn $(ulimit -Hn) && exec \"$0\" \"$@\"",
            CLIENT,
            &path,
        ])
        .args(["--idle-connections", &connections.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(hoarder.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.starts_with(&format!("opened {connections} idle")),
        "{line}"
    );
    let s = element(&pipeline, "s");
    wait_until("every connection to be handled", secs(60), || {
        stat(&s, "clients-total") + stat(&s, "clients-refused") >= connections
    });
    let fds_held = open_fds() - fds_before;
    let result = run_for(&pipeline, secs(120));
    drop(hoarder.stdin.take());
    hoarder.wait().unwrap();
    drop(limit);
    assert!(result.error.is_none(), "{:?}", result.error);
    assert_eq!(stat(&s, "frames"), frames);
    assert_eq!(stat(&s, "clients-total"), 16, "max-clients defaults to 16");
    assert_eq!(stat(&s, "clients-refused"), connections - 16);
    // 16 clients, the hoarder's pipes and whatever GStreamer opened meanwhile.
    assert!(
        fds_held <= 16 + 8,
        "the server holds {fds_held} fds for idle clients"
    );
    let (fps, longest) = pace(&arrivals.lock().unwrap());
    println!(
        "hoard: {connections} idle connections, {} refused, {fds_held} fds held; pipeline \
         {fps:.1} fps, longest gap {longest:?}",
        stat(&s, "clients-refused")
    );
}

/// With the file-descriptor table full, accept fails (EMFILE) while the connection stays
/// queued: the socket thread must rest, not spin, and serve the client once fds are free.
#[test]
#[ignore = "needs the VM testbed"]
fn emfile_in_accept_backs_off_and_recovers() {
    init();
    let path = socket_path("emfile");
    let pipeline = launch(&format!(
        "videotestsrc is-live=true ! {BGRX} ! vmemexport ! dmabufsink name=s socket-path={path}"
    ));
    pipeline.set_state(gst::State::Paused).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(30));
    // The sink's socket thread(s), their stat files opened now: with the fd table full,
    // nothing can be opened.
    let stats: Vec<std::fs::File> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            (comm.trim() == "dmabufsink-sock")
                .then(|| std::fs::File::open(dir.join("stat")).ok())?
        })
        .collect();
    assert!(!stats.is_empty(), "the sink's socket thread");
    let thread_cpu = || -> u64 {
        // utime + stime, in clock ticks.
        use std::os::unix::fs::FileExt;
        stats
            .iter()
            .map(|f| {
                let mut buf = [0u8; 1024];
                let n = f.read_at(&mut buf, 0).unwrap();
                let stat = String::from_utf8_lossy(&buf[..n]).into_owned();
                let fields: Vec<&str> = stat
                    .rsplit(')')
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .collect();
                fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
            })
            .sum()
    };
    let client = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let (cpu, accept_errors) = {
        let _limit = FdLimit::spare(0);
        let mut fillers = Vec::new();
        while let Ok(fd) = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            fillers.push(fd);
        }
        rustix::net::connect(&client, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
        let before = thread_cpu();
        std::thread::sleep(Duration::from_secs(3));
        let cpu = thread_cpu() - before;
        let stats = element(&pipeline, "s").property::<gst::Structure>("stats");
        (cpu, stats.get::<u64>("accept-errors").unwrap_or(0))
    };
    println!("emfile: {accept_errors} failed accepts in 3 s, socket thread used {cpu} ticks");
    // Now there are fds again: the queued client gets its hello.
    rustix::net::sockopt::set_socket_timeout(
        &client,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(10)),
    )
    .unwrap();
    let mut buf = [0u8; protocol::MAX_MESSAGE_SIZE];
    let (n, _) = kernel::recv_with_fds(&client, &mut buf, rustix::net::RecvFlags::empty())
        .expect("the queued client is served once fds are free");
    assert!(matches!(
        protocol::Message::decode(&buf[..n], 0),
        Ok(protocol::Message::Hello(_))
    ));
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(accept_errors >= 1, "accept must have failed");
    assert!(
        accept_errors <= 12,
        "{accept_errors} accepts in 3 s: no back-off"
    );
    assert!(
        cpu < 30,
        "the socket thread spun: {cpu} ticks of CPU in 3 s"
    );
}

/// Upstream with a fixed pool of 3 dma-bufs and a client that never releases: the client is
/// disconnected after hold-timeout and the stream goes on.
#[test]
#[ignore = "needs the VM testbed"]
fn a_client_holding_frames_forever_cannot_starve_a_fixed_pool() {
    init();
    let path = socket_path("hold");
    let frames = 30u64;
    let pipeline = launch(&format!(
        "appsrc name=src format=time caps={BGRX} ! dmabufsink name=s sync=false socket-path={path}"
    ));
    let allocator = gst::Allocator::find(Some("dmaheap")).expect("the dmaheap allocator");
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Bgrx, 320, 240)
        .build()
        .unwrap();
    let pool = gst_video::VideoBufferPool::new();
    let mut config = pool.config();
    config.set_params(Some(&info.to_caps().unwrap()), info.size() as u32, 3, 3);
    config.set_allocator(Some(&allocator), None);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
    pool.set_config(config).unwrap();
    pool.set_active(true).unwrap();
    pipeline.set_state(gst::State::Paused).unwrap();
    let mut hog = spawn_client(&path, &["--no-release"]);
    let _hog_out = wait_connected(&mut hog);
    let src = element(&pipeline, "src")
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let feeder = std::thread::spawn(move || {
        for i in 0..frames {
            let mut buffer = pool.acquire_buffer(None).unwrap();
            buffer
                .get_mut()
                .unwrap()
                .set_pts(gst::ClockTime::from_mseconds(i * 33));
            if src.push_buffer(buffer).is_err() {
                break;
            }
        }
        let _ = src.end_of_stream();
        pool.set_active(false).unwrap();
    });
    let started = Instant::now();
    let result = run_for(&pipeline, secs(120));
    feeder.join().unwrap();
    hog.kill().unwrap();
    hog.wait().unwrap();
    assert!(result.error.is_none(), "{:?}", result.error);
    let s = element(&pipeline, "s");
    assert_eq!(stat(&s, "frames"), frames);
    assert_eq!(stat(&s, "clients-timed-out"), 1);
    println!(
        "hold: 3-buffer pool, a client holding frames forever: {frames} frames in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn run_as(uid: u32, gid: u32, path: &str, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    Command::new(CLIENT)
        .arg(path)
        .args(args)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap()
}

/// allow-other-users opens the socket to every user; socket-group to one group's members,
/// checked by the file's mode and again with SO_PEERCRED/SO_PEERGROUPS.
#[test]
#[ignore = "needs the VM testbed"]
fn other_users_come_in_only_as_the_properties_say() {
    init();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let frames = ["--frames", "3", "--server-uid", "0"];
    // Any user.
    let path = socket_path("anyone");
    let pipeline = launch(&format!(
        "videotestsrc is-live=true ! {BGRX} ! vmemexport ! dmabufsink name=s \
         socket-path={path} allow-other-users=true"
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(30));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    let out = run_as(65534, 65534, &path, &frames);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("checksum")
            .count(),
        3
    );
    pipeline.set_state(gst::State::Null).unwrap();
    // One group: nogroup (65534). nobody is in it; uid 4242 is not, unless given it as a
    // supplementary group.
    let path = socket_path("group");
    let pipeline = launch(&format!(
        "videotestsrc is-live=true ! {BGRX} ! vmemexport ! dmabufsink name=s \
         socket-path={path} socket-group=65534"
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(30));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.gid()),
        (0o660, 65534)
    );
    let out = run_as(65534, 65534, &path, &frames);
    assert!(out.status.success(), "{out:?}");
    let out = run_as(4242, 4242, &path, &frames);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=4242",
            "--regid=4242",
            "--groups=65534",
            CLIENT,
            &path,
        ])
        .args(frames)
        .output()
        .unwrap();
    assert!(out.status.success(), "a supplementary member: {out:?}");
    // With the file opened to everyone, the peer check still keeps non-members out.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run_as(4242, 4242, &path, &frames);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("this user is not allowed"),
        "{out:?}"
    );
    let s = element(&pipeline, "s");
    assert_eq!(stat(&s, "clients-total"), 2);
    assert_eq!(stat(&s, "clients-refused"), 1);
    pipeline.set_state(gst::State::Null).unwrap();
}

/// A server in its own PID namespace cannot see a client outside it: SO_PEERCRED says pid 0,
/// which must be a normal client (rustix's `UCred` would hold it in a `NonZero`).
#[test]
#[ignore = "needs the VM testbed"]
fn a_client_outside_the_servers_pid_namespace_is_served() {
    init();
    let path = socket_path("pidns");
    let mut producer = Command::new("unshare")
        .args([
            "-p",
            "-f",
            "gst-launch-1.0",
            "-q",
            "videotestsrc",
            "is-live=true",
        ])
        .args([
            "num-buffers=300",
            "!",
            BGRX,
            "!",
            "vmemexport",
            "!",
            "dmabufsink",
        ])
        .arg(format!("socket-path={path}"))
        .env(
            "GST_PLUGIN_PATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/release"),
        )
        .spawn()
        .unwrap();
    wait_until("the socket", secs(60), || {
        std::path::Path::new(&path).exists()
    });
    let out = Command::new(CLIENT)
        .args([&path, "--frames", "3"])
        .output()
        .unwrap();
    producer.kill().unwrap();
    producer.wait().unwrap();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(format!("{path}.lock"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("checksum")
            .count(),
        3
    );
}

/// A process squatting on the path, pretending to be dmabufsink: it hands the client a
/// memfd, a truncated regular file, then a real dma-buf smaller than the frame it describes.
/// The client must say so, not map them and die of SIGBUS.
#[test]
#[ignore = "needs the VM testbed"]
fn a_squatting_server_gets_a_clear_error_not_a_sigbus() {
    init();
    let frame = protocol::Frame {
        frame_number: 1,
        pts: 0,
        duration: u64::MAX,
        width: 320,
        height: 240,
        fourcc: u32::from_le_bytes(*b"XR24"),
        n_planes: 1,
        strides: [1280, 0, 0, 0],
        size: 307_200,
        n_fds: 1,
        ..Default::default()
    };
    let memfd = kernel::Memfd::new("squatter", 4096).unwrap();
    let file = {
        let path = format!("/tmp/vmem-squat-{}.bin", std::process::id());
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(4096).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::fd::OwnedFd::from(f)
    };
    let small = {
        let m = kernel::Memfd::new("squatter-dmabuf", 4096).unwrap();
        kernel::Udmabuf::open()
            .unwrap()
            .create(m.as_fd(), 0, 4096)
            .unwrap()
    };
    let cases: [(&str, std::os::fd::BorrowedFd<'_>, &str); 3] = [
        ("memfd", memfd.as_fd(), "is not a dma-buf"),
        ("truncated file", file.as_fd(), "is not a dma-buf"),
        (
            "small dma-buf",
            small.as_fd(),
            "has 4096 bytes, but the frame's layout",
        ),
    ];
    for (what, fd, expected) in cases {
        let path = socket_path("squat");
        let _ = std::fs::remove_file(&path);
        let listener = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::bind(&listener, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&listener, 1).unwrap();
        let child = spawn_client(&path, &["--frames", "1"]);
        let conn = rustix::net::accept_with(&listener, rustix::net::SocketFlags::CLOEXEC).unwrap();
        let hello = protocol::Message::Hello(protocol::Hello { max_pending: 4 }).encode();
        kernel::send_with_fds(&conn, &hello, &[], rustix::net::SendFlags::empty()).unwrap();
        let msg = protocol::Message::Frame(frame).encode();
        kernel::send_with_fds(&conn, &msg, &[fd], rustix::net::SendFlags::empty()).unwrap();
        let out = child.wait_with_output().unwrap();
        let _ = std::fs::remove_file(&path);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            None,
            "{what}: the client died of a signal: {out:?}"
        );
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{what}: {stderr}");
    }
}

/// A server of another user at the path: the client refuses it before reading anything.
#[test]
#[ignore = "needs the VM testbed"]
fn a_client_refuses_a_server_of_another_user() {
    init();
    let path = socket_path("foreign");
    let pipeline = launch(&format!(
        "videotestsrc is-live=true ! {BGRX} ! vmemexport ! dmabufsink name=s \
         socket-path={path} allow-other-users=true"
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(30));
    // Opened to everyone by hand, so nothing but the client's own check stands in the way.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    // nobody expects a server of its own uid; this one runs as root.
    let out = run_as(65534, 65534, &path, &["--frames", "1"]);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("runs as uid 0, not uid 65534"),
        "{out:?}"
    );
}

/// `drop-policy=wait` waits for a full client, but never longer than `hold-timeout` (the
/// client is then disconnected), and a state change interrupts the wait at once.
#[test]
#[ignore = "needs the VM testbed"]
fn drop_policy_wait_is_bounded_and_interruptible() {
    init();
    let path = socket_path("wait");
    let frames = 30;
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} is-live=true ! {BGRX} ! vmemexport ! dmabufsink \
         name=s socket-path={path} drop-policy=wait max-pending=2 hold-timeout=2000"
    ));
    pipeline.set_state(gst::State::Paused).unwrap();
    let mut hog = spawn_client(&path, &["--no-release"]);
    let _out = wait_connected(&mut hog);
    let started = Instant::now();
    let result = run_for(&pipeline, secs(120));
    let took = started.elapsed();
    hog.kill().unwrap();
    hog.wait().unwrap();
    assert!(result.error.is_none(), "{:?}", result.error);
    let s = element(&pipeline, "s");
    assert_eq!(stat(&s, "frames"), frames);
    assert_eq!(stat(&s, "clients-timed-out"), 1);
    assert_eq!(stat(&s, "frames-dropped"), 0, "waited, not skipped");
    assert!(took < secs(60), "{took:?}");
    // A wait that would last a minute ends when the pipeline stops.
    let pipeline = launch(&format!(
        "videotestsrc is-live=true ! {BGRX} ! vmemexport ! dmabufsink name=s \
         socket-path={path} drop-policy=wait max-pending=1 hold-timeout=60000"
    ));
    pipeline.set_state(gst::State::Paused).unwrap();
    let mut hog = spawn_client(&path, &["--no-release"]);
    let _out = wait_connected(&mut hog);
    pipeline.set_state(gst::State::Playing).unwrap();
    let s = element(&pipeline, "s");
    wait_until("the first frame", secs(30), || stat(&s, "frames-sent") == 1);
    std::thread::sleep(Duration::from_secs(1));
    let stopping = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    let took = stopping.elapsed();
    hog.kill().unwrap();
    hog.wait().unwrap();
    println!("wait: stopping interrupted the wait after {took:?}");
    assert!(took < secs(10), "stopping waited {took:?} for the client");
}
