// SPDX-License-Identifier: MPL-2.0
//! Turning a buffer's memory into dma-buf memory once per memory, cached on the memory.
//!
//! In order: memory that already is a dma-buf leaves as it is; memory of the pool vmemexport
//! proposed (sealed memfds) is exported through udmabuf; other system memory (a decoder's own
//! pool, an application's malloc) is exported in place through vmemexp when the pages holding
//! the frame are the memory's own storage ([`owned_pages`]), the frame keeping its position
//! inside its first page as the memory's offset; anything else is refused, and the caller
//! copies.

use std::ops::Range;
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
    SharesPages,
    NeedsZeroOffset,
    Udmabuf,
    NoExporter,
    Metadata,
    Layout,
    NeedsContiguous,
}

impl CopyReason {
    /// In discriminant order: `Stats` indexes its counters by `reason as usize`.
    pub const ALL: [CopyReason; 10] = [
        CopyReason::MemoryCount,
        CopyReason::ForeignMemory,
        CopyReason::PinRefused,
        CopyReason::SharesPages,
        CopyReason::NeedsZeroOffset,
        CopyReason::Udmabuf,
        CopyReason::NoExporter,
        CopyReason::Metadata,
        CopyReason::Layout,
        CopyReason::NeedsContiguous,
    ];

