// SPDX-License-Identifier: MPL-2.0
//! DRM nodes: finding one by driver name, PRIME import of dma-bufs, framebuffer checks.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use drm::Device as _;
use drm::buffer::{DrmFourcc, DrmModifier, PlanarBuffer};
use drm::control::Device as _;

use super::{Error, Result, open_device};

const DRI_DIR: &str = "/dev/dri";

/// An open DRM node (`/dev/dri/cardN` or `renderDN`).
#[derive(Debug)]
pub struct DrmNode {
    fd: OwnedFd,
    path: PathBuf,
    driver: String,
}

impl AsFd for DrmNode {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl drm::Device for DrmNode {}
impl drm::control::Device for DrmNode {}

/// What a DRM node is opened for, which decides the kind of node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrmUse {
    /// PRIME import only: a render node where the driver has one. Render nodes need no DRM
    /// master or authentication, and opening one cannot take master from a compositor.
    Import,
    /// Mode setting (AddFB2, reading the scanout): only primary `card` nodes serve it.
    Kms,
}

impl DrmNode {
    /// Opens the node at `path`. On a primary node, DRM master (which the kernel hands to the
    /// first opener) is dropped at once: holding it would lock out a compositor or a VT switch,
    /// and nothing here needs it (AddFB2 does not).
    pub fn open(path: &Path) -> Result<DrmNode> {
        let fd = open_device(path, "check the path, or name the driver with driver:NAME")?;
        let mut node = DrmNode {
            fd,
            path: path.into(),
            driver: String::new(),
        };
        node.driver = node
            .get_driver()
            .map_err(|e| Error::Io {
                op: "DRM_IOCTL_VERSION (is this a DRM node?)",
                source: e,
            })?
            .name()
            .to_string_lossy()
            .into_owned();
        // Fails (EINVAL) when this fd is not master, and on render nodes (EACCES): both fine.
        let _ = node.release_master_lock();
        Ok(node)
    }

