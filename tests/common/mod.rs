// SPDX-License-Identifier: MPL-2.0
//! Helpers shared by the integration tests: plugin registration, running pipelines, reading
//! stats, capturing GStreamer's log, and comparing frames by content.
#![allow(dead_code)] // each test binary uses its own subset

pub mod weston;

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use gst::prelude::*;
use gst_video::prelude::*;

// The one pipeline runner, shared with the examples' drivers (demo, bench, soak).
#[path = "../../bench/driver/pipeline.rs"]
mod pipeline;
#[allow(unused_imports)] // each binary uses its own subset
pub use pipeline::{RunResult, launch, run, run_for};

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstvmem::plugin_register_static().expect("register the vmem plugin");
    });
}

/// `(major, minor)` of the GStreamer the test runs against.
pub fn gst_version() -> (u32, u32) {
    let (major, minor, _, _) = gst::version();
    (major, minor)
}

pub fn element(pipeline: &gst::Pipeline, name: &str) -> gst::Element {
    pipeline
        .by_name(name)
        .unwrap_or_else(|| panic!("no element {name}"))
}

/// A counter of an element's `stats` structure.
pub fn stat(element: &gst::Element, field: &str) -> u64 {
    let stats = element.property::<gst::Structure>("stats");
    stats
        .get::<u64>(field)
        .unwrap_or_else(|e| panic!("stats has no {field}: {e} ({stats})"))
}

/// Collects the messages GStreamer logs in the given categories while it lives. Meanwhile
/// GStreamer's default log function (stderr) is off, so that the raised thresholds do not
/// flood the output. Dropping it leaves logging as it was: its log function goes, and once
/// no capture is left the default log function comes back and the thresholds the captures
/// set are unset.
pub struct LogCapture {
    lines: Arc<Mutex<Vec<(String, String)>>>,
    handle: Option<gst::log::DebugLogFunction>,
    categories: Vec<String>,
}

/// What the live captures changed in GStreamer's logging, which is process-wide while the
/// tests of a binary run in parallel.
#[derive(Default)]
struct Captures {
    live: usize,
    /// Whether the first capture removed the default log function, for the last to restore.
    removed_default: bool,
    /// Live captures per category whose threshold they set.
    categories: std::collections::HashMap<String, usize>,
}

/// Held while GStreamer's logging is changed, so that captures in parallel tests change it
/// in order. The GStreamer calls under it run no test code that takes it.
static CAPTURES: std::sync::LazyLock<Mutex<Captures>> = std::sync::LazyLock::new(Default::default);

impl LogCapture {
    /// Captures `categories` at `level` (kmssink's import messages are at LOG).
    pub fn new(categories: &[&str], level: gst::DebugLevel) -> LogCapture {
        let mut captures = CAPTURES.lock().unwrap();
        if captures.live == 0 {
            // SAFETY: removes GStreamer's own default log function wherever it is registered.
            let removed = unsafe {
                gst::ffi::gst_debug_remove_log_function(Some(gst::ffi::gst_debug_log_default))
            };
            captures.removed_default = removed > 0;
        }
        captures.live += 1;
        for cat in categories {
            *captures.categories.entry(cat.to_string()).or_default() += 1;
            gst::log::set_threshold_for_name(cat, level);
        }
        drop(captures);
        let wanted: Vec<String> = categories.iter().map(|s| s.to_string()).collect();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let handle =
            gst::log::add_log_function(move |cat, _level, _file, _func, _line, _obj, msg| {
                if wanted.iter().any(|w| w == cat.name())
                    && let Some(msg) = msg.get()
                {
                    sink.lock()
                        .unwrap()
                        .push((cat.name().to_string(), msg.to_string()));
                }
            });
        LogCapture {
            lines,
            handle: Some(handle),
            categories: categories.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// How many captured messages of `category` contain `needle`.
    pub fn count(&self, category: &str, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, m)| c == category && m.contains(needle))
            .count()
    }

