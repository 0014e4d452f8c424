// SPDX-License-Identifier: MPL-2.0
//! The kernel layer against the real kernel. These tests run in the VM testbed
//! (`tests/vm/suite`, which passes `--include-ignored`); there a missing device is a failure.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use gstvmem::heapalloc::HeapSelection;
use gstvmem::kernel::*;
use rustix::fs::SealFlags;

fn page() -> u64 {
    page_size()
}

fn udmabuf() -> Udmabuf {
    Udmabuf::open().expect("/dev/udmabuf must exist in the testbed")
}

fn filled_memfd(pages: u64, seed: u8) -> (Memfd, Mapping) {
    let memfd = Memfd::new("vm-kernel-test", pages * page()).unwrap();
    // SAFETY: the test is the only user of these pages while it holds the slices.
    let mut map = unsafe { memfd.map() }.unwrap();
    for (i, b) in map.as_mut_slice().iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    (memfd, map)
}

/// `fd` as a dma-buf, checked.
fn as_dmabuf(fd: &OwnedFd) -> DmaBuf<'_> {
    DmaBuf::new(fd.as_fd()).expect("a dma-buf")
}

fn read_dmabuf(fd: DmaBuf<'_>, len: u64) -> Vec<u8> {
    // SAFETY: read with copy_out only.
    let map = unsafe { Mapping::new(fd, 0, len as usize, false) }.unwrap();
    sync_start(fd, SyncAccess::Read).unwrap();
    let bytes = map.copy_out(0, len as usize);
    sync_end(fd, SyncAccess::Read).unwrap();
    bytes
}

fn assert_cloexec(fd: BorrowedFd<'_>, what: &str) {
    let flags = rustix::io::fcntl_getfd(fd).unwrap();
    assert!(
        flags.contains(rustix::io::FdFlags::CLOEXEC),
        "{what} lacks O_CLOEXEC"
    );
}

fn errno(e: &Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("no errno in {e:?}"))
}

#[test]
#[ignore = "needs the VM testbed"]
fn udmabuf_shares_the_memfd_pages() {
    let (memfd, mut map) = filled_memfd(4, 7);
    let dev = udmabuf();
    let dmabuf = dev.create(memfd.as_fd(), 0, 4 * page()).unwrap();
    assert_cloexec(memfd.as_fd(), "memfd");
    assert_cloexec(dmabuf.as_fd(), "udmabuf dma-buf");
    assert_eq!(dmabuf_size(as_dmabuf(&dmabuf)).unwrap(), 4 * page());
    assert_eq!(read_dmabuf(as_dmabuf(&dmabuf), 4 * page()), map.as_slice());
    // Same pages, not a snapshot: a write after export is seen through the dma-buf.
    map.as_mut_slice()[page() as usize..][..5].copy_from_slice(b"hello");
    let seen = read_dmabuf(as_dmabuf(&dmabuf), 4 * page());
    assert_eq!(&seen[page() as usize..][..5], b"hello");
}

#[test]
#[ignore = "needs the VM testbed"]
fn udmabuf_exports_a_range_at_an_offset() {
    let (memfd, map) = filled_memfd(4, 3);
    let dmabuf = udmabuf().create(memfd.as_fd(), page(), 2 * page()).unwrap();
    let p = page() as usize;
    assert_eq!(
        read_dmabuf(as_dmabuf(&dmabuf), 2 * page()),
        &map.as_slice()[p..3 * p]
    );
}

#[test]
#[ignore = "needs the VM testbed"]
fn udmabuf_create_list_concatenates_ranges() {
    let (a, map_a) = filled_memfd(3, 1);
    let (b, map_b) = filled_memfd(2, 2);
    let p = page() as usize;
    let dmabuf = udmabuf()
        .create_list(&[
            UdmabufRange {
                memfd: a.as_fd(),
                offset: page(),
                size: 2 * page(),
            },
            UdmabufRange {
                memfd: b.as_fd(),
                offset: 0,
                size: page(),
            },
        ])
        .unwrap();
    assert_cloexec(dmabuf.as_fd(), "udmabuf list dma-buf");
    let mut expected = map_a.as_slice()[p..3 * p].to_vec();
    expected.extend_from_slice(&map_b.as_slice()[..p]);
    assert_eq!(read_dmabuf(as_dmabuf(&dmabuf), 3 * page()), expected);
}

#[test]
#[ignore = "needs the VM testbed"]
fn udmabuf_limits_come_from_the_module() {
    let limits = udmabuf().limits();
    assert_eq!(limits.size_limit, 64 << 20);
    assert_eq!(limits.list_limit, 1024);
    assert!(std::path::Path::new("/sys/module/udmabuf/parameters/size_limit_mb").exists());
}

