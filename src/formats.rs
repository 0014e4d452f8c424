// SPDX-License-Identifier: MPL-2.0
//! GStreamer video formats <-> DRM fourccs, and the caps every element of this plugin speaks:
//! `video/x-raw(memory:DMABuf), format=DMA_DRM, drm-format=<FOURCC>` on GStreamer >= 1.24
//! (detected at run time), the legacy `video/x-raw(memory:DMABuf), format=<FORMAT>`, and plain
//! `video/x-raw` carrying dma-buf memory (what 1.22-era kmssink and v4l2 elements accept).
//!
//! Every raw format the running GStreamer knows goes through: formats with a DRM fourcc in
//! all three forms, the others (no fourcc, e.g. 4:4:4 10-bit or tiled layouts) in the legacy
//! and plain forms, so inserting vmemexport never makes a pipeline fail to negotiate.

use std::sync::LazyLock;

use drm_fourcc::DrmFourcc;
use gst_video::VideoFormat;

/// The caps feature of dma-buf memory.
pub(crate) const CAPS_FEATURE_DMABUF: &gst::glib::GStr = gst_allocators::CAPS_FEATURE_MEMORY_DMABUF;

/// Formats with a DRM fourcc where GStreamer has no mapping of its own (1.22): the formats
/// 1.24's video-info-dma.c maps, and GRAY8 (1.26). From 1.24 on GStreamer's mapping is used
/// (the VM suite checks that on 1.26 and 1.28).
/// Linear only: a linear buffer's drm-format is the fourcc alone ("NV12");
/// "NV12:0x0000000000000000" is rejected by GStreamer's parser.
const TABLE: &[(VideoFormat, DrmFourcc)] = &[
    (VideoFormat::Nv12, DrmFourcc::Nv12),
    (VideoFormat::Nv21, DrmFourcc::Nv21),
    (VideoFormat::I420, DrmFourcc::Yuv420),
    (VideoFormat::Yv12, DrmFourcc::Yvu420),
    (VideoFormat::Nv16, DrmFourcc::Nv16),
    (VideoFormat::Nv61, DrmFourcc::Nv61),
    (VideoFormat::Nv24, DrmFourcc::Nv24),
    (VideoFormat::Y42b, DrmFourcc::Yuv422),
    (VideoFormat::Y444, DrmFourcc::Yuv444),
    (VideoFormat::Yuy2, DrmFourcc::Yuyv),
    (VideoFormat::Yvyu, DrmFourcc::Yvyu),
    (VideoFormat::Uyvy, DrmFourcc::Uyvy),
    (VideoFormat::Vyuy, DrmFourcc::Vyuy),
    (VideoFormat::Bgrx, DrmFourcc::Xrgb8888),
    (VideoFormat::Bgra, DrmFourcc::Argb8888),
    (VideoFormat::Rgbx, DrmFourcc::Xbgr8888),
    (VideoFormat::Rgba, DrmFourcc::Abgr8888),
    (VideoFormat::Xrgb, DrmFourcc::Bgrx8888),
    (VideoFormat::Argb, DrmFourcc::Bgra8888),
    (VideoFormat::Xbgr, DrmFourcc::Rgbx8888),
    (VideoFormat::Abgr, DrmFourcc::Rgba8888),
    (VideoFormat::Rgb, DrmFourcc::Bgr888),
    (VideoFormat::Bgr, DrmFourcc::Rgb888),
    (VideoFormat::Rgb16, DrmFourcc::Rgb565),
    (VideoFormat::Bgr16, DrmFourcc::Bgr565),
    (VideoFormat::Gray8, DrmFourcc::R8),
    (VideoFormat::P01010le, DrmFourcc::P010),
    (VideoFormat::P012Le, DrmFourcc::P012),
    (VideoFormat::Vuya, DrmFourcc::Ayuv),
    (VideoFormat::Yuv9, DrmFourcc::Yuv410),
    (VideoFormat::Yvu9, DrmFourcc::Yvu410),
    (VideoFormat::Y41b, DrmFourcc::Yuv411),
    (VideoFormat::Y410, DrmFourcc::Y410),
    (VideoFormat::Y412Le, DrmFourcc::Y412),
    (VideoFormat::Y210, DrmFourcc::Y210),
    (VideoFormat::Y212Le, DrmFourcc::Y212),
    (VideoFormat::Bgr10a2Le, DrmFourcc::Argb2101010),
];

