// SPDX-License-Identifier: MPL-2.0
//! vmemexport on a kernel without udmabuf or dma-heaps (Debian 12's own kernel, many vendor
//! kernels) but with the vmemexp module: `backing=auto` exports its own memfd pool through
//! vmemexp, and frames reach importers with no copy.
//!
//! The suite runs this binary while vmemexp is loaded. On Debian 12's kernel the devices are
//! missing anyway; on kernels that have them, each test runs again in a mount namespace where
//! /dev/udmabuf and /dev/dma_heap are hidden, everything else (vmemexp, DRM, V4L2) still there.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use gst::prelude::*;

/// Runs test `name` again with /dev/udmabuf and /dev/dma_heap hidden, unless they are missing
/// already: true if the caller is to run the test here, false if the rerun did (and passed).
///
/// Hidden cheaply (a new /dev would take minutes to mount under emulation): an empty tmpfs
/// over /dev/dma_heap, and over /dev/udmabuf a character device of a major no driver has, which
/// opens as a missing device does (ENXIO).
fn without_udmabuf(name: &str) -> bool {
    if std::env::var_os("VMEM_UDMABUF_HIDDEN").is_some() {
        let udmabuf = std::fs::File::open("/dev/udmabuf").map_err(|e| e.raw_os_error());
        let heaps = std::fs::read_dir("/dev/dma_heap").map_or(0, |d| d.count());
        assert!(
            matches!(udmabuf, Err(Some(libc::ENXIO)) | Err(Some(libc::ENOENT))) && heaps == 0,
            "the mount namespace still shows udmabuf ({udmabuf:?}) or {heaps} heaps"
        );
        return true;
    }
    let present = Path::new("/dev/udmabuf").exists() || Path::new("/dev/dma_heap").exists();
    if !present {
        return true;
    }
    let script = r#"set -e; d=$(mktemp -d); mount -t tmpfs none "$d"
        if [ -e /dev/udmabuf ]; then mknod "$d/gone" c 4095 255; mount --bind "$d/gone" /dev/udmabuf; fi
        if [ -d /dev/dma_heap ]; then mount -t tmpfs none /dev/dma_heap; fi
        exec "$0" "$@""#;
    rerun_in_mount_namespace(name, script, "VMEM_UDMABUF_HIDDEN");
    false
}

const YUY2: &str = "video/x-raw,format=YUY2,width=640,height=360,framerate=30/1";

/// Zero-copy through vmemexp: every frame from the pool, one export per pool buffer.
fn assert_pool_exported(v: &gst::Element, frames: u64) {
    assert_eq!(stat(v, "frames"), frames);
    assert_eq!(
        stat(v, "copies"),
        0,
        "{}",
        v.property::<gst::Structure>("stats")
    );
    let exported = stat(v, "exported");
    assert!(
        (1..=6).contains(&exported),
        "one export per pool buffer, not per frame: {exported} for {frames} frames"
    );
    assert_eq!(stat(v, "export-cache-hits"), frames - exported);
    // The pool's exports are not pins of foreign memory.
    assert_eq!(stat(v, "pinned-exports"), 0);
}

#[test]
#[ignore = "needs the VM testbed"]
fn the_pool_leaves_through_vmemexp_with_the_frames_pixels() {
    if !without_udmabuf("the_pool_leaves_through_vmemexp_with_the_frames_pixels") {
        return;
    }
    init();
    assert!(
        Path::new(gstvmem::kernel::VMEMEXP_PATH).exists(),
        "the suite runs this binary with vmemexp loaded"
    );
    let frames = 10;
    let reference = frame_checksums(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! {YUY2} ! appsink name=out sync=false"
    ));
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! {YUY2} ! vmemexport name=v ! \
         appsink name=out sync=false"
    ));
    let sums = checksums_on_arrival(&pipeline, "out", exported_by(&["vmemexp"]));
    run(&pipeline);
    let sums: Vec<u64> = sums
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.clone().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(sums, reference);
    assert_pool_exported(&element(&pipeline, "v"), frames as u64);
}

#[test]
#[ignore = "needs the VM testbed"]
fn vivid_imports_the_pool_exported_through_vmemexp() {
    if !without_udmabuf("vivid_imports_the_pool_exported_through_vmemexp") {
        return;
    }
    init();
    let dev = v4l2_node("vivid", "vivid-000-vid-out");
    // vivid's default output is S-Video (PAL, interlaced); HDMI takes progressive frames.
    let status = Command::new("v4l2-ctl")
        .args(["-d", &dev, "--set-output=1"])
        .status()
        .expect("v4l2-ctl (v4l-utils) in the testbed");
    assert!(status.success());
    let pipeline = launch(&format!(
        "videotestsrc num-buffers=10 ! {YUY2} ! vmemexport name=v ! \
         v4l2sink device={dev} io-mode=dmabuf-import sync=false"
    ));
    run(&pipeline);
    assert_pool_exported(&element(&pipeline, "v"), 10);
}

#[test]
#[ignore = "needs the VM testbed"]
fn dmabufsink_imports_the_pool_exported_through_vmemexp_into_vgem() {
    if !without_udmabuf("dmabufsink_imports_the_pool_exported_through_vmemexp_into_vgem") {
        return;
    }
    init();
    let pipeline = launch(
        "videotestsrc num-buffers=10 ! video/x-raw,format=BGRx,width=320,height=240 ! \
         vmemexport name=v ! dmabufsink name=s drm-device=driver:vgem",
    );
    run(&pipeline);
    assert_pool_exported(&element(&pipeline, "v"), 10);
    let s = element(&pipeline, "s");
    assert_eq!(stat(&s, "import-failures"), 0);
    assert!(stat(&s, "imported") > 0);
}

#[test]
#[ignore = "needs the VM testbed"]
fn backing_memfd_exports_through_vmemexp_too() {
    if !without_udmabuf("backing_memfd_exports_through_vmemexp_too") {
        return;
    }
    init();
    let pipeline = launch(&format!(
        "videotestsrc num-buffers=5 ! {YUY2} ! vmemexport name=v backing=memfd ! fakesink"
    ));
    run(&pipeline);
    assert_pool_exported(&element(&pipeline, "v"), 5);
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_user_whose_memlock_cannot_hold_the_pool_gets_the_fix() {
    // The pool's pages are pinned, charged to the user's RLIMIT_MEMLOCK while a holder keeps
    // them: a user with room plays, one without gets an error that names the limit, and
    // nothing else happens (there is no other way to make a dma-buf here).
    if !without_udmabuf("a_user_whose_memlock_cannot_hold_the_pool_gets_the_fix") {
        return;
    }
    let _open = OpenToAll::new(gstvmem::kernel::VMEMEXP_PATH);
    let desc = "videotestsrc num-buffers=5 ! video/x-raw,format=BGRx,width=320,height=240 ! \
                vmemexport ! fakesink";
    let (ok, roomy) = gst_launch_as_nobody(desc, 65536, None);
    assert!(ok && !roomy.contains("Copying frames"), "{roomy}");
    // 64 KiB cannot hold one 300 KiB frame.
    let (ok, limited) = gst_launch_as_nobody(desc, 64, None);
    assert!(
        !ok && limited.contains("RLIMIT_MEMLOCK (65536 bytes") && limited.contains("CAP_IPC_LOCK"),
        "{limited}"
    );
}
