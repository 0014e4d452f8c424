// SPDX-License-Identifier: MPL-2.0
//! The export cache: a memory's dma-buf export attached to the memory itself, the way kmssink
//! caches framebuffers, so each pool buffer (or pinned frame) is exported once.

use std::sync::LazyLock;

use gst::glib;

use crate::memory::{Attached, attach, attached};

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

impl Attached for CachedExport {}

/// The dma-buf memory cached on `mem`, if any and it still describes `mem`'s bytes.
pub fn cached_export(mem: &gst::MemoryRef) -> Option<gst::Memory> {
    // SAFETY: only `cache_export` attaches under this quark, a CachedExport; the caller holds
    // `mem` for this call, so it is not replaced meanwhile.
    let cached = unsafe { attached::<CachedExport>(mem.upcast_ref(), *EXPORT_QUARK)? };
    (cached.offset == mem.offset() && cached.size == mem.size()).then(|| cached.export.clone())
}

/// Caches `export` on `mem`: it is released when `mem` is freed (its pool buffer destroyed,
/// the producer's frame freed) or a new export replaces it.
pub fn cache_export(mem: &gst::MemoryRef, export: gst::Memory) {
    let cached = CachedExport {
        export,
        offset: mem.offset(),
        size: mem.size(),
    };
    attach(mem.upcast_ref(), *EXPORT_QUARK, cached);
}
