// SPDX-License-Identifier: MPL-2.0
//! What users see on a machine without the kernel pieces (no udmabuf, no dma-heaps), checked
//! both on the build host, which has none of them, and in the VM, where each test re-runs
//! itself in a mount namespace that hides /dev/udmabuf and /dev/dma_heap.

mod common;

use std::path::Path;

use gst::prelude::*;

/// Whether the calling test `name` should run its checks now: yes on a machine without
/// /dev/udmabuf and /dev/dma_heap. Where they exist, the test is re-run in a child whose
/// mount namespace hides them (needs root, as in the VM), its success asserted, and the
/// caller has nothing left to do.
fn without_dmabuf_devices(name: &str) -> bool {
    let present = Path::new("/dev/udmabuf").exists() || Path::new("/dev/dma_heap").exists();
    if !present {
        return true;
    }
    assert!(
        std::env::var_os("VMEM_DEVICES_HIDDEN").is_none(),
        "the mount namespace still shows /dev/udmabuf or /dev/dma_heap"
    );
    // /dev becomes a tmpfs holding only the character devices GStreamer may open.
    let script = "set -e; d=$(mktemp -d); mount --bind /dev \"$d\"; mount -t tmpfs none /dev; \
                  for n in null zero urandom full; do touch /dev/$n; mount --bind \"$d/$n\" /dev/$n; done; \
                  exec \"$0\" \"$@\"";
    common::rerun_in_mount_namespace(name, script, "VMEM_DEVICES_HIDDEN");
    false
}

#[test]
fn without_dma_heaps_the_allocator_says_what_to_enable() {
    if !without_dmabuf_devices("without_dma_heaps_the_allocator_says_what_to_enable") {
        return;
    }
    common::init();
    let err = gstvmem::heapalloc::DmaHeapAllocator::new("auto").unwrap_err();
    assert_eq!(
        err.to_string(),
        "heap 'linux,cma or reserved or default_cma_region or system' not found; available: none \
         (/dev/dma_heap is empty or missing: enable CONFIG_DMABUF_HEAPS)"
    );
    let err = gstvmem::kernel::Heap::open("linux,cma").unwrap_err();
    assert_eq!(
        err.to_string(),
        "heap 'linux,cma' not found; available: none (/dev/dma_heap is empty or missing: \
         enable CONFIG_DMABUF_HEAPS)"
    );
    // The registered allocator exists even so; allocating from it fails cleanly.
    let allocator = gst::Allocator::find(Some("dmaheap")).expect("registered at plugin load");
    assert!(allocator.alloc(4096, None).is_err());
}

#[test]
fn without_udmabuf_or_heaps_vmemexport_fails_at_start_with_the_fix() {
    if !without_dmabuf_devices("without_udmabuf_or_heaps_vmemexport_fails_at_start_with_the_fix") {
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
    // vmemexp could export the pool instead, and says how to get it.
    assert!(error.contains("load the vmemexp module"), "{error}");
    let pipeline =
        common::launch("videotestsrc num-buffers=1 ! vmemexport backing=memfd ! fakesink");
    let error = common::run_for(&pipeline, common::secs(30)).error.unwrap();
    assert!(
        error.contains("backing=memfd needs /dev/udmabuf"),
        "{error}"
    );
}
