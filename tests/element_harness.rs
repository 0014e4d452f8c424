// SPDX-License-Identifier: MPL-2.0
//! vmemexport's own logic on any machine, under `gst_check::Harness`: caps negotiation, the
//! ALLOCATION query, zero-copy export of its pool, passthrough, the copy fallback, strict
//! mode and `stats`.
//!
//! The element runs with a fake udmabuf (`vmemexport::use_fake_udmabuf`): its "dma-bufs" are
//! the pool's memfds themselves, and it has no dma-heap and no vmemexp, on the build host and
//! in the VM alike. What that can show: which memory leaves (dma-buf memory of the very file
//! upstream wrote, or of a copy), its bytes, metas and caps, and the counters. What it cannot:
//! that a kernel exports the pages or that devices import them, nor cache maintenance
//! (`DMA_BUF_IOCTL_SYNC` fails on a memfd, so `syncs` stays 0 here); the VM suite proves
//! those against the real kernel.

mod common;

use gst::prelude::*;
use gst_base::prelude::*;
use gst_check::Harness;

const WIDTH: u32 = 64;
const HEIGHT: u32 = 48;

fn info() -> gst_video::VideoInfo {
    gst_video::VideoInfo::builder(gst_video::VideoFormat::Bgrx, WIDTH, HEIGHT)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .unwrap()
}

fn plain_caps() -> gst::Caps {
    info().to_caps().unwrap()
}

/// A vmemexport with the fake udmabuf and `properties`, its messages on the returned bus, in
/// a harness that plays it.
fn harness(properties: &[(&str, &dyn ToValue)]) -> (Harness, gst::Element, gst::Bus) {
    common::init();
    let mut builder = gst::ElementFactory::make("vmemexport");
    for (name, value) in properties {
        builder = builder.property(name, value.to_value());
    }
    let element = builder.build().unwrap();
    gstvmem::vmemexport::use_fake_udmabuf(element.downcast_ref().unwrap());
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    let harness = Harness::with_element(&element, Some("sink"), Some("src"));
    (harness, element, bus)
}

/// The harness's own caps set on vmemexport's input, and the buffer pool vmemexport proposes
/// for them (what an application or a producer asks for), active.
fn negotiate_pool(h: &mut Harness) -> gst::BufferPool {
    h.set_src_caps(plain_caps());
    let pool = allocation_query(h, &plain_caps(), true)
        .pool()
        .expect("vmemexport proposes a pool");
    pool.set_active(true).unwrap();
    pool
}

/// [`harness`] with its input negotiated and the pool it proposes, active.
fn pooled_harness(
    properties: &[(&str, &dyn ToValue)],
) -> (Harness, gst::Element, gst::Bus, gst::BufferPool) {
    let (mut h, element, bus) = harness(properties);
    let pool = negotiate_pool(&mut h);
    (h, element, bus, pool)
}

/// Pushes `frame` into vmemexport and returns what leaves it.
fn pass(h: &mut Harness, frame: gst::Buffer) -> gst::Buffer {
    h.push(frame).unwrap();
    h.pull().unwrap()
}

/// vmemexport's answer to an upstream ALLOCATION query.
struct Proposal {
    /// (pool, size, min, max) of each pool proposed.
    pools: Vec<(Option<gst::BufferPool>, u32, u32, u32)>,
    allocators: Vec<Option<gst::Allocator>>,
    video_meta: bool,
}

impl Proposal {
    fn pool(&self) -> Option<gst::BufferPool> {
        self.pools.first().and_then(|(p, ..)| p.clone())
    }

    fn allocator(&self) -> Option<gst::Allocator> {
        self.allocators.first().cloned().flatten()
    }
}

