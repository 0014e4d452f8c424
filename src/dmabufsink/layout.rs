// SPDX-License-Identifier: MPL-2.0
//! Where each plane of a frame lies in its buffer's memories, checked before a client or a
//! DRM framebuffer is told about it: a VideoMeta from upstream is input like any other, and a
//! plane that runs past its memory would send readers past the end of a dma-buf.

use super::protocol::MAX_PLANES;

/// One plane: which of the buffer's memories holds it, where it starts in that memory's data
/// and its stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plane {
    pub memory: usize,
    pub offset: usize,
    pub stride: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("the frame has {0} planes; at most {MAX_PLANES} are supported")]
    TooManyPlanes(usize),
    #[error("plane {plane} starts at byte {offset}, beyond the buffer's {size} bytes")]
    Outside {
        plane: usize,
        offset: usize,
        size: usize,
    },
    #[error("plane {plane}: stride {stride} is negative or shorter than a row of {row} bytes")]
    Stride {
        plane: usize,
        stride: i32,
        row: usize,
    },
    #[error(
        "plane {plane} ({rows} rows of stride {stride} from byte {offset} of its memory) runs \
         past that memory's {size} bytes"
    )]
    Overrun {
        plane: usize,
        rows: usize,
        stride: i32,
        offset: usize,
        size: usize,
    },
}

/// The shortest a row of `plane` can be, and how many rows it has. `None` for tiled formats,
/// whose strides encode tiles rather than bytes.
fn plane_extent(info: &gst_video::VideoInfo, plane: usize) -> Option<(usize, usize)> {
    let finfo = info.format_info();
    if finfo.is_tiled() {
        return None;
    }
    if finfo.has_palette() && plane == 1 {
        return Some((4, 256)); // 256 RGBA entries
    }
    let comp = (0..finfo.n_components() as usize).find(|&c| finfo.plane()[c] as usize == plane)?;
    let rows = finfo.scale_height(comp as u8, info.height()) as usize;
    let pstride = finfo.pixel_stride()[comp];
    let row = if pstride > 0 {
        pstride as usize * finfo.scale_width(comp as u8, info.width()) as usize
    } else {
        // Packings without a whole-byte pixel stride (v210, UYVP, ...): the default row.
        info.stride()[plane].max(0) as usize
    };
    Some((row, rows))
}

