// SPDX-License-Identifier: MPL-2.0
//! Reliability checks that fit in CI (VM testbed, every userland): fd hygiene across exec,
//! state cycling without growth, caps renegotiation mid-stream.

mod common;

use common::*;
use gst::prelude::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
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
fn state_cycles_do_not_grow_fds_or_memory() {
    init();
    let pipeline = launch(
        "videotestsrc num-buffers=3 ! video/x-raw,format=BGRx,width=320,height=240 ! vmemexport ! \
         dmabufsink drm-device=driver:vkms",
    );
    let cycle = || {
        let _ = run_for(&pipeline, secs(30));
    };
    for _ in 0..5 {
        cycle(); // warm-up: registry, caches
    }
    let (fds, rss) = (open_fds(), rss_kib());
    for _ in 0..100 {
        cycle();
    }
    assert_eq!(
        open_fds(),
        fds,
        "fds grew over 100 NULL->PLAYING->NULL cycles"
    );
    let grown = rss_kib().saturating_sub(rss);
    assert!(grown < 8 * 1024, "RSS grew {grown} KiB over 100 cycles");
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

#[test]
#[ignore = "needs the VM testbed"]
fn a_user_without_device_access_gets_the_device_and_the_fix() {
    use std::os::unix::process::CommandExt;
    // As nobody: /dev/udmabuf and the heaps are root's (mode 0600 in the testbed).
    let out = std::process::Command::new("gst-launch-1.0")
        .args([
            "videotestsrc",
            "num-buffers=1",
            "!",
            "vmemexport",
            "!",
            "fakesink",
        ])
        .env(
            "GST_PLUGIN_PATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/release"),
        )
        .env(
            "GST_REGISTRY",
            format!("/tmp/vmem-nobody-registry-{}.bin", std::process::id()),
        )
        .env("HOME", "/tmp")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("permission denied on /dev/udmabuf"), "{text}");
    assert!(text.contains("read-write access is needed"), "{text}");
    assert!(
        text.contains("permission denied on /dev/dma_heap/"),
        "{text}"
    );
}

/// Pushes five 64x48 BGRx frames through `vmemexport ! appsink` from appsrc, each built by
/// `make`, and returns vmemexport's copies and whether every frame arrived intact.
fn push_frames(make: impl Fn(u8, &gst_video::VideoInfo) -> gst::Buffer) -> (u64, bool) {
    init();
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Bgrx, 64, 48)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .unwrap();
    let pipeline =
        launch("appsrc name=src format=time ! vmemexport name=v ! appsink name=out sync=false");
    let src = element(&pipeline, "src")
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(&info.to_caps().unwrap()));
    let frames = collect(&pipeline, "out");
    let mut expected = Vec::new();
    for i in 0..5u8 {
        let buf = make(i, &info);
        expected.push(checksum(&normalized_frame(&buf, &info)));
        src.push_buffer(buf).unwrap();
    }
    src.end_of_stream().unwrap();
    run(&pipeline);
    let got: Vec<u64> = frames
        .lock()
        .unwrap()
        .iter()
        .map(|(caps, buf)| {
            assert!(gstvmem::memory::is_all_dmabuf(buf));
            let (info, _) = gstvmem::formats::video_info_from_caps(caps).unwrap();
            checksum(&normalized_frame(buf, &info))
        })
        .collect();
    (stat(&element(&pipeline, "v"), "copies"), got == expected)
}

#[test]
#[ignore = "needs the VM testbed"]
fn multi_memory_buffers_are_copied_intact() {
    // Each frame split over two memories at an odd byte: not exportable as one dma-buf.
    let (copies, intact) = push_frames(|i, info| {
        let bytes: Vec<u8> = (0..info.size())
            .map(|b| (b as u8).wrapping_mul(i + 3))
            .collect();
        let mut buf = gst::Buffer::new();
        {
            let b = buf.get_mut().unwrap();
            b.append_memory(gst::Memory::from_slice(bytes[..1001].to_vec()));
            b.append_memory(gst::Memory::from_slice(bytes[1001..].to_vec()));
        }
        buf
    });
    assert_eq!(copies, 5);
    assert!(intact, "copied frames must keep every pixel");
}

#[test]
#[ignore = "needs the VM testbed"]
fn odd_strides_and_offsets_are_honoured() {
    // 64x48 BGRx with a 300-byte stride (not a multiple of 4 pixels' worth plus padding) and
    // the image starting 100 bytes in, described by VideoMeta.
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
    assert_eq!(copies, 5);
    assert!(
        intact,
        "the copy must follow the source's strides and offsets"
    );
}