fn allocation_query(h: &Harness, caps: &gst::Caps, need_pool: bool) -> Proposal {
    let mut query = gst::query::Allocation::new(Some(caps), need_pool);
    assert!(
        h.srcpad().unwrap().peer_query(&mut query),
        "ALLOCATION query for {caps} refused"
    );
    Proposal {
        pools: query.allocation_pools().collect(),
        allocators: query.allocation_params().map(|(a, _)| a).collect(),
        video_meta: query
            .find_allocation_meta::<gst_video::VideoMeta>()
            .is_some(),
    }
}

/// A frame of `pool` whose bytes are `fill(i)`, stamped with `pts` seconds.
fn pool_frame(pool: &gst::BufferPool, pts: u64, fill: impl Fn(usize) -> u8) -> gst::Buffer {
    let mut buffer = pool.acquire_buffer(None).unwrap();
    {
        let b = buffer.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_seconds(pts));
        b.set_duration(gst::ClockTime::from_mseconds(33));
        let mut map = b.map_writable().unwrap();
        for (i, byte) in map.iter_mut().enumerate() {
            *byte = fill(i);
        }
    }
    buffer
}

/// A frame in plain system memory (not from vmemexport's pool): what a producer that ignores
/// the proposal hands over.
fn system_frame(fill: impl Fn(usize) -> u8) -> gst::Buffer {
    let bytes: Vec<u8> = (0..info().size()).map(fill).collect();
    gst::Buffer::from_mut_slice(bytes)
}

fn pattern(seed: u8) -> impl Fn(usize) -> u8 {
    move |i| (i as u8).wrapping_mul(31).wrapping_add(seed)
}

fn bytes_of(buffer: &gst::BufferRef) -> Vec<u8> {
    buffer.map_readable().unwrap().to_vec()
}

/// The memory's fd opened anew through /proc (fd and dma-buf memory alike): a file of its own
/// on the same inode, so the test holds no borrowed fd.
fn file_of(mem: &gst::MemoryRef) -> std::fs::File {
    let fd = mem
        .downcast_memory_ref::<gst_allocators::FdMemory>()
        .expect("fd memory")
        .fd();
    std::fs::File::open(format!("/proc/self/fd/{fd}")).unwrap()
}

/// The file (inode) behind a memory's fd: the same for the fake's export of a memfd and the
/// memfd itself, another for a copy.
fn inode(mem: &gst::MemoryRef) -> u64 {
    use std::os::unix::fs::MetadataExt;
    file_of(mem).metadata().unwrap().ino()
}

fn is_dmabuf(mem: &gst::MemoryRef) -> bool {
    mem.downcast_memory_ref::<gst_allocators::DmaBufMemory>()
        .is_some()
}

fn stats(element: &gst::Element) -> gst::Structure {
    element.property::<gst::Structure>("stats")
}

fn stat(element: &gst::Element, field: &str) -> u64 {
    common::stat(element, field)
}

/// Asserts `stats` counters, showing the whole structure when one differs.
fn assert_stats(element: &gst::Element, expected: &[(&str, u64)]) {
    let s = stats(element);
    for (field, value) in expected {
        assert_eq!(s.get::<u64>(*field).unwrap(), *value, "{field} in {s}");
    }
}

fn copy_reason(element: &gst::Element, reason: &str) -> u64 {
    stats(element)
        .get::<gst::Structure>("copy-reasons")
        .unwrap()
        .get::<u64>(reason)
        .unwrap()
}

/// Warnings and errors posted so far: (is_error, text and debug).
fn messages(bus: &gst::Bus) -> Vec<(bool, String)> {
    std::iter::from_fn(|| bus.pop())
        .filter_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some((
                false,
                format!("{} ({})", w.error(), w.debug().unwrap_or_default()),
            )),
            gst::MessageView::Error(e) => Some((
                true,
                format!("{} ({})", e.error(), e.debug().unwrap_or_default()),
            )),
            _ => None,
        })
        .collect()
}

fn output_caps(h: &Harness) -> gst::Caps {
    h.sinkpad().unwrap().current_caps().expect("output caps")
}

