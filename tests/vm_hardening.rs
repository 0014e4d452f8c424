// SPDX-License-Identifier: MPL-2.0
//! What a pipeline must survive from the world around it: a compositor that wants DRM master,
//! an application that reads stats from a bus sync handler, frames whose planes live in
//! separate dma-bufs, and clients whose devices keep a frame busy (VM testbed, every userland).

mod common;

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstvmem::heapalloc::DmaHeapAllocator;
use gstvmem::kernel::{DrmNode, DrmUse, GemHandle, VgemFence};

const BGRX: &str = "video/x-raw,format=BGRx,width=320,height=240,framerate=30/1";

/// The DRM nodes this process has open, by fd.
fn open_dri_nodes() -> Vec<(String, String)> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?.display().to_string();
            Some((e.file_name().to_string_lossy().into_owned(), target))
        })
        .filter(|(_, p)| p.starts_with("/dev/dri/"))
        .collect()
}

/// A DRM node opened the way a compositor opens it, to see whether it can become master.
struct Compositor(std::fs::File);

impl AsFd for Compositor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl drm::Device for Compositor {}

fn paused(pipeline: &gst::Pipeline) {
    pipeline.set_state(gst::State::Paused).unwrap();
    let (res, state, _) = pipeline.state(gst::ClockTime::from_seconds(60));
    assert!(
        res.is_ok() && state == gst::State::Paused,
        "pipeline did not preroll"
    );
}

#[test]
#[ignore = "needs the VM testbed"]
fn import_uses_a_render_node_and_kms_leaves_master_to_others() {
    init();
    // Import alone: vgem's render node, never its card node.
    let pipeline = launch(&format!(
        "videotestsrc num-buffers=5 ! {BGRX} ! vmemexport ! dmabufsink name=s drm-device=driver:vgem"
    ));
    let before = open_dri_nodes();
    paused(&pipeline);
    let nodes: Vec<String> = open_dri_nodes()
        .into_iter()
        .filter(|n| !before.contains(n))
        .map(|(_, path)| path)
        .collect();
    assert!(
        nodes.len() == 1 && nodes[0].starts_with("/dev/dri/renderD"),
        "import-only dmabufsink opened {nodes:?}, not vgem's render node"
    );
    run(&pipeline);
    assert_eq!(stat(&element(&pipeline, "s"), "import-failures"), 0);
    assert!(stat(&element(&pipeline, "s"), "imported") > 0);
    drop(pipeline);

    // AddFB2 needs vkms's card node, but not master: a compositor starting now gets it.
    let card = DrmNode::open_driver("vkms", DrmUse::Kms)
        .unwrap()
        .path()
        .to_owned();
    assert!(card.to_string_lossy().contains("/card"), "{card:?}");
    let pipeline = launch(&format!(
        "videotestsrc num-buffers=10 ! {BGRX} ! vmemexport ! \
         dmabufsink name=s drm-device=driver:vkms drm-addfb=true"
    ));
    paused(&pipeline);
    let compositor = Compositor(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&card)
            .unwrap(),
    );
    use drm::Device as _;
    let master = compositor.acquire_master_lock();
    // Scan-out checks go on while someone else is master.
    let result = run_for(&pipeline, secs(120));
    let s = element(&pipeline, "s");
    assert!(
        master.is_ok(),
        "another process cannot become DRM master of {card:?} while dmabufsink runs: {master:?}"
    );
    assert!(result.error.is_none(), "{:?}", result.error);
    assert!(stat(&s, "imported") > 0);
    assert_eq!(stat(&s, "addfb-failures"), 0, "{:?}", result.warnings);
    compositor.release_master_lock().unwrap();
}