#[test]
#[ignore = "needs the VM testbed"]
fn udmabuf_rejects_unaligned_ranges_like_the_kernel() {
    let (memfd, _map) = filled_memfd(4, 0);
    let dev = udmabuf();
    let e = dev.create(memfd.as_fd(), 100, page()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unaligned {
                what: "offset",
                value: 100,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "offset 100 is not a multiple of the page size ({} bytes)",
            page()
        )
    );
    let e = dev.create(memfd.as_fd(), 0, page() + 1).unwrap_err();
    assert!(matches!(e, Error::Unaligned { what: "size", .. }), "{e:?}");
    // The kernel enforces the same rule: EINVAL.
    let e = dev
        .create_unchecked(memfd.as_fd(), 100, page())
        .unwrap_err();
    assert_eq!(errno(&e), rustix::io::Errno::INVAL.raw_os_error());
    let e = dev
        .create_unchecked(memfd.as_fd(), 0, page() + 1)
        .unwrap_err();
    assert_eq!(errno(&e), rustix::io::Errno::INVAL.raw_os_error());
}

#[test]
#[ignore = "needs the VM testbed"]
fn udmabuf_requires_the_shrink_seal() {
    let memfd = Memfd::new_unsealed("unsealed", page()).unwrap();
    let dev = udmabuf();
    let e = dev.create(memfd.as_fd(), 0, page()).unwrap_err();
    assert!(matches!(e, Error::NotSealedShrink), "{e:?}");
    assert!(e.to_string().contains("F_SEAL_SHRINK"));
    let e = dev.create_unchecked(memfd.as_fd(), 0, page()).unwrap_err();
    assert_eq!(errno(&e), rustix::io::Errno::INVAL.raw_os_error());
}

#[test]
#[ignore = "needs the VM testbed"]
fn udmabuf_refuses_write_sealed_memfds() {
    let memfd = Memfd::new("write-sealed", page()).unwrap();
    memfd.add_seals(SealFlags::WRITE).unwrap();
    let dev = udmabuf();
    let e = dev.create(memfd.as_fd(), 0, page()).unwrap_err();
    assert!(matches!(e, Error::WriteSealed), "{e:?}");
    let e = dev.create_unchecked(memfd.as_fd(), 0, page()).unwrap_err();
    assert_eq!(errno(&e), rustix::io::Errno::INVAL.raw_os_error());
}

#[test]
#[ignore = "needs the VM testbed"]
fn udmabuf_refuses_more_than_the_size_limit() {
    let size = (64 << 20) + page();
    let memfd = Memfd::new("too-big", size).unwrap();
    let dev = udmabuf();
    let e = dev.create(memfd.as_fd(), 0, size).unwrap_err();
    assert!(matches!(e, Error::TooLarge { limit_mb: 64, .. }), "{e:?}");
    let e = dev.create_unchecked(memfd.as_fd(), 0, size).unwrap_err();
    assert_eq!(errno(&e), rustix::io::Errno::INVAL.raw_os_error());
    // Exactly the limit is fine.
    dev.create(memfd.as_fd(), 0, 64 << 20).unwrap();
}

#[test]
#[ignore = "needs the VM testbed"]
fn udmabuf_refuses_too_many_ranges() {
    let memfd = Memfd::new("many", page()).unwrap();
    let ranges = vec![
        UdmabufRange {
            memfd: memfd.as_fd(),
            offset: 0,
            size: page()
        };
        1025
    ];
    let e = udmabuf().create_list(&ranges).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ListTooLong {
                count: 1025,
                limit: 1024
            }
        ),
        "{e:?}"
    );
}

#[test]
#[ignore = "needs the VM testbed"]
fn udmabuf_refuses_what_is_not_a_memfd() {
    let heap = Heap::open("system").unwrap();
    let not_memfd = heap.allocate(page() as usize).unwrap();
    let dev = udmabuf();
    let e = dev.create(not_memfd.as_fd(), 0, page()).unwrap_err();
    assert!(matches!(e, Error::NotMemfd), "{e:?}");
    let e = dev
        .create_unchecked(not_memfd.as_fd(), 0, page())
        .unwrap_err();
    assert!(
        matches!(e, Error::NotMemfd),
        "the kernel says EBADFD: {e:?}"
    );
    let e = dev
        .create(memfd_past_end().as_fd(), page(), page())
        .unwrap_err();
    assert!(matches!(e, Error::OutOfRange { .. }), "{e:?}");
}

fn memfd_past_end() -> Memfd {
    Memfd::new("short", page()).unwrap()
}

#[test]
#[ignore = "needs the VM testbed"]
fn heaps_of_the_testbed_allocate_map_and_name() {
    let heaps = available_heaps();
    assert!(heaps.contains(&"system".to_string()), "{heaps:?}");
    assert!(
        heaps.iter().any(|h| CMA_HEAP_NAMES.contains(&h.as_str())),
        "no CMA heap: {heaps:?}"
    );
    for name in &heaps {
        let heap = Heap::open(name).unwrap();
        let fd: OwnedFd = heap.allocate(1 << 20).unwrap();
        assert_cloexec(fd.as_fd(), "heap dma-buf");
        assert_eq!(dmabuf_size(as_dmabuf(&fd)).unwrap(), 1 << 20);
        // SAFETY: a fresh heap buffer that only this test maps.
        let mut map = unsafe { Mapping::new(&fd, 0, 1 << 20, true) }.unwrap();
        sync_start(as_dmabuf(&fd), SyncAccess::Write).unwrap();
        map.as_mut_slice().fill(0x5a);
        sync_end(as_dmabuf(&fd), SyncAccess::Write).unwrap();
        assert!(
            read_dmabuf(as_dmabuf(&fd), 1 << 20)
                .iter()
                .all(|&b| b == 0x5a),
            "heap {name}"
        );
        set_dmabuf_name(as_dmabuf(&fd), &format!("test:{name}")).unwrap();
        assert_eq!(dmabuf_name(as_dmabuf(&fd)).unwrap(), format!("test:{name}"));
    }
}