/// The caps and buffer a pool frame leaves vmemexport with, downstream accepting `downstream`
/// caps (anything if None).
fn first_output(downstream: Option<&str>) -> (gst::Caps, gst::Buffer) {
    let (mut h, _element, _bus) = harness(&[]);
    if let Some(caps) = downstream {
        h.set_sink_caps_str(caps);
    }
    let pool = negotiate_pool(&mut h);
    let out = pass(&mut h, pool_frame(&pool, 0, pattern(1)));
    (output_caps(&h), out)
}

#[test]
fn plain_caps_in_leave_as_dmabuf_caps() {
    let (caps, _out) = first_output(None);
    let s = caps.structure(0).unwrap();
    assert!(
        caps.features(0)
            .unwrap()
            .contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF),
        "{caps}"
    );
    assert_eq!(s.get::<i32>("width").unwrap(), WIDTH as i32, "{caps}");
    assert_eq!(s.get::<i32>("height").unwrap(), HEIGHT as i32, "{caps}");
    assert_eq!(
        s.get::<gst::Fraction>("framerate").unwrap(),
        gst::Fraction::new(30, 1)
    );
    // Downstream accepting anything gets the preferred form: DMA_DRM where GStreamer has it
    // (1.24+: the VM suite's 1.26 and 1.28), the legacy form on 1.22 (the build host).
    if common::gst_version() >= (1, 24) {
        assert_eq!(s.get::<&str>("format").unwrap(), "DMA_DRM", "{caps}");
        assert_eq!(s.get::<&str>("drm-format").unwrap(), "XR24", "{caps}");
    } else {
        assert_eq!(s.get::<&str>("format").unwrap(), "BGRx", "{caps}");
        assert!(!s.has_field("drm-format"), "{caps}");
    }
}

#[test]
fn legacy_dmabuf_caps_are_negotiated_on_every_version() {
    let (caps, out) = first_output(Some("video/x-raw(memory:DMABuf), format=BGRx"));
    let expected = gst::Caps::builder("video/x-raw")
        .features([gst_allocators::CAPS_FEATURE_MEMORY_DMABUF])
        .field("format", "BGRx")
        .field("width", WIDTH as i32)
        .field("height", HEIGHT as i32)
        .build();
    assert!(caps.is_subset(&expected), "{caps}");
    assert!(is_dmabuf(out.peek_memory(0)));
}

#[test]
fn downstream_taking_plain_caps_still_gets_dmabuf_memory() {
    // 1.22's kmssink and V4L2 elements: plain caps, each buffer's memory checked.
    let (caps, out) = first_output(Some("video/x-raw"));
    assert!(
        caps.features(0)
            .unwrap()
            .is_equal(gst::CapsFeatures::new_empty().as_ref())
            || caps.features(0).unwrap().contains("memory:SystemMemory"),
        "{caps}"
    );
    assert_eq!(
        caps.structure(0).unwrap().get::<&str>("format").unwrap(),
        "BGRx"
    );
    assert!(is_dmabuf(out.peek_memory(0)));
}

#[test]
fn upstream_is_offered_plain_caps_for_dmabuf_downstream() {
    let (mut h, element, _bus) = harness(&[]);
    h.set_sink_caps_str("video/x-raw(memory:DMABuf), format=NV12, width=320, height=240");
    let upstream = element.static_pad("sink").unwrap().query_caps(None);
    let plain = gst::Caps::builder("video/x-raw")
        .field("format", "NV12")
        .field("width", 320)
        .field("height", 240)
        .build();
    assert!(upstream.can_intersect(&plain), "{upstream}");
    let bgrx = gst::Caps::builder("video/x-raw")
        .field("format", "BGRx")
        .build();
    assert!(!upstream.can_intersect(&bgrx), "{upstream}");
}

