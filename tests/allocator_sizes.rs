// SPDX-License-Identifier: MPL-2.0
//! The allocators' C entry point (`gst_allocator_alloc`, what C, Python and GstBufferPool
//! call) with sizes that cannot be allocated: each gives NULL and a logged reason, never a
//! panic across the C boundary (which would abort the process) and never a memory smaller
//! than asked for.

mod common;

use gst::glib::translate::*;
use gst::prelude::*;

/// Calls the allocator through GStreamer's C API, as a C application would.
fn alloc_via_c(allocator: &gst::Allocator, size: usize) -> Option<gst::Memory> {
    // SAFETY: a valid allocator, NULL params (the defaults); the result is NULL or a memory
    // whose reference we take over.
    unsafe {
        let mem =
            gst::ffi::gst_allocator_alloc(allocator.to_glib_none().0, size, std::ptr::null_mut());
        if mem.is_null() {
            None
        } else {
            Some(from_glib_full(mem))
        }
    }
}

fn check_sizes(allocator: &gst::Allocator) {
    let log = common::LogCapture::new(&["vmemfdalloc", "dmaheap"], gst::DebugLevel::Error);
    assert!(alloc_via_c(allocator, 0).is_none(), "a zero-byte memory");
    for huge in [
        usize::MAX,
        usize::MAX - 4095,
        1 << 62,
        isize::MAX as usize + 1,
    ] {
        assert!(
            alloc_via_c(allocator, huge).is_none(),
            "{huge} bytes allocated?"
        );
    }
    let reasons = log.lines();
    assert!(
        reasons.iter().any(|l| l.contains("0 bytes")),
        "no logged reason for size 0: {reasons:?}"
    );
    assert!(reasons.len() >= 5, "a reason per refusal: {reasons:?}");
}

#[test]
fn memfd_allocator_refuses_zero_and_absurd_sizes() {
    common::init();
    let element = gst::ElementFactory::make("identity").build().unwrap();
    let allocator = gstvmem::vmemexport::MemfdAllocator::new(&element);
    check_sizes(allocator.upcast_ref());
    // A real size still works, page-rounded behind a 1-byte memory.
    let mem = alloc_via_c(allocator.upcast_ref(), 1).expect("1 byte");
    assert_eq!(mem.size(), 1);
    assert_eq!(mem.maxsize() as u64, gstvmem::kernel::page_size());
}

#[test]
fn dmaheap_allocator_refuses_zero_and_absurd_sizes() {
    // Where no heap exists every size fails; the point is that none of them aborts.
    common::init();
    let allocator = gst::Allocator::find(Some("dmaheap")).expect("registered at plugin load");
    check_sizes(&allocator);
}
