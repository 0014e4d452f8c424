// SPDX-License-Identifier: MPL-2.0
//! The memory vmemexport proposes to an upstream element that imports dma-bufs (a V4L2
//! capture device with `io-mode=dmabuf-import`): a sealed memfd per memory, exported through
//! udmabuf when it is allocated, handed out as the dma-buf itself. The memfd is closed at
//! once (the dma-buf holds its pages), so the memory is its one export for its whole life,
//! reused with its pool buffer: such frames leave vmemexport as they are.
//!
//! CPU writers map the dma-buf (GstDmaBufAllocator brackets every map with
//! `DMA_BUF_IOCTL_SYNC`), which is why this memory is only proposed when upstream needs
//! dma-bufs; other producers get [`super::MemfdAllocator`]'s memfds, exported by vmemexport.

use std::sync::LazyLock;

use gst::glib;
use gst::glib::translate::*;

use crate::kernel::{self, Udmabuf};

glib::wrapper! {
    pub struct UdmabufAllocator(ObjectSubclass<imp::UdmabufAllocator>)
        @extends gst_allocators::DmaBufAllocator, gst_allocators::FdAllocator, gst::Allocator,
            gst::Object;
}

impl UdmabufAllocator {
    /// An allocator exporting through `udmabuf`, naming its dma-bufs `name`; its failures are
    /// errors of `owner` (see [`crate::memory::AllocOwner`]).
    pub fn new(owner: &gst::Element, udmabuf: Udmabuf, name: String) -> UdmabufAllocator {
        use gst::subclass::prelude::ObjectSubclassIsExt;
        let allocator: UdmabufAllocator = glib::Object::new();
        allocator.imp().owner.set(owner);
        let _ = allocator.imp().udmabuf.set((udmabuf, name));
        allocator
    }

    /// An allocator for vmemexport `owner`, through a udmabuf of its own, its dma-bufs named
    /// like vmemexport's other exports.
    pub fn for_element(owner: &gst::Element) -> Result<UdmabufAllocator, kernel::Error> {
        use gst::prelude::*;
        let udmabuf = Udmabuf::open()?;
        Ok(UdmabufAllocator::new(
            owner,
            udmabuf,
            format!("vmemexport:{}", owner.name()),
        ))
    }

    /// Whether `mem` came from a UdmabufAllocator.
    pub fn owns(mem: &gst::MemoryRef) -> bool {
        use gst::prelude::*;
        mem.allocator().is_some_and(|a| a.is::<UdmabufAllocator>())
    }
}

static SEEN_QUARK: LazyLock<glib::Quark> =
    LazyLock::new(|| glib::Quark::from_str("GstVmemUdmabufSeen"));

/// Whether `mem` passes vmemexport for the first time (then marks it): `stats` counts its
/// export once, as `exported`, and every later pass as a cache hit.
pub fn first_pass(mem: &gst::MemoryRef) -> bool {
    let ptr = mem.as_mut_ptr().cast::<gst::ffi::GstMiniObject>();
    let quark = SEEN_QUARK.into_glib();
    // SAFETY: `mem` is a valid memory; the qdata under this quark is only a non-null marker
    // (no destroy function), set here.
    unsafe {
        if !gst::ffi::gst_mini_object_get_qdata(ptr, quark).is_null() {
            return false;
        }
        gst::ffi::gst_mini_object_set_qdata(
            ptr,
            quark,
            std::ptr::NonNull::dangling().as_ptr(),
            None,
        );
    }
    true
}

mod imp {
    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::{LazyLock, OnceLock};

    use gst::glib;
    use gst::subclass::prelude::*;

    use crate::kernel::{self, Udmabuf};
    use crate::memory;

    static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
        gst::DebugCategory::new(
            "vudmabufalloc",
            gst::DebugColorFlags::empty(),
            Some("udmabuf-exported memfd allocator"),
        )
    });

    #[derive(Default)]
    pub struct UdmabufAllocator {
        pub(super) owner: memory::AllocOwner,
        /// The exporter and the name given to its dma-bufs, set once at construction.
        pub(super) udmabuf: OnceLock<(Udmabuf, String)>,
    }

    memory::fd_allocator_subclass! {
        imp: UdmabufAllocator,
        name: "GstVmemUdmabufAllocator",
        wrapper: super::UdmabufAllocator,
        parent: DmaBufAllocator,
        through_gst_allocator_alloc: true,
    }

    impl memory::FdSource for UdmabufAllocator {
        // Kept mapped: a CPU writer maps the frame each time, and mmap per frame would cost
        // more than the write.
        const FLAGS: gst_allocators::FdMemoryFlags = gst_allocators::FdMemoryFlags::KEEP_MAPPED;

        fn category() -> gst::DebugCategory {
            *CAT
        }

        fn owner(&self) -> &memory::AllocOwner {
            &self.owner
        }

        fn make_fd(&self, maxsize: usize) -> Result<OwnedFd, kernel::Error> {
            let (udmabuf, name) = self.udmabuf.get().ok_or(kernel::Error::DeviceMissing {
                path: kernel::UDMABUF_PATH.into(),
                hint: "the allocator was made without udmabuf",
            })?;
            let memfd = memory::export_memfd(maxsize)?;
            let dmabuf = udmabuf.create(memfd.as_fd(), 0, maxsize as u64)?;
            memory::name_dmabuf(&dmabuf, name);
            gst::debug!(CAT, imp = self, "exported a {maxsize}-byte memfd");
            Ok(dmabuf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_passes_for_the_first_time_once() {
        gst::init().unwrap();
        let mem = gst::Memory::with_size(16);
        assert!(first_pass(&mem));
        assert!(!first_pass(&mem));
        assert!(!UdmabufAllocator::owns(&mem));
    }
}
