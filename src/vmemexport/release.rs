// SPDX-License-Identifier: MPL-2.0
//! The release guard: the pages of a frame that left as a dma-buf go back to upstream's pool
//! only once devices are done with them (their fences signalled), without ever blocking the
//! thread that releases the buffer.

use std::sync::{LazyLock, mpsc};
use std::time::{Duration, Instant};

use gst::glib;

use crate::kernel;
use crate::memory::{Attached, attach, dmabuf_fd};

static FENCE_QUARK: LazyLock<glib::Quark> =
    LazyLock::new(|| glib::Quark::from_str("GstVmemFenceGuard"));

/// How long a released buffer's pages are kept from recycling while devices still use them.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(1);

/// Released buffers the reaper holds at most; past it pages are let go at once.
const MAX_HELD: usize = 256;

/// What a guarded buffer keeps from recycling until devices are done with `dmabuf`.
struct Held {
    dmabuf: gst::Memory,
    _keep: gst::Buffer,
}

/// Makes `buffer`'s release keep `keep` (the upstream buffer whose pages `dmabuf` exports)
/// from going back to its pool until devices are done with `dmabuf` (its fences signalled), at
/// most [`FENCE_TIMEOUT`]: what GStreamer 1.28's VideoDmabufPool does with a sync file.
/// GStreamer runs this notify before it frees the buffer's metas. The release itself never
/// waits: a busy dma-buf is handed to the reaper thread, so whichever thread drops the last
/// reference (streaming, dmabufsink's socket thread, stop()) goes on at once.
pub fn guard_release(buffer: &mut gst::BufferRef, dmabuf: gst::Memory, keep: gst::Buffer) {
    let held = Held {
        dmabuf,
        _keep: keep,
    };
    attach(buffer.upcast_ref(), *FENCE_QUARK, held);
}

impl Attached for Held {
    /// Lets go of the pages at once if devices are done with them, else hands them to the
    /// reaper: the thread releasing the buffer never waits.
    fn released(self) {
        let idle = dmabuf_fd(&self.dmabuf).is_none_or(|fd| kernel::wait_idle(fd, Duration::ZERO));
        if !idle {
            reaper_hold(self);
        }
    }
}

/// Hands `held` to the reaper thread, which lets it go once its dma-buf is idle or
/// [`FENCE_TIMEOUT`] has passed. Never blocks.
fn reaper_hold(held: Held) {
    static REAPER: LazyLock<Option<mpsc::SyncSender<(Held, Instant)>>> = LazyLock::new(|| {
        let (tx, rx) = mpsc::sync_channel(MAX_HELD);
        std::thread::Builder::new()
            .name("vmem-fence-reaper".into())
            .spawn(move || reap(rx))
            .ok()
            .map(|_| tx)
    });
    let deadline = Instant::now() + FENCE_TIMEOUT;
    if let Some(Err(e)) = REAPER.as_ref().map(|tx| tx.try_send((held, deadline))) {
        // Dropping it here recycles pages a device may still read: better than blocking a
        // thread that must not wait, and only reached with MAX_HELD buffers already held.
        gst::warning!(
            gst::CAT_RUST,
            "{MAX_HELD} released buffers already wait for devices: letting one go early ({})",
            if matches!(e, mpsc::TrySendError::Full(_)) {
                "queue full"
            } else {
                "reaper gone"
            }
        );
    }
}

/// The reaper: holds busy buffers and lets each go when its fences signal or its deadline
/// passes, waiting on all of them at once.
fn reap(rx: mpsc::Receiver<(Held, Instant)>) {
    /// How long new arrivals may wait to be looked at while others are being waited for.
    const SLICE: Duration = Duration::from_millis(20);
    let mut held: Vec<(Held, Instant)> = Vec::new();
    loop {
        if held.is_empty() {
            match rx.recv() {
                Ok(h) => held.push(h),
                Err(_) => return,
            }
        }
        held.extend(rx.try_iter());
        let now = Instant::now();
        let first = held.iter().map(|(_, d)| *d).min().unwrap_or(now);
        let wait = first.saturating_duration_since(now).min(SLICE);
        // Only dma-buf memory is ever handed over (see `guard_release`).
        held.retain(|(h, _)| dmabuf_fd(&h.dmabuf).is_some());
        let idle = {
            let fds: Vec<_> = held
                .iter()
                .filter_map(|(h, _)| dmabuf_fd(&h.dmabuf))
                .collect();
            kernel::idle_dmabufs(&fds, wait)
        };
        let now = Instant::now();
        let mut i = 0;
        held.retain(|(_, deadline)| {
            let keep = !idle[i] && now < *deadline;
            i += 1;
            keep
        });
    }
}
