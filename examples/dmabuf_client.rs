// SPDX-License-Identifier: MPL-2.0
//! Receives frames from a `dmabufsink socket-path=...`, maps each dma-buf (with
//! DMA_BUF_IOCTL_SYNC around the read), prints its checksum and releases it.
//!
//!     cargo run --example dmabuf_client -- /tmp/frames.sock [--frames N] [--server-uid UID]
//!
//! --frames N          stop after N frames
//! --server-uid UID    the uid the server must run as (default: ours); checked with SO_PEERCRED
//! --dump DIR          also write each frame's whole first dma-buf, every byte this process
//!                     can read, to DIR/<frame number>.bin, and print a `dump` line for it
//!
//! Misbehaving modes, for tests of the server:
//!
//! --stall                 connect, then read nothing (a client that never reads)
//! --no-release            read frames but never release them
//! --idle-connections N    open N connections and never read any of them (hoarding)
//!
//! Output, one line per frame: `frame <number> pts <ns> <w>x<h> <fourcc> fds <n> checksum <hex>`;
//! with --dump, then `dump <number> offset <plane 0 offset> size <frame bytes from 0> dmabuf
//! <dma-buf bytes> <file>`.

use std::process::ExitCode;

use gstvmem::dmabufsink::Client;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: dmabuf_client SOCKET [--frames N] [--stall] [--no-release]");
        return ExitCode::from(2);
    };
    let max_frames: Option<u64> = args
        .iter()
        .position(|a| a == "--frames")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());
    let stall = args.iter().any(|a| a == "--stall");
    let release = !args.iter().any(|a| a == "--no-release");
    let number = |name: &str| -> Option<u32> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
    };
    if let Some(n) = number("--idle-connections") {
        return idle_connections(path, n);
    }
    let server_uid = number("--server-uid").unwrap_or_else(|| rustix::process::geteuid().as_raw());
    let dump_dir = args
        .iter()
        .position(|a| a == "--dump")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);

    let client = match Client::connect_to_uid(path, server_uid) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("connected, max-pending {}", client.max_pending);
    if stall {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
    let mut received = 0u64;
    loop {
        let frame = match client.recv() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                eprintln!("receive: {e}");
                return ExitCode::FAILURE;
            }
        };
        let sum = match frame.checksum() {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "frame {}: cannot read its dma-buf: {e}",
                    frame.info.frame_number
                );
                return ExitCode::FAILURE;
            }
        };
        let fourcc = frame.info.fourcc.to_le_bytes();
        println!(
            "frame {} pts {} {}x{} {} fds {} checksum {sum:016x}",
            frame.info.frame_number,
            frame.info.pts,
            frame.info.width,
            frame.info.height,
            String::from_utf8_lossy(&fourcc).trim_end(),
            frame.fds.len()
        );
        if let Some(dir) = &dump_dir
            && let Err(e) = dump(&frame, dir)
        {
            eprintln!("frame {}: cannot dump it: {e}", frame.info.frame_number);
            return ExitCode::FAILURE;
        }
        if release && let Err(e) = client.release(&frame) {
            eprintln!("release: {e}");
            return ExitCode::FAILURE;
        }
        received += 1;
        if max_frames.is_some_and(|m| received >= m) {
            break;
        }
    }
    println!("end after {received} frames");
    ExitCode::SUCCESS
}

/// Writes the whole of `frame`'s first dma-buf to `dir` and says where the frame lies in it.
fn dump(frame: &gstvmem::dmabufsink::ReceivedFrame, dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let (Some(fd), Some(&len)) = (frame.fds.first(), frame.fd_sizes.first()) else {
        return Err(std::io::Error::other("no fd"));
    };
    // Checked to be a dma-buf on arrival.
    let dmabuf = gstvmem::kernel::DmaBuf::known(fd.as_fd());
    let bytes = gstvmem::kernel::read_dmabuf(dmabuf, len as usize, |b| b.to_vec())
        .map_err(std::io::Error::other)?;
    let path = dir.join(format!("{}.bin", frame.info.frame_number));
    std::fs::write(&path, bytes)?;
    println!(
        "dump {} offset {} size {} dmabuf {len} {}",
        frame.info.frame_number,
        frame.info.offsets[0],
        frame.info.size,
        path.display()
    );
    Ok(())
}

/// Opens `n` connections and keeps them without reading: what a process hoarding the server's
/// fds does. Prints how many connected, then waits until stdin closes.
fn idle_connections(path: &str, n: u32) -> ExitCode {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let addr = match SocketAddrUnix::new(path) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (mut held, mut failed) = (Vec::new(), 0);
    for _ in 0..n {
        let fd = match rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        ) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("socket: {e}");
                failed += 1;
                continue;
            }
        };
        // A full backlog answers EAGAIN: wait for the server to take the queued ones.
        loop {
            match rustix::net::connect(&fd, &addr) {
                Ok(()) => {
                    held.push(fd);
                    break;
                }
                Err(rustix::io::Errno::AGAIN) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => {
                    eprintln!("connect: {e}");
                    failed += 1;
                    break;
                }
            }
        }
    }
    println!("opened {} idle connections, {failed} failed", held.len());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    ExitCode::SUCCESS
}
