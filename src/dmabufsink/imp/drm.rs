// SPDX-License-Identifier: MPL-2.0
//! The DRM side of dmabufsink: PRIME import of each new dma-buf into `drm-device`, the import
//! cache keyed by inode, and with `drm-addfb` the trial framebuffer that checks a frame can be
//! scanned out.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use gst::subclass::prelude::*;

use super::{CAT, DmabufSink, MAX_IMPORTS, Settings, Stats};
use crate::dmabufsink::layout::Plane;
use crate::kernel::{self, DrmNode, DrmUse, GemHandle};
use crate::memory::dmabuf_fd;

/// One imported dma-buf: a dup of its fd keeps it (and so its inode, our key) alive.
pub(super) struct Import {
    _dmabuf: OwnedFd,
    handle: GemHandle,
}

/// The DRM node (`drm-device`) and what was imported into it.
pub(super) struct Drm {
    pub(super) node: Arc<DrmNode>,
    pub(super) imports: HashMap<u64, Import>,
    /// Frame layouts (per plane: inode, offset, pitch) AddFB2 was tried with.
    pub(super) checked_layouts: HashSet<Vec<(u64, u32, u32)>>,
    /// Whether a failed import was explained already this run (the trial runs once).
    pub(super) explained: bool,
}

/// Why `node` may have refused a dma-buf, if a trial says it needs physically contiguous
/// memory: the rule vmemexport's `backing=auto` applies to V4L2 consumers (a buffer of
/// scattered pages, which the device refuses while it takes the frames' memory otherwise).
fn contiguity_cause(node: &Arc<DrmNode>) -> Option<String> {
    let trial = kernel::Udmabuf::open().and_then(|u| node.import_trial(|size| u.scattered(size)));
    match trial {
        Ok(kernel::ImportTrial::ContiguousOnly) => Some(format!(
            "{} refuses scattered pages (a trial import of a buffer that can never be physically \
             contiguous failed too): it needs physically contiguous memory; give it CMA frames, \
             e.g. vmemexport backing=heap heap=linux,cma (docs/vmemexport.md, \"Boards without \
             an IOMMU\")",
            node.path().display()
        )),
        _ => None,
    }
}

impl DmabufSink {
    /// Imports each dma-buf of `buffer` not seen before into the DRM node, and with drm-addfb
    /// checks once per frame layout that the frame can be scanned out (a trial framebuffer).
    /// `format` is the negotiated one and its DRM fourcc. Returns what to warn about.
    pub(super) fn import(
        &self,
        drm: &mut Drm,
        format: Option<(&gst_video::VideoInfo, u32)>,
        settings: &Settings,
        buffer: &gst::BufferRef,
        planes: Option<&[Plane]>,
        stats: &mut Stats,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        let node = drm.node.clone();
        // Each memory's inode, the key of its import (None: not importable).
        let mut inodes: Vec<Option<u64>> = Vec::with_capacity(buffer.n_memory());
        for mem in buffer.iter_memories() {
            let ino = dmabuf_fd(mem).and_then(|fd| Some((fd, rustix::fs::fstat(fd).ok()?.st_ino)));
            inodes.push(ino.map(|(_, ino)| ino));
            let Some((fd, ino)) = ino else { continue };
            if drm.imports.contains_key(&ino) {
                continue;
            }
            let handle = match node.prime_import(fd.fd()) {
                Ok(h) => h,
                Err(e) => {
                    stats.import_failures += 1;
                    // Once a run: is it the memory's scattered pages? (No lock is held here.)
                    let cause = if drm.explained {
                        None
                    } else {
                        drm.explained = true;
                        contiguity_cause(&node)
                    };
                    warnings.push(match cause {
                        Some(cause) => format!(
                            "{} cannot import a dma-buf: {e}; {cause}",
                            node.path().display()
                        ),
                        None => format!("{} cannot import a dma-buf: {e}", node.path().display()),
                    });
                    inodes.pop();
                    inodes.push(None);
                    continue;
                }
            };
            stats.imported += 1;
            if drm.imports.len() >= MAX_IMPORTS {
                // Checked layouts name imports by inode: they go with them.
                drm.imports.clear();
                drm.checked_layouts.clear();
            }
            let Ok(dup) = rustix::io::fcntl_dupfd_cloexec(fd, 0) else {
                continue;
            };
            drm.imports.insert(
                ino,
                Import {
                    _dmabuf: dup,
                    handle,
                },
            );
        }
        if settings.drm_addfb
            && let (Some((info, fourcc)), Some(planes)) = (format, planes)
        {
            // Plane i lies in memory planes[i].memory: its own buffer object, at its offset in
            // that memory's dma-buf.
            let layout: Option<Vec<(u64, u32, u32)>> = planes
                .iter()
                .map(|p| {
                    let ino = (*inodes.get(p.memory)?)?;
                    let offset = (buffer.peek_memory(p.memory).offset() + p.offset) as u32;
                    Some((ino, offset, p.stride))
                })
                .collect();
            if let Some(layout) = layout
                && !drm.checked_layouts.contains(&layout)
            {
                let fb_planes: Option<Vec<kernel::FbPlane<'_>>> = layout
                    .iter()
                    .map(|&(ino, offset, pitch)| {
                        Some(kernel::FbPlane {
                            handle: &drm.imports.get(&ino)?.handle,
                            offset,
                            pitch,
                        })
                    })
                    .collect();
                if let Some(fb_planes) = fb_planes {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "AddFB2 check with handles {:?}",
                        fb_planes.iter().map(|p| p.handle.raw()).collect::<Vec<_>>()
                    );
                    if let Err(e) =
                        node.check_addfb2(info.width(), info.height(), fourcc, None, &fb_planes)
                    {
                        stats.addfb_failures += 1;
                        warnings.push(format!(
                            "{} cannot scan this buffer out: {e}",
                            node.path().display()
                        ));
                    }
                    if drm.checked_layouts.len() >= MAX_IMPORTS {
                        drm.checked_layouts.clear();
                    }
                    drm.checked_layouts.insert(layout);
                }
            }
        }
        warnings
    }

    /// Returns the DRM imports `render` took out of the state; dropped (with their handles)
    /// outside the lock if the sink stopped meanwhile.
    pub(super) fn put_back(&self, drm: Option<Drm>) {
        let stale = match self.state.lock().unwrap().as_mut() {
            Some(state) => {
                state.drm = drm;
                None
            }
            None => drm,
        };
        drop(stale);
    }
}

/// Opens the `drm-device` property's value: a path (taken as it is), or `driver:NAME` (the
/// driver's first node for `purpose`, see [`DrmNode::open_driver`]).
pub(super) fn open_drm_device(spec: &str, purpose: DrmUse) -> kernel::Result<DrmNode> {
    match spec.strip_prefix("driver:") {
        Some(driver) => DrmNode::open_driver(driver, purpose),
        None => DrmNode::open(std::path::Path::new(spec)),
    }
}