#[test]
#[ignore = "needs the VM testbed"]
fn auto_heap_selection_picks_the_cma_heap() {
    let heap = Heap::open_first(&HeapSelection::Auto.candidates()).unwrap();
    assert_eq!(heap.name(), "reserved");
    assert!(heap.is_contiguous());
    let e = Heap::open("linux,cma").unwrap_err();
    assert_eq!(
        e.to_string(),
        "heap 'linux,cma' not found; available: reserved, system"
    );
    let heap = gstvmem::heapalloc::open_heap("linux,cma,system").unwrap();
    assert_eq!(heap.name(), "system");
}

#[test]
#[ignore = "needs the VM testbed"]
fn dma_buf_sync_brackets_cpu_access() {
    let (memfd, _map) = filled_memfd(1, 0);
    let dmabuf = udmabuf().create(memfd.as_fd(), 0, page()).unwrap();
    // udmabuf refuses an end without a begin (it has no mapping to sync yet).
    let e = sync_end(as_dmabuf(&dmabuf), SyncAccess::ReadWrite).unwrap_err();
    assert_eq!(errno(&e), rustix::io::Errno::INVAL.raw_os_error());
    for access in [SyncAccess::Read, SyncAccess::Write, SyncAccess::ReadWrite] {
        sync_start(as_dmabuf(&dmabuf), access).unwrap();
        sync_end(as_dmabuf(&dmabuf), access).unwrap();
    }
    set_dmabuf_name(as_dmabuf(&dmabuf), "a-name-longer-than-the-kernel-keeps").unwrap();
    assert_eq!(
        dmabuf_name(as_dmabuf(&dmabuf)).unwrap(),
        "a-name-longer-than-the-kernel-k"
    );
    assert!(DmaBuf::new(memfd.as_fd()).is_err(), "a memfd is no dma-buf");
}

/// The DRM trial behind dmabufsink's "needs physically contiguous memory" diagnosis: vkms and
/// vgem (shmem GEM helpers) take a buffer of scattered pages. The testbed has no DRM driver on
/// the GEM DMA helpers, which refuse it (EINVAL): that answer is only reasoned from the source.
#[test]
#[ignore = "needs the VM testbed"]
fn drm_import_trial_tells_that_vkms_and_vgem_take_scattered_pages() {
    let u = udmabuf();
    for driver in ["vkms", "vgem"] {
        let node = std::sync::Arc::new(DrmNode::open_driver(driver, DrmUse::Import).unwrap());
        let trial = node.import_trial(|size| u.scattered(size)).unwrap();
        assert_eq!(trial, gstvmem::kernel::ImportTrial::Scattered, "{driver}");
    }
    // A trial whose buffer cannot be made is an error, not an answer.
    let node = std::sync::Arc::new(DrmNode::open_driver("vgem", DrmUse::Import).unwrap());
    let e = node
        .import_trial(|size| Err(Error::TooLarge { size, limit_mb: 0 }))
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
}

#[test]
#[ignore = "needs the VM testbed"]
fn prime_import_into_vkms_and_vgem() {
    // 640x480 XRGB8888: 1228800 bytes, a whole number of pages.
    let (w, h, pitch) = (640u32, 480u32, 640 * 4);
    let size = u64::from(pitch * h);
    let (memfd, _map) = filled_memfd(size / page(), 9);
    let from_udmabuf = udmabuf().create(memfd.as_fd(), 0, size).unwrap();
    let from_cma = Heap::open_first(&HeapSelection::Auto.candidates())
        .unwrap()
        .allocate(size as usize)
        .unwrap();
    for driver in ["vkms", "vgem"] {
        let node = std::sync::Arc::new(DrmNode::open_driver(driver, DrmUse::Kms).unwrap());
        assert_eq!(node.driver(), driver);
        assert_cloexec(node.as_fd(), "DRM node");
        for (what, buf) in [("udmabuf", &from_udmabuf), ("cma heap", &from_cma)] {
            let handle = node
                .prime_import(buf.as_fd())
                .unwrap_or_else(|e| panic!("{driver} import of {what}: {e}"));
            assert_ne!(handle.raw(), 0);
            if driver == "vkms" {
                let xr24 = u32::from_le_bytes(*b"XR24");
                handle
                    .check_addfb2(w, h, xr24, None, &[0], &[pitch])
                    .unwrap();
            }
        }
    }
    let e = DrmNode::open_driver("no-such-driver", DrmUse::Import).unwrap_err();
    assert!(matches!(e, Error::DeviceMissing { .. }), "{e:?}");
}
