// SPDX-License-Identifier: MPL-2.0
//! The benchmark's pinned-export section: what a frame of memory that is not from vmemexport's
//! pool (an application's page-aligned frames, a decoder's own frames) costs through the
//! vmemexp module, against the copy fallback, per frame size.
//!
//! - Kernel: `VMEMEXP_IOC_EXPORT` of a frame, then closing the dma-buf (pin, export, unpin),
//!   against a `memcpy` of the frame into a mapped memfd (what the copy fallback does).
//! - Element: time inside vmemexport per frame, for appsrc pushing a new page-aligned frame
//!   (`gst_allocator_alloc` with `align` and `padding` of a page less one) each time (a pin per
//!   frame), the same few frames again and again (a decoder's pool: one pin per buffer, then
//!   cache hits), and `pin-system-memory=false` (a copy per frame).

use std::time::Instant;

use gst::prelude::*;
use gstvmem::kernel::{self, Memfd, PinAccess, Vmemexp};

use super::driver::{launch, run};

pub struct Row {
    pub width: u32,
    pub height: u32,
    pub bytes: usize,
    /// Microseconds: pin + export + release, memcpy into a mapped memfd.
    pub pin_us: f64,
    pub memcpy_us: f64,
    /// Microseconds per frame inside vmemexport: a new frame each time (pinned), frames
    /// reused (pinned once each), copy fallback.
    pub element_new_us: f64,
    pub element_reused_us: f64,
    pub element_copy_us: f64,
    pub copies: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Page-aligned, faulted-in frame memory, as a producer's would be.
struct Frame {
    ptr: *mut u8,
    len: usize,
}

impl Frame {
    fn new(len: usize) -> Frame {
        let mut ptr = std::ptr::null_mut();
        // SAFETY: plain allocation, checked.
        assert_eq!(unsafe { libc::posix_memalign(&mut ptr, 4096, len) }, 0);
        // SAFETY: `len` bytes were just allocated.
        unsafe { std::ptr::write_bytes(ptr as *mut u8, 0x5a, len) };
        Frame {
            ptr: ptr.cast(),
            len,
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes at `ptr`, initialized in new().
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // SAFETY: from posix_memalign, freed once.
        unsafe { libc::free(self.ptr.cast()) }
    }
}

/// Kernel costs for one frame size: (pin+export+release, memcpy) medians in microseconds.
fn kernel_costs(vmemexp: &Vmemexp, bytes: usize, reps: usize) -> (f64, f64) {
    let frame = Frame::new(bytes);
    let len = kernel::page_align(bytes as u64).unwrap() as usize;
    let mut pin = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        // SAFETY: the export is closed at once; nothing imports it.
        let fd = unsafe { vmemexp.export(frame.ptr as usize, len, PinAccess::ReadOnly) }
            .expect("vmemexp export");
        drop(fd);
        pin.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let memfd = Memfd::new("bench-copy", len as u64).unwrap();
    // SAFETY: only this function uses the mapping, through copy_in.
    let mut dst = unsafe { memfd.map() }.unwrap();
    dst.copy_in(0, frame.as_slice());
    let mut copy = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        dst.copy_in(0, frame.as_slice());
        copy.push(t.elapsed().as_secs_f64() * 1e6);
    }
    (median(pin), median(copy))
}

/// Median microseconds per frame inside vmemexport (`props`) for `frames` BGRx frames from
/// appsrc: new buffers each time, or `ring` buffers pushed in turn; and its copies.
fn element_cost(w: u32, h: u32, frames: usize, ring: Option<usize>, props: &str) -> (f64, u64) {
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Bgrx, w, h)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .unwrap();
    let pipeline = launch(&format!(
        "appsrc name=src format=time block=true max-buffers=2 ! vmemexport name=v {props} ! \
         fakesink"
    ));
    let src = super::driver::appsrc(&pipeline, &info);
    let v = pipeline.by_name("v").unwrap();
    let samples = super::driver::time_inside(&v);
    let size = info.size();
    let pusher = std::thread::spawn(move || {
        // Page-aligned, the last page padded: memory vmemexport may pin (a plain
        // `Buffer::with_size` shares its first page with its header and is copied).
        let page = kernel::page_size() as usize;
        let params = gst::AllocationParams::new(gst::MemoryFlags::empty(), page - 1, 0, page - 1);
        let make = || {
            let mem = gst::Allocator::find(None::<&str>)
                .unwrap()
                .alloc(size, Some(&params))
                .unwrap();
            let mut b = gst::Buffer::new();
            b.get_mut().unwrap().append_memory(mem);
            b.get_mut().unwrap().map_writable().unwrap().fill(0x40);
            b
        };
        let ring: Vec<gst::Buffer> = (0..ring.unwrap_or(0)).map(|_| make()).collect();
        for i in 0..frames {
            let mut b = if ring.is_empty() {
                make()
            } else {
                ring[i % ring.len()].clone()
            };
            b.make_mut()
                .set_pts(gst::ClockTime::from_mseconds(33 * i as u64));
            if src.push_buffer(b).is_err() {
                break;
            }
        }
        let _ = src.end_of_stream();
    });
    run(&pipeline);
    pusher.join().unwrap();
    let copies = v
        .property::<gst::Structure>("stats")
        .get::<u64>("copies")
        .unwrap();
    let mut s = samples.lock().unwrap().clone();
    // Reused frames: past the first round, which pins each of them once.
    if let Some(n) = ring {
        s = s.split_off(s.len().min(n));
    }
    (median(s), copies)
}

/// Every row, or why the section cannot run (no usable /dev/vmemexp).
pub fn measure(quick: bool) -> Result<Vec<Row>, String> {
    let vmemexp = Vmemexp::open().map_err(|e| e.to_string())?;
    let sizes: &[(u32, u32)] = if quick {
        &[(640, 480), (1920, 1080)]
    } else {
        &[(640, 480), (1280, 720), (1920, 1080), (3840, 2160)]
    };
    let mut rows = Vec::new();
    for &(w, h) in sizes {
        let bytes = (w * h * 4) as usize;
        let (pin_us, memcpy_us) = kernel_costs(&vmemexp, bytes, 15);
        let frames = if w >= 3840 { 12 } else { 30 };
        let (element_new_us, c1) = element_cost(w, h, frames, None, "");
        let (element_reused_us, c2) = element_cost(w, h, frames, Some(4), "");
        let (element_copy_us, copies) = element_cost(w, h, frames, None, "pin-system-memory=false");
        assert_eq!(c1 + c2, 0, "the pinned path copied");
        rows.push(Row {
            width: w,
            height: h,
            bytes,
            pin_us,
            memcpy_us,
            element_new_us,
            element_reused_us,
            element_copy_us,
            copies,
        });
    }
    Ok(rows)
}
