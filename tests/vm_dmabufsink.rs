// SPDX-License-Identifier: MPL-2.0
//! dmabufsink against the real kernel: PRIME import into vkms/vgem, frames shared with other
//! processes over its socket, and clients that misbehave (VM testbed, every userland).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

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

#[test]
#[ignore = "needs the VM testbed"]
fn another_process_reads_the_same_pixels() {
    init();
    let path = socket_path("xproc");
    let frames = 30;
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! {BGRX} ! vmemexport name=v ! \
         dmabufsink name=s socket-path={path}"
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
    assert!(child.wait().unwrap().success(), "{lines:?}");
    let client: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.split("checksum ").nth(1))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .collect();
    let producer = producer.lock().unwrap().clone();
    assert_eq!(client.len(), frames, "{lines:?}");
    assert_eq!(
        client, producer,
        "the client read other bytes than the producer sent"
    );
    assert!(lines[0].contains("320x240 XR24 fds 1"), "{}", lines[0]);
    let s = element(&pipeline, "s");
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
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} ! {BGRX} ! vmemexport name=v ! dmabufsink name=s socket-path={path} max-pending=4"
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
    let as_nobody = || {
        use std::os::unix::process::CommandExt;
        Command::new(CLIENT)
            .arg(&path)
            .arg("--frames")
            .arg("1")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
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
