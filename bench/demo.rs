// SPDX-License-Identifier: MPL-2.0
//! The main job in one run (`make demo`): one frame to the display and to the encoder, with and
//! without vmemexport, and a report a person can read. Saves what the display showed as a PNG.
//!
//!     demo RESULTS_DIR [FRAMES]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use gst::prelude::*;

mod driver;

const CAPS: &str = "video/x-raw,format=BGRx,width=1280,height=720,framerate=30/1";

#[derive(Default)]
struct Observed {
    caps: BTreeMap<String, String>,
    shown: u64,
    encoded: u64,
    snapshot: Option<driver::scanout::Scanout>,
}

fn run(desc: &str, snapshot_at: u64) -> (Observed, gst::Pipeline) {
    let pipeline = driver::launch(desc);
    let observed = Arc::new(Mutex::new(Observed::default()));
    for name in ["v", "k", "enc", "f"] {
        let Some(el) = pipeline.by_name(name) else {
            continue;
        };
        let obs = observed.clone();
        let label = format!("{} sink", el.factory().unwrap().name());
        el.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
                let mut o = obs.lock().unwrap();
                if let Some(caps) = pad.current_caps() {
                    o.caps
                        .entry(label.clone())
                        .or_insert_with(|| caps.to_string());
                }
                match name {
                    "k" => {
                        o.shown += 1;
                        if o.shown == snapshot_at && o.snapshot.is_none() {
                            // The frame before this one is on screen now.
                            let node = gstvmem::kernel::DrmNode::open_driver(
                                "vkms",
                                gstvmem::kernel::DrmUse::Kms,
                            )
                            .unwrap();
                            o.snapshot = driver::scanout::read_scanout(&node)
                                .map_err(|e| eprintln!("snapshot: {e}"))
                                .ok();
                        }
                    }
                    "f" => o.encoded += 1,
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            });
    }
    driver::run(&pipeline);
    let o = std::mem::take(&mut *observed.lock().unwrap());
    (o, pipeline)
}

fn save_png(s: &driver::scanout::Scanout, path: &std::path::Path) -> std::io::Result<()> {
    let mut rgb = Vec::with_capacity((s.width * s.height * 3) as usize);
    for row in s.pixels.chunks(s.pitch as usize).take(s.height as usize) {
        for px in row[..(s.width * 4) as usize].chunks(4) {
            rgb.extend_from_slice(&[px[2], px[1], px[0]]); // XRGB8888 is B, G, R, X in memory
        }
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, s.width, s.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(&rgb)?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().expect("usage: demo RESULTS_DIR [FRAMES]"));
    let frames: u64 = args.get(1).and_then(|f| f.parse().ok()).unwrap_or(60);
    std::fs::create_dir_all(&dir).unwrap();
    gst::init().unwrap();
    gstvmem::plugin_register_static().unwrap();

    // Count kmssink's copies and imports from its own log.
    let log = Arc::new(Mutex::new(BTreeMap::<&'static str, u64>::new()));
    gst::log::remove_default_log_function();
    gst::log::set_threshold_for_name("kmssink", gst::DebugLevel::Log);
    gst::log::set_threshold_for_name("GST_PERFORMANCE", gst::DebugLevel::Log);
    let counts = log.clone();
    gst::log::add_log_function(move |cat, _, _, _, _, _, msg| {
        let Some(msg) = msg.get() else { return };
        let key = match cat.name() {
            "GST_PERFORMANCE" if msg.contains("frame copy") => "frame copy",
            "kmssink" if msg.contains("setting KMS mem") => "import",
            "kmssink" if msg.contains("found KMS mem") => "reuse",
            _ => return,
        };
        *counts.lock().unwrap().entry(key).or_default() += 1;
    });

    let ours = format!(
        "videotestsrc num-buffers={frames} pattern=smpte ! {CAPS} ! vmemexport name=v ! tee name=t ! \
         queue ! kmssink name=k driver-name=vkms sync=false \
         t. ! queue ! v4l2fwhtenc name=enc output-io-mode=dmabuf-import ! fakesink name=f"
    );
    let upstream = format!(
        "videotestsrc num-buffers={frames} pattern=smpte ! {CAPS} ! tee name=t ! \
         queue ! kmssink name=k driver-name=vkms sync=false \
         t. ! queue ! v4l2fwhtenc name=enc ! fakesink name=f"
    );
    println!("{}\n", gst::version_string());
    let mut report = String::new();
    for (title, desc) in [
        ("with vmemexport", &ours),
        ("upstream, without vmemexport", &upstream),
    ] {
        log.lock().unwrap().clear();
        let (o, pipeline) = run(desc, frames / 2);
        let counts = log.lock().unwrap().clone();
        let mut text = format!("== {title}\n{desc}\n");
        for (link, caps) in &o.caps {
            text.push_str(&format!("  caps into {link}: {caps}\n"));
        }
        text.push_str(&format!(
            "  frames shown by kmssink: {}, encoded: {}\n",
            o.shown, o.encoded
        ));
        text.push_str(&format!(
            "  kmssink: {} frame copies, {} dma-buf imports, {} reuses of an imported framebuffer\n",
            counts.get("frame copy").copied().unwrap_or(0),
            counts.get("import").copied().unwrap_or(0),
            counts.get("reuse").copied().unwrap_or(0)
        ));
        if let Some(v) = pipeline.by_name("v") {
            let s = v.property::<gst::Structure>("stats");
            let get = |f: &str| s.get::<u64>(f).unwrap_or(0);
            text.push_str(&format!(
                "  vmemexport: {} frames, {} dma-bufs exported, {} copies, {} bytes copied\n  encoder input: dma-buf import (no copy)\n",
                get("frames"),
                get("exported"),
                get("copies"),
                get("bytes-copied")
            ));
        } else {
            text.push_str(&format!(
                "  encoder input: io-mode auto = MMAP, a copy of each of the {} frames ({} bytes each)\n",
                o.encoded,
                1280 * 720 * 4
            ));
        }
        if title.starts_with("with")
            && let Some(s) = &o.snapshot
        {
            let path = dir.join("display.png");
            match save_png(s, &path) {
                Ok(()) => text.push_str(&format!(
                    "  the display showed: {} ({}x{})\n",
                    path.display(),
                    s.width,
                    s.height
                )),
                Err(e) => text.push_str(&format!("  cannot save the display snapshot: {e}\n")),
            }
        }
        println!("{text}");
        report.push_str(&text);
        report.push('\n');
    }
    std::fs::write(dir.join("demo.txt"), report).unwrap();
}
