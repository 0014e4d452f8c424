// SPDX-License-Identifier: MPL-2.0
//! Turning a buffer's memory into dma-buf memory once per memory, cached on the memory.
//!
//! In order: memory that already is a dma-buf leaves as it is; memory of the pool vmemexport
//! proposed (sealed memfds) is exported through udmabuf; other system memory (a decoder's own
//! pool, an application's malloc) is exported in place through vmemexp, the frame keeping its
//! position inside its first page as the memory's offset; anything else is refused, and the
//! caller copies.

use std::os::fd::{BorrowedFd, OwnedFd};

use gst_allocators::prelude::*;

use super::backend::Backend;
use crate::kernel::{self, PinAccess, Vmemexp};
use crate::memory;

/// Why a frame was copied, as `stats`' `copy-reasons` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyReason {
    MemoryCount,
    ForeignMemory,
    PinRefused,
    NeedsZeroOffset,
    Udmabuf,
    NoExporter,
    Metadata,
    Layout,
}

impl CopyReason {
    pub const ALL: [CopyReason; 8] = [
        CopyReason::MemoryCount,
        CopyReason::ForeignMemory,
        CopyReason::PinRefused,
        CopyReason::NeedsZeroOffset,
        CopyReason::Udmabuf,
        CopyReason::NoExporter,
        CopyReason::Metadata,
        CopyReason::Layout,
    ];

    pub fn nick(self) -> &'static str {
        match self {
            CopyReason::MemoryCount => "memory-count",
            CopyReason::ForeignMemory => "foreign-memory",
            CopyReason::PinRefused => "pin-refused",
            CopyReason::NeedsZeroOffset => "needs-zero-offset",
            CopyReason::Udmabuf => "udmabuf",
            CopyReason::NoExporter => "no-exporter",
            CopyReason::Metadata => "metadata",
            CopyReason::Layout => "layout",
        }
    }
}

/// Why a buffer cannot leave as the same pages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not exactly one memory.
    MemoryCount(usize),
    /// Memory that is neither from the proposed pool nor exportable in place.
    Foreign { kind: String, why: String },
    /// vmemexp refused to pin the pages.
    Pin(String),
    /// Downstream reads frames from the start of their dma-buf, and this one starts `offset`
    /// bytes in.
    NeedsZeroOffset { offset: usize, consumer: String },
    /// udmabuf refused (or would refuse) the fd's pages.
    Udmabuf(String),
    /// No udmabuf device to export through (backing=heap, upstream ignored the heap pool).
    NoExporter,
    /// The frame's metas or timestamps could not be carried over to the output buffer.
    Metadata(String),
    /// Downstream reads frames in the natural layout (single-planar V4L2), and this one's
    /// planes are elsewhere.
    Layout {
        consumer: String,
        layout: String,
        natural: String,
    },
}

impl Refusal {
    pub fn reason(&self) -> CopyReason {
        match self {
            Refusal::MemoryCount(_) => CopyReason::MemoryCount,
            Refusal::Foreign { .. } => CopyReason::ForeignMemory,
            Refusal::Pin(_) => CopyReason::PinRefused,
            Refusal::NeedsZeroOffset { .. } => CopyReason::NeedsZeroOffset,
            Refusal::Udmabuf(_) => CopyReason::Udmabuf,
            Refusal::NoExporter => CopyReason::NoExporter,
            Refusal::Metadata(_) => CopyReason::Metadata,
            Refusal::Layout { .. } => CopyReason::Layout,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::MemoryCount(n) => write!(
                f,
                "the buffer has {n} memories; only single-memory buffers can be exported"
            ),
            Refusal::Foreign { kind, why } => write!(
                f,
                "upstream's memory ({kind}) is not from the pool vmemexport proposes, and it \
                 cannot be exported in place: {why}"
            ),
            Refusal::Pin(why) => write!(f, "it cannot be exported in place: {why}"),
            Refusal::NeedsZeroOffset { offset, consumer } => write!(
                f,
                "{consumer} reads frames from the first byte of their dma-buf (single-planar \
                 V4L2 has no plane offset), and this frame starts {offset} bytes into its first \
                 page; page-aligned frames (posix_memalign, the proposed pool) need no copy"
            ),
            Refusal::Udmabuf(why) => write!(f, "udmabuf cannot export it: {why}"),
            Refusal::NoExporter => {
                write!(f, "upstream's memory is not from the proposed heap pool")
            }
            Refusal::Metadata(why) => {
                write!(f, "the frame's metadata cannot be carried over: {why}")
            }
            Refusal::Layout {
                consumer,
                layout,
                natural,
            } => write!(
                f,
                "{consumer} reads frames in their natural layout ({natural}: single-planar V4L2 \
                 finds the planes from bytesperline and height), and this frame has {layout}; \
                 frames written into the pool vmemexport proposes have the natural layout"
            ),
        }
    }
}

