// SPDX-License-Identifier: MPL-2.0
//! vmemexport's counters, as its `stats` property shows them.

use super::export::CopyReason;
use super::udmabuf_allocator::{self, UdmabufAllocator};

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub frames: u64,
    /// New dma-bufs made: udmabuf exports of pool memfds and pinned (vmemexp) exports.
    pub exported: u64,
    /// The part of `exported` made through /dev/vmemexp.
    pub pinned_exports: u64,
    pub export_cache_hits: u64,
    pub passthrough: u64,
    pub copies: u64,
    pub bytes_copied: u64,
    pub syncs: u64,
    /// `copies` by reason, indexed by `CopyReason`.
    pub copy_reasons: [u64; CopyReason::ALL.len()],
}

impl Stats {
    /// Counts a frame that arrived as dma-buf memory and leaves as it is: the proposed pool's
    /// own udmabuf exports (an importing upstream filled them) count as exports, once per
    /// memory, then as cache hits; other dma-bufs pass through.
    pub fn count_dmabuf_frame(&mut self, buffer: &gst::BufferRef) {
        self.frames += 1;
        let mem = buffer.peek_memory(0);
        if !UdmabufAllocator::owns(mem) {
            self.passthrough += 1;
        } else if udmabuf_allocator::first_pass(mem) {
            self.exported += 1;
        } else {
            self.export_cache_hits += 1;
        }
    }

    pub fn count_copy(&mut self, reason: CopyReason, bytes: u64) {
        self.copies += 1;
        self.bytes_copied += bytes;
        self.copy_reasons[reason as usize] += 1;
    }

    pub fn to_structure(self) -> gst::Structure {
        let mut reasons = gst::Structure::builder("copy-reasons");
        for reason in CopyReason::ALL {
            reasons = reasons.field(reason.nick(), self.copy_reasons[reason as usize]);
        }
        gst::Structure::builder("vmemexport-stats")
            .field("frames", self.frames)
            .field("exported", self.exported)
            .field("pinned-exports", self.pinned_exports)
            .field("export-cache-hits", self.export_cache_hits)
            .field("passthrough", self.passthrough)
            .field("copies", self.copies)
            .field("bytes-copied", self.bytes_copied)
            .field("syncs", self.syncs)
            .field("copy-reasons", reasons.build())
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_counted_by_reason() {
        let mut stats = Stats::default();
        stats.count_copy(CopyReason::NeedsZeroOffset, 100);
        stats.count_copy(CopyReason::NeedsZeroOffset, 100);
        stats.count_copy(CopyReason::ForeignMemory, 7);
        stats.count_copy(CopyReason::SharesPages, 5);
        let s = stats.to_structure();
        assert_eq!(s.get::<u64>("copies").unwrap(), 4);
        assert_eq!(s.get::<u64>("bytes-copied").unwrap(), 212);
        let reasons = s.get::<gst::Structure>("copy-reasons").unwrap();
        assert_eq!(reasons.get::<u64>("needs-zero-offset").unwrap(), 2);
        assert_eq!(reasons.get::<u64>("foreign-memory").unwrap(), 1);
        assert_eq!(reasons.get::<u64>("pin-refused").unwrap(), 0);
        assert_eq!(reasons.get::<u64>("shares-pages").unwrap(), 1);
        assert_eq!(reasons.n_fields(), CopyReason::ALL.len());
    }

    #[test]
    fn every_reason_has_its_own_counter() {
        for (i, reason) in CopyReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "{reason:?}");
        }
    }
}
