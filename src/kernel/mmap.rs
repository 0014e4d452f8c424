// SPDX-License-Identifier: MPL-2.0
//! A shared mapping that unmaps itself.

use std::os::fd::AsFd;
use std::ptr::NonNull;

use super::{Error, Result};

/// A `MAP_SHARED` mapping of a memfd or a dma-buf, unmapped on drop.
///
/// The bytes are shared with whoever else maps the same file (other mappings in this process,
/// other processes, devices), so the slices it hands out are only sound while nobody else
/// writes them: see [`Mapping::new`]. [`Mapping::copy_out`] and [`Mapping::copy_in`] never
/// form a reference to the shared bytes.
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
    ///
    /// # Safety
    /// [`as_slice`](Self::as_slice) and [`as_mut_slice`](Self::as_mut_slice) hand out Rust
    /// references to shared pages. While one is alive, the caller must make sure that no one
    /// else writes those bytes (another `Mapping` of the same file, another process, a device)
    /// and, for `as_mut_slice`, that no one else reads them either: two mappings of one file
    /// alias like two `&mut` to one place. Code that cannot promise that uses only
    /// `copy_out`/`copy_in`.
    pub unsafe fn new(fd: impl AsFd, offset: u64, len: usize, writable: bool) -> Result<Mapping> {
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

    /// The mapped bytes (see the contract of [`Mapping::new`]).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is valid for `len` bytes for as long as `self` lives; that no one
        // writes them meanwhile is the contract the creator accepted in `new`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, writable (see the contract of [`Mapping::new`]).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only slice this mapping hands out.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// A copy of `len` bytes from `offset`, read without forming a reference to the shared
    /// pages: bytes that others write meanwhile come out torn, never as undefined behaviour.
    pub fn copy_out(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "copy_out({offset}, {len}) outside a {}-byte mapping",
            self.len
        );
        let mut out = Vec::with_capacity(len);
        // SAFETY: the source range lies inside the mapping (checked above), the destination
        // has capacity for `len` bytes, and the two cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), len);
            out.set_len(len);
        }
        out
    }

    /// Writes `bytes` at `offset` without forming a reference to the shared pages.
    pub fn copy_in(&mut self, offset: usize, bytes: &[u8]) {
        assert!(
            offset
                .checked_add(bytes.len())
                .is_some_and(|end| end <= self.len),
            "copy_in at {offset} of {} bytes outside a {}-byte mapping",
            bytes.len(),
            self.len
        );
        // SAFETY: the destination range lies inside the mapping (checked above); `bytes` is a
        // Rust slice, so it cannot be the shared pages themselves.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            )
        };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this object created and nobody else unmaps.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
