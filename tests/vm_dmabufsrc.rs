// SPDX-License-Identifier: MPL-2.0
//! dmabufsrc in the VM, always in a second process: the producer
//! (`videotestsrc ! vmemexport ! dmabufsink socket-path=...`) and the receiver run in different
//! processes, and the receiver's frames are the producer's own dma-bufs.
//!
//! - a second process's `dmabufsrc ! kmssink` scans out the first process's dma-buf (inode
//!   identity with the producer's exports, pixels read back from the screen), 0 copies on
//!   both sides;
//! - `dmabufsrc ! v4l2fwhtenc output-io-mode=dmabuf-import` encodes them where they are (the
//!   bitstream equals the one of a local copy path);
//! - a producer that is killed and started again is reconnected to;
//! - a receiver that stalls is cut off by hold-timeout while the producer keeps its rate;
//! - the caps form: DMA_DRM on >= 1.24, the legacy `memory:DMABuf` form on 1.22, plain when
//!   downstream asks for it.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BGRX: &str = "video/x-raw,format=BGRx,width=640,height=480,framerate=30/1";

fn socket_path(name: &str) -> String {
    format!("/tmp/vmem-dmabufsrc-{name}-{}.sock", std::process::id())
}

/// A `gst-launch-1.0` of this plugin in a process of its own, killed when dropped; its output
/// goes to a file, read by [`Launched::output`].
struct Launched {
    child: Child,
    log: String,
}

