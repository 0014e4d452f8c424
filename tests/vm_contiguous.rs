// SPDX-License-Identifier: MPL-2.0
//! `backing=auto` and importers that need physically contiguous memory (VM testbed, every
//! userland). vivid instance 1 is the testbed's contiguous-only device (vb2-dma-contig with no
//! IOMMU, `vivid.allocators=0,1` on the kernel command line), like a display or encoder of a
//! board without an IOMMU; vivid instance 0 and vicodec (vb2-vmalloc) import scattered pages.
//! With default properties vmemexport must tell them apart (an import trial on the device's
//! idle output queue) and give each the memory it can import.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use gst::prelude::*;
use gstvmem::kernel;

const CMA: &str = "reserved"; // the testbed's CMA heap (cma=128M), as fdinfo's exp_name says
const CAPS: &str = "video/x-raw,format=YUY2,width=1280,height=720,framerate=30/1";
const FRAMES: usize = 10;

/// What reached one sink: each buffer's exporter (fdinfo's exp_name) and pixel checksum.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<Arrival>>>);

/// A buffer's exporter (None: not a dma-buf) and its pixels' checksum (0 for a bitstream).
type Arrival = (Option<String>, u64);

impl Arrivals {
    /// Records every buffer arriving at the sink pad of `name` (assertions come after the run).
    fn install(pipeline: &gst::Pipeline, name: &str) -> Arrivals {
        let arrivals = Arrivals::default();
        let store = arrivals.clone();
        element(pipeline, name)
            .static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                if let Some(buffer) = info.buffer() {
                    let exporter = gstvmem::memory::dmabuf_fd(buffer.peek_memory(0))
                        .and_then(kernel::dmabuf_exporter);
                    let sum = pad
                        .current_caps()
                        .and_then(|c| gstvmem::formats::video_info_from_caps(&c))
                        .filter(|(info, _)| info.format() != gst_video::VideoFormat::Encoded)
                        .map_or(0, |(info, _)| checksum(&normalized_frame(buffer, &info)));
                    store.0.lock().unwrap().push((exporter, sum));
                }
                gst::PadProbeReturn::Ok
            });
        arrivals
    }

    fn exporters(&self) -> Vec<Option<String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(e, _)| e.clone())
            .collect()
    }

    fn checksums(&self) -> Vec<u64> {
        self.0.lock().unwrap().iter().map(|(_, s)| *s).collect()
    }
}

/// The pixels videotestsrc makes for these caps, frame by frame.
fn reference_checksums() -> Vec<u64> {
    frame_checksums(&format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! {CAPS} ! appsink name=out sync=false"
    ))
}

fn contiguous_for(v: &gst::Element) -> String {
    v.property::<gst::Structure>("stats")
        .get::<String>("contiguous-for")
        .unwrap()
}

fn only(exporter: &str) -> Vec<Option<String>> {
    vec![Some(exporter.to_string()); FRAMES]
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_contiguous_only_v4l2_output_gets_cma_frames_by_default() {
    init();
    let dev = vivid_output(1);
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! {CAPS} ! vmemexport name=v ! \
         v4l2sink name=sink device={dev} io-mode=dmabuf-import sync=false"
    ));
    let arrivals = Arrivals::install(&pipeline, "sink");
    let result = run_for(&pipeline, secs(60));
    assert_eq!(result.error, None, "default vmemexport into {dev}");
    let v = element(&pipeline, "v");
    assert_eq!(stat(&v, "copies"), 0);
    assert_eq!(stat(&v, "frames"), FRAMES as u64);
    assert!(
        contiguous_for(&v).contains("sink"),
        "{}",
        contiguous_for(&v)
    );
    assert_eq!(arrivals.exporters(), only(CMA), "frames from the CMA heap");
    assert_eq!(
        arrivals.checksums(),
        reference_checksums(),
        "the frames' pixels"
    );
}

