// SPDX-License-Identifier: MPL-2.0
//! The producer matrix (README, "Producer matrix"): every producer people put in front of
//! vmemexport, each into a real consumer: kmssink on vkms (RGB only: YUV producers go through
//! videoconvert to BGRx first), v4l2fwhtenc importing the dma-bufs at 1280x720 (the one size
//! vicodec encodes), and waylandsink on weston (1.26 and 1.28). Each row asserts vmemexport's
//! `stats` (copies=0, or every frame copied for a named reason; exports bounded by the pool,
//! not the frame count) and that the consumer took our dma-bufs: the display scans out one of
//! them, the encoder's bitstream equals the one of upstream's copy path, weston made
//! linux-dmabuf wl_buffers. Encoded inputs are made here by upstream's encoders. Runs without
//! the vmemexp module (tests/vm/suite loads it only around vm_pinned).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use common::weston::*;
use common::*;
use gst::prelude::*;

/// Exports a stream may cause: the pool plus the memories GstVideoDecoder copies reference
/// frames into, as many as the pipeline holds at once, never one per frame.
const MAX_EXPORTS: u64 = 16;
/// Frames of the 640x480 and 854x480 rows: more than [`MAX_EXPORTS`], so one export per frame
/// fails the bound.
const FRAMES: usize = 20;
/// Frames of the 1280x720 rows (TCG decodes and encodes them slowly); exports must still be
/// fewer than frames.
const FRAMES_720: usize = 10;

/// What vmemexport must have done with every frame of a row.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Each frame left as the pages it was written to.
    ZeroCopy,
    /// The input already was dma-buf memory.
    Passthrough,
    /// Each frame was copied, counted under this reason.
    Copied(&'static str),
}

/// A codec: upstream's encoder (and muxer), and the demuxer/parser and decoder under test.
struct Codec {
    encode: &'static str,
    decode: &'static str,
}

const AVDEC_H264: Codec = Codec {
    encode: "x264enc speed-preset=ultrafast ! h264parse ! video/x-h264,stream-format=byte-stream",
    decode: "h264parse ! avdec_h264",
};
const AVDEC_H265: Codec = Codec {
    encode: "x265enc speed-preset=ultrafast ! h265parse ! video/x-h265,stream-format=byte-stream",
    decode: "h265parse ! avdec_h265",
};
const AVDEC_VP9: Codec = Codec {
    encode: "vp9enc deadline=1 ! webmmux",
    decode: "matroskademux ! avdec_vp9",
};
const VP9DEC: Codec = Codec {
    encode: "vp9enc deadline=1 ! webmmux",
    decode: "matroskademux ! vp9dec",
};
const VP8DEC: Codec = Codec {
    encode: "vp8enc deadline=1 ! webmmux",
    decode: "matroskademux ! vp8dec",
};
const JPEGDEC: Codec = Codec {
    encode: "jpegenc ! matroskamux",
    decode: "matroskademux ! jpegdec",
};
const THEORADEC: Codec = Codec {
    encode: "theoraenc ! oggmux",
    decode: "oggdemux ! theoradec",
};
const OPENH264DEC: Codec = Codec {
    encode: "openh264enc ! h264parse ! video/x-h264,stream-format=byte-stream",
    decode: "h264parse ! openh264dec",
};
const AV1_DECODEBIN: Codec = Codec {
    encode: "svtav1enc preset=12 ! av1parse ! matroskamux",
    decode: "decodebin",
};
/// AV1 from libaom's encoder, where SVT-AV1 is not packaged (the 1.22 userland).
const AV1_AOM_DECODEBIN: Codec = Codec {
    encode: "av1enc cpu-used=8 usage-profile=realtime ! av1parse ! matroskamux",
    decode: "decodebin",
};

/// The file `codec` encoded `frames` frames of a moving I420 pattern into, made once per run.
fn encoded(codec: &Codec, (width, height): (u32, u32), frames: usize) -> PathBuf {
    static FILES: LazyLock<Mutex<HashMap<String, PathBuf>>> = LazyLock::new(Default::default);
    let key = format!("{} {width}x{height} {frames}", codec.encode);
    let mut files = FILES.lock().unwrap();
    let n = files.len();
    files
        .entry(key)
        .or_insert_with(|| {
            let file =
                std::env::temp_dir().join(format!("vm_matrix-{}-{n}.bin", std::process::id()));
            run(&launch(&format!(
                "videotestsrc num-buffers={frames} pattern=ball ! \
                 video/x-raw,format=I420,width={width},height={height},framerate=30/1 ! {} ! \
                 filesink location={}",
                codec.encode,
                file.display()
            )));
            file
        })
        .clone()
}

