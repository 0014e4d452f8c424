// SPDX-License-Identifier: MPL-2.0
//! The dmaheap allocator against the real kernel's heaps (VM testbed, every userland).

mod common;

use std::os::fd::{AsRawFd, BorrowedFd};

use common::*;
use gst::prelude::*;
use gst_video::prelude::*;
use gstvmem::heapalloc::DmaHeapAllocator;
use gstvmem::kernel::{self, Mapping, SyncAccess};

const CMA: &str = "reserved"; // the testbed's CMA heap, from cma=128M

fn dmabuf_fd(mem: &gst::MemoryRef) -> kernel::DmaBuf<'_> {
    gstvmem::memory::dmabuf_fd(mem).expect("dma-buf memory")
}

/// The dma-buf fds this process holds.
fn dmabuf_fds() -> usize {
    std::fs::read_dir("/proc/self/fdinfo")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|info| info.lines().any(|l| l.starts_with("exp_name:")))
        .count()
}

#[test]
#[ignore = "needs the VM testbed"]
fn system_and_cma_memory_is_shared_bytes() {
    init();
    for heap in ["system", CMA] {
        let allocator = DmaHeapAllocator::new(heap).unwrap();
        assert_eq!(allocator.heap_name().unwrap(), heap);
        assert_eq!(allocator.is_contiguous().unwrap(), heap == CMA);
        let mut mem = allocator.alloc(100_000, None).unwrap();
        assert_eq!(mem.size(), 100_000);
        assert_eq!(mem.maxsize() as u64, kernel::page_align(100_000).unwrap());
        {
            let mut map = mem.get_mut().unwrap().map_writable().unwrap();
            for (i, b) in map.iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
        }
        let fd = dmabuf_fd(&mem);
        assert_eq!(
            kernel::dmabuf_name(fd).unwrap(),
            format!("heapalloc:{heap}")
        );
        // A second, independent mapping of the same dma-buf sees the same bytes.
        // SAFETY: read with copy_out only.
        let other = unsafe { Mapping::new(fd.fd(), 0, mem.maxsize(), false) }.unwrap();
        kernel::sync_start(fd, SyncAccess::Read).unwrap();
        let seen = other.copy_out(0, 100_000);
        assert!(
            seen.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
            "{heap}"
        );
        kernel::sync_end(fd, SyncAccess::Read).unwrap();
        // And so does another process that receives the fd.
        assert_eq!(
            checksum_in_child(fd.fd(), 100_000),
            checksum(&seen),
            "{heap}"
        );
    }
}

/// Sends `fd` to another process (the recv_dmabuf example) over a socket and returns the
/// checksum of the first `len` bytes it read through its own mmap.
fn checksum_in_child(fd: BorrowedFd<'_>, len: usize) -> u64 {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    // The child's end survives exec in the child only; ours never does.
    let child = {
        use std::os::unix::process::CommandExt;
        let raw = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/debug/examples/recv_dmabuf"
        ));
        cmd.args([raw.to_string(), len.to_string()])
            .stdout(std::process::Stdio::piped());
        // SAFETY: fcntl is async-signal-safe; it runs in the child between fork and exec, on
        // an fd the child inherited.
        unsafe {
            cmd.pre_exec(move || {
                rustix::io::fcntl_setfd(
                    std::os::fd::BorrowedFd::borrow_raw(raw),
                    rustix::io::FdFlags::empty(),
                )
                .map_err(std::io::Error::from)
            })
        };
        cmd.spawn()
            .expect("the recv_dmabuf example is built by cargo test")
    };
    drop(theirs);
    kernel::send_with_fds(&ours, b"fd", &[fd], rustix::net::SendFlags::empty()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {text}");
    text.strip_prefix("checksum ")
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no checksum from the child: {text}"))
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_stock_video_buffer_pool_allocates_from_the_heap() {
    init();
    let allocator = DmaHeapAllocator::new("system").unwrap();
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Nv12, 1280, 720)
        .build()
        .unwrap();
    let pool = gst_video::VideoBufferPool::new();
    let mut config = pool.config();
    config.set_params(Some(&info.to_caps().unwrap()), info.size() as u32, 2, 4);
    config.set_allocator(Some(&allocator), None);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
    let align = gst_video::VideoAlignment::new(0, 0, 0, 0, &[63, 63, 0, 0]);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT);
    config.set_video_alignment(&align);
    pool.set_config(config).unwrap();
    pool.set_active(true).unwrap();
    let buffers: Vec<gst::Buffer> = (0..4).map(|_| pool.acquire_buffer(None).unwrap()).collect();
    for b in &buffers {
        assert_eq!(b.n_memory(), 1);
        assert!(gstvmem::memory::is_all_dmabuf(b));
        let meta = b.meta::<gst_video::VideoMeta>().expect("VideoMeta");
        assert_eq!(
            meta.stride()[0] % 64,
            0,
            "stride alignment honoured: {:?}",
            meta.stride()
        );
        assert!(b.size() >= info.size());
    }
    drop(buffers);
    pool.set_active(false).unwrap();
}