    /// The DRM device another element has open as `fd` (kmssink's `fd` property), for a trial
    /// import into that very device: the fd is duplicated (close-on-exec), so the node stays
    /// valid when its owner closes its own, and DRM master is left as it is (the owner's file
    /// may hold it).
    pub fn from_shared_fd(fd: BorrowedFd<'_>) -> Result<DrmNode> {
        let dup = rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| Error::Io {
            op: "F_DUPFD_CLOEXEC of a DRM fd",
            source: e.into(),
        })?;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", dup.as_raw_fd()))
            .unwrap_or_else(|_| PathBuf::from("(a DRM fd)"));
        let mut node = DrmNode {
            fd: dup,
            path,
            driver: String::new(),
        };
        node.driver = node
            .get_driver()
            .map_err(|e| Error::Io {
                op: "DRM_IOCTL_VERSION (is this a DRM fd?)",
                source: e,
            })?
            .name()
            .to_string_lossy()
            .into_owned();
        Ok(node)
    }

    /// Opens the first node of driver `driver` that serves `purpose`: for import, render nodes
    /// before card nodes; for KMS, card nodes only. Numbering is not stable, the driver name is.
    pub fn open_driver(driver: &str, purpose: DrmUse) -> Result<DrmNode> {
        let mut seen = Vec::new();
        for path in dri_nodes(purpose)? {
            match DrmNode::open(&path) {
                Ok(node) if node.driver == driver => return Ok(node),
                Ok(node) => seen.push(format!("{} ({})", path.display(), node.driver)),
                Err(Error::PermissionDenied { .. }) => {
                    seen.push(format!("{} (no access)", path.display()))
                }
                Err(e @ Error::FdExhausted { .. }) => return Err(e),
                Err(_) => {}
            }
        }
        Err(Error::DeviceMissing {
            path: PathBuf::from(format!("{DRI_DIR}/<{driver}>")),
            hint: if seen.is_empty() {
                "no DRM nodes at all: is the driver's kernel module loaded?"
            } else {
                "no node of that driver; see the DRM nodes in /dev/dri"
            },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// Imports a dma-buf (`DRM_IOCTL_PRIME_FD_TO_HANDLE`). The handle is closed on drop.
    pub fn prime_import(self: &Arc<Self>, dmabuf: BorrowedFd<'_>) -> Result<GemHandle> {
        let handle = self.prime_fd_to_buffer(dmabuf).map_err(|e| Error::Io {
            op: "DRM_IOCTL_PRIME_FD_TO_HANDLE",
            source: e,
        })?;
        Ok(GemHandle {
            node: self.clone(),
            handle,
        })
    }
}

impl DrmNode {
    /// Whether the device imports a dma-buf of scattered pages: a PRIME import of `scattered`'s
    /// buffer, one that can never be physically contiguous (see [`super::Udmabuf::scattered`]).
    /// Drivers on the GEM DMA helpers (display controllers without an IOMMU) refuse it with
    /// EINVAL (`drm_gem_dma_prime_import_sg_table`); shmem-based ones (vkms, vgem) and devices
    /// behind an IOMMU take it. The trial's handle is closed at once.
    pub fn import_trial(
        self: &Arc<Self>,
        scattered: impl FnOnce(u64) -> Result<OwnedFd>,
    ) -> Result<super::ImportTrial> {
        let trial = scattered(64 * 1024)?;
        Ok(match self.prime_import(trial.as_fd()) {
            Ok(_handle) => super::ImportTrial::Scattered,
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                super::ImportTrial::ContiguousOnly
            }
            Err(e) => super::ImportTrial::Unknown(e.to_string()),
        })
    }
}

/// The DRM nodes present that can serve `purpose`, in the order to try them (none if there is
/// no /dev/dri): for import render nodes first, for KMS card nodes only.
pub fn dri_nodes(purpose: DrmUse) -> Result<Vec<PathBuf>> {
    let mut nodes: Vec<PathBuf> = match std::fs::read_dir(DRI_DIR) {
        Ok(d) => d.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::from_io("reading /dev/dri", e)),
    };
    nodes.retain(|p| {
        let n = p.file_name().unwrap_or_default().to_string_lossy();
        n.starts_with("card") || (purpose == DrmUse::Import && n.starts_with("renderD"))
    });
    nodes.sort_by_key(|p| {
        let n = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        (n.starts_with("card"), n.len(), n)
    });
    Ok(nodes)
}

/// A GEM handle from a PRIME import, closed (`DRM_IOCTL_GEM_CLOSE`) on drop.
#[derive(Debug)]
pub struct GemHandle {
    node: Arc<DrmNode>,
    handle: drm::buffer::Handle,
}

impl GemHandle {
    pub fn raw(&self) -> u32 {
        self.handle.into()
    }

    /// Checks scan-out-ability: `DRM_IOCTL_MODE_ADDFB2` with this single buffer object holding
    /// all planes at the given offsets and pitches, then removes the framebuffer again.
    pub fn check_addfb2(
        &self,
        width: u32,
        height: u32,
        fourcc: u32,
        modifier: Option<u64>,
        offsets: &[u32],
        pitches: &[u32],
    ) -> Result<()> {
        let planes: Vec<FbPlane<'_>> = offsets
            .iter()
            .zip(pitches)
            .map(|(&offset, &pitch)| FbPlane {
                handle: self,
                offset,
                pitch,
            })
            .collect();
        self.node
            .check_addfb2(width, height, fourcc, modifier, &planes)
    }

    /// The node this handle belongs to.
    pub fn node(&self) -> &Arc<DrmNode> {
        &self.node
    }
}

/// One plane of a framebuffer: the imported buffer that holds it, where it starts, its pitch.
#[derive(Debug, Clone, Copy)]
pub struct FbPlane<'a> {
    pub handle: &'a GemHandle,
    pub offset: u32,
    pub pitch: u32,
}

