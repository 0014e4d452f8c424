// SPDX-License-Identifier: MPL-2.0
//! What the VM drivers (demo, bench, soak) share: the pipeline runner, timing probes, appsrc.
#![allow(dead_code)] // each driver uses its own subset

mod pipeline;
pub mod scanout;
#[allow(unused_imports)] // each binary uses its own subset
pub use pipeline::{RunResult, launch, run, run_for};

use std::sync::{Arc, Mutex};
use std::time::Instant;

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