#[test]
fn allocation_query_proposes_one_memfd_pool_per_caps() {
    let (mut h, _element, _bus) = harness(&[]);
    h.set_src_caps(plain_caps());
    let proposal = allocation_query(&h, &plain_caps(), true);
    let pool = proposal.pool().expect("a pool");
    let allocator = proposal.allocator().expect("an allocator");
    assert_eq!(allocator.type_().name(), "GstVmemMemfdAllocator");
    assert_eq!(proposal.pools.len(), 1);
    let (_, size, min, max) = proposal.pools[0];
    assert_eq!(size as usize, info().size());
    assert_eq!((min, max), (0, 0), "allocated on demand, grows as needed");
    assert!(proposal.video_meta, "VideoMeta asked for");
    let config = pool.config();
    assert!(config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META));
    let (pool_allocator, _) = config.allocator().unwrap();
    assert_eq!(pool_allocator.as_ref(), Some(&allocator));
    let (pool_caps, pool_size, ..) = config.params().unwrap();
    assert_eq!(pool_caps.as_ref(), Some(&plain_caps()));
    assert_eq!(pool_size as usize, info().size());

    // Its buffers: one memfd each, from offset 0, sealed as udmabuf needs, with VideoMeta.
    pool.set_active(true).unwrap();
    let buffer = pool.acquire_buffer(None).unwrap();
    assert_eq!(buffer.n_memory(), 1);
    let mem = buffer.peek_memory(0);
    assert_eq!(mem.offset(), 0);
    let seals = rustix::fs::fcntl_get_seals(file_of(mem)).unwrap();
    assert!(
        seals.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW),
        "{seals:?}"
    );
    assert!(buffer.meta::<gst_video::VideoMeta>().is_some());
    drop(buffer);

    // The same caps again (a decoder renegotiating): the same pool and allocator, so buffers
    // and their exports are reused.
    let again = allocation_query(&h, &plain_caps(), true);
    assert_eq!(again.pool().as_ref(), Some(&pool));
    assert_eq!(again.allocator().as_ref(), Some(&allocator));
    // Other caps: another pool.
    let small = gst_video::VideoInfo::builder(gst_video::VideoFormat::Nv12, 32, 32)
        .build()
        .unwrap();
    let other = allocation_query(&h, &small.to_caps().unwrap(), true);
    assert!(other.pool().is_some_and(|p| p != pool));
    assert_eq!(other.pools[0].1 as usize, small.size());
    // No pool asked for (the harness's own query): the allocator alone.
    let allocator_only = allocation_query(&h, &plain_caps(), false);
    assert!(allocator_only.pools.is_empty());
    assert_eq!(
        allocator_only.allocator().unwrap().type_().name(),
        "GstVmemMemfdAllocator"
    );
    pool.set_active(false).unwrap();
}

#[test]
fn propose_pool_false_proposes_no_pool_and_not_downstreams() {
    let (mut h, _element, _bus) = harness(&[("propose-pool", &false)]);
    h.set_src_caps(plain_caps());
    let proposal = allocation_query(&h, &plain_caps(), true);
    assert!(proposal.pools.is_empty());
    assert!(proposal.allocator().is_none());
    assert!(proposal.video_meta);
}

