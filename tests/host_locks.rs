// SPDX-License-Identifier: MPL-2.0
//! The elements post their messages with no lock of theirs held. An application's sync bus
//! handler runs in the thread that posts, and may stop the pipeline there, which calls the
//! element's `stop()`: a lock held across the post would never be released. Runs on any
//! machine.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use gst::prelude::*;

const CAPS: &str = "video/x-raw,format=BGRx,width=64,height=48,framerate=30/1";

/// A heap name is looked up in /dev/dma_heap, and an absolute path is taken as it is: /dev/null
/// opens like a heap and refuses every allocation (ENOTTY). vmemexport `backing=heap` then
/// starts, and the check that the heap can supply frames fails when upstream asks for a pool,
/// with or without dma-heaps on the machine.
const UNUSABLE_HEAP: &str = "/dev/null";

/// How long the whole scenario may take; a deadlock never ends.
const BOUND: Duration = Duration::from_secs(30);

/// An application asks vmemexport for its pool (the ALLOCATION query of
/// examples/appsrc_pool.rs) and the heap cannot supply frames: vmemexport posts an error, and
/// the application's sync handler stops the pipeline right there, in the querying thread.
#[test]
fn a_sync_handler_may_stop_the_pipeline_on_vmemexports_allocation_error() {
    common::init();
    let pipeline = common::launch(&format!(
        "appsrc name=src caps={CAPS} ! vmemexport name=v backing=heap heap={UNUSABLE_HEAP} ! \
         fakesink"
    ));
    let (errors, errors_rx) = mpsc::channel();
    let stopped_by_handler = pipeline.downgrade();
    pipeline
        .bus()
        .unwrap()
        .set_sync_handler(move |_, msg| match msg.view() {
            gst::MessageView::Error(e) if e.src().is_some_and(|s| s.name() == "v") => {
                let _ = errors.send(e.error().to_string());
                if let Some(pipeline) = stopped_by_handler.upgrade() {
                    let _ = pipeline.set_state(gst::State::Null);
                }
                gst::BusSyncReply::Drop
            }
            _ => gst::BusSyncReply::Pass,
        });
    let (done, done_rx) = mpsc::channel();
    let app = {
        let pipeline = pipeline.clone();
        std::thread::spawn(move || {
            // PAUSED starts vmemexport (backing=heap opens the heap); appsrc waits for data.
            pipeline.set_state(gst::State::Paused).unwrap();
            // An ALLOCATION query is serialized: it holds vmemexport's sink pad stream lock,
            // which appsrc's streaming thread needs for its stream-start and caps events, while
            // that thread holds appsrc's own stream lock, which stopping the pipeline needs. An
            // application must not query while those events are on their way (GStreamer's
            // locks, not the element's): wait until they have arrived.
            let sink = common::element(&pipeline, "v").static_pad("sink").unwrap();
            let start = std::time::Instant::now();
            while sink.current_caps().is_none() && start.elapsed() < BOUND / 2 {
                std::thread::sleep(Duration::from_millis(10));
            }
            let src = common::element(&pipeline, "src");
            let caps: gst::Caps = CAPS.parse().unwrap();
            let mut query = gst::query::Allocation::new(Some(&caps), true);
            let answered = src.static_pad("src").unwrap().peer_query(&mut query);
            let (_, state, _) = pipeline.state(gst::ClockTime::ZERO);
            let _ = done.send((answered, state));
        })
    };
    let Ok((answered, state)) = done_rx.recv_timeout(BOUND) else {
        panic!(
            "the ALLOCATION query did not return within {BOUND:?}: stopping the pipeline from \
             the sync handler deadlocked"
        );
    };
    app.join().unwrap();
    let error = errors_rx.try_recv().expect("vmemexport posted an error");
    assert!(
        error.contains("Cannot allocate") && error.contains("from the dma-heap"),
        "{error}"
    );
    assert!(!answered, "no pool from a heap that cannot supply frames");
    assert_eq!(state, gst::State::Null, "the handler stopped the pipeline");
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Runs its closure when dropped: the owner's code a frame's last reference runs (a pool's
/// release, a meta's free function), here as the free of a memory it wraps.
struct OnFree(Option<Box<dyn FnOnce() + Send>>);

impl AsRef<[u8]> for OnFree {
    fn as_ref(&self) -> &[u8] {
        &[]
    }
}

impl Drop for OnFree {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// A frame of `info` in dma-buf memory (a memfd: the host has no dma-buf exporter, and
/// dmabufsink only looks at the fd's size) that calls `on_free` when its last reference goes.
fn dmabuf_frame(
    info: &gst_video::VideoInfo,
    on_free: impl FnOnce() + Send + 'static,
) -> gst::Buffer {
    use gst_allocators::prelude::*;
    let size = info.size();
    let pages = gstvmem::kernel::page_align(size as u64).unwrap();
    let memfd = gstvmem::kernel::Memfd::new("frame", pages).unwrap();
    // SAFETY: a fresh fd of `pages` bytes, which the memory takes over.
    let mem = unsafe {
        gst_allocators::DmaBufAllocator::new()
            .alloc_dmabuf(memfd.into_fd(), size)
            .unwrap()
    };
    let mut buffer = gst::Buffer::new();
    let owner = gst::Buffer::from_slice(OnFree(Some(Box::new(on_free))));
    {
        let b = buffer.get_mut().unwrap();
        b.append_memory(mem);
        gst::ParentBufferMeta::add(b, &owner);
    }
    buffer
}

/// dmabufsink lets go of a frame when its client releases it. The frame's last reference then
/// runs its owner's code, which here reads the sink's stats, as an application's pool may:
/// the sink must not hold the lock of its socket meanwhile.
#[test]
fn a_frame_released_by_a_client_may_call_back_into_dmabufsink() {
    use gstvmem::dmabufsink::protocol::{MAX_MESSAGE_SIZE, Message};
    common::init();
    let path = format!("/tmp/vmem-locks-{}.sock", std::process::id());
    // No last sample: the client's hold is the frame's last reference.
    let pipeline = common::launch(&format!(
        "appsrc name=src format=time caps={CAPS} ! dmabufsink name=s socket-path={path} \
         enable-last-sample=false"
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let client = gstvmem::dmabufsink::Client::connect(&path).unwrap();
    let (freed, freed_rx) = mpsc::channel();
    let sink = common::element(&pipeline, "s");
    let caps: gst::Caps = CAPS.parse().unwrap();
    let info = gst_video::VideoInfo::from_caps(&caps).unwrap();
    let frame = dmabuf_frame(&info, move || {
        let stats = sink.property::<gst::Structure>("stats");
        let _ = freed.send(stats.get::<u64>("frames-sent").unwrap());
    });
    let src = common::element(&pipeline, "src");
    src.downcast_ref::<gst_app::AppSrc>()
        .unwrap()
        .push_buffer(frame)
        .unwrap();
    // The frame arrives (its fd is no dma-buf, so the raw message, not Client::recv), and is
    // given back.
    let mut buf = [0u8; MAX_MESSAGE_SIZE];
    let (n, fds) =
        gstvmem::kernel::recv_with_fds(client.socket(), &mut buf, rustix::net::RecvFlags::empty())
            .unwrap();
    let Ok(Message::Frame(sent)) = Message::decode(&buf[..n], fds.len()) else {
        panic!("expected a frame");
    };
    let release = Message::Release {
        frame_number: sent.frame_number,
    }
    .encode();
    gstvmem::kernel::send_with_fds(
        client.socket(),
        &release,
        &[],
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    let Ok(frames_sent) = freed_rx.recv_timeout(BOUND) else {
        panic!(
            "the released frame's owner did not get the sink's stats within {BOUND:?}: \
             dmabufsink let go of the frame under a lock its stats take"
        );
    };
    assert_eq!(frames_sent, 1);
    pipeline.set_state(gst::State::Null).unwrap();
}