#[test]
#[ignore = "needs the VM testbed"]
fn scattered_page_importers_keep_udmabuf() {
    init();
    let vivid0 = vivid_output(0);
    let encoder = "v4l2fwhtenc output-io-mode=dmabuf-import ! fakesink";
    for consumer in [
        format!("v4l2sink name=sink device={vivid0} io-mode=dmabuf-import sync=false"),
        format!("identity name=sink ! {encoder}"),
    ] {
        let pipeline = launch(&format!(
            "videotestsrc num-buffers={FRAMES} pattern=ball ! {CAPS} ! vmemexport name=v ! \
             {consumer}"
        ));
        let arrivals = Arrivals::install(&pipeline, "sink");
        let result = run_for(&pipeline, secs(60));
        assert_eq!(result.error, None, "{consumer}");
        let v = element(&pipeline, "v");
        assert_eq!(stat(&v, "copies"), 0, "{consumer}");
        assert_eq!(contiguous_for(&v), "", "{consumer}");
        assert_eq!(arrivals.exporters(), only("udmabuf"), "{consumer}");
        assert_eq!(arrivals.checksums(), reference_checksums(), "{consumer}");
    }
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_tee_into_contiguous_and_scattered_importers_serves_the_stricter() {
    init();
    let vivid1 = vivid_output(1);
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! {CAPS} ! vmemexport name=v ! tee name=t \
         t. ! queue ! identity name=enc ! v4l2fwhtenc output-io-mode=dmabuf-import ! \
              fakesink name=bits \
         t. ! queue ! v4l2sink name=sink device={vivid1} io-mode=dmabuf-import sync=false"
    ));
    let display = Arrivals::install(&pipeline, "sink");
    let encoder = Arrivals::install(&pipeline, "enc");
    let bits = Arrivals::install(&pipeline, "bits");
    let result = run_for(&pipeline, secs(60));
    assert_eq!(result.error, None);
    let v = element(&pipeline, "v");
    assert_eq!(stat(&v, "copies"), 0);
    assert!(
        contiguous_for(&v).contains("sink"),
        "{}",
        contiguous_for(&v)
    );
    assert_eq!(display.exporters(), only(CMA));
    assert_eq!(encoder.exporters(), only(CMA));
    assert_eq!(display.checksums(), reference_checksums());
    assert_eq!(
        bits.exporters().len(),
        FRAMES,
        "the encoder encoded every frame"
    );
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_cma_area_too_small_is_a_clear_error_before_any_frame() {
    init();
    let dev = vivid_output(1);
    // Take the CMA area but for one MiB: less than the four 1,843,200-byte frames the pool needs.
    let heap = kernel::Heap::open(CMA).unwrap();
    let mut held = Vec::new();
    while let Ok(fd) = heap.allocate(1 << 20) {
        held.push(fd);
        assert!(held.len() < 1024, "a 128 MiB CMA area cannot hold 1024 MiB");
    }
    held.pop();
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={FRAMES} ! {CAPS} ! vmemexport name=v ! \
         v4l2sink name=sink device={dev} io-mode=dmabuf-import sync=false"
    ));
    let arrivals = Arrivals::install(&pipeline, "sink");
    let result = run_for(&pipeline, secs(60));
    let error = result
        .error
        .expect("a CMA area too small must fail the pipeline");
    assert!(
        error.contains("imports only physically contiguous memory"),
        "{error}"
    );
    assert!(error.contains("boot with cma="), "{error}");
    assert!(
        arrivals.exporters().is_empty(),
        "no frame reached the device: {:?}",
        arrivals.exporters()
    );
    // With the CMA area back, the same pipeline runs.
    held.clear();
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={FRAMES} ! {CAPS} ! vmemexport name=v ! \
         v4l2sink device={dev} io-mode=dmabuf-import sync=false"
    ));
    assert_eq!(run_for(&pipeline, secs(60)).error, None);
}

#[test]
#[ignore = "needs the VM testbed"]
fn frames_outside_the_pool_are_copied_into_cma_as_needs_contiguous() {
    init();
    let dev = vivid_output(1);
    // propose-pool=false: videotestsrc keeps its own system memory; every frame must be copied
    // into memory the device can import, and counted under its own reason.
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! {CAPS} ! \
         vmemexport name=v propose-pool=false ! \
         v4l2sink name=sink device={dev} io-mode=dmabuf-import sync=false"
    ));
    let arrivals = Arrivals::install(&pipeline, "sink");
    let result = run_for(&pipeline, secs(60));
    assert_eq!(result.error, None);
    let v = element(&pipeline, "v");
    let reasons = v
        .property::<gst::Structure>("stats")
        .get::<gst::Structure>("copy-reasons")
        .unwrap();
    assert_eq!(stat(&v, "copies"), FRAMES as u64);
    assert_eq!(
        reasons.get::<u64>("needs-contiguous").unwrap(),
        FRAMES as u64,
        "{reasons}"
    );
    assert_eq!(arrivals.exporters(), only(CMA));
    assert_eq!(arrivals.checksums(), reference_checksums());
}

#[test]
#[ignore = "needs the VM testbed"]
fn a_display_that_imports_scattered_pages_keeps_udmabuf() {
    // kmssink is asked too: a trial PRIME import of scattered pages into the DRM device it has
    // open (its `fd`, the kmssink-fd quirk). vkms takes them (shmem GEM), so its frames stay
    // udmabuf exports; a display controller on the GEM DMA helpers would refuse the trial and
    // get CMA frames, as vivid instance 1 does above. The trial is in the log, once a run.
    init();
    let log = LogCapture::new(&["vmemexport"], gst::DebugLevel::Info);
    let caps = "video/x-raw,format=BGRx,width=640,height=480,framerate=30/1";
    let pipeline = launch(&format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! {caps} ! vmemexport name=v ! \
         tee name=t ! queue ! kmssink name=sink driver-name=vkms sync=false \
         t. ! queue ! fakesink sync=false"
    ));
    let arrivals = Arrivals::install(&pipeline, "sink");
    let result = run_for(&pipeline, secs(60));
    assert_eq!(result.error, None);
    let v = element(&pipeline, "v");
    assert_eq!(stat(&v, "copies"), 0);
    assert_eq!(contiguous_for(&v), "");
    assert_eq!(arrivals.exporters(), only("udmabuf"));
    let trials = log.count("vmemexport", "imports scattered pages");
    assert_eq!(
        trials, 1,
        "one trial for kmssink's DRM device, through the tee"
    );
    assert_eq!(
        log.count("vmemexport", "sink (GstKMSSink): /dev/dri/card"),
        1,
        "the trial names the kmssink and its card node"
    );
}