    /// The captured messages of `category` that contain `needle`.
    pub fn matching(&self, category: &str, needle: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, m)| c == category && m.contains(needle))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Every captured message, in order.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    pub fn clear(&self) {
        self.lines.lock().unwrap().clear();
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            gst::log::remove_log_function(h);
        }
        let mut captures = CAPTURES.lock().unwrap();
        for cat in &self.categories {
            let users = captures.categories.get_mut(cat).unwrap();
            *users -= 1;
            if *users == 0 {
                captures.categories.remove(cat);
                // Back to the default threshold and GST_DEBUG's patterns (GStreamer unsets
                // patterns by name: one in GST_DEBUG naming exactly this category goes too).
                gst::log::unset_threshold_for_name(cat);
            }
        }
        captures.live -= 1;
        if captures.live == 0 && captures.removed_default {
            // SAFETY: GStreamer's own default log function, registered as gst_init does, but
            // with no user data: it writes to stderr (a GST_DEBUG_FILE is not reopened).
            unsafe {
                gst::ffi::gst_debug_add_log_function(
                    Some(gst::ffi::gst_debug_log_default),
                    std::ptr::null_mut(),
                    None,
                );
            }
            captures.removed_default = false;
        }
    }
}

/// A frame's visible pixels, unpacked row by row into GStreamer's unpack format (AYUV/ARGB,
/// 8 or 16 bits): frames compare equal when their pixels are equal, whatever their strides,
/// plane offsets or padding bytes.
pub fn normalized_frame(buffer: &gst::BufferRef, info: &gst_video::VideoInfo) -> Vec<u8> {
    let frame =
        gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info).expect("map frame");
    let finfo = info.format_info();
    let unpacked = gst_video::VideoFormatInfo::from_format(finfo.unpack_format());
    let row_bytes = info.width() as usize * unpacked.pixel_stride()[0] as usize;
    let n_planes = info.n_planes() as usize;
    let planes = frame.planes_data();
    let strides = frame.plane_stride();
    // The vertical subsampling of each plane (that of its first component).
    let vsub: Vec<u32> = (0..n_planes)
        .map(|p| {
            let c = (0..finfo.n_components() as usize)
                .find(|&c| finfo.plane()[c] as usize == p)
                .unwrap();
            finfo.h_sub()[c]
        })
        .collect();
    let mut out = vec![0u8; row_bytes * info.height() as usize];
    for (y, row) in out.chunks_mut(row_bytes).enumerate() {
        // Unpack line 0 of planes that start at line y: gstreamer-rs checks `y * stride`
        // against each plane's length even for vertically subsampled planes.
        let lines: Vec<&[u8]> = (0..n_planes)
            .map(|p| &planes[p][(y >> vsub[p]) * strides[p] as usize..])
            .collect();
        finfo.unpack(
            gst_video::VideoPackFlags::empty(),
            row,
            &lines,
            &strides[..n_planes],
            0,
            0,
            info.width() as i32,
        );
    }
    out
}

/// FNV-1a, the checksum dmabufsink's clients compute: a stable one for frame comparisons.
pub fn checksum(bytes: &[u8]) -> u64 {
    gstvmem::dmabufsink::protocol::checksum(bytes)
}

/// Everything an appsink named `name` received: (caps, buffer) per frame.
pub fn collect(pipeline: &gst::Pipeline, name: &str) -> Arc<Mutex<Vec<(gst::Caps, gst::Buffer)>>> {
    let frames = Arc::new(Mutex::new(Vec::new()));
    let sink = element(pipeline, name)
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let store = frames.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let caps = sample.caps().unwrap().to_owned();
                store
                    .lock()
                    .unwrap()
                    .push((caps, sample.buffer_owned().unwrap()));
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    frames
}

/// The checksum of each frame's pixels the appsink named `name` receives, taken as the frame
/// arrives: holding the buffers would keep upstream's pool from reusing them. `check` may
/// refuse a buffer; its reason is recorded in the frame's place.
pub fn checksums_on_arrival(
    pipeline: &gst::Pipeline,
    name: &str,
    check: impl Fn(&gst::BufferRef) -> Result<(), String> + Send + Sync + 'static,
) -> Arc<Mutex<Vec<Result<u64, String>>>> {
    let sums = Arc::new(Mutex::new(Vec::new()));
    let store = sums.clone();
    element(pipeline, name)
        .downcast::<gst_app::AppSink>()
        .unwrap()
        .set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                    let (info, _) = gstvmem::formats::video_info_from_caps(sample.caps().unwrap())
                        .ok_or(gst::FlowError::NotNegotiated)?;
                    let sum = check(buffer).map(|()| checksum(&normalized_frame(buffer, &info)));
                    store.lock().unwrap().push(sum);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    sums
}

