// SPDX-License-Identifier: MPL-2.0
//! dmabufsink's socket file on any machine: what it removes at stop, two sinks racing for one
//! path, and a symlink swapped in at the path while sinks start. No dma-buf is needed: the
//! sinks serve, and the file is what is checked.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use gst::prelude::*;

const BGRX: &str = "video/x-raw,format=BGRx,width=320,height=240,framerate=30/1";

fn socket_path(name: &str) -> String {
    format!("/tmp/vmem-test-{name}-{}.sock", std::process::id())
}

/// Stopping removes the socket file we bound, and nothing that replaced it.
#[test]
fn stop_removes_only_the_socket_it_bound() {
    init();
    let path = socket_path("unlink");
    let pipeline = launch(&format!(
        "videotestsrc ! {BGRX} ! dmabufsink socket-path={path} allow-non-dmabuf=true"
    ));
    pipeline.set_state(gst::State::Paused).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(30));
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"another program's file").unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    let left = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(left.unwrap(), b"another program's file");
}

/// Two sinks starting at once on the path of a stale socket: one serves, the other is told
/// the path is in use. Neither may delete the socket the other just bound.
#[test]
fn two_sinks_racing_for_a_stale_path_never_both_serve() {
    init();
    let path = socket_path("race");
    let mut both = 0;
    for _ in 0..40 {
        let stale = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let _ = std::fs::remove_file(&path);
        rustix::net::bind(&stale, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
        drop(stale);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let sinks: Vec<_> = (0..2)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let sink = gst::ElementFactory::make("dmabufsink")
                        .property("socket-path", &path)
                        .build()
                        .unwrap();
                    barrier.wait();
                    let ok = sink.set_state(gst::State::Ready).is_ok()
                        && sink.set_state(gst::State::Paused).is_ok();
                    (sink, ok)
                })
            })
            .collect();
        let sinks: Vec<(gst::Element, bool)> =
            sinks.into_iter().map(|t| t.join().unwrap()).collect();
        if sinks.iter().all(|(_, ok)| *ok) {
            both += 1;
        }
        assert!(sinks.iter().any(|(_, ok)| *ok), "one sink must serve");
        for (sink, _) in sinks {
            sink.set_state(gst::State::Null).unwrap();
        }
    }
    let _ = std::fs::remove_file(&path);
    assert_eq!(both, 0, "two sinks served one path {both} times in 40");
}

/// Another process swaps a symlink in at the socket path while sinks start: the sink must
/// never chmod what the link points to, as a sink that bound and then chmod-ed the path would.
#[test]
fn a_symlink_swapped_in_at_start_is_never_followed() {
    init();
    use std::os::unix::fs::PermissionsExt;
    let dir = std::path::PathBuf::from(format!("/tmp/vmem-swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (path, victim, link) = (dir.join("s.sock"), dir.join("victim"), dir.join("link"));
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, path, victim, link) = (stop.clone(), path.clone(), victim.clone(), link.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(&path);
                let _ = std::os::unix::fs::symlink(&victim, &link);
                let _ = std::fs::rename(&link, &path);
            }
        })
    };
    let (mut hits, mut served) = (0, 0);
    for _ in 0..200 {
        let sink = gst::ElementFactory::make("dmabufsink")
            .property("socket-path", path.to_str().unwrap())
            .build()
            .unwrap();
        if sink.set_state(gst::State::Paused).is_ok() {
            served += 1;
        }
        sink.set_state(gst::State::Null).unwrap();
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        if mode != 0o644 {
            hits += 1;
            std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    let content = std::fs::read(&victim).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    println!("symlink swap: 200 starts, {served} served, victim chmod-ed {hits} times");
    assert_eq!(content, b"precious");
    // The sinks must have come up between the swaps, or the race was never run.
    assert!(
        served > 0,
        "no sink served in 200 starts against the swapping"
    );
    assert_eq!(
        hits, 0,
        "the sink changed the mode of the link's target {hits} times"
    );
}
