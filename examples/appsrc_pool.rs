// SPDX-License-Identifier: MPL-2.0
//! An application that draws its frames straight into the memory vmemexport proposes, so its
//! own writes are the pixels the display scans out: no copy anywhere.
//!
//!     cargo run --example appsrc_pool -- [FRAMES] [SINK]
//!
//! SINK defaults to `kmssink driver-name=vkms`. It asks vmemexport for its pool with an
//! ALLOCATION query on appsrc's src pad, fills each buffer in place and pushes it.

use gst::prelude::*;
use gst_video::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gst::init()?;
    gstvmem::plugin_register_static()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let frames: u32 = args.first().map_or(Ok(30), |f| f.parse())?;
    let sink = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "kmssink driver-name=vkms sync=false".into());

    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Bgrx, 640, 480)
        .fps(gst::Fraction::new(30, 1))
        .build()?;
    let caps = info.to_caps()?;
    let pipeline = gst::parse::launch(&format!(
        // block=true: a push waits while appsrc's queue is full (max-bytes), so the app never
        // runs ahead of the display and the pool stays a handful of buffers.
        "appsrc name=src format=time block=true ! vmemexport name=v ! {sink}"
    ))?
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(&caps));
    pipeline.set_state(gst::State::Playing)?;

    // Ask downstream (vmemexport) for its pool: memfd-backed, exported once per buffer.
    let mut query = gst::query::Allocation::new(Some(&caps), true);
    if !src.static_pad("src").unwrap().peer_query(&mut query) {
        return Err("vmemexport answered no allocation query".into());
    }
    let pool = query
        .allocation_pools()
        .next()
        .and_then(|(pool, _, _, _)| pool)
        .ok_or("no pool proposed")?;
    let mut config = pool.config();
    config.set_params(Some(&caps), info.size() as u32, 0, 0);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
    pool.set_config(config)?;
    pool.set_active(true)?;

    for n in 0..frames {
        let mut buffer = pool.acquire_buffer(None)?;
        {
            let buffer = buffer.get_mut().unwrap();
            buffer.set_pts(gst::ClockTime::from_mseconds(u64::from(n) * 33));
            let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(buffer, &info)
                .map_err(|_| "cannot map a pool buffer")?;
            let stride = frame.plane_stride()[0] as usize;
            let data = frame.plane_data_mut(0)?;
            // A vertical bar that moves one column every frame, on a dark background.
            for (y, row) in data.chunks_mut(stride).take(480).enumerate() {
                let background = [(y / 2) as u8, 32, 64, 0];
                for (x, px) in row[..640 * 4].chunks_mut(4).enumerate() {
                    let on = (x as u32 / 8) % 80 == n % 80;
                    px.copy_from_slice(if on { &[255, 255, 255, 0] } else { &background });
                }
            }
        }
        src.push_buffer(buffer)?;
    }
    src.end_of_stream()?;
    let bus = pipeline.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => return Err(format!("{}", e.error()).into()),
            _ => {}
        }
    }
    let stats = pipeline
        .by_name("v")
        .unwrap()
        .property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null)?;
    println!("vmemexport stats: {stats}");
    Ok(())
}