/// Waits up to 60 s for a socket file at `path` (a sink that binds it when it starts).
pub fn wait_for_socket(path: &str) {
    let deadline = std::time::Instant::now() + secs(60);
    while !std::path::Path::new(path).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no socket at {path} after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A check for [`checksums_on_arrival`]: the buffer's first memory is a dma-buf exported by
/// one of `exporters` (fdinfo's exp_name: "udmabuf", "vmemexp", ...).
pub fn exported_by(
    exporters: &'static [&'static str],
) -> impl Fn(&gst::BufferRef) -> Result<(), String> + Send + Sync + 'static {
    move |b| {
        let exporter =
            gstvmem::memory::dmabuf_fd(b.peek_memory(0)).and_then(gstvmem::kernel::dmabuf_exporter);
        match exporter.as_deref() {
            Some(e) if exporters.contains(&e) => Ok(()),
            other => Err(format!("a frame exported by {other:?}")),
        }
    }
}

/// Pushes `buffers` of `info` through `appsrc name=src` of `pipeline`, then EOS, and plays
/// the pipeline to EOS; panics on any error.
pub fn push_and_run(
    pipeline: &gst::Pipeline,
    info: &gst_video::VideoInfo,
    buffers: Vec<gst::Buffer>,
) -> RunResult {
    let src = element(pipeline, "src")
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(&info.to_caps().unwrap()));
    src.set_format(gst::Format::Time);
    for b in buffers {
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    run(pipeline)
}

/// avdec_*'s properties for streams libav pads (854x480 is decoded as 864x480). There
/// gst-libav renegotiates on every frame, and with frame threads its libav threads replace its
/// internal pool while the streaming thread picks that pool as the output pool: now and then
/// gst-libav's own g_error "video meta uses 864x480 instead of 854x480" aborts the process,
/// with or without vmemexport (README, "Producer matrix"). One decoding thread takes the race
/// away and keeps the padded path: the per-frame renegotiation and the padded pool.
pub const AVDEC_AT_PADDED_SIZES: &str = "max-threads=1";

/// Encodes `frames` of videotestsrc's ball in `caps` with `encoder` into a file named after
/// `tag`, once; the `filesrc` that plays it back.
pub fn encoded_source(tag: &str, caps: &str, encoder: &str, frames: usize) -> String {
    let file = std::env::temp_dir().join(format!("{tag}.bin"));
    let file = file.display();
    run(&launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! {caps},framerate=30/1 ! {encoder} ! \
         filesink location={file}"
    )));
    format!("filesrc location={file}")
}

/// Plays `src` (a producer's description) without vmemexport, then through `vmemexport {props}`
/// into dmabufsink on vkms and an appsink. Checks that all `frames` arrived, each as a dma-buf
/// exported by one of `exporters` with the producer's own pixels, and that dmabufsink
/// PRIME-imported each export once. Returns vmemexport, for its stats.
pub fn play_through_vmemexport(
    src: &str,
    props: &str,
    exporters: &'static [&'static str],
    frames: usize,
) -> gst::Element {
    let reference = frame_checksums(&format!("{src} ! appsink name=out sync=false"));
    assert_eq!(reference.len(), frames, "{src}: frames without vmemexport");
    let pipeline = launch(&format!(
        "{src} ! vmemexport name=v {props} ! tee name=t ! queue max-size-buffers=2 ! \
         dmabufsink name=s drm-device=driver:vkms t. ! queue max-size-buffers=2 ! \
         appsink name=out sync=false"
    ));
    let sums = checksums_on_arrival(&pipeline, "out", exported_by(exporters));
    run(&pipeline);
    let v = element(&pipeline, "v");
    let stats = v.property::<gst::Structure>("stats");
    eprintln!("{src} ! vmemexport {props}: {stats}");
    assert_eq!(stat(&v, "frames"), frames as u64, "{src}: {stats}");
    let sums: Result<Vec<u64>, String> = sums.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        sums.unwrap(),
        reference,
        "{src}: the producer's pixels, through the dma-buf"
    );
    let s = element(&pipeline, "s");
    assert_eq!(stat(&s, "frames"), frames as u64);
    assert_eq!(
        stat(&s, "imported"),
        stat(&v, "exported"),
        "{src}: PRIME import once per dma-buf"
    );
    v
}

