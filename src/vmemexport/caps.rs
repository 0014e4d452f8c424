// SPDX-License-Identifier: MPL-2.0
//! vmemexport's caps transformation: system-memory caps in, the dma-buf caps it can output
//! (DMA_DRM on GStreamer >= 1.24, the legacy DMABuf form, plain caps), and back.

use gst_video::VideoFormat;

use crate::formats::{
    CAPS_FEATURE_DMABUF, CapsKind, caps_kind, drm_caps_str, drm_formats, format_from_drm_str,
    formats, runtime_has_dma_drm,
};

/// The string values of `field`, a string or a list of them; `None` when it is absent.
fn string_values(s: &gst::StructureRef, field: &str) -> Option<Vec<String>> {
    let v = s.value(field).ok()?;
    Some(if let Ok(f) = v.get::<String>() {
        vec![f]
    } else if let Ok(list) = v.get::<gst::List>() {
        list.iter().filter_map(|v| v.get::<String>().ok()).collect()
    } else {
        Vec::new()
    })
}

/// The raw formats a structure allows (all of them when it says nothing).
fn allowed_formats(s: &gst::StructureRef) -> Vec<VideoFormat> {
    match string_values(s, "format") {
        None => formats().collect(),
        Some(names) => names
            .iter()
            .map(|n| VideoFormat::from_string(n))
            .filter(|f| formats().any(|k| k == *f))
            .collect(),
    }
}

/// The formats of ours a DMA_DRM structure's `drm-format` allows (all when it says nothing).
fn allowed_drm_formats(s: &gst::StructureRef) -> Vec<VideoFormat> {
    match string_values(s, "drm-format") {
        None => drm_formats().collect(),
        Some(names) => names
            .iter()
            .filter_map(|n| format_from_drm_str(n))
            .collect(),
    }
}

fn set_format_field(s: &mut gst::Structure, field: &str, values: Vec<&'static str>) -> bool {
    match values.len() {
        0 => false,
        1 => {
            s.set(field, values[0]);
            true
        }
        _ => {
            s.set(field, gst::List::new(values));
            true
        }
    }
}

/// System-memory caps in -> the dma-buf caps vmemexport can output, most preferred first.
/// Already-DMABuf caps pass through unchanged.
pub fn sysmem_to_dmabuf(caps: &gst::Caps) -> gst::Caps {
    let mut out = gst::Caps::new_empty();
    let outm = out.get_mut().unwrap();
    let mut plain_tail = Vec::new();
    let mut legacy_tail = Vec::new();
    for (s, features) in caps.iter_with_features() {
        if caps_kind(s, Some(features)) != CapsKind::Plain {
            outm.append_structure_full(s.to_owned(), Some(features.to_owned()));
            continue;
        }
        let fmts = allowed_formats(s);
        if runtime_has_dma_drm() {
            let mut drm = s.to_owned();
            drm.set("format", "DMA_DRM");
            if set_format_field(
                &mut drm,
                "drm-format",
                fmts.iter().filter_map(|f| drm_caps_str(*f)).collect(),
            ) {
                outm.append_structure_full(
                    drm,
                    Some(gst::CapsFeatures::new([CAPS_FEATURE_DMABUF])),
                );
            }
        }
        let mut legacy = s.to_owned();
        if set_format_field(
            &mut legacy,
            "format",
            fmts.iter().map(|f| f.to_str().as_str()).collect(),
        ) {
            legacy_tail.push(legacy.clone());
            plain_tail.push(legacy);
        }
    }
    for s in legacy_tail {
        outm.append_structure_full(s, Some(gst::CapsFeatures::new([CAPS_FEATURE_DMABUF])));
    }
    for s in plain_tail {
        outm.append_structure(s);
    }
    out
}

