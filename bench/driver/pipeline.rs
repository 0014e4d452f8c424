// SPDX-License-Identifier: MPL-2.0
//! Building a pipeline and playing it to EOS: the one runner of the tests (tests/common) and the
//! VM drivers (demo, bench, soak).

use std::time::Duration;

use gst::prelude::*;

/// The pipeline `desc` describes; panics with the description if it cannot be built.
pub fn launch(desc: &str) -> gst::Pipeline {
    let pipeline: gst::Pipeline = gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("cannot build '{desc}': {e}"))
        .downcast()
        .unwrap();
    if !vkms_positions_primary_plane() {
        // kmssink centres a frame smaller than the mode on the primary plane; vkms before 6.12
        // refuses a primary plane that does not cover the CRTC (vkms_plane_atomic_check:
        // can_position only for the cursor), so kmssink must set the frame's own mode there.
        for sink in pipeline
            .iterate_all_by_element_factory_name("kmssink")
            .into_iter()
        {
            sink.unwrap().set_property("force-modesetting", true);
        }
    }
    pipeline
}

/// Whether the running kernel's vkms lets the primary plane sit anywhere on the CRTC
/// (measured: 6.1's does not, 6.12's does).
fn vkms_positions_primary_plane() -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 12)
}

/// What a pipeline run posted besides EOS.
#[derive(Debug, Default)]
pub struct RunResult {
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

/// Plays `pipeline` to EOS (or an error), then sets it to NULL. Panics after `timeout`.
pub fn run_for(pipeline: &gst::Pipeline, timeout: Duration) -> RunResult {
    let bus = pipeline.bus().unwrap();
    let mut result = RunResult::default();
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The error message on the bus says why.
        result.error = Some("state change to PLAYING failed".into());
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "pipeline did not finish within {timeout:?}"
        );
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(left.as_millis() as u64))
        else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                result.error = Some(format!(
                    "{}: {} ({})",
                    e.src().map(|s| s.name().to_string()).unwrap_or_default(),
                    e.error(),
                    e.debug().map(|d| d.to_string()).unwrap_or_default()
                ));
                break;
            }
            gst::MessageView::Warning(w) => result.warnings.push(format!(
                "{}: {} ({})",
                w.src().map(|s| s.name().to_string()).unwrap_or_default(),
                w.error(),
                w.debug().map(|d| d.to_string()).unwrap_or_default()
            )),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    result
}

/// Plays `pipeline` to EOS and panics on any error.
pub fn run(pipeline: &gst::Pipeline) -> RunResult {
    let result = run_for(pipeline, Duration::from_secs(600));
    if let Some(e) = &result.error {
        panic!("pipeline failed: {e}");
    }
    result
}