/// Plays `desc` (ending in `appsink name=out`) to EOS; what the appsink received.
pub fn run_collecting(desc: &str) -> Vec<(gst::Caps, gst::Buffer)> {
    let pipeline = launch(desc);
    let frames = collect(&pipeline, "out");
    run(&pipeline);
    std::mem::take(&mut *frames.lock().unwrap())
}

/// The checksum of the pixels of every frame `desc` (ending in `appsink name=out`) produces.
pub fn frame_checksums(desc: &str) -> Vec<u64> {
    run_collecting(desc)
        .iter()
        .map(|(caps, buf)| {
            let (info, _) = gstvmem::formats::video_info_from_caps(caps).expect("video caps");
            checksum(&normalized_frame(buf, &info))
        })
        .collect()
}

/// The bytes of every buffer `desc` (ending in `appsink name=out`) produces (bitstreams).
pub fn output_bytes(desc: &str) -> Vec<Vec<u8>> {
    run_collecting(desc)
        .iter()
        .map(|(_, b)| b.map_readable().unwrap().to_vec())
        .collect()
}

/// The V4L2 video node of `driver` whose name contains `name_contains` (e.g. "vivid-000-vid-out").
pub fn v4l2_node(driver: &str, name_contains: &str) -> String {
    for entry in std::fs::read_dir("/sys/class/video4linux").expect("no V4L2 devices") {
        let path = entry.unwrap().path();
        let drv = std::fs::read_link(path.join("device/driver")).ok();
        let name = std::fs::read_to_string(path.join("name")).unwrap_or_default();
        if drv.is_some_and(|d| d.ends_with(driver)) && name.contains(name_contains) {
            return format!("/dev/{}", path.file_name().unwrap().to_string_lossy());
        }
    }
    panic!("no V4L2 node of {driver} named *{name_contains}*");
}

/// vivid's video output node of instance `n` (the testbed's `vivid.allocators=0,1`: 0 is
/// vb2-vmalloc, 1 is vb2-dma-contig), switched to its output 1, which takes YUY2 and BGRx.
pub fn vivid_output(n: u32) -> String {
    let dev = v4l2_node("vivid", &format!("vivid-00{n}-vid-out"));
    let status = std::process::Command::new("v4l2-ctl")
        .args(["-d", &dev, "--set-output=1"])
        .status()
        .expect("v4l2-ctl (v4l-utils) in the testbed");
    assert!(status.success(), "v4l2-ctl -d {dev} --set-output=1");
    dev
}

/// `Duration` helper for readability at call sites.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Proof that a display scans out the producer's own dma-bufs, independent of any element's
/// log wording: a probe on the display sink records the inode of every dma-buf it received,
/// and when EOS reaches the sink (its last frame on screen) the inode of the dma-buf the vkms
/// CRTC is scanning out (GETFB2 + PRIME export give back the imported dma-buf itself). A copy
/// into a dumb buffer would show another inode.
#[derive(Clone, Default)]
pub struct ScanoutProof(Arc<Mutex<ScanoutSeen>>);

#[derive(Default)]
pub struct ScanoutSeen {
    received: std::collections::HashSet<u64>,
    on_screen: Option<Result<u64, String>>,
    /// The checksum of the visible pixels on screen at EOS ([`scanout_checksum`]).
    pixels: Option<Result<u64, String>>,
}