/// GStreamer's own mapping, `gst_video_dma_drm_fourcc_from_format` (1.24 and later), looked
/// up at run time: the plugin is built against 1.22, and newer GStreamers map more formats
/// (1.26 GRAY16, NV12_10LE40; 1.28 the 10- and 12-bit planar YUV formats...).
type FourccFromFormat = unsafe extern "C" fn(i32) -> u32;

static GST_MAPPING: LazyLock<Option<FourccFromFormat>> = LazyLock::new(|| {
    // The plugin's own dependency, already loaded; not in the global scope, since GStreamer
    // opens plugins with local binding.
    // SAFETY: dlopen/dlsym with constant NUL-terminated names; RTLD_NOLOAD takes no new
    // reference to a library that is not loaded, and the handle is kept (never closed).
    unsafe {
        let lib = libc::dlopen(
            c"libgstvideo-1.0.so.0".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_NOLOAD,
        );
        if lib.is_null() {
            return None;
        }
        let sym = libc::dlsym(lib, c"gst_video_dma_drm_fourcc_from_format".as_ptr());
        (!sym.is_null()).then(|| std::mem::transmute::<*mut libc::c_void, FourccFromFormat>(sym))
    }
});

/// The DRM fourcc of `format` as a u32: GStreamer's own mapping when the running GStreamer
/// has one, else the table.
fn fourcc_u32(format: VideoFormat) -> Option<u32> {
    use gst::glib::translate::IntoGlib;
    match *GST_MAPPING {
        // SAFETY: `guint32 gst_video_dma_drm_fourcc_from_format (GstVideoFormat)`; it returns
        // DRM_FORMAT_INVALID (0) for formats it does not map.
        Some(map) => Some(unsafe { map(format.into_glib()) }).filter(|&c| c != 0),
        None => TABLE
            .iter()
            .find(|(f, _)| *f == format)
            .map(|(_, c)| *c as u32),
    }
}

/// A format with a DRM fourcc: the kernel's u32 and its spelling in caps.
struct DrmFormat {
    format: VideoFormat,
    fourcc: u32,
    /// The four bytes, blanks included ("R8  "): GStreamer's parser requires exactly four.
    text: &'static str,
}

/// Every format with a DRM fourcc that caps can spell. Fourccs that are not four ASCII bytes
/// (the big-endian flag of GRAY16_BE) have no caps form, so they are not ours.
static DRM_FORMATS: LazyLock<Vec<DrmFormat>> = LazyLock::new(|| {
    formats()
        .filter_map(|format| {
            let fourcc = fourcc_u32(format)?;
            let bytes = fourcc.to_le_bytes();
            let text = std::str::from_utf8(&bytes).ok().filter(|t| t.is_ascii())?;
            Some(DrmFormat {
                format,
                fourcc,
                text: Box::leak(text.to_owned().into_boxed_str()),
            })
        })
        .collect()
});

fn drm_format(format: VideoFormat) -> Option<&'static DrmFormat> {
    DRM_FORMATS.iter().find(|d| d.format == format)
}

/// The DRM fourcc as the kernel's u32 (`fourcc_code(a, b, c, d)`).
pub fn drm_fourcc(format: VideoFormat) -> Option<u32> {
    drm_format(format).map(|d| d.fourcc)
}

/// The GStreamer format of a caps `drm-format` value. Only linear buffers are ours: a value
/// with a modifier suffix (`NV12:0x...`) has none.
pub(crate) fn format_from_drm_str(drm: &str) -> Option<VideoFormat> {
    if drm.contains(':') {
        return None;
    }
    DRM_FORMATS.iter().find(|d| d.text == drm).map(|d| d.format)
}

/// The `drm-format` value for caps: always four characters, blanks included ("R8  ").
pub(crate) fn drm_caps_str(format: VideoFormat) -> Option<&'static str> {
    drm_format(format).map(|d| d.text)
}

/// The formats that have a DRM fourcc (and so a DMA_DRM form).
pub(crate) fn drm_formats() -> impl Iterator<Item = VideoFormat> {
    DRM_FORMATS.iter().map(|d| d.format)
}

