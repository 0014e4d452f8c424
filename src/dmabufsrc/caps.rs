// SPDX-License-Identifier: MPL-2.0
//! What a received frame looks like to GStreamer: its caps in each of the three forms, and its
//! planes as a VideoMeta over the memories of its fds.

use gst_video::VideoFormat;

use crate::dmabufsink::protocol;
use crate::formats::{self, CapsKind};

/// The GStreamer format of a DRM fourcc, if it has one.
pub(crate) fn format_of(fourcc: u32) -> Option<VideoFormat> {
    formats::formats().find(|f| formats::drm_fourcc(*f) == Some(fourcc))
}

/// A frame's fourcc as text, for messages ("XR24", or the number if it is not ASCII).
pub(crate) fn fourcc_name(fourcc: u32) -> String {
    let bytes = fourcc.to_le_bytes();
    match std::str::from_utf8(&bytes) {
        Ok(s) if s.chars().all(|c| c.is_ascii_graphic() || c == ' ') => s.to_string(),
        _ => format!("{fourcc:#010x}"),
    }
}

/// The frame rate its duration implies (0/1, "variable", if it has none).
fn framerate(frame: &protocol::Frame) -> gst::Fraction {
    if frame.duration == 0 || frame.duration == u64::MAX {
        return gst::Fraction::new(0, 1);
    }
    // The standard rate nearest the duration (33,333,333 ns is 30/1, not 699999997/23333333).
    gst_video::guess_framerate(gst::ClockTime::from_nseconds(frame.duration))
        .unwrap_or_else(|| gst::Fraction::new(0, 1))
}

/// The caps that describe `frame` in the form `kind`, or `None` if that form cannot: the legacy
/// and plain forms need a GStreamer format and a linear buffer, DMA_DRM a GStreamer that knows
/// it (>= 1.24, at run time).
pub(crate) fn frame_caps(frame: &protocol::Frame, kind: CapsKind) -> Option<gst::Caps> {
    let format = format_of(frame.fourcc);
    // The whole description GStreamer derives for the format (colorimetry, chroma siting,
    // pixel aspect ratio, interlace mode), as a sink expects it from any video source; the
    // format field is then spelled for the form.
    let describe = |format_field: &str, drm_format: Option<String>, dmabuf: bool| {
        let width = i32::try_from(frame.width).ok()?;
        let height = i32::try_from(frame.height).ok()?;
        let mut caps = match format {
            Some(format) => gst_video::VideoInfo::builder(format, frame.width, frame.height)
                .fps(framerate(frame))
                .build()
                .ok()?
                .to_caps()
                .ok()?,
            None => gst::Caps::builder("video/x-raw")
                .field("width", width)
                .field("height", height)
                .field("framerate", framerate(frame))
                .build(),
        };
        {
            let caps = caps.get_mut().unwrap();
            let s = caps.structure_mut(0).unwrap();
            s.set("format", format_field);
            if let Some(drm_format) = drm_format {
                s.set("drm-format", drm_format);
            }
            if dmabuf {
                caps.set_features_simple(Some(gst::CapsFeatures::new([
                    formats::CAPS_FEATURE_DMABUF,
                ])));
            }
        }
        Some(caps)
    };
    match kind {
        CapsKind::DmaDrm => {
            if !formats::runtime_has_dma_drm() {
                return None;
            }
            let fourcc = fourcc_name(frame.fourcc);
            if fourcc.len() != 4 {
                return None;
            }
            let drm_format = if frame.modifier == 0 {
                fourcc
            } else {
                format!("{fourcc}:{:#018x}", frame.modifier)
            };
            describe("DMA_DRM", Some(drm_format), true)
        }
        CapsKind::DmaBufLegacy | CapsKind::Plain => {
            let format = format.filter(|_| frame.modifier == 0)?;
            describe(
                format.to_str().as_str(),
                None,
                kind == CapsKind::DmaBufLegacy,
            )
        }
    }
}

/// The caps forms in order of preference: DMA_DRM (1.24+), the legacy `memory:DMABuf` form,
/// then plain `video/x-raw` (what 1.22-era kmssink and V4L2 elements take, and what a
/// capsfilter without the feature asks for).
pub(crate) const PREFERENCE: [CapsKind; 3] =
    [CapsKind::DmaDrm, CapsKind::DmaBufLegacy, CapsKind::Plain];

/// The first form of `frame` that `peer` accepts (any form if there is no peer).
pub(crate) fn negotiate(frame: &protocol::Frame, peer: Option<&gst::Caps>) -> Option<gst::Caps> {
    PREFERENCE
        .iter()
        .filter_map(|&kind| frame_caps(frame, kind))
        .find(|caps| peer.is_none_or(|p| p.can_intersect(caps)))
}