#[test]
#[ignore = "needs the VM testbed"]
fn heap_buffers_reach_kmssink_without_copies() {
    init();
    for heap in ["system", CMA] {
        let log = LogCapture::new(&["kmssink", "GST_PERFORMANCE"], gst::DebugLevel::Log);
        let pipeline = launch(&format!(
            "videotestsrc num-buffers=10 ! video/x-raw,format=BGRx,width=640,height=480 ! \
             vmemexport name=v backing=heap heap={heap} ! kmssink name=k driver-name=vkms sync=false"
        ));
        let proof = ScanoutProof::install(&pipeline, "k");
        run(&pipeline);
        proof.assert_on_screen(heap);
        let v = element(&pipeline, "v");
        // videotestsrc wrote straight into heap dma-bufs: nothing to export or copy.
        assert_eq!(stat(&v, "passthrough"), 10, "{heap}");
        assert_eq!(stat(&v, "exported"), 0, "{heap}");
        assert_eq!(stat(&v, "copies"), 0, "{heap}");
        assert_eq!(log.count("GST_PERFORMANCE", "frame copy"), 0, "{heap}");
        if let Some((new, reused)) = kmssink_imports(&log) {
            assert_eq!(new + reused, 11, "{heap}");
        }
    }
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_contiguous_importer_takes_cma_but_not_scattered_pages() {
    // vivid instance 1 uses vb2-dma-contig (vivid.allocators=0,1 on the testbed's command
    // line): like a device without an IOMMU it can only import physically contiguous memory.
    init();
    let dev = vivid_output(1);
    let caps = "video/x-raw,format=YUY2,width=640,height=360";
    let ok = launch(&format!(
        "videotestsrc num-buffers=5 ! {caps} ! vmemexport name=v backing=heap heap={CMA} ! \
         v4l2sink device={dev} io-mode=dmabuf-import sync=false"
    ));
    run(&ok);
    assert_eq!(stat(&element(&ok, "v"), "passthrough"), 5);
    let scattered = launch(&format!(
        "videotestsrc num-buffers=5 ! {caps} ! vmemexport backing=heap heap=system ! \
         v4l2sink device={dev} io-mode=dmabuf-import sync=false"
    ));
    let result = run_for(&scattered, secs(60));
    assert!(
        result.error.is_some(),
        "scattered pages must not import into a dma-contig device"
    );
}

#[test]
#[ignore = "needs the VM testbed"]
fn exhausting_the_cma_heap_is_a_clear_error_and_recoverable() {
    init();
    let allocator = DmaHeapAllocator::new(CMA).unwrap();
    let heap = kernel::Heap::open(CMA).unwrap();
    let fds_before = dmabuf_fds();
    let mut held = Vec::new();
    let err = loop {
        match heap.allocate(16 << 20) {
            Ok(fd) => held.push(fd),
            Err(e) => break e,
        }
        assert!(
            held.len() < 64,
            "a 128 MiB CMA area cannot hold 64 x 16 MiB"
        );
    };
    assert!(matches!(err, kernel::Error::OutOfMemory { .. }), "{err:?}");
    assert!(err.to_string().contains("CMA area is exhausted"), "{err}");
    assert!(!held.is_empty(), "not even one allocation: {err}");
    // Through the GStreamer allocator: an allocation failure, not a crash.
    assert!(allocator.alloc(16 << 20, None).is_err());
    held.clear();
    assert_eq!(dmabuf_fds(), fds_before, "no dma-buf fd leaked");
    // Freed memory is usable again.
    let mem = allocator
        .alloc(16 << 20, None)
        .expect("allocation after freeing");
    assert_eq!(mem.size(), 16 << 20);
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_pipeline_whose_frames_exceed_the_cma_area_fails_cleanly() {
    init();
    // 8192x4320 BGRx is 135 MiB per frame: more than the whole 128 MiB CMA area.
    let before = dmabuf_fds();
    let pipeline = launch(&format!(
        "videotestsrc num-buffers=2 ! video/x-raw,format=BGRx,width=8192,height=4320 ! \
         vmemexport backing=heap heap={CMA} ! fakesink"
    ));
    let result = run_for(&pipeline, secs(120));
    let error = result.error.expect("allocation must fail");
    assert!(
        error.contains("Cannot allocate 141557760-byte frames"),
        "{error}"
    );
    assert!(error.contains("CMA area is exhausted"), "{error}");
    drop(pipeline);
    assert_eq!(
        dmabuf_fds(),
        before,
        "nothing of the failed attempt is left open"
    );
}

/// Runs python3 with `args` and the plugin on its path; its standard output, if it succeeded.
fn python(args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .args(args)
        .env(
            "GST_PLUGIN_PATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/release"),
        )
        .output()
        .expect("python3 in the testbed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
#[ignore = "needs the VM testbed"]
fn python_finds_the_allocator_by_name() {
    let text = python(&[concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/heapalloc.py"
    )]);
    assert!(
        text.contains("dmaheap: allocated 1048576 bytes of dma-buf memory"),
        "{text}"
    );
}

#[test]
#[ignore = "needs the VM testbed"]
fn python_gets_none_for_zero_and_absurd_sizes() {
    // Through PyGObject, i.e. gst_allocator_alloc from C: no abort, a None per refusal, and a
    // real allocation still works afterwards.
    let script = "import gi\n\
        gi.require_version('Gst', '1.0')\n\
        from gi.repository import Gst\n\
        Gst.init(None)\n\
        assert Gst.Plugin.load_by_name('vmem')\n\
        a = Gst.Allocator.find('dmaheap')\n\
        for size in (0, 2**62, 2**63 - 1, 2**64 - 1, 1):\n\
        \x20   m = Gst.Allocator.alloc(a, size, None)\n\
        \x20   print(size, 'none' if m is None else m.get_sizes()[0])\n";
    let text = python(&["-c", script]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "0 none",
            "4611686018427387904 none",
            "9223372036854775807 none",
            "18446744073709551615 none",
            "1 1"
        ],
        "{text}"
    );
}
