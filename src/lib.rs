// SPDX-License-Identifier: MPL-2.0
//! gst-vmem: zero-copy dma-buf plugins for GStreamer (vmemexport, heapalloc, dmabufsink,
//! dmabufsrc).
//!
//! Besides the plugin, the crate's Rust API for applications and tests:
//! [`heapalloc::DmaHeapAllocator`] (dma-heap memory for any buffer pool), the dmabufsink client
//! library ([`dmabufsink::Client`], [`dmabufsink::protocol`]), [`vmemexport::MemfdAllocator`],
//! [`kernel`] (safe wrappers of the kernel interfaces: memfd, udmabuf, vmemexp, dma-heaps,
//! dma-buf sync, names and fences, DRM PRIME, fd passing), [`formats`] (GStreamer formats and
//! DRM fourccs) and [`memory::dmabuf_fd`]. The elements' internals are crate-private.

use gst::glib;

pub mod dmabufsink;
pub mod dmabufsrc;
pub mod formats;
mod frame;
pub mod heapalloc;
pub mod kernel;
pub mod memory;
pub mod quirks;
pub mod vmemexport;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    heapalloc::register();
    vmemexport::register(plugin)?;
    dmabufsink::register(plugin)?;
    dmabufsrc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    vmem,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    "gst-vmem",
    env!("BUILD_REL_DATE")
);

/// A reproducible pseudo-random stream (xorshift64) for the property tests, without a
/// dependency.
#[cfg(test)]
pub(crate) fn xorshift() -> impl FnMut() -> u64 {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
