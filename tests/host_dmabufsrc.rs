// SPDX-License-Identifier: MPL-2.0
//! dmabufsrc against servers that misbehave, on any machine (no dma-buf needed): no server, a
//! server that leaves without a goodbye (reconnect), a goodbye (EOS), a server of another uid,
//! a frame whose fd is not a dma-buf, and an unlock while it waits for a server.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstvmem::dmabufsink::protocol::{self, Message};
use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

fn socket_path(name: &str) -> String {
    format!("/tmp/vmem-src-{name}-{}.sock", std::process::id())
}

/// A listening SEQPACKET socket at `path`, as dmabufsink binds it.
fn listen(path: &str) -> OwnedFd {
    let _ = std::fs::remove_file(path);
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&fd, &SocketAddrUnix::new(path).unwrap()).unwrap();
    rustix::net::listen(&fd, 4).unwrap();
    fd
}

/// The next connection to `listener`, or `None` if none comes within 20 s (so a test whose
/// source never connects fails instead of hanging).
fn accept(listener: &OwnedFd) -> Option<OwnedFd> {
    let mut fds = [rustix::event::PollFd::new(
        listener,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::time::Timespec {
        tv_sec: 20,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(1) => Some(rustix::net::accept(listener).unwrap()),
        _ => None,
    }
}

fn send(conn: impl AsFd, msg: &Message, fds: &[std::os::fd::BorrowedFd<'_>]) {
    gstvmem::kernel::send_with_fds(conn, &msg.encode(), fds, SendFlags::empty()).unwrap();
}

fn hello() -> Message {
    Message::Hello(protocol::Hello { max_pending: 4 })
}

fn source(path: &str, extra: &str) -> gst::Pipeline {
    init();
    launch(&format!("dmabufsrc socket-path={path} {extra} ! fakesink"))
}

#[test]
fn without_a_server_it_fails_after_retry_timeout_naming_the_path() {
    let path = socket_path("none");
    let _ = std::fs::remove_file(&path);
    let start = Instant::now();
    let result = run_for(&source(&path, "retry-timeout=300"), Duration::from_secs(30));
    let error = result.error.expect("an error without a server");
    assert!(
        error.contains("No dmabufsink serves") && error.contains(&path),
        "{error}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "gave up after {:?}, before retry-timeout",
        start.elapsed()
    );
}

#[test]
fn without_socket_path_it_says_what_to_set() {
    init();
    let result = run_for(&launch("dmabufsrc ! fakesink"), Duration::from_secs(30));
    let error = result.error.expect("an error without socket-path");
    assert!(error.contains("socket-path"), "{error}");
}

/// A server that accepts, says hello and leaves without a goodbye, twice: the source connects
/// again each time; the third connection's goodbye is EOS.
#[test]
fn a_server_that_goes_away_is_reconnected_and_its_goodbye_is_eos() {
    let path = socket_path("reconnect");
    let listener = listen(&path);
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let server = std::thread::spawn(move || {
        for i in 0..3 {
            let Some(conn) = accept(&listener) else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            send(&conn, &hello(), &[]);
            if i == 2 {
                send(&conn, &Message::Bye, &[]);
            }
            drop(conn);
        }
    });
    let pipeline = source(&path, "retry-timeout=20000");
    let result = run_for(&pipeline, Duration::from_secs(60));
    server.join().unwrap();
    assert!(result.error.is_none(), "{:?}", result.error);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    let src = pipeline.iterate_sources().next().unwrap().unwrap();
    assert_eq!(stat(&src, "connects"), 3);
    let _ = std::fs::remove_file(&path);
}

/// A frame whose fd is a memfd, not a dma-buf: a protocol error that says so; nothing maps it.
#[test]
fn a_frame_with_an_fd_that_is_no_dma_buf_is_an_error() {
    let path = socket_path("memfd");
    let listener = listen(&path);
    let server = std::thread::spawn(move || {
        let conn = accept(&listener).expect("the source connects");
        send(&conn, &hello(), &[]);
        let memfd = gstvmem::kernel::Memfd::new("not-a-dmabuf", 320 * 240 * 4).unwrap();
        let frame = protocol::Frame {
            frame_number: 1,
            pts: 0,
            duration: 33_333_333,
            width: 320,
            height: 240,
            fourcc: u32::from_le_bytes(*b"XR24"),
            n_planes: 1,
            strides: [1280, 0, 0, 0],
            size: 320 * 240 * 4,
            n_fds: 1,
            ..Default::default()
        };
        send(&conn, &Message::Frame(frame), &[memfd.as_fd()]);
        // Kept open until the source has read it.
        let mut fds = [rustix::event::PollFd::new(
            &conn,
            rustix::event::PollFlags::HUP,
        )];
        let _ = rustix::event::poll(&mut fds, None);
    });
    let result = run_for(&source(&path, ""), Duration::from_secs(30));
    server.join().unwrap();
    let error = result.error.expect("an error for a memfd");
    assert!(
        error.contains("broke the protocol") && error.contains("not a dma-buf"),
        "{error}"
    );
    let _ = std::fs::remove_file(&path);
}

/// The server must run as `server-uid`: one of another uid (here, ours, while another is
/// asked for) is not trusted, and not retried.
#[test]
fn a_server_of_another_uid_is_refused_at_once() {
    let path = socket_path("uid");
    let listener = listen(&path);
    let server = std::thread::spawn(move || {
        if let Some(conn) = accept(&listener) {
            let _ =
                gstvmem::kernel::send_with_fds(&conn, &hello().encode(), &[], SendFlags::empty());
        }
    });
    let other = rustix::process::geteuid().as_raw() + 4242;
    let start = Instant::now();
    let result = run_for(
        &source(&path, &format!("server-uid={other} retry-timeout=20000")),
        Duration::from_secs(30),
    );
    let error = result.error.expect("an error for a server of another uid");
    assert!(error.contains(&format!("not uid {other}")), "{error}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "retried for {:?}",
        start.elapsed()
    );
    server.join().unwrap();
    let _ = std::fs::remove_file(&path);
}

/// Stopping while the source waits for a server (retry-timeout=-1: forever) returns at once.
#[test]
fn stopping_while_waiting_for_a_server_does_not_hang() {
    let path = socket_path("unlock");
    let _ = std::fs::remove_file(&path);
    let pipeline = source(&path, "retry-timeout=-1");
    pipeline.set_state(gst::State::Playing).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        start.elapsed()
    );
}
