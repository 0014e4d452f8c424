// SPDX-License-Identifier: MPL-2.0
//! What users see on a machine without the kernel pieces (the build host has no udmabuf and no
//! dma-heaps). In the VM testbed these devices exist, so these checks only run where they are
//! absent.

mod common;

use std::path::Path;

use gst::prelude::*;

#[test]
fn without_dma_heaps_the_allocator_says_what_to_enable() {
    if Path::new("/dev/dma_heap").exists() {
        return; // the VM suite covers machines with heaps
    }
    common::init();
    let err = gstvmem::heapalloc::DmaHeapAllocator::new("auto").unwrap_err();
    assert_eq!(
        err.to_string(),
        "heap 'linux,cma or reserved or default_cma_region or system' not found; available: none \
         (/dev/dma_heap is empty or missing: enable CONFIG_DMABUF_HEAPS)"
    );
    // The registered allocator exists even so; allocating from it fails cleanly.
    let allocator = gst::Allocator::find(Some("dmaheap")).expect("registered at plugin load");
    assert!(allocator.alloc(4096, None).is_err());
}

#[test]
fn without_udmabuf_or_heaps_vmemexport_fails_at_start_with_the_fix() {
    if Path::new("/dev/udmabuf").exists() || Path::new("/dev/dma_heap").exists() {
        return;
    }
    common::init();
    let pipeline = common::launch("videotestsrc num-buffers=1 ! vmemexport ! fakesink");
    let result = common::run_for(&pipeline, common::secs(30));
    let error = result.error.expect("vmemexport cannot work here");
    assert!(error.contains("No way to make dma-bufs"), "{error}");
    assert!(
        error.contains("/dev/udmabuf is missing: load the udmabuf module"),
        "{error}"
    );
    assert!(error.contains("enable CONFIG_DMABUF_HEAPS"), "{error}");
    let pipeline =
        common::launch("videotestsrc num-buffers=1 ! vmemexport backing=memfd ! fakesink");
    let error = common::run_for(&pipeline, common::secs(30)).error.unwrap();
    assert!(
        error.contains("backing=memfd needs /dev/udmabuf"),
        "{error}"
    );
}