/// `codec`'s decoder decoding its stream: the producer of a row.
fn decoding(codec: &Codec, size: (u32, u32), frames: usize) -> String {
    let padded = !size.0.is_multiple_of(16) && codec.decode.contains("avdec_");
    format!(
        "filesrc location={} ! {} {}",
        encoded(codec, size, frames).display(),
        codec.decode,
        if padded { AVDEC_AT_PADDED_SIZES } else { "" }
    )
}

/// A moving BGRx pattern (kmssink's format on vkms).
fn test_pattern(format: &str, (width, height): (u32, u32)) -> String {
    format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! \
         video/x-raw,format={format},width={width},height={height},framerate=30/1"
    )
}

/// Panics unless this userland has element `name` (tests/vm/setup installs it everywhere).
fn require(name: &str) {
    init();
    assert!(
        gst::ElementFactory::find(name).is_some(),
        "{name} is not in this userland: tests/vm/setup installs its package"
    );
}

/// Asserts `expect` on the stats of vmemexport `v` after `frames` frames; prints the row.
fn check(row: &str, v: &gst::Element, frames: usize, expect: Expect) {
    let stats = v.property::<gst::Structure>("stats");
    eprintln!("matrix: {row}: {expect:?}: {stats}");
    let get = |f: &str| stats.get::<u64>(f).unwrap();
    let frames = frames as u64;
    assert_eq!(get("frames"), frames, "{row}: {stats}");
    assert_eq!(get("pinned-exports"), 0, "{row}: no vmemexp here: {stats}");
    match expect {
        Expect::ZeroCopy => {
            assert_eq!(get("copies"), 0, "{row}: {stats}");
            assert_eq!(get("bytes-copied"), 0, "{row}: {stats}");
        }
        Expect::Passthrough => {
            assert_eq!(get("copies"), 0, "{row}: {stats}");
            assert_eq!(get("passthrough"), frames, "{row}: {stats}");
            assert_eq!(get("exported"), 0, "{row}: {stats}");
            return;
        }
        Expect::Copied(reason) => {
            let reasons = stats.get::<gst::Structure>("copy-reasons").unwrap();
            assert_eq!(get("copies"), frames, "{row}: {stats}");
            assert_eq!(
                reasons.get::<u64>(reason).unwrap(),
                frames,
                "{row}: {stats}"
            );
        }
    }
    let exported = get("exported");
    assert!(
        (1..=MAX_EXPORTS).contains(&exported) && exported < frames,
        "{row}: exports bounded by the pool, not the frame count: {stats}"
    );
}

/// `producer ! vmemexport ! kmssink` on vkms: the frame on screen at EOS is one of the
/// dma-bufs kmssink received (not a copy in a dumb buffer), and kmssink imported each dma-buf
/// once.
fn into_kmssink(row: &str, producer: &str, frames: usize, expect: Expect) {
    init();
    let row = format!("{row} -> kmssink");
    let log = LogCapture::new(&["kmssink"], gst::DebugLevel::Log);
    let pipeline = launch(&format!(
        "{producer} ! vmemexport name=v ! kmssink name=k driver-name=vkms sync=false"
    ));
    let proof = ScanoutProof::install(&pipeline, "k");
    run(&pipeline);
    check(&row, &element(&pipeline, "v"), frames, expect);
    proof.assert_on_screen(&row);
    if let Some((new, reused)) = kmssink_imports(&log) {
        assert!(
            (1..=MAX_EXPORTS as usize).contains(&new) && new + reused >= frames,
            "{row}: kmssink made {new} framebuffers and reused them {reused} times for {frames} \
             frames"
        );
    }
}

/// The decoder of `codec` at `size` through videoconvert to BGRx into kmssink: vkms's planes
/// take RGB only, so videoconvert is the producer vmemexport sees.
fn decoded_into_kmssink(row: &str, codec: &Codec, size: (u32, u32)) {
    init();
    let producer = format!(
        "{} ! videoconvert ! video/x-raw,format=BGRx",
        decoding(codec, size, FRAMES)
    );
    into_kmssink(
        &format!("{row} {}x{} (videoconvert to BGRx)", size.0, size.1),
        &producer,
        FRAMES,
        Expect::ZeroCopy,
    );
}

