// SPDX-License-Identifier: MPL-2.0
//! What the VM drivers (demo, bench, soak) share: building a pipeline and playing it to EOS.
#![allow(dead_code)] // each driver uses its own subset

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The pipeline `desc` describes; panics with the description if it cannot be built.
pub fn launch(desc: &str) -> gst::Pipeline {
    use gst::prelude::*;
    gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast()
        .unwrap()
}

/// Plays `pipeline` to EOS (panicking on an error message), then sets it to NULL.
pub fn run(pipeline: &gst::Pipeline) {
    use gst::prelude::*;
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(600)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                panic!("{}: {}", e.error(), e.debug().unwrap_or_default())
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Installs probes on `element`'s pads that record the microseconds each buffer spends between
/// its sink and src pads.
pub fn time_inside(element: &gst::Element) -> Arc<Mutex<Vec<f64>>> {
    use gst::prelude::*;
    let start = Arc::new(Mutex::new(None::<Instant>));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let s1 = start.clone();
    element
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            *s1.lock().unwrap() = Some(Instant::now());
            gst::PadProbeReturn::Ok
        });
    let out = samples.clone();
    element
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            if let Some(t) = start.lock().unwrap().take() {
                out.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e6);
            }
            gst::PadProbeReturn::Ok
        });
    samples
}

/// The pipeline's appsrc named "src", producing `info` frames.
pub fn appsrc(pipeline: &gst::Pipeline, info: &gst_video::VideoInfo) -> gst_app::AppSrc {
    use gst::prelude::*;
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(&info.to_caps().unwrap()));
    src
}