impl Launched {
    fn spawn(tag: &str, desc: &str, debug: &str) -> Launched {
        let log = format!("/tmp/vmem-dmabufsrc-{tag}-{}.log", std::process::id());
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("gst-launch-1.0")
            .args(desc.split_whitespace())
            .env("GST_PLUGIN_PATH", format!("{ROOT}/target/release"))
            .env("GST_DEBUG", debug)
            .env("GST_DEBUG_NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Launched { child, log }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it as Ctrl-C would (the pipeline goes to NULL, its elements stop) and waits.
    fn interrupt(mut self) -> String {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        let deadline = Instant::now() + secs(30);
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.output()
    }

    /// Kills it (no goodbye to anyone) and waits.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The producer, in this process: `videotestsrc` (smpte: its frames differ) -> vmemexport ->
/// dmabufsink serving `path`, with the inode of every dma-buf it shares and the checksum of
/// every frame's pixels recorded.
struct Producer {
    pipeline: gst::Pipeline,
    inodes: Arc<Mutex<HashSet<u64>>>,
    checksums: Arc<Mutex<HashSet<u64>>>,
}

impl Producer {
    fn start(path: &str, caps: &str, sink_props: &str) -> Producer {
        Producer::start_with(path, "smpte", caps, sink_props, true)
    }

    /// With `pixels` false, the frames' checksums are not computed: the producer runs at its
    /// own speed (a debug build's checksum of every frame takes much of a core in the VM).
    fn start_with(
        path: &str,
        pattern: &str,
        caps: &str,
        sink_props: &str,
        pixels: bool,
    ) -> Producer {
        init();
        let _ = std::fs::remove_file(path);
        let pipeline = launch(&format!(
            "videotestsrc is-live=true pattern={pattern} ! {caps} ! vmemexport name=v ! \
             dmabufsink name=share socket-path={path} {sink_props}"
        ));
        let inodes = Arc::new(Mutex::new(HashSet::new()));
        let checksums = Arc::new(Mutex::new(HashSet::new()));
        let (seen, sums) = (inodes.clone(), checksums.clone());
        element(&pipeline, "share")
            .static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                if let Some(buffer) = info.buffer() {
                    if pixels
                        && let Some((vi, _)) = pad
                            .current_caps()
                            .and_then(|c| gstvmem::formats::video_info_from_caps(&c))
                    {
                        sums.lock()
                            .unwrap()
                            .insert(checksum(&normalized_frame(buffer, &vi)));
                    }
                    for mem in buffer.iter_memories() {
                        if let Some(fd) = gstvmem::memory::dmabuf_fd(mem)
                            && let Ok(st) = rustix::fs::fstat(fd)
                        {
                            seen.lock().unwrap().insert(st.st_ino);
                        }
                    }
                }
                gst::PadProbeReturn::Ok
            });
        pipeline.set_state(gst::State::Playing).unwrap();
        wait_for_socket(path);
        Producer {
            pipeline,
            inodes,
            checksums,
        }
    }

    fn stat(&self, element_name: &str, field: &str) -> u64 {
        stat(&element(&self.pipeline, element_name), field)
    }

    fn inodes(&self) -> HashSet<u64> {
        self.inodes.lock().unwrap().clone()
    }

    /// Whether `sum` is the checksum of one of the frames it shared.
    fn made(&self, sum: u64) -> bool {
        self.checksums.lock().unwrap().contains(&sum)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_second_process_scans_out_the_first_process_dmabufs() {
    let path = socket_path("kms");
    let producer = Producer::start(&path, BGRX, "");
    let mut display = Launched::spawn(
        "kms",
        &format!("dmabufsrc socket-path={path} ! kmssink driver-name=vkms"),
        "kmssink:7,GST_PERFORMANCE:5,dmabufsrc:4",
    );
    // While the second process shows frames: the CRTC scans out a dma-buf, and that dma-buf
    // is one the producer shared (the same inode: the same file, not a copy).
    let deadline = Instant::now() + secs(120);
    let on_screen = loop {
        assert!(
            display.running(),
            "the receiving gst-launch exited:\n{}",
            display.output()
        );
        if let Ok(ino) = scanout_inode("vkms")
            && producer.inodes().contains(&ino)
        {
            break ino;
        }
        assert!(
            Instant::now() < deadline,
            "after 120 s the CRTC scans out {:?}, none of the producer's {} dma-bufs; \
             receiver's log:\n{}",
            scanout_inode("vkms"),
            producer.inodes().len(),
            display.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let pixels = scanout_checksum("vkms").unwrap();
    let log = display.interrupt();
    assert!(producer.inodes().contains(&on_screen));
    assert!(
        producer.made(pixels),
        "the screen shows none of the producer's frames"
    );
    // No copy on either side: the producer exported its pool's pages, and kmssink imported
    // what dmabufsrc gave it (a copy would put a dumb buffer's inode on screen, and log).
    assert!(producer.stat("v", "frames") > 0);
    assert_eq!(producer.stat("v", "copies"), 0);
    assert!(
        log.contains("setting KMS mem"),
        "kmssink imported nothing:\n{log}"
    );
    assert!(!log.contains("frame copy"), "kmssink copied:\n{log}");
    assert!(
        producer.stat("share", "frames-released") > 0,
        "the receiver released nothing"
    );
}

/// The frames the receiver's encoder produced, read back: `dmabufsrc ! v4l2fwhtenc
/// output-io-mode=dmabuf-import` in another process, writing its packets to a file.
#[test]
#[ignore = "needs the VM testbed"]
fn a_second_process_encodes_the_first_process_dmabufs_where_they_are() {
    const FRAMES: usize = 10;
    // vicodec encodes at its default size only (docs/testbed.md). A picture that does not
    // change (colors), so the stream the receiver joins is the reference's.
    let caps = "video/x-raw,format=NV12,width=1280,height=720,framerate=30/1";
    let path = socket_path("fwht");
    let out = format!("/tmp/vmem-dmabufsrc-fwht-{}.bin", std::process::id());
    let producer = Producer::start_with(&path, "colors", caps, "", false);
    let encoder = Launched::spawn(
        "fwht",
        &format!(
            "dmabufsrc socket-path={path} num-buffers={FRAMES} ! \
             v4l2fwhtenc output-io-mode=dmabuf-import ! filesink location={out}"
        ),
        "dmabufsrc:4",
    );
    let deadline = Instant::now() + secs(120);
    let mut encoder = encoder;
    while encoder.running() {
        assert!(
            Instant::now() < deadline,
            "the encoder did not finish:\n{}",
            encoder.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = encoder.child.wait().unwrap();
    assert!(
        status.success(),
        "the encoder failed:\n{}",
        encoder.output()
    );
    let received = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    // The same frames, encoded in this process through the copy path (into the driver's
    // MMAP buffers), with the caps the receiver negotiated (its log says; the protocol carries
    // no colorimetry, which the bitstream's header records): the same bitstream.
    let log = encoder.output();
    let negotiated = log
        .lines()
        .find_map(|l| {
            l.split_once("negotiate_frame:<dmabufsrc0> caps ")
                .map(|(_, c)| c)
        })
        .unwrap_or_else(|| panic!("the receiver logged no caps:\n{log}"));
    let negotiated: gst::Caps = negotiated.trim().parse().unwrap();
    // In plain form (the receiver's may be DMA_DRM), colorimetry kept.
    let (info, _) = gstvmem::formats::video_info_from_caps(&negotiated).unwrap();
    let negotiated = info.to_caps().unwrap();
    let reference: Vec<u8> = output_bytes(&format!(
        "videotestsrc num-buffers={FRAMES} pattern=colors ! capsfilter caps=\"{negotiated}\" ! \
         v4l2fwhtenc ! appsink name=out sync=false"
    ))
    .concat();
    assert!(!received.is_empty());
    assert_eq!(
        checksum(&received),
        checksum(&reference),
        "{} bytes encoded from the received dma-bufs, {} by the copy path",
        received.len(),
        reference.len()
    );
    assert_eq!(producer.stat("v", "copies"), 0);
}

/// A producer that is killed (no goodbye) and started again: the receiver connects again and
/// takes the new producer's frames; the new producer's goodbye is its EOS.
#[test]
#[ignore = "needs the VM testbed"]
fn a_producer_killed_and_started_again_is_reconnected() {
    init();
    let path = socket_path("restart");
    let _ = std::fs::remove_file(&path);
    let producer = |pattern: &str, frames: u32| {
        format!(
            "videotestsrc is-live=true num-buffers={frames} pattern={pattern} ! \
             video/x-raw,format=BGRx,width=320,height=240,framerate=30/1 ! vmemexport ! \
             dmabufsink socket-path={path}"
        )
    };
    let first = Launched::spawn("first", &producer("red", 100_000), "");
    wait_for_socket(&path);
    let pipeline = launch(&format!(
        "dmabufsrc name=src socket-path={path} retry-timeout=60000 ! appsink name=out sync=false"
    ));
    // Each frame's pixels, checksummed as it arrives: the buffer (and the server's frame) is
    // let go at once, so the receiver never holds frames the server would cut it off for.
    let frames = checksums_on_arrival(&pipeline, "out", |_| Ok(()));
    pipeline.set_state(gst::State::Playing).unwrap();
    let wait_for = |n: usize, what: &str| {
        let deadline = Instant::now() + secs(120);
        while frames.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "{what}: {} frames",
                frames.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(10, "from the first producer");
    first.kill();
    let before = frames.lock().unwrap().len();
    let second = Launched::spawn("second", &producer("blue", 300), "");
    let bus = pipeline.bus().unwrap();
    let eos = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(180),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let src = element(&pipeline, "src");
    let connects = stat(&src, "connects");
    pipeline.set_state(gst::State::Null).unwrap();
    drop(second);
    let eos = eos.expect("neither EOS nor an error within 180 s");
    assert_eq!(eos.type_(), gst::MessageType::Eos, "{eos:?}");
    assert_eq!(connects, 2);
    let colours: Vec<u64> = frames
        .lock()
        .unwrap()
        .iter()
        .map(|sum| *sum.as_ref().unwrap())
        .collect();
    let caps = "video/x-raw,format=BGRx,width=320,height=240,framerate=30/1";
    let (red, blue) = (one_frame("red", caps), one_frame("blue", caps));
    assert!(
        colours[..before].iter().all(|c| *c == red),
        "the first producer's frames"
    );
    assert!(
        colours[before..].iter().filter(|c| **c == blue).count() >= 100,
        "the second producer's frames: {} of {}",
        colours[before..].iter().filter(|c| **c == blue).count(),
        colours.len() - before
    );
}

fn one_frame(pattern: &str, caps: &str) -> u64 {
    let frames = run_collecting(&format!(
        "videotestsrc num-buffers=1 pattern={pattern} ! {caps} ! appsink name=out sync=false"
    ));
    let (caps, buffer) = &frames[0];
    let info = gst_video::VideoInfo::from_caps(caps).unwrap();
    checksum(&normalized_frame(buffer, &info))
}

/// A receiver that stops releasing (its sink waits on the clock 60 s ahead, with a queue in
/// front holding every frame): the producer cuts it off after hold-timeout and keeps its rate,
/// and the receiver, connecting again, is cut off again.
#[test]
#[ignore = "needs the VM testbed"]
fn a_stalled_receiver_is_cut_off_while_the_producer_keeps_its_rate() {
    let path = socket_path("stall");
    let caps = "video/x-raw,format=BGRx,width=320,height=240,framerate=30/1";
    let producer = Producer::start_with(&path, "smpte", caps, "hold-timeout=1000", false);
    let stalled = Launched::spawn(
        "stall",
        &format!(
            "dmabufsrc socket-path={path} ! queue max-size-buffers=0 max-size-bytes=0 \
             max-size-time=0 ! fakesink sync=true ts-offset=60000000000"
        ),
        "dmabufsrc:4",
    );
    let deadline = Instant::now() + secs(60);
    while producer.stat("share", "clients-total") == 0 {
        assert!(Instant::now() < deadline, "the receiver never connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let start_frames = producer.stat("v", "frames");
    let start = Instant::now();
    std::thread::sleep(secs(10));
    let frames = producer.stat("v", "frames") - start_frames;
    let elapsed = start.elapsed().as_secs_f64();
    let timed_out = producer.stat("share", "clients-timed-out");
    let clients = producer.stat("share", "clients-total");
    let log = stalled.interrupt();
    // 30 frames a second: at least a third of them even in a loaded VM; a producer that
    // waited for the stalled receiver would have made a few frames, then none.
    assert!(
        frames as f64 >= 10.0 * elapsed,
        "the producer made {frames} frames in {elapsed:.1} s"
    );
    assert!(timed_out >= 2, "cut off {timed_out} times:\n{log}");
    assert!(clients >= 2, "the receiver connected {clients} times");
}

/// The caps the receiver negotiates: DMA_DRM with the fourcc on >= 1.24, the legacy
/// `memory:DMABuf` form on 1.22; plain `video/x-raw` where downstream asks for it. The frames
/// are dma-buf memory in every form.
#[test]
#[ignore = "needs the VM testbed"]
fn the_caps_are_the_form_downstream_takes() {
    let path = socket_path("caps");
    let producer = Producer::start(&path, BGRX, "");
    let dma_drm = gst_version() >= (1, 24);
    for (filter, dmabuf, format) in [
        ("", true, if dma_drm { "DMA_DRM" } else { "BGRx" }),
        ("! video/x-raw ", false, "BGRx"),
    ] {
        let frames = run_collecting(&format!(
            "dmabufsrc socket-path={path} num-buffers=3 {filter}! appsink name=out sync=false"
        ));
        assert_eq!(frames.len(), 3, "{filter}");
        for (caps, buffer) in &frames {
            let s = caps.structure(0).unwrap();
            assert_eq!(
                caps.features(0)
                    .unwrap()
                    .contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF),
                dmabuf,
                "{caps}"
            );
            assert_eq!(s.get::<&str>("format").unwrap(), format, "{caps}");
            if format == "DMA_DRM" {
                assert_eq!(s.get::<&str>("drm-format").unwrap(), "XR24", "{caps}");
            }
            assert_eq!(
                (s.get::<i32>("width"), s.get::<i32>("height")),
                (Ok(640), Ok(480)),
                "{caps}"
            );
            assert_eq!(
                s.get::<gst::Fraction>("framerate").unwrap(),
                gst::Fraction::new(30, 1),
                "{caps}"
            );
            assert!(gstvmem::memory::is_all_dmabuf(buffer), "{filter}");
            let (info, _) = gstvmem::formats::video_info_from_caps(caps).unwrap();
            assert!(
                producer.made(checksum(&normalized_frame(buffer, &info))),
                "{filter}: pixels the producer never made"
            );
        }
    }
}