/// Memory types whose mapping is the memory itself, in the process's own pages: GStreamer's
/// system memory (gst_allocator_alloc's default, gst_memory_new_wrapped, so C and Python
/// applications' buffers) and gstreamer-rs's wrapped Rust memory (`Memory::from_mut_slice`).
const PROCESS_MEMORY_TYPES: &[&str] = &["SystemMemory", "RustGlobalAllocatorMemory"];

/// What one call to [`Exporter::dmabuf_of`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The memory already was dma-buf memory.
    AlreadyDmabuf,
    /// A new udmabuf export of a pool memfd was made (and cached).
    Exported,
    /// A new vmemexp export of the memory's pages was made (and cached).
    Pinned,
    /// The cached export was reused.
    CacheHit,
}

/// Exports the pool's memories through a [`Backend`] (udmabuf) and, for other system memory,
/// one open `/dev/vmemexp`.
#[derive(Debug)]
pub struct Exporter {
    backend: Box<dyn Backend>,
    /// vmemexp, or why it is not used.
    vmemexp: Result<Vmemexp, String>,
    dmabuf_allocator: gst_allocators::DmaBufAllocator,
    name: String,
}

impl Exporter {
    pub fn new(backend: Box<dyn Backend>, vmemexp: Result<Vmemexp, String>, name: String) -> Self {
        Exporter {
            backend,
            vmemexp,
            dmabuf_allocator: gst_allocators::DmaBufAllocator::new(),
            name,
        }
    }

    /// Whether system memory that is not from the proposed pool can leave in place (vmemexp).
    pub fn can_pin(&self) -> bool {
        self.vmemexp.is_ok()
    }

    /// Largest frame the backend will export, if it exports any.
    pub fn size_limit(&self) -> Option<u64> {
        self.backend.size_limit()
    }

    /// The dma-buf memory holding `buffer`'s pages: the memory itself if it is dma-buf memory,
    /// else its cached export, made now if it has none yet. With `zero_offset_for`, frames
    /// that would not start at their dma-buf's first byte are refused (that consumer reads
    /// from there).
    pub fn dmabuf_of(
        &self,
        buffer: &gst::BufferRef,
        zero_offset_for: Option<&str>,
    ) -> Result<(gst::Memory, Outcome), Refusal> {
        if buffer.n_memory() != 1 {
            return Err(Refusal::MemoryCount(buffer.n_memory()));
        }
        let mem = buffer.peek_memory(0);
        if mem
            .downcast_memory_ref::<gst_allocators::DmaBufMemory>()
            .is_some()
        {
            return Ok((memory::memory_ref(mem), Outcome::AlreadyDmabuf));
        }
        let check_offset = |offset: usize| match zero_offset_for {
            Some(consumer) if offset != 0 => Err(Refusal::NeedsZeroOffset {
                offset,
                consumer: consumer.to_string(),
            }),
            _ => Ok(()),
        };
        if let Some(export) = super::cache::cached_export(mem) {
            check_offset(export.offset())?;
            return Ok((export, Outcome::CacheHit));
        }
        let Some(fd_mem) = mem.downcast_memory_ref::<gst_allocators::FdMemory>() else {
            return self.pin(mem, check_offset);
        };
        check_offset(mem.offset())?;
        // SAFETY: the fd belongs to `mem`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(fd_mem.fd()) };
        let export_size = kernel::page_align(mem.maxsize() as u64)
            .ok_or_else(|| Refusal::Udmabuf(format!("{} bytes overflow", mem.maxsize())))?;
        let dmabuf = self.backend.export(fd, export_size)?;
        let export = self
            .wrap(dmabuf, export_size as usize, mem.offset(), mem.size())
            .map_err(Refusal::Udmabuf)?;
        super::cache::cache_export(mem, export.clone());
        Ok((export, Outcome::Exported))
    }

