// SPDX-License-Identifier: MPL-2.0
//! Software decoders into vmemexport without the vmemexp module: each decodes into the pool
//! vmemexport proposes (or GStreamer's copy of a frame lands in that pool's memory), so frames
//! leave with no copy by vmemexport, each pool memory exported once, the pixels the decoder's.

mod common;

use common::*;
use gst::prelude::*;

/// Exports a decoder may cause for a whole stream: its pool plus the memories GstVideoDecoder
/// copies reference frames into, as many as the pipeline holds at once (the queues below are
/// kept short for that), never one per frame.
const MAX_EXPORTS: u64 = 16;

/// `encoder` runs once into a file; `decoder` decodes it with and without vmemexport (see
/// [`play_through_vmemexport`]). Returns vmemexport's stats.
fn decode(encoder: &str, decoder: &str, caps: &str, frames: usize) -> gst::Structure {
    let tag = format!(
        "vm_producers-{}",
        decoder
            .split_whitespace()
            .rfind(|w| !w.contains('='))
            .unwrap()
    );
    let src = format!(
        "{} ! {decoder}",
        encoded_source(&tag, caps, encoder, frames)
    );
    play_through_vmemexport(&src, "", &["udmabuf"], frames).property::<gst::Structure>("stats")
}

fn assert_zero_copy(stats: &gst::Structure, what: &str) {
    let get = |f: &str| stats.get::<u64>(f).unwrap();
    assert_eq!(get("copies"), 0, "{what}: {stats}");
    assert_eq!(get("pinned-exports"), 0, "{what}: no vmemexp here: {stats}");
    assert!(
        (1..=MAX_EXPORTS).contains(&get("exported")),
        "{what}: exports bounded by the pool, not the frame count: {stats}"
    );
}

const I420_640: &str = "video/x-raw,format=I420,width=640,height=480";
const H264: &str =
    "x264enc speed-preset=ultrafast ! h264parse ! video/x-h264,stream-format=byte-stream";

#[test]
#[ignore = "needs the VM testbed"]
fn libav_decoders_leave_without_copies() {
    init();
    let frames = 20;
    let padded = format!("h264parse ! avdec_h264 {AVDEC_AT_PADDED_SIZES}");
    for (encoder, decoder, caps) in [
        (H264, "h264parse ! avdec_h264", I420_640),
        // 854 is padded to 864 by libav: avdec_h264 renegotiates on every frame.
        (
            H264,
            padded.as_str(),
            "video/x-raw,format=I420,width=854,height=480",
        ),
        (
            "x265enc speed-preset=ultrafast ! h265parse ! video/x-h265,stream-format=byte-stream",
            "h265parse ! avdec_h265",
            I420_640,
        ),
        (
            "vp9enc deadline=1 ! matroskamux",
            "matroskademux ! avdec_vp9",
            I420_640,
        ),
    ] {
        let stats = decode(encoder, decoder, caps, frames);
        assert_zero_copy(&stats, &format!("{decoder} {caps}"));
    }
}

#[test]
#[ignore = "needs the VM testbed"]
fn high_444_and_10_bit_h264_play_without_copies() {
    // x264 makes High 4:4:4 from Y444 and High 10 from I420_10LE; avdec_h264 outputs them as
    // Y444 and I420_10LE, which vmemexport exports like any other format.
    init();
    for caps in [
        "video/x-raw,format=Y444,width=320,height=240",
        "video/x-raw,format=I420_10LE,width=320,height=240",
    ] {
        let stats = decode(H264, "h264parse ! avdec_h264", caps, 10);
        assert_zero_copy(&stats, caps);
    }
}

#[test]
#[ignore = "needs the VM testbed"]
fn vpxdec_writes_into_the_pool_without_copies() {
    // vpxdec allocates libvpx's frames from a pool of its own, made at the first frame before
    // it negotiates (so with the default allocator, not vmemexport's), and pushes them as they
    // are whenever downstream reads VideoMeta: each would be a counted `foreign-memory` copy.
    // vmemexport offers vpxdec no VideoMeta, so it copies each frame into the proposed pool
    // instead (the copy it makes anyway) and vmemexport copies nothing.
    init();
    for (encoder, decoder) in [
        ("vp9enc deadline=1 ! matroskamux", "matroskademux ! vp9dec"),
        ("vp8enc deadline=1 ! matroskamux", "matroskademux ! vp8dec"),
    ] {
        let stats = decode(encoder, decoder, I420_640, 20);
        assert_zero_copy(&stats, decoder);
    }
}