/// Every raw video format the running GStreamer knows (`gst_video_formats_raw`, so a newer
/// GStreamer's formats are included even though we build against 1.22): all of them pass
/// through vmemexport, DMA_DRM or not.
pub fn formats() -> impl Iterator<Item = VideoFormat> {
    static ALL: LazyLock<Vec<VideoFormat>> = LazyLock::new(|| {
        use gst::glib::translate::FromGlib;
        let mut len = 0u32;
        // SAFETY: returns a static array of `len` formats owned by GStreamer.
        let raw = unsafe {
            let ptr = gst_video::ffi::gst_video_formats_raw(&mut len);
            if ptr.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(ptr, len as usize)
            }
        };
        let mut all: Vec<VideoFormat> = raw
            .iter()
            // SAFETY: values from GStreamer's own format list.
            .map(|&f| unsafe { VideoFormat::from_glib(f) })
            .filter(|f| !matches!(f.to_str().as_str(), "UNKNOWN" | "ENCODED" | "DMA_DRM"))
            .collect();
        // Ours first, in the table's order (preferred when a peer leaves the choice open).
        all.sort_by_key(|f| {
            TABLE
                .iter()
                .position(|(t, _)| t == f)
                .unwrap_or(TABLE.len())
        });
        all
    });
    ALL.iter().copied()
}

/// Whether the running GStreamer (not the one we built against) knows `format=DMA_DRM` caps.
pub(crate) fn runtime_has_dma_drm() -> bool {
    static HAS: LazyLock<bool> = LazyLock::new(|| {
        let (major, minor, _, _) = gst::version();
        (major, minor) >= (1, 24)
    });
    *HAS
}

fn drm_format_list() -> gst::List {
    gst::List::new(drm_formats().filter_map(drm_caps_str))
}

/// Plain system-memory caps for all our formats.
pub(crate) fn sysmem_caps() -> gst::Caps {
    gst_video::VideoCapsBuilder::new()
        .format_list(formats())
        .build()
}

/// Every way dma-buf video can be described to a peer, in order of preference: DMA_DRM (only
/// when the running GStreamer is >= 1.24), the legacy DMABuf form, then plain `video/x-raw`.
pub(crate) fn dmabuf_caps() -> gst::Caps {
    let mut caps = gst::Caps::new_empty();
    if runtime_has_dma_drm() {
        // The DMA_DRM format is spelled out: VideoFormat::DmaDrm needs the 1.24 API.
        caps.merge(
            gst_video::VideoCapsBuilder::new()
                .features([CAPS_FEATURE_DMABUF])
                .field("format", "DMA_DRM")
                .field("drm-format", drm_format_list())
                .build(),
        );
    }
    caps.merge(
        gst_video::VideoCapsBuilder::new()
            .features([CAPS_FEATURE_DMABUF])
            .format_list(formats())
            .build(),
    );
    caps.merge(sysmem_caps());
    caps
}

/// How a caps structure describes its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapsKind {
    /// `video/x-raw` (system memory, or dma-bufs to elements that check each buffer).
    Plain,
    /// `video/x-raw(memory:DMABuf), format=<FORMAT>` (GStreamer 1.22 and earlier style).
    DmaBufLegacy,
    /// `video/x-raw(memory:DMABuf), format=DMA_DRM, drm-format=<FOURCC>`.
    DmaDrm,
}

pub(crate) fn caps_kind(
    s: &gst::StructureRef,
    features: Option<&gst::CapsFeaturesRef>,
) -> CapsKind {
    let dmabuf = features.is_some_and(|f| f.contains(CAPS_FEATURE_DMABUF));
    if !dmabuf {
        CapsKind::Plain
    } else if s.get::<&str>("format").is_ok_and(|f| f == "DMA_DRM") {
        CapsKind::DmaDrm
    } else {
        CapsKind::DmaBufLegacy
    }
}

