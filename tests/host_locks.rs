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
