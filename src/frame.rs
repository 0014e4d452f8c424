// SPDX-License-Identifier: MPL-2.0
//! Where a frame's planes lie in its buffer: the one rule every element applies (its
//! VideoMeta, else the caps' default layout).

/// A frame's layout: what its VideoMeta says, else the default layout of its caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameLayout {
    pub flags: gst_video::VideoFrameFlags,
    pub format: gst_video::VideoFormat,
    pub width: u32,
    pub height: u32,
    pub offsets: Vec<usize>,
    pub strides: Vec<i32>,
}

impl FrameLayout {
    /// The layout of `buffer`: its VideoMeta's, else `info`'s default one; `None` when the
    /// buffer has no VideoMeta and no caps are known.
    pub fn of(buffer: &gst::BufferRef, info: Option<&gst_video::VideoInfo>) -> Option<Self> {
        match buffer.meta::<gst_video::VideoMeta>() {
            Some(m) => Some(FrameLayout {
                flags: m.video_frame_flags(),
                format: m.format(),
                width: m.width(),
                height: m.height(),
                offsets: m.offset().to_vec(),
                strides: m.stride().to_vec(),
            }),
            None => info.map(|i| FrameLayout {
                flags: gst_video::VideoFrameFlags::empty(),
                format: i.format(),
                width: i.width(),
                height: i.height(),
                offsets: i.offset().to_vec(),
                strides: i.stride().to_vec(),
            }),
        }
    }

    /// Adds a VideoMeta describing this layout to `buffer`.
    pub fn add_meta(&self, buffer: &mut gst::BufferRef) -> Result<(), gst::glib::BoolError> {
        gst_video::VideoMeta::add_full(
            buffer,
            self.flags,
            self.format,
            self.width,
            self.height,
            &self.offsets,
            &self.strides,
        )
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_meta_wins_over_the_caps_layout() {
        gst::init().unwrap();
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Nv12, 64, 48)
            .build()
            .unwrap();
        let mut buffer = gst::Buffer::with_size(8192).unwrap();
        let default = FrameLayout::of(&buffer, Some(&info)).unwrap();
        assert_eq!(default.offsets, [0, 64 * 48]);
        assert_eq!(default.strides, [64, 64]);
        assert_eq!(FrameLayout::of(&buffer, None), None);
        let padded = FrameLayout {
            offsets: vec![0, 128 * 48],
            strides: vec![128, 128],
            ..default
        };
        padded.add_meta(buffer.get_mut().unwrap()).unwrap();
        assert_eq!(FrameLayout::of(&buffer, Some(&info)), Some(padded));
    }
}
