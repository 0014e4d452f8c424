// SPDX-License-Identifier: MPL-2.0
//! A shared mapping that unmaps itself.

use std::os::fd::AsFd;
use std::ptr::NonNull;

use super::{Error, Result};

/// A `MAP_SHARED` mapping of a memfd or a dma-buf, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; synchronising access to its bytes is the
// caller's business exactly as for a `&mut [u8]` obtained from it.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`; `&Mapping` only hands out shared slices.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from `offset`, readable and (if `writable`) writable, shared.
    pub fn new(fd: impl AsFd, offset: u64, len: usize, writable: bool) -> Result<Mapping> {
        use rustix::mm::{MapFlags, ProtFlags};
        if len == 0 {
            return Err(Error::Empty);
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh mapping at an address the kernel chooses aliases no Rust object.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                MapFlags::SHARED,
                fd,
                offset,
            )
        }
        .map_err(|e| Error::from_io("mmap", e.into()))?;
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns NULL on success"),
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is valid for `len` bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only slice handed out.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this object created and nobody else unmaps.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