    /// Exports the pages holding system memory `mem`'s bytes through vmemexp.
    fn pin(
        &self,
        mem: &gst::MemoryRef,
        check_offset: impl Fn(usize) -> Result<(), Refusal>,
    ) -> Result<(gst::Memory, Outcome), Refusal> {
        let kind = || {
            mem.allocator()
                .map(|a| a.type_().name().to_string())
                .unwrap_or_else(|| "no allocator".into())
        };
        let vmemexp = self.vmemexp.as_ref().map_err(|why| Refusal::Foreign {
            kind: kind(),
            why: why.clone(),
        })?;
        // Other memory types map to a staging copy (GL downloads) or to device memory: only
        // process memory is the frame's own, lasting pages.
        if !PROCESS_MEMORY_TYPES.iter().any(|t| mem.is_type(*t)) {
            return Err(Refusal::Foreign {
                kind: kind(),
                why: format!(
                    "only process memory ({}) can be pinned",
                    PROCESS_MEMORY_TYPES.join(", ")
                ),
            });
        }
        if mem.size() == 0 {
            return Err(Refusal::Pin("the memory is empty".into()));
        }
        // System memory's mapping is its own storage, the same on every map.
        let start = {
            let map = mem
                .map_readable()
                .map_err(|e| Refusal::Pin(format!("cannot map it: {e}")))?;
            map.as_ptr() as usize
        };
        let page = kernel::page_size() as usize;
        let first = start - start % page;
        let end = start
            .checked_add(mem.size())
            .and_then(|e| kernel::page_align(e as u64))
            .ok_or_else(|| Refusal::Pin("its range overflows".into()))? as usize;
        let offset = start - first;
        check_offset(offset)?;
        // SAFETY: read-only exports of memory vmemexport only hands to consumers (displays,
        // encoders, dmabufsink's clients); GStreamer memory is never held as a Rust reference
        // across the export.
        let dmabuf = unsafe { vmemexp.export(first, end - first, PinAccess::ReadOnly) }
            .map_err(|e| Refusal::Pin(e.to_string()))?;
        let export = self
            .wrap(dmabuf, end - first, offset, mem.size())
            .map_err(Refusal::Pin)?;
        super::cache::cache_export(mem, export.clone());
        Ok((export, Outcome::Pinned))
    }

    /// A dma-buf memory of `dmabuf` (`len` bytes) whose bytes are `size` from `offset` on.
    fn wrap(
        &self,
        dmabuf: OwnedFd,
        len: usize,
        offset: usize,
        size: usize,
    ) -> Result<gst::Memory, String> {
        crate::memory::name_dmabuf(&dmabuf, &self.name);
        // SAFETY: the fd is a fresh dma-buf that the memory takes over.
        let mut export = unsafe { self.dmabuf_allocator.alloc_dmabuf(dmabuf, len) }
            .map_err(|e| e.to_string())?;
        // Same bytes at the same place: V4L2 queues `size` as bytesused, which must not exceed
        // the driver's sizeimage, so size is the frame and maxsize the page-rounded export.
        export
            .get_mut()
            .expect("a fresh memory is writable")
            .resize(offset..offset + size);
        Ok(export)
    }
}