/// Runs `desc` to EOS or error in its own thread with a bus sync handler that reads element
/// `s`'s stats on every warning and error it posts (as an application may). Returns the stats
/// read there and what the run posted; fails (rather than hangs) if the pipeline deadlocks.
fn run_reading_stats_in_sync_handler(desc: &str) -> (Vec<gst::Structure>, RunResult) {
    let (tx, rx) = mpsc::channel();
    let owned = desc.to_string();
    std::thread::spawn(move || {
        let pipeline = launch(&owned);
        let sink = element(&pipeline, "s").downgrade();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let store = seen.clone();
        pipeline.bus().unwrap().set_sync_handler(move |_, msg| {
            let from_sink = msg.src().map(|s| s.name()) == Some("s".into());
            let kind = matches!(
                msg.view(),
                gst::MessageView::Warning(_) | gst::MessageView::Error(_)
            );
            if from_sink
                && kind
                && let Some(sink) = sink.upgrade()
            {
                store
                    .lock()
                    .unwrap()
                    .push(sink.property::<gst::Structure>("stats"));
            }
            gst::BusSyncReply::Pass
        });
        let result = run_for(&pipeline, secs(120));
        pipeline.bus().unwrap().unset_sync_handler();
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        let _ = tx.send((seen, result));
    });
    // A deadlocked pipeline cannot be stopped: leave its thread behind and fail.
    rx.recv_timeout(Duration::from_secs(180))
        .unwrap_or_else(|_| panic!("deadlock: '{desc}' did not finish within 180 s"))
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_sync_handler_may_read_stats_when_the_sink_warns_or_fails() {
    init();
    // vgem has no KMS: every AddFB2 check fails, and the sink warns.
    let (seen, result) = run_reading_stats_in_sync_handler(&format!(
        "videotestsrc num-buffers=5 ! {BGRX} ! vmemexport ! \
         dmabufsink name=s drm-device=driver:vgem drm-addfb=true"
    ));
    assert!(result.error.is_none(), "{:?}", result.error);
    assert_eq!(result.warnings.len(), 1, "{:?}", result.warnings);
    assert!(
        result.warnings[0].contains("cannot scan this buffer out"),
        "{:?}",
        result.warnings
    );
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].get::<u64>("addfb-failures").unwrap(), 1, "{seen:?}");

    // System memory without allow-non-dmabuf: an error from the streaming thread.
    let (seen, result) = run_reading_stats_in_sync_handler(&format!(
        "videotestsrc num-buffers=3 ! {BGRX} ! dmabufsink name=s"
    ));
    let error = result.error.expect("system memory must be refused");
    assert!(error.contains("not a dma-buf"), "{error}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].get::<u64>("frames").unwrap(), 1, "{seen:?}");
}

/// A frame of `caps` whose memories are `sizes` bytes of system-heap dma-buf each, with a
/// VideoMeta placing the planes at `offsets` (from the buffer's start) with `strides`.
fn multi_memory_frame(
    heap: &DmaHeapAllocator,
    caps: &gst::Caps,
    sizes: &[usize],
    offsets: &[usize],
    strides: &[i32],
) -> gst::Buffer {
    let info = gst_video::VideoInfo::from_caps(caps).unwrap();
    let mut buffer = gst::Buffer::new();
    {
        let b = buffer.get_mut().unwrap();
        for &size in sizes {
            b.append_memory(heap.alloc(size, None).unwrap());
        }
        gst_video::VideoMeta::add_full(
            b,
            gst_video::VideoFrameFlags::empty(),
            info.format(),
            info.width(),
            info.height(),
            offsets,
            strides,
        )
        .unwrap();
    }
    buffer
}

/// Pushes `frames` (each `repeat` times) through appsrc into `sink`; the sink's stats.
fn push_frames(
    caps: &gst::Caps,
    frames: &[gst::Buffer],
    repeat: usize,
    sink: &str,
) -> gst::Structure {
    let pipeline = launch(&format!("appsrc name=src format=time ! {sink} name=s"));
    let src = element(&pipeline, "src")
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(caps));
    let mut n = 0u64;
    for _ in 0..repeat {
        for f in frames {
            let mut f = f.copy();
            f.get_mut()
                .unwrap()
                .set_pts(gst::ClockTime::from_mseconds(33 * n));
            n += 1;
            src.push_buffer(f).unwrap();
        }
    }
    src.end_of_stream().unwrap();
    let result = run_for(&pipeline, secs(120));
    assert!(result.error.is_none(), "{:?}", result.error);
    element(&pipeline, "s").property::<gst::Structure>("stats")
}

