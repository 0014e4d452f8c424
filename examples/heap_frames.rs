// SPDX-License-Identifier: MPL-2.0
//! An application that allocates its frames from a dma-heap with the dmaheap allocator, through
//! a stock GstVideoBufferPool, and hands them to kmssink: already dma-bufs, nothing to export.
//!
//!     cargo run --example heap_frames -- [HEAP] [FRAMES] [SINK]
//!
//! HEAP defaults to `auto` (a CMA heap if there is one, else system).

use gst::prelude::*;
use gstvmem::heapalloc::DmaHeapAllocator;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gst::init()?;
    gstvmem::plugin_register_static()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let heap = args.first().cloned().unwrap_or_else(|| "auto".into());
    let frames: u32 = args.get(1).map_or(Ok(30), |f| f.parse())?;
    let sink = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "kmssink driver-name=vkms sync=false".into());

    let allocator = DmaHeapAllocator::new(&heap)?;
    println!(
        "heap {} (contiguous: {})",
        allocator.heap_name()?,
        allocator.is_contiguous()?
    );
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Bgrx, 640, 480)
        .fps(gst::Fraction::new(30, 1))
        .build()?;
    let caps = info.to_caps()?;
    let pool = gst_video::VideoBufferPool::new();
    let mut config = pool.config();
    config.set_params(Some(&caps), info.size() as u32, 2, 0);
    config.set_allocator(Some(&allocator), None);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
    pool.set_config(config)?;
    pool.set_active(true)?;

    let pipeline = gst::parse::launch(&format!("appsrc name=src format=time ! {sink}"))?
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(&caps));
    pipeline.set_state(gst::State::Playing)?;
    for n in 0..frames {
        let mut buffer = pool.acquire_buffer(None)?;
        {
            let buffer = buffer.get_mut().unwrap();
            buffer.set_pts(gst::ClockTime::from_mseconds(u64::from(n) * 33));
            // Mapping a dma-heap buffer brackets the write with DMA_BUF_IOCTL_SYNC.
            let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(buffer, &info)
                .map_err(|_| "cannot map a heap buffer")?;
            let shade = (n * 8) as u8;
            frame
                .plane_data_mut(0)?
                .chunks_mut(4)
                .for_each(|px| px.copy_from_slice(&[shade, 0, 255 - shade, 0]));
        }
        src.push_buffer(buffer)?;
    }
    src.end_of_stream()?;
    for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => return Err(format!("{}", e.error()).into()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null)?;
    println!("pushed {frames} dma-heap frames");
    Ok(())
}
