// SPDX-License-Identifier: MPL-2.0
//! The export cache: a memory's dma-buf export attached to the memory itself, the way kmssink
//! caches framebuffers, so each pool buffer (or pinned frame) is exported once.

use std::ffi::c_void;
use std::sync::LazyLock;

use gst::glib;
use gst::glib::translate::*;

/// The one quark under which vmemexport caches a memory's dma-buf export.
static EXPORT_QUARK: LazyLock<glib::Quark> =
    LazyLock::new(|| glib::Quark::from_str("GstVmemExport"));

/// A memory's dma-buf export, and the memory's offset and size it was made for: a memory that
/// was resized since holds its frame elsewhere, so the export no longer describes it.
struct CachedExport {
    export: gst::Memory,
    offset: usize,
    size: usize,
}

/// The dma-buf memory cached on `mem`, if any and it still describes `mem`'s bytes.
pub fn cached_export(mem: &gst::MemoryRef) -> Option<gst::Memory> {
    // SAFETY: the qdata under this quark is only ever set by `cache_export`, as a
    // `Box<CachedExport>` that lives as long as `mem` (or until replaced).
    let cached = unsafe {
        let ptr =
            gst::ffi::gst_mini_object_get_qdata(mem.as_mut_ptr().cast(), EXPORT_QUARK.into_glib());
        (ptr as *const CachedExport).as_ref()?
    };
    (cached.offset == mem.offset() && cached.size == mem.size()).then(|| cached.export.clone())
}

/// Caches `export` on `mem`: it is released when `mem` is freed (its pool buffer destroyed,
/// the producer's frame freed) or a new export replaces it.
pub fn cache_export(mem: &gst::MemoryRef, export: gst::Memory) {
    unsafe extern "C" fn release(data: *mut c_void) {
        // SAFETY: `data` is the box `cache_export` stored; GLib calls this once. Dropping
        // memory cannot panic across this boundary: it only unrefs.
        drop(unsafe { Box::from_raw(data as *mut CachedExport) });
    }
    let cached = Box::new(CachedExport {
        export,
        offset: mem.offset(),
        size: mem.size(),
    });
    // SAFETY: the stored box is released by `release` when the qdata is replaced or `mem` is
    // finalized.
    unsafe {
        gst::ffi::gst_mini_object_set_qdata(
            mem.as_mut_ptr().cast(),
            EXPORT_QUARK.into_glib(),
            Box::into_raw(cached).cast(),
            Some(release),
        );
    }
}
