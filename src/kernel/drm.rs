// SPDX-License-Identifier: MPL-2.0
//! DRM nodes: finding one by driver name, PRIME import of dma-bufs, framebuffer checks.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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

impl DrmNode {
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
        Ok(node)
    }

    /// Opens the first node of driver `driver` (card nodes first: numbering is not stable, the
    /// driver name is).
    pub fn open_driver(driver: &str) -> Result<DrmNode> {
        let mut seen = Vec::new();
        for path in dri_nodes()? {
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

    /// Opens `spec`: a path, or `driver:NAME`.
    pub fn open_spec(spec: &str) -> Result<DrmNode> {
        match spec.strip_prefix("driver:") {
            Some(driver) => DrmNode::open_driver(driver),
            None => DrmNode::open(Path::new(spec)),
        }
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

/// The DRM nodes present, cards before render nodes (none if there is no /dev/dri).
pub fn dri_nodes() -> Result<Vec<PathBuf>> {
    let mut nodes: Vec<PathBuf> = match std::fs::read_dir(DRI_DIR) {
        Ok(d) => d.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::from_io("reading /dev/dri", e)),
    };
    nodes.retain(|p| {
        let n = p.file_name().unwrap_or_default().to_string_lossy();
        n.starts_with("card") || n.starts_with("renderD")
    });
    nodes.sort_by_key(|p| {
        let n = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        (!n.starts_with("card"), n.len(), n)
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
        let format = DrmFourcc::try_from(fourcc).map_err(|_| Error::Io {
            op: "DRM_IOCTL_MODE_ADDFB2",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "unknown DRM fourcc"),
        })?;
        let fb = Planes {
            width,
            height,
            format,
            modifier: modifier.map(DrmModifier::from),
            handle: self.handle,
            offsets,
            pitches,
        };
        let flags = if modifier.is_some() {
            drm::control::FbCmd2Flags::MODIFIERS
        } else {
            drm::control::FbCmd2Flags::empty()
        };
        let id = self
            .node
            .add_planar_framebuffer(&fb, flags)
            .map_err(|e| Error::Io {
                op: "DRM_IOCTL_MODE_ADDFB2",
                source: e,
            })?;
        let _ = self.node.destroy_framebuffer(id);
        Ok(())
    }
}

impl Drop for GemHandle {
    fn drop(&mut self) {
        let _ = self.node.close_buffer(self.handle);
    }
}

struct Planes<'a> {
    width: u32,
    height: u32,
    format: DrmFourcc,
    modifier: Option<DrmModifier>,
    handle: drm::buffer::Handle,
    offsets: &'a [u32],
    pitches: &'a [u32],
}

impl PlanarBuffer for Planes<'_> {
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
        let mut p = [0; 4];
        p[..self.pitches.len()].copy_from_slice(self.pitches);
        p
    }
    fn handles(&self) -> [Option<drm::buffer::Handle>; 4] {
        let mut h = [None; 4];
        h[..self.pitches.len()].fill(Some(self.handle));
        h
    }
    fn offsets(&self) -> [u32; 4] {
        let mut o = [0; 4];
        o[..self.offsets.len()].copy_from_slice(self.offsets);
        o
    }
}

/// What a CRTC is scanning out, read back from its framebuffer.
#[derive(Debug, Clone)]
pub struct Scanout {
    pub width: u32,
    pub height: u32,
    /// DRM fourcc of the framebuffer.
    pub fourcc: u32,
    pub pitch: u32,
    /// `pitch * height` bytes of plane 0.
    pub pixels: Vec<u8>,
}

impl DrmNode {
    /// Reads back the framebuffer the first active CRTC shows (GETFB2, then PRIME export of its
    /// buffer and an mmap): what the display actually scans out. Needs CAP_SYS_ADMIN or DRM
    /// master for GETFB2 to return buffer handles.
    pub fn read_scanout(&self) -> Result<Scanout> {
        let (dmabuf, info) = self.scanout_dmabuf()?;
        let (width, height) = info.size();
        let pitch = info.pitches()[0];
        let offset = info.offsets()[0] as usize;
        let len = offset + (pitch * height) as usize;
        // SAFETY: no slice of the mapping is formed; it is read with `copy_out` only.
        let map = unsafe { super::Mapping::new(&dmabuf, 0, len, false)? };
        super::sync_start(dmabuf.as_fd(), super::SyncAccess::Read)?;
        let pixels = map.copy_out(offset, len - offset);
        super::sync_end(dmabuf.as_fd(), super::SyncAccess::Read)?;
        Ok(Scanout {
            width,
            height,
            fourcc: info.pixel_format() as u32,
            pitch,
            pixels,
        })
    }

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
