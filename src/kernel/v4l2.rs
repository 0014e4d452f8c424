// SPDX-License-Identifier: MPL-2.0
//! One question to a V4L2 device, asked the way libcamera and vb2 users find out: can its
//! output queue import a dma-buf whose pages are scattered? A device behind vb2-dma-contig
//! without an IOMMU (many i.MX, Raspberry Pi, TI and Rockchip parts; vivid with
//! `allocators=1`) maps an imported dma-buf into one contiguous DMA range and refuses anything
//! else: `vb2_dc_map_dmabuf` in drivers/media/common/videobuf2/videobuf2-dma-contig.c returns
//! -EFAULT ("contiguous chunk is too small") when the buffer is prepared, long before any frame
//! is queued. The kernel exposes no flag that says so, so the probe prepares one scattered
//! trial buffer on a queue nobody streams on yet, and frees it again.
//!
//! The structs are the x86-64/aarch64 layouts of include/uapi/linux/videodev2.h (the fields
//! used, at their offsets; the kernel checks the size through the ioctl number). No crate of
//! the field wraps these five ioctls without a generated binding of all of V4L2.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::ioctl::{Updater, opcode};

use super::{Error, Result};

const V4L2_CAP_VIDEO_OUTPUT: u32 = 0x0000_0002;
const V4L2_CAP_VIDEO_OUTPUT_MPLANE: u32 = 0x0000_2000;
const V4L2_CAP_VIDEO_M2M_MPLANE: u32 = 0x0000_4000;
const V4L2_CAP_VIDEO_M2M: u32 = 0x0000_8000;
const V4L2_CAP_DEVICE_CAPS: u32 = 0x8000_0000;
const V4L2_BUF_TYPE_VIDEO_OUTPUT: u32 = 2;
const V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE: u32 = 10;
const V4L2_MEMORY_DMABUF: u32 = 4;
const V4L2_FIELD_NONE: u32 = 1;
const VIDEO_MAX_PLANES: usize = 8;

#[repr(C)]
struct Capability {
    driver: [u8; 16],
    card: [u8; 32],
    bus_info: [u8; 32],
    version: u32,
    capabilities: u32,
    device_caps: u32,
    reserved: [u32; 3],
}

/// `struct v4l2_format`: the type, then a union of 200 bytes that is 8-byte aligned (it holds
/// `struct v4l2_window`'s pointers). Both `pix.sizeimage` and `pix_mp.plane_fmt[0].sizeimage`
/// are at byte 20 of the union; `pix_mp.num_planes` at byte 180.
#[repr(C)]
struct Format {
    type_: u32,
    fmt: [u64; 25],
}

impl Format {
    fn u32_at(&self, offset: usize) -> u32 {
        let bytes: &[u8; 200] = bytemuck_bytes(&self.fmt);
        u32::from_ne_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }
}

fn bytemuck_bytes(words: &[u64; 25]) -> &[u8; 200] {
    // SAFETY: [u64; 25] is 200 initialised bytes with no padding; u8 has alignment 1.
    unsafe { &*(words as *const [u64; 25]).cast::<[u8; 200]>() }
}

#[repr(C)]
struct RequestBuffers {
    count: u32,
    type_: u32,
    memory: u32,
    capabilities: u32,
    flags: u8,
    reserved: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Plane {
    bytesused: u32,
    length: u32,
    /// `union { mem_offset; userptr; fd; }`: the fd in the low 32 bits (little-endian).
    m: u64,
    data_offset: u32,
    reserved: [u32; 11],
}

#[repr(C)]
struct Timecode {
    type_: u32,
    flags: u32,
    frames: u8,
    seconds: u8,
    minutes: u8,
    hours: u8,
    userbits: [u8; 4],
}

#[repr(C)]
struct Buffer {
    index: u32,
    type_: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    timestamp: libc::timeval,
    timecode: Timecode,
    sequence: u32,
    memory: u32,
    /// `union { offset; userptr; planes; fd; }`
    m: u64,
    length: u32,
    reserved2: u32,
    request_fd: i32,
}

const _: () = {
    assert!(std::mem::size_of::<Capability>() == 104);
    assert!(std::mem::size_of::<RequestBuffers>() == 20);
    assert!(std::mem::size_of::<Plane>() == 64);
    #[cfg(target_pointer_width = "64")]
    assert!(std::mem::size_of::<Format>() == 208);
    #[cfg(target_pointer_width = "64")]
    assert!(std::mem::size_of::<Buffer>() == 88);
};

/// What a device's output queue answered to a scattered dma-buf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportTrial {
    /// It imported the scattered buffer.
    Scattered,
    /// It refused it the way vb2-dma-contig does: only physically contiguous memory will do.
    ContiguousOnly,
    /// No answer: the queue is in use, the device has no output queue, or it refused the
    /// trial for another reason (the text says which).
    Unknown(String),
}