/// Dma-buf caps out -> the caps vmemexport can take in for them: the same video in system
/// memory, or the dma-buf caps themselves (passthrough).
pub fn dmabuf_to_sysmem(caps: &gst::Caps) -> gst::Caps {
    let mut out = gst::Caps::new_empty();
    let outm = out.get_mut().unwrap();
    let mut passthrough = Vec::new();
    for (s, features) in caps.iter_with_features() {
        let kind = caps_kind(s, Some(features));
        let mut sys = s.to_owned();
        match kind {
            CapsKind::DmaDrm => {
                sys.remove_field("drm-format");
                let fmts: Vec<&'static str> = allowed_drm_formats(s)
                    .iter()
                    .map(|f| f.to_str().as_str())
                    .collect();
                if !set_format_field(&mut sys, "format", fmts) {
                    continue;
                }
            }
            CapsKind::DmaBufLegacy | CapsKind::Plain => {}
        }
        outm.append_structure(sys);
        if kind != CapsKind::Plain {
            passthrough.push((s.to_owned(), features.to_owned()));
        }
    }
    for (s, f) in passthrough {
        outm.append_structure_full(s, Some(f));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{dmabuf_caps, drm_fourcc, sysmem_caps, video_info_from_caps};

    fn init() {
        gst::init().unwrap();
    }

    /// `caps` parsed, what vmemexport offers for it, and the kinds of what it offers in order.
    fn to_dmabuf(caps: &str) -> (gst::Caps, gst::Caps, Vec<CapsKind>) {
        let caps: gst::Caps = caps.parse().unwrap();
        let out = sysmem_to_dmabuf(&caps);
        let kinds = out
            .iter_with_features()
            .map(|(s, f)| caps_kind(s, Some(f)))
            .collect();
        (caps, out, kinds)
    }

    #[test]
    fn formats_without_a_fourcc_leave_as_legacy_dmabuf_and_plain() {
        init();
        // Which formats have a fourcc depends on the running GStreamer (1.28 maps Y444_10LE):
        // take one that has none here.
        let format = [VideoFormat::V210, VideoFormat::Iyu2, VideoFormat::Y44410le]
            .into_iter()
            .find(|f| drm_fourcc(*f).is_none())
            .expect("a format without a DRM fourcc");
        let (caps, out, kinds) = to_dmabuf(&format!(
            "video/x-raw, format={}, width=320, height=240",
            format.to_str()
        ));
        assert_eq!(kinds, [CapsKind::DmaBufLegacy, CapsKind::Plain]);
        assert!(dmabuf_caps().can_intersect(&out));
        assert!(sysmem_caps().can_intersect(&caps));
    }

    #[test]
    fn sysmem_becomes_dmabuf_preferred_first() {
        init();
        let (_, out, kinds) = to_dmabuf("video/x-raw, format=NV12, width=320, height=240");
        if runtime_has_dma_drm() {
            assert_eq!(
                kinds,
                [CapsKind::DmaDrm, CapsKind::DmaBufLegacy, CapsKind::Plain]
            );
            assert_eq!(
                out.structure(0).unwrap().get::<&str>("drm-format").unwrap(),
                "NV12"
            );
        } else {
            assert_eq!(kinds, [CapsKind::DmaBufLegacy, CapsKind::Plain]);
        }
        let legacy = out
            .iter_with_features()
            .find(|(s, f)| caps_kind(s, Some(f)) == CapsKind::DmaBufLegacy)
            .unwrap();
        assert_eq!(legacy.0.get::<&str>("format").unwrap(), "NV12");
        assert_eq!(legacy.0.get::<i32>("width").unwrap(), 320);
    }

    #[test]
    fn dma_drm_maps_back_to_sysmem() {
        init();
        let caps: gst::Caps = "video/x-raw(memory:DMABuf), format=DMA_DRM, drm-format={ XR24, YU12, NV12:0x0100000000000002 }, width=64, height=48"
            .parse()
            .unwrap();
        let back = dmabuf_to_sysmem(&caps);
        let s = back.structure(0).unwrap();
        assert!(
            back.features(0).unwrap().is_any()
                || !back.features(0).unwrap().contains(CAPS_FEATURE_DMABUF)
        );
        let formats: Vec<String> = s
            .get::<gst::List>("format")
            .unwrap()
            .iter()
            .map(|v| v.get::<String>().unwrap())
            .collect();
        assert_eq!(formats, ["BGRx", "I420"]);
        assert!(!s.has_field("drm-format"));
        // and the DMABuf caps themselves, for passthrough
        assert_eq!(
            caps_kind(back.structure(1).unwrap(), back.features(1)),
            CapsKind::DmaDrm
        );
    }

    /// For every format, size and caps kind: system caps map to dma-buf caps that map back to
    /// caps containing the original, and the video described is the same.
    #[test]
    fn caps_mappings_round_trip_for_every_format_and_size() {
        let sizes = [(1, 1), (2, 2), (321, 241), (1920, 1080), (8192, 4320)];
        for info in crate::formats::video_infos(&sizes) {
            let (format, w, h) = (info.format(), info.width(), info.height());
            let sys = info.to_caps().unwrap();
            let dma = sysmem_to_dmabuf(&sys);
            assert!(!dma.is_empty(), "{format:?}");
            for (s, f) in dma.iter_with_features() {
                let one = gst::Caps::builder_full_with_features(f.to_owned())
                    .structure(s.to_owned())
                    .build();
                let (info, _) = video_info_from_caps(&one).unwrap_or_else(|| panic!("{one}"));
                assert_eq!(
                    (info.format(), info.width(), info.height()),
                    (format, w, h),
                    "{one}"
                );
                let back = dmabuf_to_sysmem(&one);
                assert!(back.can_intersect(&sys), "{one} -> {back} lost {sys}");
            }
        }
    }
}