#[test]
#[ignore = "needs the VM testbed"]
fn addfb_uses_the_buffer_object_of_each_planes_memory() {
    init();
    let heap = DmaHeapAllocator::new("system").unwrap();
    let (w, h) = (320usize, 240usize);
    let sink = "dmabufsink drm-device=driver:vkms drm-addfb=true";

    // One plane, in the second of two dma-bufs (the first holds no plane): the framebuffer
    // must be built on the second one's buffer object.
    let caps: gst::Caps = BGRX.parse().unwrap();
    let page = 4096;
    let frame = multi_memory_frame(&heap, &caps, &[page, w * h * 4], &[page], &[(w * 4) as i32]);
    let stats = push_frames(&caps, &[frame], 5, sink);
    assert_eq!(stats.get::<u64>("frames").unwrap(), 5, "{stats}");
    assert_eq!(stats.get::<u64>("imported").unwrap(), 2, "{stats}");
    assert_eq!(stats.get::<u64>("import-failures").unwrap(), 0, "{stats}");
    assert_eq!(
        stats.get::<u64>("addfb-failures").unwrap(),
        0,
        "AddFB2 used another memory's buffer object: {stats}"
    );

    // NV12 with its planes in two dma-bufs: both imported, one AddFB2 per frame layout with a
    // handle per plane. vkms (6.12) offers no YUV format on any plane, so that AddFB2 is
    // refused for the format, once, and the log shows the two distinct handles it was given.
    let log = LogCapture::new(&["dmabufsink"], gst::DebugLevel::Debug);
    let caps: gst::Caps = "video/x-raw,format=NV12,width=320,height=240,framerate=30/1"
        .parse()
        .unwrap();
    let frames: Vec<gst::Buffer> = (0..2)
        .map(|_| {
            multi_memory_frame(
                &heap,
                &caps,
                &[w * h, w * h / 2],
                &[0, w * h],
                &[w as i32, w as i32],
            )
        })
        .collect();
    let stats = push_frames(&caps, &frames, 3, sink);
    assert_eq!(stats.get::<u64>("frames").unwrap(), 6, "{stats}");
    assert_eq!(stats.get::<u64>("imported").unwrap(), 4, "{stats}");
    assert_eq!(
        stats.get::<u64>("addfb-failures").unwrap(),
        2,
        "one AddFB2 per frame layout, not per memory: {stats}"
    );
    assert_eq!(log.count("dmabufsink", "AddFB2 check with handles"), 2);
    let lines = log.matching("dmabufsink", "AddFB2 check with handles");
    for line in &lines {
        let handles: Vec<&str> = line.split(['[', ']']).nth(1).unwrap().split(", ").collect();
        assert!(
            handles.len() == 2 && handles[0] != handles[1],
            "each plane needs its own buffer object: {line}"
        );
    }
}

/// A client that keeps the frames it receives busy: it imports each into vgem and attaches an
/// unsignalled fence (a device still reading it), and releases the frame at once (`release`)
/// or never. It takes at most `limit` frames and stays connected until the server says
/// goodbye; it returns the fences, which vgem signals by itself 10 s after they were attached.
struct BusyClient {
    thread: std::thread::JoinHandle<(usize, Vec<(GemHandle, VgemFence)>)>,
}

