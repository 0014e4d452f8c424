// SPDX-License-Identifier: MPL-2.0
//! What the VM drivers (demo, bench, soak) share: building a pipeline and playing it to EOS.
#![allow(dead_code)] // each driver uses its own subset

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
