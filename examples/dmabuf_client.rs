// SPDX-License-Identifier: MPL-2.0
//! Receives frames from a `dmabufsink socket-path=...`, maps each dma-buf (with
//! DMA_BUF_IOCTL_SYNC around the read), prints its checksum and releases it.
//!
//!     cargo run --example dmabuf_client -- /tmp/frames.sock [--frames N] [--stall] [--no-release]
//!
//! --frames N    stop after N frames
//! --stall       connect, then read nothing (a client that never reads)
//! --no-release  read frames but never release them
//!
//! Output, one line per frame: `frame <number> pts <ns> <w>x<h> <fourcc> fds <n> checksum <hex>`.

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

    let client = match Client::connect(path) {
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
