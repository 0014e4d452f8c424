// SPDX-License-Identifier: MPL-2.0
//! Reliability checks that fit in CI (VM testbed, every userland): a short soak with its
//! fault table (bench/soak.rs, whose full run is `make soak`), fd hygiene across exec,
//! buffer lifetimes, caps renegotiation mid-stream, and several pipelines and processes at once.

mod common;

use std::io::BufRead;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use common::*;
use gst::prelude::*;
use gstvmem::kernel;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BGRX: &str = "video/x-raw,format=BGRx,width=64,height=48,framerate=30/1";

/// How many of this process's fds point at something whose name contains `kind`
/// ("memfd:vmemexport", "dmabuf").
fn fds_of(kind: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.to_string_lossy().contains(kind))
        .count()
}

/// Whether any memfd of vmemexport is still mapped into this process.
fn memfd_mapped() -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .contains("memfd:vmemexport")
}

/// The checksum of `len` bytes at `offset` of a dma-buf, read through its own mapping.
fn dmabuf_checksum(fd: &OwnedFd, offset: usize, len: usize) -> u64 {
    use std::os::fd::AsFd;
    let dmabuf = kernel::DmaBuf::new(fd.as_fd()).expect("a dma-buf");
    kernel::read_dmabuf(dmabuf, offset + len, |b| checksum(&b[offset..])).unwrap()
}

