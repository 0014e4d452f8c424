// SPDX-License-Identifier: MPL-2.0
//! `vmemexport`: system-memory video in, the same pages out as DMABuf memory.
//!
//! It proposes upstream a pool whose buffers are sealed memfds (one page-aligned memory per
//! buffer holding every plane, with VideoMeta), exports each pool buffer once through
//! `/dev/udmabuf` the first time it passes, caches that dma-buf on the buffer's memory and
//! reuses it for every later frame. The output buffer carries the dma-buf memory (size = frame
//! size, maxsize = the page-rounded export), the input's VideoMeta, timestamps and flags, and
//! keeps the input buffer alive until downstream releases it, so the pool never reuses pages a
//! display or encoder still reads.
//!
//! An upstream element that imports dma-bufs into a device (V4L2 `io-mode=dmabuf-import`:
//! v4l2src, a V4L2 decoder's capture side) is proposed a pool whose memory is the udmabuf
//! export itself (made when the buffer is allocated); the device writes into it and the frames
//! leave as they are. With `backing=heap` every producer already writes into dma-heap buffers.
//!
//! System memory that is not from the pool (a decoder's own frames, an application's buffers)
//! is exported in place through the vmemexp kernel module (`/dev/vmemexp`, property
//! `pin-system-memory`), which pins its pages for as long as the dma-buf lives, when the frame
//! owns the pages that hold it: memory that starts on a page and fills its last one. Memory
//! whose pages also hold other bytes (the GstMemory header, other allocations) is copied,
//! counted as `shares-pages`: every importer can read an export's whole pages. With
//! `propose-pool=false` vmemexport asks upstream for such page-aligned, padded memory.
//!
//! With `backing=auto`, a V4L2 device downstream that imports only physically contiguous
//! memory (no IOMMU; found by a trial import of a scattered dma-buf on its idle output queue)
//! is proposed a pool of the CMA heap instead, and frames from elsewhere are copied into CMA
//! for it (`needs-contiguous`).
//!
//! When a frame can leave neither way (no vmemexp, memory it refuses or that shares its pages,
//! a frame over udmabuf's size limit, a buffer of several memories) it is copied into a pooled
//! dma-buf, counted in `stats` under its reason, and a warning says why once;
//! `copy-fallback=false` makes that an error instead. Input that already is dma-buf memory
//! passes through untouched.
//!
//! ```text
//! gst-launch-1.0 videotestsrc ! video/x-raw,format=BGRx ! vmemexport ! kmssink driver-name=vkms
//! gst-launch-1.0 videotestsrc ! video/x-raw,format=NV12,width=1280,height=720 ! vmemexport ! \
//!     v4l2fwhtenc output-io-mode=dmabuf-import ! fakesink
//! ```

use gst::glib;
use gst::prelude::*;

mod backend;
mod cache;
mod caps;
mod downstream;
mod export;
mod imp;
mod layout;
pub mod memfd_allocator;
mod release;
mod stats;
mod udmabuf_allocator;
mod upstream;
mod walk;

pub use memfd_allocator::MemfdAllocator;

glib::wrapper! {
    pub struct VmemExport(ObjectSubclass<imp::VmemExport>)
        @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

/// Where the pages handed downstream come from.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstVmemExportBacking")]
pub enum Backing {
    /// memfd when /dev/udmabuf or /dev/vmemexp can be opened, else heap.
    #[default]
    #[enum_value(
        name = "Auto: memfd when /dev/udmabuf or /dev/vmemexp is usable, else heap",
        nick = "auto"
    )]
    Auto,
    /// Upstream writes into sealed memfds, exported through /dev/udmabuf (scattered pages), or
    /// through /dev/vmemexp on kernels without udmabuf.
    #[enum_value(
        name = "Memfd: memfd pages exported through /dev/udmabuf (else /dev/vmemexp)",
        nick = "memfd"
    )]
    Memfd,
    /// Upstream writes straight into dma-heap buffers (e.g. contiguous CMA memory).
    #[enum_value(name = "Heap: dma-heap buffers (see the heap property)", nick = "heap")]
    Heap,
}

/// For tests only, not a stable API: makes `element` export its pool through a fake udmabuf
/// that hands out the pool's memfds themselves as "dma-bufs", with no dma-heap and no
/// vmemexp, whatever the machine has. Negotiation, the ALLOCATION query, passthrough, the copy
/// fallback and `stats` then run on any machine (`tests/element_harness.rs`). The fds are no
/// dma-bufs: `DMA_BUF_IOCTL_SYNC` fails on them (`stats` counts no syncs) and no device can
/// import them. Takes effect at the next start (NULL to READY).
#[doc(hidden)]
pub fn use_fake_udmabuf(element: &VmemExport) {
    use gst::subclass::prelude::ObjectSubclassIsExt;
    element.imp().use_fake_udmabuf();
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // gst-inspect and the plugin docs list the enum's values.
    Backing::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "vmemexport",
        gst::Rank::NONE,
        VmemExport::static_type(),
    )
}