    pub fn nick(self) -> &'static str {
        match self {
            CopyReason::MemoryCount => "memory-count",
            CopyReason::ForeignMemory => "foreign-memory",
            CopyReason::PinRefused => "pin-refused",
            CopyReason::SharesPages => "shares-pages",
            CopyReason::NeedsZeroOffset => "needs-zero-offset",
            CopyReason::Udmabuf => "udmabuf",
            CopyReason::NoExporter => "no-exporter",
            CopyReason::Metadata => "metadata",
            CopyReason::Layout => "layout",
            CopyReason::NeedsContiguous => "needs-contiguous",
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
    /// The whole pages holding the frame also hold bytes the memory does not own (GstMemory's
    /// header, another allocation): `before` bytes in front of its storage in the first page,
    /// `after` bytes behind it in the last.
    SharesPages { before: usize, after: usize },
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
    /// Downstream imports only physically contiguous memory (no IOMMU), and this frame's pages
    /// are not (pinned or foreign memory, or the udmabuf pool).
    NeedsContiguous { consumer: String },
}

impl Refusal {
    pub fn reason(&self) -> CopyReason {
        match self {
            Refusal::MemoryCount(_) => CopyReason::MemoryCount,
            Refusal::Foreign { .. } => CopyReason::ForeignMemory,
            Refusal::Pin(_) => CopyReason::PinRefused,
            Refusal::SharesPages { .. } => CopyReason::SharesPages,
            Refusal::NeedsZeroOffset { .. } => CopyReason::NeedsZeroOffset,
            Refusal::Udmabuf(_) => CopyReason::Udmabuf,
            Refusal::NoExporter => CopyReason::NoExporter,
            Refusal::Metadata(_) => CopyReason::Metadata,
            Refusal::Layout { .. } => CopyReason::Layout,
            Refusal::NeedsContiguous { .. } => CopyReason::NeedsContiguous,
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
            Refusal::SharesPages { before, after } => write!(
                f,
                "the pages holding it also hold bytes its memory does not own ({before} before \
                 it, {after} after it: the GstMemory header, other allocations), and every \
                 importer can read a whole-page export; memory that starts on a page and fills \
                 its last page leaves without a copy (GstAllocationParams with align={} and \
                 padding to the page's end, posix_memalign of whole pages, or the pool \
                 vmemexport proposes)",
                kernel::page_size() - 1
            ),
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
            Refusal::NeedsContiguous { consumer } => write!(
                f,
                "{consumer} imports only physically contiguous memory (its device refused a \
                 scattered dma-buf), and this frame's pages are scattered; frames written into \
                 the CMA pool vmemexport proposes need no copy"
            ),
        }
    }
}

/// Memory types whose mapping is the memory itself, in the process's own pages: GStreamer's
/// system memory (gst_allocator_alloc's default, gst_memory_new_wrapped, so C and Python
/// applications' buffers) and gstreamer-rs's wrapped Rust memory (`Memory::from_mut_slice`).
const PROCESS_MEMORY_TYPES: &[&str] = &["SystemMemory", "RustGlobalAllocatorMemory"];

/// The whole pages a pinned export of a memory covers, if the memory owns every byte of them:
/// the memory's `size` bytes at `data`, its `offset` and `maxsize` saying where its storage is
/// (`[data - offset, data - offset + maxsize)`: its bytes, its prefix, its padding).
///
/// An export is whole pages, and every importer (a compositor, dmabufsink's clients in other
/// processes) can read all of them, for as long as it holds the dma-buf. GstSystemMemory is
/// one allocation with the GstMemory header in front of the data, and other allocations may
/// share the first and last page; so the pages must lie inside the memory's own storage:
/// storage that starts on a page (or a prefix that reaches back to one), and a frame that ends
/// on a page or inside the memory's own padding.
pub fn owned_pages(
    data: usize,
    size: usize,
    offset: usize,
    maxsize: usize,
    page: usize,
) -> Result<Range<usize>, Refusal> {
    let overflow = || Refusal::Pin("its range overflows".into());
    let storage_start = data.checked_sub(offset).ok_or_else(overflow)?;
    let storage_end = storage_start.checked_add(maxsize).ok_or_else(overflow)?;
    let end = data.checked_add(size).ok_or_else(overflow)?;
    if end > storage_end {
        return Err(Refusal::Pin(format!(
            "its {size} bytes at offset {offset} overrun its {maxsize}-byte storage"
        )));
    }
    let first = data - data % page;
    let last = end.div_ceil(page).checked_mul(page).ok_or_else(overflow)?;
    let before = storage_start.saturating_sub(first);
    let after = last.saturating_sub(storage_end);
    if before > 0 || after > 0 {
        return Err(Refusal::SharesPages { before, after });
    }
    Ok(first..last)
}

/// [`owned_pages`] of system memory `mem`, whose mapping is its own storage, the same on every
/// map; and where its bytes start in those pages.
fn owned_pages_of(mem: &gst::MemoryRef) -> Result<(Range<usize>, usize), Refusal> {
    let data = {
        let map = mem
            .map_readable()
            .map_err(|e| Refusal::Pin(format!("cannot map it: {e}")))?;
        map.as_ptr() as usize
    };
    let pages = owned_pages(
        data,
        mem.size(),
        mem.offset(),
        mem.maxsize(),
        kernel::page_size() as usize,
    )?;
    let offset = data - pages.start;
    Ok((pages, offset))
}

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
        // vmemexp names its exports after the exporting process itself; udmabuf's get ours.
        if !self.backend.names_exports() {
            crate::memory::name_dmabuf(&dmabuf, &self.name);
        }
        let export = self
            .wrap(dmabuf, export_size as usize, mem.offset(), mem.size())
            .map_err(Refusal::Udmabuf)?;
        super::cache::cache_export(mem, export.clone());
        Ok((export, Outcome::Exported))
    }

    /// Exports the pages holding system memory `mem`'s bytes through vmemexp, if they are the
    /// memory's own ([`owned_pages`]).
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
        // Checked on every new export, in and out of process alike: a dma-buf can always be
        // passed on.
        let (pages, offset) = owned_pages_of(mem)?;
        check_offset(offset)?;
        // SAFETY: read-only exports of memory vmemexport only hands to consumers (displays,
        // encoders, dmabufsink's clients); GStreamer memory is never held as a Rust reference
        // across the export.
        let dmabuf = unsafe { vmemexp.export(pages.start, pages.len(), PinAccess::ReadOnly) }
            .map_err(|e| Refusal::Pin(e.to_string()))?;
        let export = self
            .wrap(dmabuf, pages.len(), offset, mem.size())
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

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;
    /// A page-aligned address, away from zero.
    const BASE: usize = 0x7f00_0000_0000;

    #[test]
    fn page_aligned_storage_of_whole_pages_is_pinned() {
        assert_eq!(
            owned_pages(BASE, 3 * PAGE, 0, 3 * PAGE, PAGE),
            Ok(BASE..BASE + 3 * PAGE)
        );
    }

    #[test]
    fn a_header_in_the_first_page_is_refused() {
        // gst_buffer_new_allocate without alignment: one malloc block, the GstMemory header
        // (and malloc's) in front of the data, in the frame's first page.
        let size = 300 * PAGE;
        assert_eq!(
            owned_pages(BASE + 152, size, 0, size, PAGE),
            Err(Refusal::SharesPages {
                before: 152,
                after: PAGE - 152
            })
        );
    }

    #[test]
    fn a_tail_short_of_a_page_without_padding_is_refused() {
        // I420 1280x720: 337.5 pages, from a page-aligned allocation of exactly that size.
        let size = 1_382_400;
        assert_eq!(
            owned_pages(BASE, size, 0, size, PAGE),
            Err(Refusal::SharesPages {
                before: 0,
                after: PAGE / 2
            })
        );
        // One byte of padding short of the page.
        assert_eq!(
            owned_pages(BASE, size, 0, size + PAGE / 2 - 1, PAGE),
            Err(Refusal::SharesPages {
                before: 0,
                after: 1
            })
        );
    }

    #[test]
    fn padding_the_memory_owns_may_fill_the_last_page() {
        let size = 1_382_400;
        assert_eq!(
            owned_pages(BASE, size, 0, size + PAGE / 2, PAGE),
            Ok(BASE..BASE + 338 * PAGE)
        );
        // GstSystemMemory with align=page-1: the alignment slack behind the data is the
        // memory's own too (maxsize counts it).
        assert_eq!(
            owned_pages(BASE, size, 0, size + PAGE - 1, PAGE),
            Ok(BASE..BASE + 338 * PAGE)
        );
    }

    #[test]
    fn an_owned_prefix_may_fill_the_first_page() {
        // A memory resized (or allocated with a prefix) to start 64 bytes into page-aligned
        // storage: the frame leaves at offset 64 of its export.
        assert_eq!(
            owned_pages(BASE + 64, 2 * PAGE - 64, 64, 2 * PAGE, PAGE),
            Ok(BASE..BASE + 2 * PAGE)
        );
        // A sub-memory of a shared page-aligned block, starting a page in.
        assert_eq!(
            owned_pages(BASE + PAGE + 8, 100, PAGE + 8, 4 * PAGE, PAGE),
            Ok(BASE + PAGE..BASE + 2 * PAGE)
        );
        // A prefix that does not reach back to the page.
        assert_eq!(
            owned_pages(BASE + 64, 2 * PAGE - 64, 32, 2 * PAGE - 32, PAGE),
            Err(Refusal::SharesPages {
                before: 32,
                after: 0
            })
        );
    }

    #[test]
    fn impossible_layouts_are_refused_not_wrapped() {
        assert!(matches!(
            owned_pages(100, PAGE, 200, 2 * PAGE, PAGE),
            Err(Refusal::Pin(_))
        ));
        assert!(matches!(
            owned_pages(BASE, 2 * PAGE, 0, PAGE, PAGE),
            Err(Refusal::Pin(_))
        ));
        assert!(matches!(
            owned_pages(usize::MAX - 10, 100, 0, 200, PAGE),
            Err(Refusal::Pin(_))
        ));
    }

    /// Real GStreamer system memory: what `gst::Buffer::with_size` makes cannot leave in
    /// place, what an allocator asked for page alignment and padding makes can.
    #[test]
    fn system_memory_is_pinned_only_when_allocated_for_it() {
        gst::init().unwrap();
        let page = kernel::page_size() as usize;
        let size = 640 * 480 * 4 + 100;
        let plain = gst::Memory::with_size(size);
        let at = plain.map_readable().unwrap().as_ptr() as usize;
        // The data follows the GstMemory header in the same block: inside a page, unless
        // malloc happened to put the header just before a page boundary.
        if !at.is_multiple_of(page) {
            assert!(matches!(
                owned_pages_of(&plain),
                Err(Refusal::SharesPages { before, .. }) if before == at % page
            ));
        }
        let params = gst::AllocationParams::new(gst::MemoryFlags::empty(), page - 1, 0, page - 1);
        let aligned = gst::Allocator::find(None::<&str>)
            .unwrap()
            .alloc(size, Some(&params))
            .unwrap();
        let (pages, offset) = owned_pages_of(&aligned).unwrap();
        assert_eq!(offset, 0);
        assert_eq!(pages.len(), size.div_ceil(page) * page);
        let refusal = owned_pages_of(&plain).err().map(|r| r.to_string());
        if let Some(why) = refusal {
            assert!(why.contains(&format!("align={}", page - 1)), "{why}");
        }
    }
}