/// Checks the planes of a frame of `info` at `offsets` (from the buffer's start) with `strides`
/// against a buffer made of memories of `memory_sizes` bytes, in order. Every row of every
/// plane must lie inside the one memory where the plane starts.
pub fn plane_layout(
    info: &gst_video::VideoInfo,
    offsets: &[usize],
    strides: &[i32],
    memory_sizes: &[usize],
) -> Result<Vec<Plane>, LayoutError> {
    let n = info.n_planes() as usize;
    if n > MAX_PLANES || offsets.len() < n || strides.len() < n {
        return Err(LayoutError::TooManyPlanes(n));
    }
    let total: usize = memory_sizes.iter().sum();
    let mut planes = Vec::with_capacity(n);
    for plane in 0..n {
        let (offset, stride) = (offsets[plane], strides[plane]);
        // The memory holding the plane's first byte.
        let mut start = 0usize;
        let Some((memory, size, in_memory)) =
            memory_sizes.iter().enumerate().find_map(|(i, &size)| {
                let here =
                    (offset >= start && offset - start < size).then(|| (i, size, offset - start));
                start += size;
                here
            })
        else {
            return Err(LayoutError::Outside {
                plane,
                offset,
                size: total,
            });
        };
        if let Some((row, rows)) = plane_extent(info, plane) {
            if stride < 0 || (rows > 1 && (stride as usize) < row) {
                return Err(LayoutError::Stride { plane, stride, row });
            }
            let end = (rows.saturating_sub(1) as u128) * (stride as u128)
                + row as u128
                + in_memory as u128;
            if rows > 0 && end > size as u128 {
                return Err(LayoutError::Overrun {
                    plane,
                    rows,
                    stride,
                    offset: in_memory,
                    size,
                });
            }
        } else if stride < 0 {
            return Err(LayoutError::Stride {
                plane,
                stride,
                row: 0,
            });
        }
        planes.push(Plane {
            memory,
            offset: in_memory,
            stride: stride as u32,
        });
    }
    Ok(planes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gst_video::VideoFormat;

    fn init() {
        gst::init().unwrap();
    }

    /// Every format GStreamer knows that has a memory layout.
    fn formats() -> Vec<VideoFormat> {
        gst_video::VideoFormat::iter_raw()
            .filter(|f| !matches!(f, VideoFormat::Unknown | VideoFormat::Encoded))
            .collect()
    }

    /// An independent check: walks every row of every plane byte range by byte range.
    fn fits(
        info: &gst_video::VideoInfo,
        offsets: &[usize],
        strides: &[i32],
        sizes: &[usize],
    ) -> bool {
        let mut bounds = Vec::new();
        let mut start = 0;
        for &s in sizes {
            bounds.push((start, start + s));
            start += s;
        }
        (0..info.n_planes() as usize).all(|p| {
            let Some(&(lo, hi)) = bounds
                .iter()
                .find(|(lo, hi)| offsets[p] >= *lo && offsets[p] < *hi)
            else {
                return false;
            };
            let _ = lo;
            match plane_extent(info, p) {
                None => strides[p] >= 0,
                Some((row, rows)) => {
                    strides[p] >= 0
                        && (rows <= 1 || strides[p] as usize >= row)
                        && (0..rows).all(|y| offsets[p] + y * strides[p] as usize + row <= hi)
                }
            }
        })
    }

    #[test]
    fn the_default_layout_of_every_format_fits() {
        let sizes = [(1, 1), (2, 2), (64, 48), (321, 241), (1920, 1080)];
        for info in crate::formats::video_infos(&sizes) {
            let offsets: Vec<usize> = info.offset().to_vec();
            let strides: Vec<i32> = info.stride().to_vec();
            let planes =
                plane_layout(&info, &offsets, &strides, &[info.size()]).unwrap_or_else(|e| {
                    panic!(
                        "{:?} {}x{}: {e}",
                        info.format(),
                        info.width(),
                        info.height()
                    )
                });
            assert_eq!(planes.len(), info.n_planes() as usize);
        }
    }

    #[test]
    fn random_layouts_are_refused_exactly_when_a_row_leaves_its_memory() {
        init();
        let mut next = crate::xorshift();
        let formats = formats();
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let format = formats[(next() % formats.len() as u64) as usize];
            let (w, h) = (1 + (next() % 200) as u32, 1 + (next() % 120) as u32);
            let Ok(info) = gst_video::VideoInfo::builder(format, w, h).build() else {
                continue;
            };
            let n = info.n_planes() as usize;
            let mut offsets: Vec<usize> = info.offset().to_vec();
            let mut strides: Vec<i32> = info.stride().to_vec();
            let mut sizes = vec![info.size()];
            match next() % 5 {
                0 => {} // as GStreamer lays it out
                1 => {
                    let p = (next() % n as u64) as usize;
                    strides[p] = strides[p].wrapping_add((next() % 64) as i32 - 32);
                }
                2 => {
                    let p = (next() % n as u64) as usize;
                    offsets[p] =
                        offsets[p].wrapping_add((next() % 4096) as usize) % (info.size() * 2 + 1);
                }
                3 => sizes[0] = (next() % (info.size() as u64 + 1)) as usize,
                _ => {
                    // Split at a random byte into two memories.
                    let cut = (next() % (info.size() as u64 + 1)) as usize;
                    sizes = vec![cut, info.size() - cut];
                }
            }
            let got = plane_layout(&info, &offsets, &strides, &sizes);
            let expect = fits(&info, &offsets, &strides, &sizes);
            assert_eq!(
                got.is_ok(),
                expect,
                "{format:?} {w}x{h} offsets {offsets:?} strides {strides:?} sizes {sizes:?}: {got:?}"
            );
            if got.is_ok() {
                accepted += 1
            } else {
                refused += 1
            }
        }
        assert!(
            accepted > 5_000 && refused > 2_000,
            "{accepted} accepted, {refused} refused"
        );
    }
}
