// SPDX-License-Identifier: MPL-2.0
//! Real consumers of vmemexport's dma-bufs: GStreamer's GL upload (EGL dma-buf import, Mesa
//! llvmpipe) and a Wayland compositor (weston, GL renderer, on vkms) through waylandsink. Runs
//! in the VM testbed (tests/vm/suite passes --include-ignored). The GL tests run on 1.22, 1.26
//! and 1.28; the compositor tests on 1.26 and 1.28, whose userlands have weston (the 1.22
//! userland is the host's own root, which has none).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::weston::*;
use common::*;
use gst::prelude::*;
use gstvmem::formats::CapsKind;

const FRAMES: usize = 12;

/// A moving pattern, so every frame differs and a stale frame cannot pass for the right one.
fn source(format: &str) -> String {
    format!(
        "videotestsrc num-buffers={FRAMES} pattern=smpte horizontal-speed=8 ! \
         video/x-raw,format={format},width=640,height=480,framerate=10/1"
    )
}

/// The caps kind vmemexport negotiates with glupload and waylandsink: DMA_DRM from 1.26 on
/// (both advertise it); 1.22's glupload takes `video/x-raw(memory:DMABuf), format=<FORMAT>`.
fn expected_caps_kind() -> CapsKind {
    if gst_version() >= (1, 26) {
        CapsKind::DmaDrm
    } else {
        CapsKind::DmaBufLegacy
    }
}

fn assert_no_copies(v: &gst::Element, frames: usize) {
    assert_eq!(stat(v, "frames"), frames as u64);
    assert_eq!(stat(v, "copies"), 0, "vmemexport copied frames");
    assert_eq!(stat(v, "bytes-copied"), 0);
    let exported = stat(v, "exported");
    assert!(
        (1..=6).contains(&exported),
        "one export per pool buffer, not per frame: {exported} for {frames} frames"
    );
}

/// Records, on the sink pad of `name`, the caps of the buffers that reached it (read after the
/// pipeline is set to NULL, which clears the pad's current caps).
fn record_caps(pipeline: &gst::Pipeline, name: &str) -> Arc<Mutex<Option<gst::Caps>>> {
    let seen = Arc::new(Mutex::new(None));
    let store = seen.clone();
    element(pipeline, name)
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
            *store.lock().unwrap() = pad.current_caps();
            gst::PadProbeReturn::Ok
        });
    seen
}

// ---------------------------------------------------------------------------------------------
// GL: glupload imports the dma-bufs through EGL, gldownload reads the textures back.
//
// No environment is needed in the guest: with no X11 or Wayland display GstGL falls back to a
// GBM display on the first render node (vgem), Mesa has no vgem driver and loads its software
// rasterizer (llvmpipe), which takes dma-bufs through EGL_EXT_image_dma_buf_import.
// ---------------------------------------------------------------------------------------------

/// The uploaders glupload used, from its own log (`uploader NAME returned N`; the same wording
/// in 1.22-1.28), one entry per uploaded buffer.
fn uploaders(log: &LogCapture) -> Vec<String> {
    log.matching("glupload", "returned")
        .iter()
        .filter_map(|m| {
            let rest = m.strip_prefix("uploader ")?;
            Some(rest[..rest.find(" returned")?].to_string())
        })
        .collect()
}