/// `producer ! vmemexport ! v4l2fwhtenc output-io-mode=dmabuf-import`: the encoder imports
/// the dma-bufs (that io-mode fails outright on memory that is not a dma-buf) and reads the
/// frames where they are: its bitstream is byte for byte the one of upstream's copy path
/// (`producer ! v4l2fwhtenc`, copying into the driver's MMAP buffers).
fn into_fwht(row: &str, producer: &str, frames: usize, expect: Expect) {
    init();
    let row = format!("{row} -> v4l2fwhtenc");
    let reference = output_bytes(&format!(
        "{producer} ! v4l2fwhtenc ! appsink name=out sync=false"
    ));
    assert_eq!(reference.len(), frames, "{row}: the copy path's packets");
    let pipeline = launch(&format!(
        "{producer} ! vmemexport name=v ! v4l2fwhtenc output-io-mode=dmabuf-import ! \
         appsink name=out sync=false"
    ));
    let packets = collect(&pipeline, "out");
    let result = run_for(&pipeline, Duration::from_secs(300));
    let v = element(&pipeline, "v");
    if let Some(e) = result.error {
        panic!(
            "{row}: {e}; vmemexport's stats: {}",
            v.property::<gst::Structure>("stats")
        );
    }
    check(&row, &v, frames, expect);
    let packets: Vec<Vec<u8>> = packets
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.map_readable().unwrap().to_vec())
        .collect();
    assert_eq!(packets.len(), frames, "{row}: packets");
    let same = packets
        .iter()
        .zip(&reference)
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(
        same, frames,
        "{row}: {same} of {frames} packets equal the copy path's: the encoder read another layout"
    );
}

fn decoded_into_fwht(row: &str, codec: &Codec) {
    init();
    let producer = decoding(codec, (1280, 720), FRAMES_720);
    // 1.22's v4l2fwhtenc refuses some decoders' caps (jpegdec, theoradec, openh264dec: not
    // negotiated) without vmemexport as much as with it; their frames go to the display then.
    if gst_version() < (1, 26) {
        let alone = launch(&format!("{producer} ! v4l2fwhtenc ! fakesink"));
        if let Some(e) = run_for(&alone, Duration::from_secs(300)).error {
            eprintln!(
                "matrix: {row} -> v4l2fwhtenc: does not negotiate without vmemexport either \
                 ({e}); into kmssink instead"
            );
            decoded_into_kmssink(row, codec, (640, 480));
            return;
        }
    }
    into_fwht(
        &format!("{row} 1280x720"),
        &producer,
        FRAMES_720,
        Expect::ZeroCopy,
    );
}

/// `producer ! vmemexport ! waylandsink` on a fresh weston (1.26 and 1.28; decided by
/// version: the 1.22 userland, the host's root, has no compositor): weston made linux-dmabuf
/// wl_buffers of our dma-bufs, and waylandsink copied nothing into wl_shm.
fn into_waylandsink(row: &str, producer: &str, frames: usize, expect: Expect) {
    init();
    let row = format!("{row} -> waylandsink");
    if gst_version() < (1, 26) {
        eprintln!("matrix: {row}: the 1.22 userland has no Wayland compositor");
        return;
    }
    let log = wl_log();
    let ((pipeline, result), seen, crashes) = on_fresh_weston(&row, &log, |socket| {
        let pipeline = launch(&format!(
            "{producer} ! vmemexport name=v ! waylandsink name=w sync=false display={}",
            socket.display()
        ));
        let result = run_for(&pipeline, Duration::from_secs(300));
        (pipeline, result)
    });
    if let Some(e) = result.error {
        panic!("{row}: the client failed with weston up: {e}");
    }
    eprintln!(
        "{row}: {} linux-dmabuf wl_buffers, {} wl_shm, {} import timeouts; {crashes} weston \
         crashes before",
        seen.dmabuf, seen.shm, seen.timeouts
    );
    check(&row, &element(&pipeline, "v"), frames, expect);
    assert_dmabuf_wl_buffers(&row, &seen);
}