/// The video described by fixed caps of any of the three kinds.
pub fn video_info_from_caps(caps: &gst::CapsRef) -> Option<(gst_video::VideoInfo, CapsKind)> {
    let s = caps.structure(0)?;
    let kind = caps_kind(s, caps.features(0));
    let info = if kind == CapsKind::DmaDrm {
        let format = format_from_drm_str(s.get::<&str>("drm-format").ok()?)?;
        let mut plain = caps.to_owned();
        {
            let st = plain.get_mut().unwrap().structure_mut(0).unwrap();
            st.remove_field("drm-format");
            st.set("format", format.to_str());
        }
        plain.get_mut().unwrap().set_features_simple(None);
        gst_video::VideoInfo::from_caps(&plain).ok()?
    } else {
        let mut plain = caps.to_owned();
        plain.get_mut().unwrap().set_features_simple(None);
        gst_video::VideoInfo::from_caps(&plain).ok()?
    };
    Some((info, kind))
}

/// For tests that sweep formats: each of [`formats`] at each of `sizes` it has a frame of
/// (some layouts, tiled or subsampled, have none at some sizes).
#[cfg(test)]
pub(crate) fn video_infos(sizes: &[(u32, u32)]) -> Vec<gst_video::VideoInfo> {
    gst::init().unwrap();
    formats()
        .flat_map(|format| {
            sizes
                .iter()
                .filter_map(move |&(w, h)| gst_video::VideoInfo::builder(format, w, h).build().ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() {
        gst::init().unwrap();
    }

    #[test]
    fn fourccs_round_trip() {
        for f in drm_formats() {
            let s = drm_caps_str(f).unwrap();
            assert_eq!(format_from_drm_str(s), Some(f), "{f:?}");
        }
        assert_eq!(drm_fourcc(VideoFormat::Bgrx), Some(0x3432_5258)); // DRM_FORMAT_XRGB8888
        assert_eq!(drm_fourcc(VideoFormat::Nv12), Some(0x3231_564e));
        assert_eq!(drm_caps_str(VideoFormat::I420), Some("YU12"));
        assert_eq!(drm_caps_str(VideoFormat::Gray8), Some("R8  "));
        assert_eq!(format_from_drm_str("NV12:0x0000000000000000"), None);
        assert_eq!(format_from_drm_str("XXXX"), None);
    }

    #[test]
    fn every_raw_format_is_handled() {
        init();
        let all: Vec<VideoFormat> = formats().collect();
        // GStreamer 1.22 already knows over 100 raw formats; each is in our caps.
        assert!(all.len() > 100, "{}", all.len());
        for f in [
            VideoFormat::Y44410le,
            VideoFormat::I42010le,
            VideoFormat::Nv1264z32,
            VideoFormat::Gray16Le,
            VideoFormat::Bgrx,
        ] {
            assert!(all.contains(&f), "{f:?}");
        }
        assert!(drm_formats().all(|f| all.contains(&f)));
        // Formats with a fourcc come first, in the table's order.
        assert_eq!(all[0], VideoFormat::Nv12);
        let sys = sysmem_caps();
        let list = sys
            .structure(0)
            .unwrap()
            .get::<gst::List>("format")
            .unwrap();
        assert_eq!(list.len(), all.len());
    }

    #[test]
    fn the_issue_list_is_covered() {
        use VideoFormat::*;
        for f in [
            Nv12, I420, Yv12, Nv16, Yuy2, Uyvy, Bgrx, Bgra, Rgbx, Rgba, Xrgb, Argb, Rgb16, Gray8,
            P01010le, P012Le, Y210, Y212Le, Y410, Y412Le, Bgr10a2Le, Vuya, Y41b,
        ] {
            assert!(drm_fourcc(f).is_some(), "{f:?}");
        }
    }

    #[test]
    fn video_info_from_every_kind() {
        init();
        for caps in [
            "video/x-raw, format=BGRx, width=64, height=48, framerate=30/1",
            "video/x-raw(memory:DMABuf), format=BGRx, width=64, height=48, framerate=30/1",
            "video/x-raw(memory:DMABuf), format=DMA_DRM, drm-format=XR24, width=64, height=48, framerate=30/1",
        ] {
            let caps: gst::Caps = caps.parse().unwrap();
            let (info, _) = video_info_from_caps(&caps).unwrap();
            assert_eq!(info.format(), VideoFormat::Bgrx);
            assert_eq!(info.width(), 64);
        }
    }
}