impl BusyClient {
    /// `busy` gets the number of frames made busy so far, after each one.
    fn start(path: &str, release: bool, limit: usize, busy: mpsc::Sender<usize>) -> BusyClient {
        let client = gstvmem::dmabufsink::Client::connect(path).unwrap();
        let thread = std::thread::spawn(move || {
            let vgem = Arc::new(DrmNode::open_driver("vgem", DrmUse::Import).unwrap());
            let mut fences = Vec::new();
            // Past `limit` it reads nothing more (the server sends a client that holds
            // max-pending frames nothing).
            while let Ok(Some(frame)) = client.recv() {
                if fences.len() == limit {
                    continue;
                }
                let handle = vgem.prime_import(frame.fds[0].as_fd()).unwrap();
                let fence = handle.attach_vgem_fence(false).unwrap();
                fences.push((handle, fence));
                if release {
                    client.release(&frame).unwrap();
                }
                let _ = busy.send(fences.len());
            }
            (fences.len(), fences)
        });
        BusyClient { thread }
    }
}

fn wait_clients(sink: &gst::Element, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while stat(sink, "clients") < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stat(sink, "clients"), n);
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_busy_dmabuf_does_not_stall_the_stream() {
    init();
    let path = format!("/tmp/vmem-test-busy-{}.sock", std::process::id());
    let frames = 30u64;
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={frames} ! {BGRX} ! vmemexport name=v ! \
         dmabufsink name=s socket-path={path} max-pending=4"
    ));
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let store = arrivals.clone();
    element(&pipeline, "s")
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            store.lock().unwrap().push(Instant::now());
            gst::PadProbeReturn::Ok
        });
    paused(&pipeline);
    // The client keeps every frame it gets busy and releases it at once: the socket thread
    // drops it, its pages go back to the pool and come round again while still busy.
    let client = BusyClient::start(&path, true, usize::MAX, mpsc::channel().0);
    wait_clients(&element(&pipeline, "s"), 1);
    let started = Instant::now();
    let result = run_for(&pipeline, secs(300));
    let streamed = started.elapsed();
    assert!(result.error.is_none(), "{:?}", result.error);
    let (busy, fences) = client.thread.join().unwrap();
    let arrivals = arrivals.lock().unwrap().clone();
    // From PLAYING on (the first frame arrived while prerolling, before the client connected).
    let mut times = vec![started];
    times.extend(arrivals.iter().filter(|&&t| t > started));
    let max_gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!("streamed {frames} frames in {streamed:?}, largest gap {max_gap:?}, {busy} busy");
    assert_eq!(arrivals.len() as u64, frames);
    assert!(busy >= 4, "the client made {busy} frames busy");
    // Without fences a frame takes some 10-50 ms here (TCG). A wait for a fence (1 s in the
    // release, or until vgem's 10 s timeout in DMA_BUF_IOCTL_SYNC) would show here.
    assert!(
        max_gap < Duration::from_millis(900),
        "a busy dma-buf stalled the stream for {max_gap:?}"
    );
    drop(fences);
}

#[test]
#[ignore = "needs the VM testbed"]
fn busy_frames_a_client_holds_do_not_stall_stop() {
    init();
    let path = format!("/tmp/vmem-test-hold-{}.sock", std::process::id());
    let pipeline = launch(&format!(
        "videotestsrc is-live=true ! {BGRX} ! vmemexport ! \
         dmabufsink name=s socket-path={path} max-pending=4"
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let (tx, busy) = mpsc::channel();
    let client = BusyClient::start(&path, false, 4, tx);
    wait_clients(&element(&pipeline, "s"), 1);
    // Four frames held and busy (their fences fresh, vgem would signal them in 10 s).
    while busy
        .recv_timeout(Duration::from_secs(60))
        .expect("frames reach the client")
        < 4
    {}
    let stopping = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    let stop = stopping.elapsed();
    let (held, fences) = client.thread.join().unwrap();
    eprintln!("stop took {stop:?} with {held} busy frames held");
    assert_eq!(held, 4);
    assert!(
        stop < Duration::from_millis(900),
        "stop() waited {stop:?} for the fences of frames a client held"
    );
    drop(fences);
}