/// The output queue's buffer type of the device open as `fd`, and its current frame size
/// (the largest plane's `sizeimage`) and plane count.
fn output_queue(fd: BorrowedFd<'_>) -> std::result::Result<(u32, u32, usize), String> {
    let mut cap: Capability = unsafe { std::mem::zeroed() };
    // SAFETY: VIDIOC_QUERYCAP fills a struct v4l2_capability, which `cap` is.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            Updater::<{ opcode::read::<Capability>(b'V', 0) }, Capability>::new(&mut cap),
        )
    }
    .map_err(|e| format!("VIDIOC_QUERYCAP: {e}"))?;
    let caps = if cap.capabilities & V4L2_CAP_DEVICE_CAPS != 0 {
        cap.device_caps
    } else {
        cap.capabilities
    };
    let type_ = if caps & (V4L2_CAP_VIDEO_OUTPUT | V4L2_CAP_VIDEO_M2M) != 0 {
        V4L2_BUF_TYPE_VIDEO_OUTPUT
    } else if caps & (V4L2_CAP_VIDEO_OUTPUT_MPLANE | V4L2_CAP_VIDEO_M2M_MPLANE) != 0 {
        V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE
    } else {
        return Err(format!("no output queue (device caps {caps:#x})"));
    };
    let mut fmt = Format {
        type_,
        fmt: [0; 25],
    };
    // SAFETY: VIDIOC_G_FMT reads the type and fills a struct v4l2_format, which `fmt` is.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            Updater::<{ opcode::read_write::<Format>(b'V', 4) }, Format>::new(&mut fmt),
        )
    }
    .map_err(|e| format!("VIDIOC_G_FMT: {e}"))?;
    let planes = if type_ == V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE {
        (fmt.u32_at(180) & 0xff).clamp(1, VIDEO_MAX_PLANES as u32) as usize
    } else {
        1
    };
    let size = (0..planes)
        .map(|p| fmt.u32_at(20 + 20 * p))
        .max()
        .unwrap_or(0);
    if size == 0 {
        return Err("the output format has no size yet".into());
    }
    Ok((type_, size, planes))
}

fn reqbufs(fd: BorrowedFd<'_>, type_: u32, count: u32) -> rustix::io::Result<()> {
    let mut req = RequestBuffers {
        count,
        type_,
        memory: V4L2_MEMORY_DMABUF,
        capabilities: 0,
        flags: 0,
        reserved: [0; 3],
    };
    // SAFETY: VIDIOC_REQBUFS reads and updates a struct v4l2_requestbuffers, which `req` is.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            Updater::<{ opcode::read_write::<RequestBuffers>(b'V', 8) }, RequestBuffers>::new(
                &mut req,
            ),
        )
    }
}

/// Prepares buffer 0 of the queue with `dmabuf` in every plane (VIDIOC_PREPARE_BUF: vb2
/// attaches and maps the dma-buf, and queues nothing).
fn prepare(
    fd: BorrowedFd<'_>,
    type_: u32,
    planes: usize,
    dmabuf: BorrowedFd<'_>,
    size: u32,
) -> rustix::io::Result<()> {
    let raw = dmabuf.as_raw_fd() as u32 as u64;
    let mut plane_array = [Plane {
        bytesused: size,
        length: size,
        m: raw,
        data_offset: 0,
        reserved: [0; 11],
    }; VIDEO_MAX_PLANES];
    let mplane = type_ == V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE;
    let mut buf = Buffer {
        index: 0,
        type_,
        bytesused: size,
        flags: 0,
        field: V4L2_FIELD_NONE,
        timestamp: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        timecode: Timecode {
            type_: 0,
            flags: 0,
            frames: 0,
            seconds: 0,
            minutes: 0,
            hours: 0,
            userbits: [0; 4],
        },
        sequence: 0,
        memory: V4L2_MEMORY_DMABUF,
        m: if mplane {
            plane_array.as_mut_ptr() as u64
        } else {
            raw
        },
        length: if mplane { planes as u32 } else { size },
        reserved2: 0,
        request_fd: 0,
    };
    // SAFETY: VIDIOC_PREPARE_BUF reads and updates a struct v4l2_buffer, which `buf` is; for
    // the multi-planar type its `m.planes` points to `plane_array`, alive for the call.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            Updater::<{ opcode::read_write::<Buffer>(b'V', 93) }, Buffer>::new(&mut buf),
        )
    }
}

/// Asks the V4L2 device at `device` whether its output queue imports a scattered dma-buf.
/// `scattered` makes the trial buffer for a frame size: a dma-buf whose pages are known not to
/// be physically contiguous (see [`super::Udmabuf::scattered`]). The queue is left as it was
/// found: the trial's buffer is freed with REQBUFS(0). A queue that already has buffers
/// (someone streams or has allocated) answers EBUSY, which is [`ImportTrial::Unknown`].
pub fn output_import_trial(
    device: &Path,
    scattered: impl FnOnce(u64) -> Result<OwnedFd>,
) -> Result<ImportTrial> {
    let dev = rustix::fs::open(
        device,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| Error::from_io("open V4L2 device", e.into()))?;
    let fd = dev.as_fd();
    let (type_, size, planes) = match output_queue(fd) {
        Ok(q) => q,
        Err(why) => return Ok(ImportTrial::Unknown(why)),
    };
    let trial = scattered(u64::from(size))?;
    match reqbufs(fd, type_, 1) {
        Ok(()) => {}
        Err(Errno::BUSY) => {
            return Ok(ImportTrial::Unknown(
                "its output queue is in use (EBUSY)".into(),
            ));
        }
        Err(e) => return Ok(ImportTrial::Unknown(format!("VIDIOC_REQBUFS: {e}"))),
    }
    let prepared = prepare(fd, type_, planes, trial.as_fd(), size);
    let _ = reqbufs(fd, type_, 0);
    Ok(match prepared {
        Ok(()) => ImportTrial::Scattered,
        Err(Errno::FAULT) => ImportTrial::ContiguousOnly,
        Err(e) => ImportTrial::Unknown(format!("VIDIOC_PREPARE_BUF: {e}")),
    })
}