impl DrmNode {
    /// Checks scan-out-ability: `DRM_IOCTL_MODE_ADDFB2` with each plane in its own buffer
    /// object (or several planes in one), then removes the framebuffer again. Every handle must
    /// come from this node.
    pub fn check_addfb2(
        &self,
        width: u32,
        height: u32,
        fourcc: u32,
        modifier: Option<u64>,
        planes: &[FbPlane<'_>],
    ) -> Result<()> {
        let invalid = |what: &str| Error::Io {
            op: "DRM_IOCTL_MODE_ADDFB2",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string()),
        };
        let format = DrmFourcc::try_from(fourcc).map_err(|_| invalid("unknown DRM fourcc"))?;
        if planes.is_empty() || planes.len() > 4 {
            return Err(invalid("a framebuffer has 1 to 4 planes"));
        }
        if planes.iter().any(|p| !std::ptr::eq(&*p.handle.node, self)) {
            return Err(invalid("a plane's buffer was imported into another node"));
        }
        let mut fb = Planes {
            width,
            height,
            format,
            modifier: modifier.map(DrmModifier::from),
            handles: [None; 4],
            offsets: [0; 4],
            pitches: [0; 4],
        };
        for (i, p) in planes.iter().enumerate() {
            fb.handles[i] = Some(p.handle.handle);
            fb.offsets[i] = p.offset;
            fb.pitches[i] = p.pitch;
        }
        let flags = if modifier.is_some() {
            drm::control::FbCmd2Flags::MODIFIERS
        } else {
            drm::control::FbCmd2Flags::empty()
        };
        let id = self
            .add_planar_framebuffer(&fb, flags)
            .map_err(|e| Error::Io {
                op: "DRM_IOCTL_MODE_ADDFB2",
                source: e,
            })?;
        let _ = self.destroy_framebuffer(id);
        Ok(())
    }
}

impl Drop for GemHandle {
    fn drop(&mut self) {
        let _ = self.node.close_buffer(self.handle);
    }
}

struct Planes {
    width: u32,
    height: u32,
    format: DrmFourcc,
    modifier: Option<DrmModifier>,
    handles: [Option<drm::buffer::Handle>; 4],
    offsets: [u32; 4],
    pitches: [u32; 4],
}

impl PlanarBuffer for Planes {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
    fn format(&self) -> DrmFourcc {
        self.format
    }
    fn modifier(&self) -> Option<DrmModifier> {
        self.modifier
    }
    fn pitches(&self) -> [u32; 4] {
        self.pitches
    }
    fn handles(&self) -> [Option<drm::buffer::Handle>; 4] {
        self.handles
    }
    fn offsets(&self) -> [u32; 4] {
        self.offsets
    }
}

impl DrmNode {
    /// The buffer the first active CRTC shows, as a dma-buf (GETFB2, then PRIME export), with
    /// its framebuffer's layout. A framebuffer made from an imported dma-buf exports that very
    /// dma-buf again (same inode): what proves a display scans out the producer's pages.
    /// Needs CAP_SYS_ADMIN or DRM master for GETFB2 to return buffer handles.
    pub fn scanout_dmabuf(&self) -> Result<(OwnedFd, drm::control::framebuffer::PlanarInfo)> {
        let io = |op: &'static str| move |e: std::io::Error| Error::Io { op, source: e };
        let resources = self
            .resource_handles()
            .map_err(io("DRM_IOCTL_MODE_GETRESOURCES"))?;
        let fb = resources
            .crtcs()
            .iter()
            .find_map(|&crtc| self.get_crtc(crtc).ok()?.framebuffer())
            .ok_or_else(|| Error::Io {
                op: "DRM_IOCTL_MODE_GETCRTC",
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no CRTC is scanning out",
                ),
            })?;
        let info = self.get_planar_framebuffer(fb).map_err(|e| Error::Io {
            op: "DRM_IOCTL_MODE_GETFB2",
            source: std::io::Error::other(format!("{e:?}")),
        })?;
        let handle = info.buffers()[0].ok_or_else(|| Error::PermissionDenied {
            path: self.path.clone(),
            hint: "GETFB2 returned no buffer handle: reading a scanout needs CAP_SYS_ADMIN".into(),
        })?;
        let dmabuf = self
            .buffer_to_prime_fd(handle, rustix::fs::OFlags::CLOEXEC.bits())
            .map_err(io("DRM_IOCTL_PRIME_HANDLE_TO_FD"))?;
        let _ = self.close_buffer(handle);
        Ok((dmabuf, info))
    }
}

