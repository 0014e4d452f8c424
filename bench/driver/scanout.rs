// SPDX-License-Identifier: MPL-2.0
//! What the display shows, read back: the pixels of the framebuffer the first active CRTC
//! scans out (the demo's screenshot, the compositor tests' screen).
#![allow(dead_code)] // the demo reads every field, the tests only the pixels

use std::os::fd::AsFd;

use gstvmem::kernel::{self, DrmNode};

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

/// Reads back the framebuffer the first active CRTC of `node` shows (GETFB2, then PRIME export
/// of its buffer and a mapping): what the display actually scans out. Needs CAP_SYS_ADMIN or
/// DRM master for GETFB2 to return buffer handles.
pub fn read_scanout(node: &DrmNode) -> kernel::Result<Scanout> {
    let (dmabuf, info) = node.scanout_dmabuf()?;
    let (width, height) = info.size();
    let pitch = info.pitches()[0];
    let offset = info.offsets()[0] as usize;
    let len = offset + (pitch * height) as usize;
    let pixels = kernel::read_dmabuf(kernel::DmaBuf::known(dmabuf.as_fd()), len, |bytes| {
        bytes[offset..].to_vec()
    })?;
    Ok(Scanout {
        width,
        height,
        fourcc: info.pixel_format() as u32,
        pitch,
        pixels,
    })
}