impl ScanoutProof {
    pub fn install(pipeline: &gst::Pipeline, display_sink: &str) -> ScanoutProof {
        let proof = ScanoutProof::default();
        let store = proof.clone();
        element(pipeline, display_sink)
            .static_pad("sink")
            .unwrap()
            .add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
                move |_, info| {
                    let mut seen = store.0.lock().unwrap();
                    if let Some(buffer) = info.buffer() {
                        for mem in buffer.iter_memories() {
                            if let Some(fd) = gstvmem::memory::dmabuf_fd(mem)
                                && let Ok(st) = rustix::fs::fstat(fd)
                            {
                                seen.received.insert(st.st_ino);
                            }
                        }
                    } else if let Some(gst::PadProbeData::Event(e)) = &info.data
                        && e.type_() == gst::EventType::Eos
                    {
                        seen.on_screen = Some(scanout_inode("vkms"));
                        seen.pixels = Some(scanout_checksum("vkms"));
                    }
                    gst::PadProbeReturn::Ok
                },
            );
        proof
    }

    /// Whether the frame on screen at EOS was one of the dma-bufs the display received;
    /// panics if the scanout could not be read.
    pub fn on_screen_is_received(&self, what: &str) -> bool {
        let seen = self.0.lock().unwrap();
        match &seen.on_screen {
            Some(Ok(ino)) => seen.received.contains(ino),
            Some(Err(e)) => panic!("{what}: cannot read the scanout: {e}"),
            None => panic!("{what}: EOS never reached the display"),
        }
    }

    /// The inode of the dma-buf on screen at EOS; panics if the scanout could not be read.
    pub fn inode_on_screen(&self, what: &str) -> u64 {
        match &self.0.lock().unwrap().on_screen {
            Some(Ok(ino)) => *ino,
            Some(Err(e)) => panic!("{what}: cannot read the scanout: {e}"),
            None => panic!("{what}: EOS never reached the display"),
        }
    }

    /// Panics (outside the probe) unless the frame on screen at EOS was one of the dma-bufs
    /// the display received.
    pub fn assert_on_screen(&self, what: &str) {
        let ours = self.on_screen_is_received(what);
        let seen = self.0.lock().unwrap();
        let on_screen = seen.on_screen.clone().unwrap().unwrap();
        assert!(
            ours,
            "{what}: the display scans out dma-buf inode {on_screen}, not one of the {} it received",
            seen.received.len()
        );
    }
}

impl ScanoutProof {
    /// The checksum ([`normalized_frame`]) of the pixels on screen at EOS, read back from the
    /// scanned-out framebuffer; panics if it could not be read.
    pub fn pixels_on_screen(&self, what: &str) -> u64 {
        match &self.0.lock().unwrap().pixels {
            Some(Ok(sum)) => *sum,
            Some(Err(e)) => panic!("{what}: cannot read the scanout's pixels: {e}"),
            None => panic!("{what}: EOS never reached the display"),
        }
    }
}

/// The checksum of the visible pixels the first active CRTC of DRM driver `driver` scans
/// out: the framebuffer's dma-buf read back through its own layout (GETFB2's format, pitches
/// and offsets), unpacked like [`normalized_frame`] so that it compares with a frame's.
pub fn scanout_checksum(driver: &str) -> Result<u64, String> {
    use gstvmem::kernel;
    let node =
        kernel::DrmNode::open_driver(driver, kernel::DrmUse::Kms).map_err(|e| e.to_string())?;
    let (fd, fb) = node.scanout_dmabuf().map_err(|e| e.to_string())?;
    let fourcc = fb.pixel_format() as u32;
    let format = gstvmem::formats::formats()
        .find(|f| gstvmem::formats::drm_fourcc(*f) == Some(fourcc))
        .ok_or_else(|| format!("no GStreamer format for fourcc {fourcc:#x}"))?;
    let (width, height) = fb.size();
    let info = gst_video::VideoInfo::builder(format, width, height)
        .build()
        .map_err(|e| e.to_string())?;
    let dmabuf = kernel::DmaBuf::new(fd.as_fd()).map_err(|e| e.to_string())?;
    let size = kernel::dmabuf_size(dmabuf).map_err(|e| e.to_string())? as usize;
    // SAFETY: a read-only shared mapping of a dma-buf this function owns, dropped here.
    let map = unsafe { kernel::Mapping::new(&fd, 0, size, false) }.map_err(|e| e.to_string())?;
    let bytes = map.as_slice().to_vec();
    let n = info.n_planes() as usize;
    let offsets: Vec<usize> = fb.offsets()[..n].iter().map(|&o| o as usize).collect();
    let strides: Vec<i32> = fb.pitches()[..n].iter().map(|&p| p as i32).collect();
    let mut buffer = gst::Buffer::from_mut_slice(bytes);
    gst_video::VideoMeta::add_full(
        buffer.get_mut().unwrap(),
        gst_video::VideoFrameFlags::empty(),
        format,
        width,
        height,
        &offsets,
        &strides,
    )
    .map_err(|e| e.to_string())?;
    Ok(checksum(&normalized_frame(&buffer, &info)))
}

