// SPDX-License-Identifier: MPL-2.0
//! Turning a buffer's memory into dma-buf memory: once per memory, through udmabuf, cached.

use std::os::fd::{AsFd, BorrowedFd};

use gst_allocators::prelude::*;

use crate::kernel::{self, Udmabuf};
use crate::memory;

/// Why a buffer cannot leave as the same pages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not exactly one memory.
    MemoryCount(usize),
    /// Memory that is no fd memory: upstream did not use the proposed pool.
    NotFdMemory(String),
    /// udmabuf refused (or would refuse) the fd's pages.
    Udmabuf(String),
    /// No udmabuf device to export through (backing=heap, upstream ignored the heap pool).
    NoExporter,
    /// The frame's metas or timestamps could not be carried over to the output buffer.
    Metadata(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::MemoryCount(n) => write!(
                f,
                "the buffer has {n} memories; only single-memory buffers can be exported"
            ),
            Refusal::NotFdMemory(kind) => write!(
                f,
                "upstream's memory ({kind}) is not fd-backed: it did not use the pool vmemexport \
                 proposes"
            ),
            Refusal::Udmabuf(why) => write!(f, "udmabuf cannot export it: {why}"),
            Refusal::NoExporter => {
                write!(f, "upstream's memory is not from the proposed heap pool")
            }
            Refusal::Metadata(why) => {
                write!(f, "the frame's metadata cannot be carried over: {why}")
            }
        }
    }
}

/// What one call to [`Exporter::dmabuf_of`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The memory already was dma-buf memory.
    AlreadyDmabuf,
    /// A new export was made (and cached).
    Exported,
    /// The cached export was reused.
    CacheHit,
}

/// Exports memories through one open `/dev/udmabuf`.
#[derive(Debug)]
pub struct Exporter {
    udmabuf: Option<Udmabuf>,
    dmabuf_allocator: gst_allocators::DmaBufAllocator,
    name: String,
}

impl Exporter {
    pub fn new(udmabuf: Option<Udmabuf>, name: String) -> Exporter {
        Exporter {
            udmabuf,
            dmabuf_allocator: gst_allocators::DmaBufAllocator::new(),
            name,
        }
    }

    /// Largest frame udmabuf will export, if there is a udmabuf.
    pub fn size_limit(&self) -> Option<u64> {
        self.udmabuf.as_ref().map(|u| u.limits().size_limit)
    }

    /// The dma-buf memory holding `buffer`'s pages: the memory itself if it is dma-buf memory,
    /// else its cached udmabuf export, made now if it has none yet.
    pub fn dmabuf_of(&self, buffer: &gst::BufferRef) -> Result<(gst::Memory, Outcome), Refusal> {
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
        if let Some(export) = memory::cached_export(mem) {
            return Ok((export, Outcome::CacheHit));
        }
        let Some(fd_mem) = mem.downcast_memory_ref::<gst_allocators::FdMemory>() else {
            let kind = mem
                .allocator()
                .map(|a| a.type_().name().to_string())
                .unwrap_or_else(|| "no allocator".into());
            return Err(Refusal::NotFdMemory(kind));
        };
        let udmabuf = self.udmabuf.as_ref().ok_or(Refusal::NoExporter)?;
        // SAFETY: the fd belongs to `mem`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(fd_mem.fd()) };
        let export_size = kernel::page_align(mem.maxsize() as u64)
            .ok_or_else(|| Refusal::Udmabuf(format!("{} bytes overflow", mem.maxsize())))?;
        let dmabuf = udmabuf
            .create(fd, 0, export_size)
            .map_err(|e| Refusal::Udmabuf(e.to_string()))?;
        // A name is a debugging aid (debugfs, fdinfo); failing to set it changes nothing.
        let _ = kernel::set_dmabuf_name(dmabuf.as_fd(), &self.name);
        // SAFETY: the fd is a fresh dma-buf that the memory takes over.
        let mut export = unsafe {
            self.dmabuf_allocator
                .alloc_dmabuf(dmabuf, export_size as usize)
        }
        .map_err(|e| Refusal::Udmabuf(e.to_string()))?;
        // Same bytes at the same place: V4L2 queues `size` as bytesused, which must not exceed
        // the driver's sizeimage, so size is the frame and maxsize the page-rounded export.
        export
            .get_mut()
            .expect("a fresh memory is writable")
            .resize(mem.offset()..mem.offset() + mem.size());
        memory::cache_export(mem, export.clone());
        Ok((export, Outcome::Exported))
    }
}

/// vmemexport's counters, as its `stats` property shows them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub frames: u64,
    pub exported: u64,
    pub export_cache_hits: u64,
    pub passthrough: u64,
    pub copies: u64,
    pub bytes_copied: u64,
    pub syncs: u64,
}

impl Stats {
    pub fn to_structure(self) -> gst::Structure {
        gst::Structure::builder("vmemexport-stats")
            .field("frames", self.frames)
            .field("exported", self.exported)
            .field("export-cache-hits", self.export_cache_hits)
            .field("passthrough", self.passthrough)
            .field("copies", self.copies)
            .field("bytes-copied", self.bytes_copied)
            .field("syncs", self.syncs)
            .build()
    }
}