#[test]
fn pool_frames_leave_as_dmabufs_of_the_same_pages() {
    let (mut h, element, bus, pool) = pooled_harness(&[]);

    let frame = pool_frame(&pool, 7, pattern(3));
    let written = bytes_of(&frame);
    let in_inode = inode(frame.peek_memory(0));
    let in_mem = frame.peek_memory(0).as_ptr();
    let out = pass(&mut h, frame);

    assert_eq!(out.n_memory(), 1);
    let mem = out.peek_memory(0);
    assert!(is_dmabuf(mem), "dma-buf memory out");
    assert_ne!(mem.as_ptr(), in_mem, "a dma-buf memory of its own");
    // The export is of the file upstream wrote into: no copy.
    assert_eq!(inode(mem), in_inode);
    assert_eq!(mem.size(), info().size());
    assert_eq!(mem.offset(), 0);
    assert_eq!(mem.maxsize() as u64 % gstvmem::kernel::page_size(), 0);
    assert_eq!(bytes_of(&out), written);
    assert_eq!(out.pts(), Some(gst::ClockTime::from_seconds(7)));
    assert_eq!(out.duration(), Some(gst::ClockTime::from_mseconds(33)));
    let meta = out.meta::<gst_video::VideoMeta>().expect("VideoMeta out");
    assert_eq!(meta.stride(), info().stride());
    assert_eq!(meta.offset(), info().offset());
    let first_export = mem.as_ptr();
    drop(out);

    assert_stats(
        &element,
        &[
            ("frames", 1),
            ("exported", 1),
            ("export-cache-hits", 0),
            ("copies", 0),
            ("passthrough", 0),
            // The fake's fds are memfds: DMA_BUF_IOCTL_SYNC fails on them, uncounted.
            ("syncs", 0),
        ],
    );

    // Released frames come back from the pool with their export: the same dma-buf memory
    // leaves again (importers cache per memory), no new export.
    for pts in 8..14 {
        let out = pass(&mut h, pool_frame(&pool, pts, pattern(pts as u8)));
        assert_eq!(out.peek_memory(0).as_ptr(), first_export);
        assert_eq!(bytes_of(&out), bytes_of(&system_frame(pattern(pts as u8))));
    }
    assert_stats(
        &element,
        &[
            ("frames", 7),
            ("exported", 1),
            ("export-cache-hits", 6),
            ("copies", 0),
        ],
    );
    assert!(messages(&bus).is_empty());
}

#[test]
fn frames_held_downstream_get_exports_of_their_own() {
    let (mut h, element, _bus, pool) = pooled_harness(&[]);
    // Downstream holds every frame: the pool grows, one export per buffer.
    let outs: Vec<gst::Buffer> = (0..4)
        .map(|i| pass(&mut h, pool_frame(&pool, i, pattern(i as u8))))
        .collect();
    let inodes: std::collections::HashSet<u64> =
        outs.iter().map(|b| inode(b.peek_memory(0))).collect();
    assert_eq!(inodes.len(), 4);
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(bytes_of(out), bytes_of(&system_frame(pattern(i as u8))));
    }
    assert_stats(&element, &[("exported", 4), ("export-cache-hits", 0)]);
}

#[test]
fn foreign_memory_is_copied_counted_and_warned_once() {
    let (mut h, element, bus) = harness(&[]);
    h.set_src_caps(plain_caps());
    for seed in 0..3 {
        let out = pass(&mut h, system_frame(pattern(seed)));
        assert!(is_dmabuf(out.peek_memory(0)));
        // The copy lands in vmemexport's own memfds, and leaves as their export.
        let fd = out
            .peek_memory(0)
            .downcast_memory_ref::<gst_allocators::FdMemory>()
            .unwrap()
            .fd();
        let file = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert!(
            file.to_string_lossy().starts_with("/memfd:vmemexport"),
            "{file:?}"
        );
        assert_eq!(bytes_of(&out), bytes_of(&system_frame(pattern(seed))));
    }
    assert_stats(
        &element,
        &[
            ("frames", 3),
            ("copies", 3),
            ("bytes-copied", 3 * info().size() as u64),
        ],
    );
    assert_eq!(copy_reason(&element, "foreign-memory"), 3);
    assert!(stat(&element, "exported") >= 1);
    assert_eq!(
        stat(&element, "exported") + stat(&element, "export-cache-hits"),
        3
    );
    let warnings = messages(&bus);
    assert_eq!(warnings.len(), 1, "one warning per reason: {warnings:?}");
    let (is_error, text) = &warnings[0];
    assert!(!is_error);
    assert!(
        text.contains("Copying frames into dma-buf memory"),
        "{text}"
    );
    assert!(
        text.contains("not from the pool vmemexport proposes"),
        "{text}"
    );
    assert!(text.contains("no vmemexp"), "{text}");

    // Another reason is warned about too: a frame in two memories.
    let mut split = system_frame(pattern(9));
    {
        let split = split.get_mut().unwrap();
        let all = split.map_readable().unwrap().to_vec();
        let half = all.len() / 2;
        split.remove_all_memory();
        split.append_memory(gst::Memory::from_mut_slice(all[..half].to_vec()));
        split.append_memory(gst::Memory::from_mut_slice(all[half..].to_vec()));
    }
    let out = pass(&mut h, split);
    assert_eq!(bytes_of(&out), bytes_of(&system_frame(pattern(9))));
    assert_eq!(copy_reason(&element, "memory-count"), 1);
    assert_eq!(stat(&element, "copies"), 4);
    let warnings = messages(&bus);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].1.contains("2 memories"), "{warnings:?}");
}