/// The inode of the dma-buf the first active CRTC of DRM driver `driver` scans out.
pub fn scanout_inode(driver: &str) -> Result<u64, String> {
    let node = gstvmem::kernel::DrmNode::open_driver(driver, gstvmem::kernel::DrmUse::Kms)
        .map_err(|e| e.to_string())?;
    let (fd, _) = node.scanout_dmabuf().map_err(|e| e.to_string())?;
    rustix::fs::fstat(&fd)
        .map(|st| st.st_ino)
        .map_err(|e| e.to_string())
}

/// kmssink's own account of its dma-buf imports in GStreamer 1.22-1.28's wording
/// (gstkmssink.c, gst_kms_sink_import_dmabuf): new framebuffers (`setting KMS mem`) and reused
/// ones (`found KMS mem`). Those versions always log one or the other for a dma-buf they
/// import, so neither line there fails the test. `None` only on a later GStreamer that logs
/// neither (its wording may have changed): then a [`ScanoutProof`] is the proof that stands.
pub fn kmssink_imports(log: &LogCapture) -> Option<(usize, usize)> {
    let new = log.count("kmssink", "setting KMS mem");
    let reused = log.count("kmssink", "found KMS mem");
    if new + reused == 0 {
        assert!(
            gst_version() > (1, 28),
            "kmssink {}.{} logged no dma-buf import ('setting KMS mem' / 'found KMS mem'): it \
             imported none, or the log capture missed them",
            gst_version().0,
            gst_version().1
        );
        eprintln!("note: kmssink logged no import lines; relying on the scanout proof");
        return None;
    }
    Some((new, reused))
}

/// A device node opened to everyone (mode 0666) until dropped, then given its mode back: for
/// tests that run a command as another user.
pub struct OpenToAll {
    path: &'static str,
    mode: u32,
}

impl OpenToAll {
    pub fn new(path: &'static str) -> OpenToAll {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        let restore = OpenToAll { path, mode };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
        restore
    }
}

impl Drop for OpenToAll {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(self.path, std::fs::Permissions::from_mode(self.mode));
    }
}

/// Runs `gst-launch-1.0 DESC` as nobody (in group `group`, if given) with `RLIMIT_MEMLOCK` at
/// `memlock_kib`: whether it succeeded, and its output, GStreamer's warnings included. The limit
/// is set as root (nobody may not raise it), then the user changes. GStreamer there sees only
/// the plugins such a DESC needs (coreelements, videotestsrc and this one), so its registry of
/// its own takes seconds to build, not minutes.
pub fn gst_launch_as_nobody(desc: &str, memlock_kib: u32, group: Option<u32>) -> (bool, String) {
    init();
    let plugins = std::path::Path::new("/tmp/vmem-nobody-plugins");
    let _ = std::fs::remove_dir_all(plugins);
    std::fs::create_dir_all(plugins).unwrap();
    for name in ["coreelements", "videotestsrc"] {
        let plugin = gst::Registry::get()
            .find_plugin(name)
            .unwrap_or_else(|| panic!("no GStreamer plugin {name}"));
        let file = plugin.filename().unwrap();
        std::os::unix::fs::symlink(&file, plugins.join(file.file_name().unwrap())).unwrap();
    }
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/libgstvmem.so"),
        plugins.join("libgstvmem.so"),
    )
    .unwrap();
    let registry = "/tmp/vmem-nobody.registry";
    let groups = group.map_or("--clear-groups".to_string(), |g| format!("--groups={g}"));
    let _ = std::fs::remove_file(registry);
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "ulimit -l {memlock_kib} && exec setpriv --reuid=65534 --regid=65534 \
                 {groups} gst-launch-1.0 {desc}"
            ),
        ])
        .env("GST_PLUGIN_SYSTEM_PATH_1_0", "")
        .env("GST_PLUGIN_SYSTEM_PATH", "")
        .env("GST_PLUGIN_PATH", plugins)
        .env("GST_REGISTRY", registry)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs test `name` of this binary again in a child whose mount namespace `script` (sh, run as
/// root by `unshare -m`, ending in `exec "$0" "$@"`) has changed, with `marker` set in its
/// environment, and asserts that it passed there. For tests whose checks need devices hidden.
pub fn rerun_in_mount_namespace(name: &str, script: &str, marker: &str) {
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", script])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--include-ignored", "--test-threads=1"])
        .env(marker, "1")
        .output()
        .expect("unshare (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("test result: ok. 1 passed"),
        "{name} in a mount namespace of its own (needs root for unshare -m):\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