#[repr(C)]
struct VgemFenceAttach {
    handle: u32,
    flags: u32,
    out_fence: u32,
    pad: u32,
}

#[repr(C)]
struct VgemFenceSignal {
    fence: u32,
    flags: u32,
}

const VGEM_FENCE_WRITE: u32 = 1;
const DRM_COMMAND_BASE: u8 = 0x40;
const VGEM_FENCE_ATTACH: rustix::ioctl::Opcode =
    rustix::ioctl::opcode::read_write::<VgemFenceAttach>(b'd', DRM_COMMAND_BASE + 1);
const VGEM_FENCE_SIGNAL: rustix::ioctl::Opcode =
    rustix::ioctl::opcode::write::<VgemFenceSignal>(b'd', DRM_COMMAND_BASE + 2);

/// A fence vgem put on a buffer's reservation object, standing for a device access that has
/// not finished: it stays unsignalled until [`VgemFence::signal`], its drop, or vgem's own
/// 10 s timeout. How tests make a dma-buf busy the way a GPU or display would.
#[derive(Debug)]
pub struct VgemFence {
    node: Arc<DrmNode>,
    id: u32,
    signalled: bool,
}

impl GemHandle {
    /// Attaches an unsignalled vgem fence (`DRM_IOCTL_VGEM_FENCE_ATTACH`) to the buffer, as a
    /// write (`write`) or read access. The handle must come from a vgem node.
    pub fn attach_vgem_fence(&self, write: bool) -> Result<VgemFence> {
        let mut arg = VgemFenceAttach {
            handle: self.raw(),
            flags: if write { VGEM_FENCE_WRITE } else { 0 },
            out_fence: 0,
            pad: 0,
        };
        // SAFETY: DRM_IOCTL_VGEM_FENCE_ATTACH reads and writes a `struct drm_vgem_fence_attach`,
        // which `arg` is (same layout), and keeps no pointer to it.
        unsafe {
            rustix::ioctl::ioctl(
                &self.node,
                rustix::ioctl::Updater::<VGEM_FENCE_ATTACH, VgemFenceAttach>::new(&mut arg),
            )
        }
        .map_err(|e| Error::Io {
            op: "DRM_IOCTL_VGEM_FENCE_ATTACH (is this a vgem node?)",
            source: e.into(),
        })?;
        Ok(VgemFence {
            node: self.node.clone(),
            id: arg.out_fence,
            signalled: false,
        })
    }
}

impl VgemFence {
    /// Signals the fence: the access it stands for is over.
    pub fn signal(mut self) -> Result<()> {
        self.signalled = true;
        signal_vgem_fence(&self.node, self.id)
    }
}

impl Drop for VgemFence {
    fn drop(&mut self) {
        if !self.signalled {
            // ETIMEDOUT once vgem's own timeout signalled it: nothing left to do.
            let _ = signal_vgem_fence(&self.node, self.id);
        }
    }
}

fn signal_vgem_fence(node: &DrmNode, fence: u32) -> Result<()> {
    // SAFETY: DRM_IOCTL_VGEM_FENCE_SIGNAL only reads a `struct drm_vgem_fence_signal`.
    unsafe {
        rustix::ioctl::ioctl(
            node,
            rustix::ioctl::Setter::<VGEM_FENCE_SIGNAL, VgemFenceSignal>::new(VgemFenceSignal {
                fence,
                flags: 0,
            }),
        )
    }
    .map_err(|e| Error::Io {
        op: "DRM_IOCTL_VGEM_FENCE_SIGNAL",
        source: e.into(),
    })
}
