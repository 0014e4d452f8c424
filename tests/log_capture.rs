// SPDX-License-Identifier: MPL-2.0
//! The tests' LogCapture (tests/common) leaves GStreamer's logging as it found it. A binary of
//! its own: the default log function and the thresholds are process-wide.

mod common;

use std::sync::LazyLock;

use common::LogCapture;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vmemlogcapture",
        gst::DebugColorFlags::empty(),
        Some("LogCapture's own test"),
    )
});

/// How many times GStreamer's default log function (stderr) is registered.
fn default_log_functions() -> u32 {
    // SAFETY: GStreamer's own default log function, removed and registered again as often as
    // it was, with no user data (stderr), as gst_init registers it without GST_DEBUG_FILE.
    unsafe {
        let n = gst::ffi::gst_debug_remove_log_function(Some(gst::ffi::gst_debug_log_default));
        for _ in 0..n {
            gst::ffi::gst_debug_add_log_function(
                Some(gst::ffi::gst_debug_log_default),
                std::ptr::null_mut(),
                None,
            );
        }
        n
    }
}

#[test]
fn a_log_capture_leaves_logging_as_it_found_it() {
    common::init();
    let threshold = CAT.threshold();
    assert!(threshold < gst::DebugLevel::Log, "{threshold:?}");
    assert_eq!(default_log_functions(), 1, "gst_init registers the default");
    {
        let outer = LogCapture::new(&["vmemlogcapture"], gst::DebugLevel::Log);
        assert_eq!(
            default_log_functions(),
            0,
            "stderr is quiet while capturing"
        );
        {
            let inner = LogCapture::new(&["vmemlogcapture"], gst::DebugLevel::Log);
            gst::log!(*CAT, "both");
            assert_eq!(inner.count("vmemlogcapture", "both"), 1);
        }
        // The inner capture's end changes nothing the outer one relies on.
        assert_eq!(default_log_functions(), 0);
        gst::log!(*CAT, "outer only");
        assert_eq!(outer.count("vmemlogcapture", "both"), 1);
        assert_eq!(outer.count("vmemlogcapture", "outer only"), 1);
    }
    assert_eq!(
        default_log_functions(),
        1,
        "the default log function is back"
    );
    assert_eq!(CAT.threshold(), threshold, "the threshold is back");
}