fn gl_roundtrip(format: &str) {
    init();
    let log = LogCapture::new(&["glupload"], gst::DebugLevel::Log);
    let producer = frame_checksums(&format!("{} ! appsink name=out", source(format)));
    assert_eq!(producer.len(), FRAMES);

    // `video/x-raw` after gldownload keeps it from handing out its own dma-bufs (1.24+).
    let pipeline = launch(&format!(
        "{} ! vmemexport name=v ! glupload name=up ! gldownload ! video/x-raw ! \
         appsink name=out",
        source(format)
    ));
    let caps = record_caps(&pipeline, "up");
    let read_back = checksums_on_arrival(&pipeline, "out", |_| Ok(()));
    run(&pipeline);
    let read_back: Vec<u64> = read_back
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.clone().unwrap())
        .collect();
    assert_eq!(read_back.len(), FRAMES);
    let same = read_back
        .iter()
        .zip(&producer)
        .filter(|(a, b)| a == b)
        .count();
    eprintln!("{format}: {same} of {FRAMES} frames read back from GL equal the producer's");
    // The 1.22 and 1.26 userlands' Mesa (22.3, 25.0) samples zeros from every imported
    // dma-buf in this guest, vivid's own as much as ours; the 1.28 userland's (26.1) reads
    // them (README, "Compositor and GL consumers").
    if gst_version() >= (1, 28) {
        assert_eq!(
            read_back, producer,
            "{format}: the pixels GL read back from the imported dma-bufs differ from the \
             producer's"
        );
    }
    assert_no_copies(&element(&pipeline, "v"), FRAMES);

    // Every upload went through an EGL dma-buf import: DirectDmabuf (one EGLImage, RGB) or
    // Dmabuf (one EGLImage per plane); never the raw-data upload, which would be a copy.
    let used = uploaders(&log);
    assert!(
        used.len() >= FRAMES,
        "{format}: glupload logged {} uploads for {FRAMES} frames: {used:?}",
        used.len()
    );
    assert!(
        used.iter()
            .all(|u| u == "DirectDmabuf" || u == "DirectDmabufExternal" || u == "Dmabuf"),
        "{format}: glupload did not import every buffer as a dma-buf: {used:?}"
    );
    eprintln!("{format}: glupload used {:?}", used.first().unwrap());

    let caps = caps
        .lock()
        .unwrap()
        .clone()
        .expect("no buffer reached glupload");
    let (info, kind) = gstvmem::formats::video_info_from_caps(&caps).unwrap();
    assert_eq!(info.format(), gst_video::VideoFormat::from_string(format));
    assert_eq!(kind, expected_caps_kind(), "{caps}");
}

#[test]
#[ignore = "needs the VM testbed"]
fn glupload_imports_bgrx_through_egl() {
    gl_roundtrip("BGRx");
}

#[test]
#[ignore = "needs the VM testbed"]
fn glupload_imports_nv12_through_egl() {
    gl_roundtrip("NV12");
}

// ---------------------------------------------------------------------------------------------
// Wayland: weston with its GL renderer on vkms (DRM backend), waylandsink as the client.
// ---------------------------------------------------------------------------------------------

fn waylandsink_on_weston(format: &str) {
    init();
    if gst_version() < (1, 26) {
        // Decided by version, not by looking for the binary: on 1.26 and 1.28 a missing
        // weston is a failure.
        eprintln!("skipped: the 1.22 userland (the host's root) has no Wayland compositor");
        return;
    }
    let log = wl_log();
    let ((pipeline, caps, result), seen, crashes) = on_fresh_weston(format, &log, |socket| {
        let pipeline = launch(&format!(
            "{} ! vmemexport name=v ! waylandsink name=w display={}",
            source(format),
            socket.display()
        ));
        let caps = record_caps(&pipeline, "w");
        let result = run_for(&pipeline, Duration::from_secs(300));
        (pipeline, caps, result)
    });
    if let Some(e) = result.error {
        panic!("{format}: the client failed with weston up: {e}");
    }
    let v = element(&pipeline, "v");
    assert_no_copies(&v, FRAMES);
    eprintln!(
        "{format}: {} linux-dmabuf wl_buffers, {} wl_shm copies, {} import timeouts, {} dma-bufs \
         exported; {crashes} weston crashes before",
        seen.dmabuf,
        seen.shm,
        seen.timeouts,
        stat(&v, "exported"),
    );
    assert_dmabuf_wl_buffers(format, &seen);
    let caps = caps
        .lock()
        .unwrap()
        .clone()
        .expect("no buffer reached waylandsink");
    let (info, kind) = gstvmem::formats::video_info_from_caps(&caps).unwrap();
    assert_eq!(info.format(), gst_video::VideoFormat::from_string(format));
    assert_eq!(kind, expected_caps_kind(), "{caps}");
}

#[test]
#[ignore = "needs the VM testbed"]
fn waylandsink_on_weston_imports_bgrx() {
    waylandsink_on_weston("BGRx");
}

#[test]
#[ignore = "needs the VM testbed"]
fn waylandsink_on_weston_imports_nv12() {
    waylandsink_on_weston("NV12");
}