#[test]
fn strict_mode_refuses_the_copy_with_an_error() {
    let (mut h, element, bus, pool) = pooled_harness(&[("copy-fallback", &false)]);
    // Zero-copy frames still pass.
    assert!(is_dmabuf(
        pass(&mut h, pool_frame(&pool, 0, pattern(1))).peek_memory(0)
    ));

    assert_eq!(h.push(system_frame(pattern(2))), Err(gst::FlowError::Error));
    assert!(
        h.try_pull().is_none(),
        "nothing leaves for the refused frame"
    );
    let posted = messages(&bus);
    assert_eq!(posted.len(), 1, "{posted:?}");
    let (is_error, text) = &posted[0];
    assert!(is_error);
    assert!(text.contains("Zero-copy is impossible"), "{text}");
    assert!(text.contains("copy-fallback=false"), "{text}");
    // Counted, though not copied.
    assert_stats(
        &element,
        &[("frames", 2), ("copies", 0), ("bytes-copied", 0)],
    );
}

/// A buffer of dma-buf memory: the output of another vmemexport with the fake.
fn dmabuf_frame(seed: u8) -> gst::Buffer {
    let (mut h, _element, _bus, pool) = pooled_harness(&[]);
    let out = pass(&mut h, pool_frame(&pool, 0, pattern(seed)));
    assert!(is_dmabuf(out.peek_memory(0)));
    out
}

/// Pushes the first frame of dma-buf memory (`dmabuf_frame(seed)`) into a fresh `element`
/// and asserts it leaves as the very buffer that arrived, its bytes untouched, counted as
/// passed through and nothing else.
fn assert_passes_through(h: &mut Harness, element: &gst::Element, seed: u8) {
    let frame = dmabuf_frame(seed);
    let ptr = frame.as_ptr();
    let out = pass(h, frame);
    assert_eq!(out.as_ptr(), ptr, "the very buffer that arrived");
    assert!(is_dmabuf(out.peek_memory(0)));
    assert_eq!(bytes_of(&out), bytes_of(&system_frame(pattern(seed))));
    assert_stats(
        element,
        &[
            ("frames", 1),
            ("passthrough", 1),
            ("exported", 0),
            ("copies", 0),
        ],
    );
}

#[test]
fn dmabuf_caps_in_pass_through_untouched() {
    let (mut h, element, _bus) = harness(&[]);
    h.set_src_caps_str(&format!(
        "video/x-raw(memory:DMABuf), format=BGRx, width={WIDTH}, height={HEIGHT}, \
         framerate=30/1"
    ));
    assert_passes_through(&mut h, &element, 5);
    assert!(
        element
            .downcast_ref::<gst_base::BaseTransform>()
            .unwrap()
            .is_passthrough()
    );
}

#[test]
fn dmabuf_memory_under_plain_caps_passes_through() {
    // A dma-heap pool's buffers, or a dma-buf producer with plain caps (1.22).
    let (mut h, element, bus) = harness(&[]);
    h.set_src_caps(plain_caps());
    assert_passes_through(&mut h, &element, 6);
    assert!(
        output_caps(&h)
            .features(0)
            .unwrap()
            .contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF)
    );
    assert!(messages(&bus).is_empty());
}