/// Raw frame checksums of `pattern` at 64x48 BGRx, by PTS: what every path must deliver.
fn reference(pattern: &str, frames: u32) -> std::collections::HashMap<u64, u64> {
    run_collecting(&format!(
        "videotestsrc num-buffers={frames} pattern={pattern} ! {BGRX} ! appsink name=out"
    ))
    .iter()
    .map(|(_, b)| {
        let sum = checksum(&b.map_readable().unwrap());
        (b.pts().unwrap().nseconds(), sum)
    })
    .collect()
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_short_soak_holds_every_check() {
    // Streams, cycles, the fault table and the leaks tracer; `make soak` runs the full numbers.
    let out = Command::new(format!("{ROOT}/target/debug/soak"))
        .args(["--frames", "2000", "--cycles", "100"])
        .env("GST_PLUGIN_PATH", format!("{ROOT}/target/release"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: usize = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("soak: ")?
                .split(" checks, 0 failed")
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        checks
    );
    assert!(checks >= 17, "{stdout}");
}

#[test]
#[ignore = "needs the VM testbed"]
fn no_fd_of_ours_survives_exec() {
    init();
    let path = format!("/tmp/vmem-hygiene-{}.sock", std::process::id());
    let pipelines = [
        format!(
            "videotestsrc is-live=true ! video/x-raw,format=BGRx,width=320,height=240 ! vmemexport ! \
             dmabufsink drm-device=driver:vkms socket-path={path}"
        ),
        // Not kmssink: it opens its DRM node itself (libdrm), and that fd is not ours to judge.
        "videotestsrc is-live=true ! video/x-raw,format=BGRx,width=320,height=240 ! \
         vmemexport backing=heap heap=reserved ! dmabufsink drm-device=driver:vgem"
            .to_string(),
    ];
    let running: Vec<gst::Pipeline> = pipelines.iter().map(|d| launch(d)).collect();
    for p in &running {
        p.set_state(gst::State::Playing).unwrap();
        let _ = p.state(gst::ClockTime::from_seconds(30));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let ours = [
        "dmabuf",
        "memfd:",
        "/dev/dri",
        "/dev/udmabuf",
        "/dev/dma_heap",
    ];
    let mine: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| ours.iter().any(|o| p.contains(o)))
        .collect();
    assert!(
        mine.len() >= 4,
        "the pipelines hold dma-bufs, memfds and devices: {mine:?}"
    );
    // A child started now inherits exactly the fds without O_CLOEXEC.
    let out = std::process::Command::new("sh")
        .args(["-c", "ls -l /proc/$$/fd"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    for o in ours {
        assert!(!listing.contains(o), "{o} leaked into a child:\n{listing}");
    }
    for p in &running {
        p.set_state(gst::State::Null).unwrap();
    }
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_resolution_change_mid_stream_renegotiates() {
    init();
    let pipeline = launch(
        "videotestsrc num-buffers=20 ! capsfilter name=cf caps=video/x-raw,format=NV12,width=640,height=480 ! \
         vmemexport name=v ! appsink name=out sync=false",
    );
    let sink = element(&pipeline, "out")
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let cf = element(&pipeline, "cf");
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut sizes = Vec::new();
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(30)) {
        let (info, _) = gstvmem::formats::video_info_from_caps(sample.caps().unwrap()).unwrap();
        assert!(gstvmem::memory::is_all_dmabuf(sample.buffer().unwrap()));
        sizes.push((info.width(), info.height()));
        if sizes.len() == 8 {
            let caps: gst::Caps = "video/x-raw,format=NV12,width=320,height=240"
                .parse()
                .unwrap();
            cf.set_property("caps", &caps);
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(sizes.len(), 20);
    assert_eq!(sizes[0], (640, 480));
    assert_eq!(*sizes.last().unwrap(), (320, 240));
    assert_eq!(
        stat(&element(&pipeline, "v"), "copies"),
        0,
        "the new size is proposed a new pool"
    );
}

/// The producer frees the memory while a consumer still holds the dma-buf: the producer's
/// buffers, pool, memfds and mappings all go, and a consumer holding only the dma-buf fds
/// still reads every pixel as it was.
#[test]
#[ignore = "needs the VM testbed"]
fn a_dmabuf_outlives_the_memory_it_was_exported_from() {
    init();
    for backing in ["memfd", "heap"] {
        let dmabufs = fds_of("dmabuf");
        let frames = run_collecting(&format!(
            "videotestsrc num-buffers=4 pattern=ball ! {BGRX} ! vmemexport backing={backing} ! \
             appsink name=out"
        ));
        // What a consumer (another process, a device) keeps: the fd, and what it saw.
        let kept: Vec<(OwnedFd, usize, usize, u64)> = frames
            .iter()
            .map(|(_, buf)| {
                let mem = buf.peek_memory(0);
                let fd = gstvmem::memory::dmabuf_fd(mem)
                    .unwrap()
                    .fd()
                    .try_clone_to_owned()
                    .unwrap();
                let sum = checksum(&buf.map_readable().unwrap());
                (fd, mem.offset(), mem.size(), sum)
            })
            .collect();
        drop(frames); // the pipeline is already gone: this drops the last buffers and the pool
        assert_eq!(
            fds_of("memfd:vmemexport"),
            0,
            "the producer closed its memfds"
        );
        assert!(!memfd_mapped(), "the producer unmapped its memory");
        for (fd, offset, size, sum) in &kept {
            assert_eq!(
                dmabuf_checksum(fd, *offset, *size),
                *sum,
                "backing={backing}: the pixels changed after the producer freed its memory"
            );
        }
        drop(kept);
        assert_eq!(fds_of("dmabuf"), dmabufs, "every dma-buf released");
    }
}

#[test]
#[ignore = "needs the VM testbed"]
fn stopping_while_downstream_holds_frames_releases_them_afterwards() {
    init();
    let expected: Vec<u64> = {
        let r = reference("ball", 6);
        let mut v: Vec<(u64, u64)> = r.into_iter().collect();
        v.sort();
        v.into_iter().map(|(_, s)| s).collect()
    };
    let (memfds, dmabufs) = (fds_of("memfd:vmemexport"), fds_of("dmabuf"));
    let pipeline = launch(&format!(
        "videotestsrc num-buffers=6 pattern=ball ! {BGRX} ! vmemexport name=v ! appsink name=out"
    ));
    let frames = collect(&pipeline, "out");
    run(&pipeline); // EOS, then NULL: vmemexport stops and its pool is deactivated
    let held: Vec<gst::Buffer> = frames.lock().unwrap().drain(..).map(|(_, b)| b).collect();
    drop(pipeline); // the element and the pool are gone; the frames are not
    assert!(
        fds_of("memfd:vmemexport") > memfds,
        "held frames keep their pages"
    );
    let sums: Vec<u64> = held
        .iter()
        .map(|b| checksum(&b.map_readable().unwrap()))
        .collect();
    assert_eq!(
        sums, expected,
        "frames held across shutdown keep their pixels"
    );
    drop(held);
    assert_eq!(
        fds_of("memfd:vmemexport"),
        memfds,
        "the last frame released the pool's memfds"
    );
    assert_eq!(fds_of("dmabuf"), dmabufs, "and every dma-buf");
    assert!(!memfd_mapped());
}

/// Concurrent streams: a different pattern each, so a frame of one seen by another shows.
const RUNS: [(&str, &str); 6] = [
    ("smpte", "backing=memfd"),
    ("ball", "backing=memfd"),
    ("zone-plate", "backing=heap heap=system"),
    ("checkers-8", "backing=heap heap=reserved"),
    ("circular", "backing=heap heap=system"),
    ("gamut", "backing=memfd"),
];

#[test]
#[ignore = "needs the VM testbed"]
fn pipelines_in_one_process_share_the_devices_without_cross_talk() {
    init();
    let runs = &RUNS;
    let frames = 40;
    let pipelines: Vec<_> = runs
        .iter()
        .map(|(pattern, opts)| {
            let p = launch(&format!(
                "videotestsrc num-buffers={frames} pattern={pattern} ! {BGRX} ! \
                 vmemexport name=v {opts} copy-fallback=false ! appsink name=out"
            ));
            let got = collect(&p, "out");
            (p, got)
        })
        .collect();
    for (p, _) in &pipelines {
        p.set_state(gst::State::Playing).unwrap();
    }
    for ((pattern, opts), (p, got)) in runs.iter().zip(&pipelines) {
        let msg = p
            .bus()
            .unwrap()
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(120),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("EOS within 2 minutes");
        assert!(
            matches!(msg.view(), gst::MessageView::Eos(_)),
            "{pattern} {opts}: {msg:?}"
        );
        p.set_state(gst::State::Null).unwrap();
        let expected = reference(pattern, frames);
        let got = got.lock().unwrap();
        assert_eq!(got.len(), frames as usize);
        for (_, buf) in got.iter() {
            assert!(gstvmem::memory::is_all_dmabuf(buf));
            let sum = checksum(&buf.map_readable().unwrap());
            assert_eq!(
                Some(&sum),
                expected.get(&buf.pts().unwrap().nseconds()),
                "{pattern} ({opts}): a frame with other pixels"
            );
        }
    }
}

#[test]
#[ignore = "needs the VM testbed"]
fn processes_at_once_share_udmabuf_and_heaps_without_cross_talk() {
    init();
    let runs = &RUNS[..4];
    let frames = 45;
    let mut producers = Vec::new();
    let mut clients = Vec::new();
    for (i, (pattern, opts)) in runs.iter().enumerate() {
        let sock = format!("/tmp/vmem-procs-{}-{i}.sock", std::process::id());
        let _ = std::fs::remove_file(&sock);
        // Paced at 30 fps by dmabufsink's clock sync, so the client joins early on; exact PTS.
        let producer = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "exec gst-launch-1.0 -q videotestsrc num-buffers={frames} \
                     pattern={pattern} ! {BGRX} ! vmemexport {opts} copy-fallback=false ! \
                     dmabufsink socket-path={sock} drop-policy=wait"
                ),
            ])
            .env("GST_PLUGIN_PATH", format!("{ROOT}/target/release"))
            .spawn()
            .unwrap();
        producers.push(producer);
        let deadline = std::time::Instant::now() + secs(60);
        while !std::path::Path::new(&sock).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{sock} never appeared"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let client = Command::new(format!("{ROOT}/target/debug/examples/dmabuf_client"))
            .arg(&sock)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        clients.push(client);
    }
    for (((pattern, opts), mut producer), client) in runs.iter().zip(producers).zip(clients) {
        let out = client.wait_with_output().unwrap();
        assert!(producer.wait().unwrap().success(), "{pattern} {opts}");
        assert!(out.status.success());
        let expected = reference(pattern, frames);
        let mut seen = 0;
        for line in out.stdout.lines().map(|l| l.unwrap()) {
            // frame <n> pts <ns> <w>x<h> <fourcc> fds <n> checksum <hex>
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() != Some(&"frame") {
                continue;
            }
            let (pts, sum): (u64, u64) = (
                f[3].parse().unwrap(),
                u64::from_str_radix(f[9], 16).unwrap(),
            );
            assert_eq!(
                Some(&sum),
                expected.get(&pts),
                "{pattern} ({opts}): the client read other pixels at pts {pts}"
            );
            seen += 1;
        }
        assert!(
            seen >= 20,
            "{pattern} ({opts}): only {seen} frames reached the client"
        );
    }
}