/// The plane offsets of `frame` as a VideoMeta counts them: from the start of the buffer, whose
/// memories are its fds, whole and in order (`fd_sizes` bytes each).
pub(crate) fn meta_offsets(frame: &protocol::Frame, fd_sizes: &[u64]) -> Option<Vec<usize>> {
    let mut starts = Vec::with_capacity(fd_sizes.len());
    let mut at = 0u64;
    for size in fd_sizes {
        starts.push(at);
        at = at.checked_add(*size)?;
    }
    (0..frame.n_planes as usize)
        .map(|p| {
            let start = *starts.get(usize::from(frame.plane_fd[p]))?;
            usize::try_from(start.checked_add(frame.offsets[p].into())?).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fourcc: VideoFormat) -> protocol::Frame {
        gst::init().unwrap();
        protocol::Frame {
            frame_number: 1,
            pts: 0,
            duration: 33_333_333,
            width: 320,
            height: 240,
            fourcc: formats::drm_fourcc(fourcc).unwrap(),
            modifier: 0,
            n_planes: 1,
            strides: [1280, 0, 0, 0],
            size: 1280 * 240,
            n_fds: 1,
            ..Default::default()
        }
    }

    #[test]
    fn each_form_describes_the_frame() {
        let f = frame(VideoFormat::Bgrx);
        let legacy = frame_caps(&f, CapsKind::DmaBufLegacy).unwrap();
        assert!(legacy.is_fixed(), "{legacy}");
        assert!(
            legacy
                .features(0)
                .unwrap()
                .contains(formats::CAPS_FEATURE_DMABUF)
        );
        let s = legacy.structure(0).unwrap();
        assert_eq!(s.get::<&str>("format").unwrap(), "BGRx");
        assert_eq!(s.get::<i32>("width").unwrap(), 320);
        assert_eq!(s.get::<i32>("height").unwrap(), 240);
        assert_eq!(
            s.get::<gst::Fraction>("framerate").unwrap(),
            gst::Fraction::new(30, 1)
        );
        // What a sink checks besides the size: VideoInfo's defaults, spelled out.
        assert_eq!(s.get::<&str>("interlace-mode").unwrap(), "progressive");
        assert!(
            s.has_field("colorimetry") && s.has_field("pixel-aspect-ratio"),
            "{s}"
        );
        let plain = frame_caps(&f, CapsKind::Plain).unwrap();
        assert!(
            !plain
                .features(0)
                .unwrap()
                .contains(formats::CAPS_FEATURE_DMABUF)
        );
        let (info, kind) = formats::video_info_from_caps(&plain).unwrap();
        assert_eq!((info.format(), kind), (VideoFormat::Bgrx, CapsKind::Plain));
        let drm = frame_caps(&f, CapsKind::DmaDrm);
        assert_eq!(drm.is_some(), formats::runtime_has_dma_drm());
        if let Some(drm) = drm {
            let s = drm.structure(0).unwrap();
            assert_eq!(s.get::<&str>("format").unwrap(), "DMA_DRM");
            assert_eq!(s.get::<&str>("drm-format").unwrap(), "XR24");
        }
    }

    #[test]
    fn the_peer_picks_the_form() {
        let f = frame(VideoFormat::Nv12);
        let plain_only = gst::Caps::builder("video/x-raw").build();
        let caps = negotiate(&f, Some(&plain_only)).unwrap();
        assert!(
            !caps
                .features(0)
                .unwrap()
                .contains(formats::CAPS_FEATURE_DMABUF),
            "{caps}"
        );
        let any = negotiate(&f, None).unwrap();
        let expect = if formats::runtime_has_dma_drm() {
            "DMA_DRM"
        } else {
            "NV12"
        };
        assert_eq!(
            any.structure(0).unwrap().get::<&str>("format").unwrap(),
            expect
        );
        let legacy = gst::Caps::builder("video/x-raw")
            .features([formats::CAPS_FEATURE_DMABUF])
            .field("format", "NV12")
            .build();
        let caps = negotiate(&f, Some(&legacy)).unwrap();
        assert_eq!(
            caps.structure(0).unwrap().get::<&str>("format").unwrap(),
            "NV12"
        );
        let rgb_only = gst::Caps::builder("video/x-raw")
            .field("format", "RGB")
            .build();
        assert!(negotiate(&f, Some(&rgb_only)).is_none());
    }

    #[test]
    fn a_modified_layout_has_only_the_dma_drm_form() {
        let mut f = frame(VideoFormat::Nv12);
        f.modifier = 0x0100_0000_0000_0001;
        assert!(frame_caps(&f, CapsKind::Plain).is_none());
        assert!(frame_caps(&f, CapsKind::DmaBufLegacy).is_none());
        if let Some(drm) = frame_caps(&f, CapsKind::DmaDrm) {
            assert_eq!(
                drm.structure(0).unwrap().get::<&str>("drm-format").unwrap(),
                "NV12:0x0100000000000001"
            );
        }
    }

    #[test]
    fn no_duration_is_a_variable_rate() {
        let mut f = frame(VideoFormat::Bgrx);
        f.duration = u64::MAX;
        let caps = frame_caps(&f, CapsKind::Plain).unwrap();
        assert_eq!(
            caps.structure(0)
                .unwrap()
                .get::<gst::Fraction>("framerate")
                .unwrap(),
            gst::Fraction::new(0, 1)
        );
    }

    #[test]
    fn plane_offsets_count_from_the_buffer_start() {
        let mut f = frame(VideoFormat::Nv12);
        f.n_planes = 2;
        f.offsets = [0, 76800, 0, 0];
        assert_eq!(meta_offsets(&f, &[118784]).unwrap(), vec![0, 76800]);
        // Each plane in a dma-buf of its own: the second starts after the first's whole fd.
        f.plane_fd = [0, 1, 0, 0];
        f.offsets = [0, 64, 0, 0];
        assert_eq!(meta_offsets(&f, &[77824, 40960]).unwrap(), vec![0, 77888]);
        // A plane in an fd the frame does not have.
        f.plane_fd = [0, 2, 0, 0];
        assert!(meta_offsets(&f, &[77824, 40960]).is_none());
    }

    #[test]
    fn fourcc_names() {
        assert_eq!(fourcc_name(u32::from_le_bytes(*b"NV12")), "NV12");
        assert_eq!(fourcc_name(u32::from_le_bytes(*b"R8  ")), "R8  ");
        assert_eq!(fourcc_name(0x8000_0001), "0x80000001");
    }
}