#[test]
fn stats_add_up_and_list_every_documented_field() {
    let (mut h, element, _bus, pool) = pooled_harness(&[]);
    for pts in 0..3 {
        drop(pass(&mut h, pool_frame(&pool, pts, pattern(1))));
    }
    drop(pass(&mut h, system_frame(pattern(2))));
    drop(pass(&mut h, dmabuf_frame(3)));

    let s = stats(&element);
    let fields: Vec<&str> = s.fields().map(|f| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "frames",
            "exported",
            "pinned-exports",
            "export-cache-hits",
            "passthrough",
            "copies",
            "bytes-copied",
            "syncs",
            "copy-reasons",
            "contiguous-for"
        ]
    );
    // The harness has no device downstream: nothing needs contiguous memory.
    assert_eq!(s.get::<String>("contiguous-for").unwrap(), "");
    let n = |f: &str| s.get::<u64>(f).unwrap();
    assert_eq!(n("frames"), 5);
    assert_eq!(n("passthrough"), 1);
    assert_eq!(n("copies"), 1);
    assert_eq!(n("pinned-exports"), 0, "the fake comes with no vmemexp");
    // Every frame that is not passed through leaves as exactly one export or cached export
    // (its own pages, or its copy's).
    assert_eq!(
        n("frames"),
        n("passthrough") + n("exported") + n("export-cache-hits")
    );
    let reasons = s.get::<gst::Structure>("copy-reasons").unwrap();
    let reason_names: Vec<&str> = reasons.fields().map(|f| f.as_str()).collect();
    assert_eq!(
        reason_names,
        [
            "memory-count",
            "foreign-memory",
            "pin-refused",
            "shares-pages",
            "needs-zero-offset",
            "udmabuf",
            "no-exporter",
            "metadata",
            "layout",
            "needs-contiguous"
        ]
    );
    let total: u64 = reason_names
        .iter()
        .map(|r| reasons.get::<u64>(*r).unwrap())
        .sum();
    assert_eq!(total, n("copies"));

    // The counters stay readable after the run, and a new run (start, at READY to PAUSED)
    // begins from zero.
    drop(h);
    assert_eq!(element.current_state(), gst::State::Null);
    assert_eq!(stat(&element, "frames"), 5);
    element.set_state(gst::State::Paused).unwrap();
    assert_eq!(stat(&element, "frames"), 0);
    element.set_state(gst::State::Null).unwrap();
}

#[test]
fn frames_over_udmabufs_limit_are_refused_without_a_heap() {
    // 4200x4200 BGRx: 70.6 MB, over udmabuf's default 64 MiB (the fake's limit everywhere).
    // Such frames can only be copied into dma-heap memory, and the fake has no heap.
    let (mut h, element, bus) = harness(&[]);
    let big = gst_video::VideoInfo::builder(gst_video::VideoFormat::Bgrx, 4200, 4200)
        .build()
        .unwrap();
    let caps = big.to_caps().unwrap();
    h.set_src_caps(caps.clone());
    let pool = allocation_query(&h, &caps, true).pool().unwrap();
    pool.set_active(true).unwrap();
    // Untouched pages: the memfd is allocated lazily, nothing is written.
    let frame = pool.acquire_buffer(None).unwrap();
    assert_eq!(h.push(frame), Err(gst::FlowError::Error));
    let posted = messages(&bus);
    assert_eq!(posted.len(), 2, "{posted:?}");
    assert!(!posted[0].0);
    assert!(
        posted[0].1.contains("udmabuf cannot export it")
            && posted[0].1.contains("exceed udmabuf's limit of 64 MiB"),
        "{posted:?}"
    );
    assert!(posted[1].0);
    assert!(
        posted[1]
            .1
            .contains("exceed udmabuf's size limit and no dma-heap is usable"),
        "{posted:?}"
    );
    assert_stats(&element, &[("frames", 1), ("exported", 0), ("copies", 0)]);
    pool.set_active(false).unwrap();
}
