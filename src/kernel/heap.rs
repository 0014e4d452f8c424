// SPDX-License-Identifier: MPL-2.0
//! DMA-BUF heaps (`/dev/dma_heap/<name>`): system, CMA and vendor heaps.
//!
//! Allocation goes through the `dma-heap` crate (fd_flags `O_RDWR | O_CLOEXEC`, heap opened
//! `O_RDONLY | O_CLOEXEC` as libcamera does); this module adds discovery and errors that list what
//! exists.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::{Error, Result};

pub const HEAP_DIR: &str = "/dev/dma_heap";

/// Names the CMA heap goes by, in the order `auto` tries them: "linux,cma" on most boards,
/// "reserved" when the area comes from a reserved-memory node or `cma=`, "default_cma_region"
/// from Linux 6.17 on.
pub const CMA_HEAP_NAMES: &[&str] = &["linux,cma", "reserved", "default_cma_region"];

/// The heaps this system offers, sorted by name.
pub fn available_heaps() -> Vec<String> {
    let mut heaps: Vec<String> = std::fs::read_dir(HEAP_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    heaps.sort();
    heaps
}

fn available_text() -> String {
    let heaps = available_heaps();
    if heaps.is_empty() {
        format!("none ({HEAP_DIR} is empty or missing: enable CONFIG_DMABUF_HEAPS)")
    } else {
        heaps.join(", ")
    }
}

/// An open dma-heap.
#[derive(Debug)]
pub struct Heap {
    name: String,
    path: PathBuf,
    heap: dma_heap::Heap,
}

impl Heap {
    /// Opens `/dev/dma_heap/<name>`.
    pub fn open(name: &str) -> Result<Heap> {
        let path = Path::new(HEAP_DIR).join(name);
        let heap = dma_heap::Heap::new(dma_heap::HeapKind::Custom(path.clone())).map_err(|e| {
            match e.kind() {
                std::io::ErrorKind::NotFound => Error::HeapNotFound {
                    name: name.into(),
                    available: available_text(),
                },
                std::io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                    path: path.clone(),
                    hint: "read access to the heap is needed: add the user to its group or \
                           install a udev rule"
                        .into(),
                },
                _ => Error::from_io("open dma-heap", e),
            }
        })?;
        Ok(Heap {
            name: name.into(),
            path,
            heap,
        })
    }

    /// Opens the first heap of `candidates` that exists.
    pub fn open_first(candidates: &[String]) -> Result<Heap> {
        for name in candidates {
            match Heap::open(name) {
                Err(Error::HeapNotFound { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::HeapNotFound {
            name: candidates.join(" or "),
            available: available_text(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the heap hands out physically contiguous memory (for importers without an IOMMU).
    pub fn is_contiguous(&self) -> bool {
        CMA_HEAP_NAMES.contains(&self.name.as_str())
    }

    /// Allocates a dma-buf of `size` bytes (rounded up to pages by the kernel).
    pub fn allocate(&self, size: usize) -> Result<OwnedFd> {
        if size == 0 {
            return Err(Error::Empty);
        }
        self.heap
            .allocate(size)
            .map_err(|e| match Error::from_io("dma-heap allocation", e) {
                Error::OutOfMemory { op, .. } => Error::OutOfMemory {
                    op,
                    hint: if self.is_contiguous() {
                        format!(
                            " ({size} bytes from the CMA heap '{}': the CMA area is exhausted or \
                         fragmented; free buffers or enlarge it with cma=SIZE on the kernel \
                         command line)",
                            self.name
                        )
                    } else {
                        format!(" ({size} bytes from heap '{}')", self.name)
                    },
                },
                other => other,
            })
    }
}