/// The decoder's own output (I420) at 640x480 and at 854x480, which libav pads.
fn decoded_into_waylandsink(row: &str, codec: &Codec) {
    init();
    for size in [(640, 480), (854, 480)] {
        let row = format!("{row} {}x{}", size.0, size.1);
        into_waylandsink(
            &row,
            &decoding(codec, size, FRAMES),
            FRAMES,
            Expect::ZeroCopy,
        );
    }
}

/// One VM test per row: `name => { body }`, with the row's doc comments.
macro_rules! rows {
    ($($(#[$doc:meta])* $test:ident => $body:block)*) => {
        $(
            $(#[$doc])*
            #[test]
            #[ignore = "needs the VM testbed"]
            fn $test() $body
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// The software decoders of issue 11's Done-when: kmssink, v4l2fwhtenc, waylandsink.
// ---------------------------------------------------------------------------------------------

rows! {
    avdec_h264_into_kmssink => {
        decoded_into_kmssink("avdec_h264", &AVDEC_H264, (640, 480));
        decoded_into_kmssink("avdec_h264", &AVDEC_H264, (854, 480));
    }
    /// Not at 854x480: avdec_h265 into videoconvert fails there without vmemexport too ("The
    /// downstream pool failed to allocated buffer", or g_error "video meta uses 864x480
    /// instead of 854x480"); its 854x480 frames go to waylandsink below.
    avdec_h265_into_kmssink => {
        decoded_into_kmssink("avdec_h265", &AVDEC_H265, (640, 480));
    }
    avdec_vp9_into_kmssink => {
        decoded_into_kmssink("avdec_vp9", &AVDEC_VP9, (640, 480));
        decoded_into_kmssink("avdec_vp9", &AVDEC_VP9, (854, 480));
    }
    vp9dec_into_kmssink => {
        decoded_into_kmssink("vp9dec", &VP9DEC, (640, 480));
        decoded_into_kmssink("vp9dec", &VP9DEC, (854, 480));
    }
    /// avdec_h264 configures padding and stride alignment on the pool it decodes into (libav's
    /// `avcodec_align_dimensions2`: 1280x720 becomes 739 rows), and v4l2fwhtenc imports a
    /// single-planar dma-buf at the driver's natural layout without looking at the VideoMeta.
    avdec_h264_into_v4l2fwhtenc => { decoded_into_fwht("avdec_h264", &AVDEC_H264) }
    avdec_h265_into_v4l2fwhtenc => { decoded_into_fwht("avdec_h265", &AVDEC_H265) }
    avdec_vp9_into_v4l2fwhtenc => { decoded_into_fwht("avdec_vp9", &AVDEC_VP9) }
    vp9dec_into_v4l2fwhtenc => { decoded_into_fwht("vp9dec", &VP9DEC) }
    avdec_h264_into_waylandsink => { decoded_into_waylandsink("avdec_h264", &AVDEC_H264) }
    avdec_h265_into_waylandsink => { decoded_into_waylandsink("avdec_h265", &AVDEC_H265) }
    avdec_vp9_into_waylandsink => { decoded_into_waylandsink("avdec_vp9", &AVDEC_VP9) }
    /// vp9dec without the vmemexp module, into consumers that read VideoMeta: vpxdec makes its
    /// own frame pool at the first frame, before it negotiates, with the default allocator, and
    /// pushes those frames whenever downstream reads VideoMeta. vmemexport does not offer
    /// VideoMeta to vpxdec, so vpxdec copies each frame into the pool (the copy it makes anyway
    /// towards V4L2). Not even the module could export libvpx's frames in place: their
    /// GstMemory header shares their first page (vm_pinned).
    vp9dec_into_waylandsink => { decoded_into_waylandsink("vp9dec", &VP9DEC) }
}

// ---------------------------------------------------------------------------------------------
// The other decoders: their own output into the encoder at 1280x720.
// ---------------------------------------------------------------------------------------------

rows! {
    vp8dec_into_v4l2fwhtenc => { decoded_into_fwht("vp8dec", &VP8DEC) }
    jpegdec_into_v4l2fwhtenc => { decoded_into_fwht("jpegdec", &JPEGDEC) }
    theoradec_into_v4l2fwhtenc => { decoded_into_fwht("theoradec", &THEORADEC) }
    openh264dec_into_v4l2fwhtenc => {
        require("openh264enc");
        require("openh264dec");
        decoded_into_fwht("openh264dec", &OPENH264DEC);
    }
    av1_through_decodebin_into_v4l2fwhtenc => {
        init();
        let codec = if gst::ElementFactory::find("svtav1enc").is_some() {
            &AV1_DECODEBIN
        } else {
            require("av1enc");
            &AV1_AOM_DECODEBIN
        };
        require("av1parse");
        let decoder = ["dav1ddec", "av1dec", "avdec_libdav1d", "avdec_av1"]
            .into_iter()
            .find(|d| gst::ElementFactory::find(d).is_some())
            .expect("no AV1 decoder in this userland");
        decoded_into_fwht(&format!("AV1 ({decoder} in decodebin)"), codec);
    }
}

// ---------------------------------------------------------------------------------------------
// Raw producers and filters into the display.
// ---------------------------------------------------------------------------------------------

const VGA: (u32, u32) = (640, 480);

/// `filter` (whose first element is `element`) after a moving `format` pattern at `size`, into
/// kmssink.
fn filtered_into_kmssink(element: &str, format: &str, size: (u32, u32), filter: &str) {
    require(element);
    let producer = format!("{} ! {filter}", test_pattern(format, size));
    into_kmssink(element, &producer, FRAMES, Expect::ZeroCopy);
}

rows! {
    videotestsrc_into_kmssink => {
        init();
        into_kmssink("videotestsrc", &test_pattern("BGRx", VGA), FRAMES, Expect::ZeroCopy);
    }
    videoconvert_into_kmssink => {
        filtered_into_kmssink("videoconvert", "I420", VGA, "videoconvert ! video/x-raw,format=BGRx");
    }
    videoscale_into_kmssink => {
        filtered_into_kmssink(
            "videoscale",
            "BGRx",
            (320, 240),
            "videoscale ! video/x-raw,width=640,height=480",
        );
    }
    videoconvertscale_into_kmssink => {
        filtered_into_kmssink(
            "videoconvertscale",
            "I420",
            (320, 240),
            "videoconvertscale ! video/x-raw,format=BGRx,width=640,height=480",
        );
    }
    compositor_into_kmssink => {
        filtered_into_kmssink(
            "compositor",
            "BGRx",
            (320, 240),
            "compositor ! video/x-raw,format=BGRx,width=640,height=480",
        );
    }
    textoverlay_into_kmssink => {
        filtered_into_kmssink("textoverlay", "BGRx", VGA, "textoverlay text=vmem");
    }
    timeoverlay_into_kmssink => { filtered_into_kmssink("timeoverlay", "BGRx", VGA, "timeoverlay") }
    videoflip_into_kmssink => {
        filtered_into_kmssink("videoflip", "BGRx", VGA, "videoflip method=rotate-180");
    }
    videobox_into_kmssink => {
        filtered_into_kmssink(
            "videobox",
            "BGRx",
            VGA,
            "videobox top=-16 bottom=-16 left=-16 right=-16 ! video/x-raw,format=BGRx",
        );
    }
    identity_into_kmssink => { filtered_into_kmssink("identity", "BGRx", VGA, "identity") }
}

/// vivid's capture buffers are dma-bufs already (io-mode=dmabuf): vmemexport passes them on.
#[test]
#[ignore = "needs the VM testbed"]
fn v4l2src_dmabuf_into_kmssink() {
    init();
    let producer = format!(
        "v4l2src device={} io-mode=dmabuf num-buffers={FRAMES} ! \
         video/x-raw,format=BGRx,width=640,height=480",
        v4l2_node("vivid", "vid-cap")
    );
    into_kmssink(
        "v4l2src io-mode=dmabuf (vivid)",
        &producer,
        FRAMES,
        Expect::Passthrough,
    );
}

/// io-mode=mmap: the frames are vivid's MMAP buffers, neither dma-buf memory nor process
/// memory, so vmemexport copies them (and says so).
#[test]
#[ignore = "needs the VM testbed"]
fn v4l2src_mmap_into_kmssink() {
    init();
    let producer = format!(
        "v4l2src device={} io-mode=mmap num-buffers={FRAMES} ! \
         video/x-raw,format=BGRx,width=640,height=480",
        v4l2_node("vivid", "vid-cap")
    );
    into_kmssink(
        "v4l2src io-mode=mmap (vivid)",
        &producer,
        FRAMES,
        Expect::Copied("foreign-memory"),
    );
}
