// SPDX-License-Identifier: MPL-2.0
//! The frame layout vmemexport's pool lets upstream choose, from what downstream accepts.
//!
//! Decoders configure padding and stride alignment (GstVideoAlignment) on a pool that offers
//! it: avdec_* asks for libav's `avcodec_align_dimensions2` padding (1280x720 H.264 becomes
//! 1280x739 luma rows, the chroma planes further down) and decodes straight into the pool.
//! Displays and compositors read that layout from the VideoMeta. GStreamer's V4L2 elements do
//! not: with the single-planar API the driver finds the chroma at bytesperline x height, and
//! their dma-buf import queues the memory as is, with its size as `bytesused` (over the
//! driver's `sizeimage` when padded: QBUF fails). For them the pool offers no alignment (and no
//! VideoMeta option, the only way a GstBufferPool can refuse it), so upstream writes
//! GStreamer's natural layout, the one those drivers compute; a decoder then decodes into its
//! own memory and copies the frame into ours, as it would into any pool without alignment.

use gst::glib;
use gst::prelude::*;

use super::export::Refusal;

/// A pool of `info` frames from `allocator` that accepts no GstVideoAlignment: plain
/// GstBufferPool, whose buffers hold one memory of the natural layout's size.
pub fn natural_pool(
    allocator: &gst::Allocator,
    caps: &gst::Caps,
    info: &gst_video::VideoInfo,
    min: u32,
) -> Result<gst::BufferPool, glib::BoolError> {
    configure_pool(gst::BufferPool::new(), allocator, caps, info, min, &[])
}

/// `pool`, configured for `info` frames of `caps` from `allocator` (at least `min` of them,
/// no maximum) with `options`.
pub fn configure_pool(
    pool: gst::BufferPool,
    allocator: &gst::Allocator,
    caps: &gst::Caps,
    info: &gst_video::VideoInfo,
    min: u32,
    options: &[&str],
) -> Result<gst::BufferPool, glib::BoolError> {
    let mut config = pool.config();
    config.set_params(Some(caps), info.size() as u32, min, 0);
    config.set_allocator(Some(allocator), None);
    for option in options {
        config.add_option(option);
    }
    pool.set_config(config)?;
    Ok(pool)
}

/// Why `buffer` cannot go to `consumer`, which needs the natural layout of `info`: its
/// VideoMeta places the planes elsewhere (a producer that padded frames of the proposed pool
/// anyway, or memory from elsewhere). `None` when its layout is the natural one.
pub fn natural_layout_refusal(
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
    consumer: &str,
) -> Option<Refusal> {
    let meta = buffer.meta::<gst_video::VideoMeta>()?;
    let n = info.n_planes() as usize;
    let (offsets, strides) = (&meta.offset()[..n], &meta.stride()[..n]);
    if offsets == &info.offset()[..n] && strides == &info.stride()[..n] {
        return None;
    }
    Some(Refusal::Layout {
        consumer: consumer.to_string(),
        layout: format!("offsets {offsets:?}, strides {strides:?}"),
        natural: format!(
            "offsets {:?}, strides {:?}",
            &info.offset()[..n],
            &info.stride()[..n]
        ),
    })
}
