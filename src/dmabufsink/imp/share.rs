// SPDX-License-Identifier: MPL-2.0
//! The socket side of dmabufsink: each frame described (planes, fds, timestamps) and handed to
//! the server that shares it with the connected clients.

use std::os::fd::BorrowedFd;

use gst::subclass::prelude::*;

use super::{CAT, DmabufSink};
use crate::dmabufsink::layout::{self, LayoutError, Plane};
use crate::dmabufsink::protocol;
use crate::dmabufsink::server::Server;
use crate::frame::FrameLayout;
use crate::memory::dmabuf_fd;

impl DmabufSink {
    /// Describes `buffer` for the socket: plane layout, fds, timestamps.
    pub(super) fn share(
        &self,
        server: &Server,
        info: &gst_video::VideoInfo,
        fourcc: u32,
        buffer: &gst::Buffer,
        planes: &[Plane],
        frame_number: u64,
    ) {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        let mut inodes: Vec<u64> = Vec::new();
        let mut frame = protocol::Frame {
            frame_number,
            pts: buffer.pts().map_or(u64::MAX, |t| t.nseconds()),
            duration: buffer.duration().map_or(u64::MAX, |t| t.nseconds()),
            width: info.width(),
            height: info.height(),
            fourcc,
            modifier: 0,
            n_planes: info.n_planes(),
            ..Default::default()
        };
        for (plane, layout) in planes.iter().enumerate() {
            let mem = buffer.peek_memory(layout.memory);
            let Some(fd) = dmabuf_fd(mem) else { return };
            let ino = rustix::fs::fstat(fd).map(|s| s.st_ino).unwrap_or(0);
            let index = inodes.iter().position(|&i| i == ino).unwrap_or_else(|| {
                inodes.push(ino);
                fds.push(fd.fd());
                inodes.len() - 1
            });
            frame.plane_fd[plane] = index as u8;
            frame.offsets[plane] = (mem.offset() + layout.offset) as u32;
            frame.strides[plane] = layout.stride;
        }
        let first = buffer.peek_memory(0);
        frame.size = (first.offset() + first.size()) as u64;
        frame.n_fds = fds.len() as u32;
        server.send(&frame, &fds, buffer);
    }

    pub(super) fn log_server_events(&self, server: &Server) {
        for e in server.take_events() {
            gst::info!(CAT, imp = self, "{e}");
        }
    }
}

/// The frame's planes as its VideoMeta (else the caps' default layout) places them, checked
/// against the memories that hold them.
pub(super) fn frame_layout(
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
) -> Result<Vec<Plane>, LayoutError> {
    let frame = FrameLayout::of(buffer, Some(info)).expect("caps are known");
    let sizes: Vec<usize> = buffer.iter_memories().map(|m| m.size()).collect();
    layout::plane_layout(info, &frame.offsets, &frame.strides, &sizes)
}
