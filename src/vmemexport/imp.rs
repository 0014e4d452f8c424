// SPDX-License-Identifier: MPL-2.0

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::base_transform::{
    GenerateOutputSuccess, InputBuffer, PrepareOutputBufferSuccess,
};
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;

use super::Backing;
use super::downstream;
use super::export::{CopyReason, Exporter, Outcome, Refusal};
use super::memfd_allocator::MemfdAllocator;
use super::stats::Stats;
use super::udmabuf_allocator::UdmabufAllocator;
use super::upstream;
use crate::formats::{self, CapsKind};
use crate::heapalloc::DmaHeapAllocator;
use crate::kernel::{self, SyncAccess, Udmabuf, Vmemexp};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vmemexport",
        gst::DebugColorFlags::empty(),
        Some("System memory to dma-buf without a copy"),
    )
});

/// Buffers the proposed pool preallocates: none. It allocates on demand and grows to what the
/// pipeline holds (so `exported` ends up as the pool's size); and a pool that fails while
/// preallocating keeps what it had allocated until the process exits (GStreamer's
/// default_start does not free it), which an allocation on demand cannot do.
const MIN_POOL_BUFFERS: u32 = 0;

const DEFAULT_BACKING: Backing = Backing::Auto;
const DEFAULT_HEAP: &str = "auto";
const DEFAULT_COPY_FALLBACK: bool = true;
const DEFAULT_PROPOSE_POOL: bool = true;
const DEFAULT_SYNC: bool = true;
const DEFAULT_PIN_SYSTEM_MEMORY: bool = true;

#[derive(Debug, Clone)]
struct Settings {
    backing: Backing,
    heap: String,
    copy_fallback: bool,
    propose_pool: bool,
    sync: bool,
    pin_system_memory: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            backing: DEFAULT_BACKING,
            heap: DEFAULT_HEAP.into(),
            copy_fallback: DEFAULT_COPY_FALLBACK,
            propose_pool: DEFAULT_PROPOSE_POOL,
            sync: DEFAULT_SYNC,
            pin_system_memory: DEFAULT_PIN_SYSTEM_MEMORY,
        }
    }
}

/// What `start` resolved, and what the stream needs.
struct State {
    backing: Backing,
    /// Shared with the streaming thread's work outside the state lock.
    exporter: Arc<Exporter>,
    heap_allocator: Option<DmaHeapAllocator>,
    in_info: Option<gst_video::VideoInfo>,
    /// Where frames are copied when they cannot leave as they are.
    copy_pool: Option<gst::BufferPool>,
    /// The consumer downstream that needs frames at offset 0 of their dma-buf, if any.
    zero_offset_for: Option<String>,
    warned: HashSet<CopyReason>,
    /// The pool last proposed upstream and the caps it was proposed for. A decoder asks again
    /// on every renegotiation (avdec_h264 at sizes it pads: every frame); a new pool each time
    /// would give every frame new memory, hence a new export that importers cannot cache.
    proposed: Option<(gst::Caps, gst::BufferPool, gst::Allocator)>,
    /// Every memfd allocator made for this run: each keeps released memories for reuse until
    /// flushed at stop.
    allocators: Vec<MemfdAllocator>,
}

/// Messages for the bus, posted once no lock is held: an application's sync bus handler runs
/// in the posting thread and may call back into the element (read `stats`, change state).
#[derive(Default)]
struct Notices(Vec<Notice>);

type Notice = Box<dyn FnOnce(&VmemExport) + Send>;

impl Notices {
    fn add(&mut self, post: impl FnOnce(&VmemExport) + Send + 'static) {
        self.0.push(Box::new(post));
    }

    fn post(self, imp: &VmemExport) {
        for post in self.0 {
            post(imp);
        }
    }
}

/// What turning one frame into dma-buf memory needs, taken from the state in one lock.
struct Target {
    exporter: Arc<Exporter>,
    info: Option<gst_video::VideoInfo>,
    zero_offset_for: Option<String>,
}

#[derive(Default)]
pub struct VmemExport {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Mutex<Stats>,
}

impl VmemExport {
    fn settings(&self) -> Settings {
        self.settings.lock().unwrap().clone()
    }

    /// Resolves `backing` into what this run uses, with errors that say how to fix the system.
    fn open_backing(&self, settings: &Settings) -> Result<State, gst::ErrorMessage> {
        let name = format!("vmemexport:{}", self.obj().name());
        // Why udmabuf is not used, for the error if no heap can stand in for it either.
        let mut udmabuf_why = String::new();
        let udmabuf = match settings.backing {
            Backing::Heap => None,
            Backing::Memfd | Backing::Auto => match Udmabuf::open() {
                Ok(u) => Some(u),
                Err(e) if settings.backing == Backing::Memfd => {
                    return Err(gst::error_msg!(
                        gst::ResourceError::OpenReadWrite,
                        ("backing=memfd needs {}: {e}", kernel::UDMABUF_PATH)
                    ));
                }
                Err(e) => {
                    gst::info!(CAT, imp = self, "no udmabuf ({e}), trying dma-heaps");
                    udmabuf_why = format!("{e}; and ");
                    None
                }
            },
        };
        let backing = match (settings.backing, &udmabuf) {
            (Backing::Heap, _) | (Backing::Auto, None) => Backing::Heap,
            _ => Backing::Memfd,
        };
        // The heap is needed for backing=heap, and as the copy target for frames over udmabuf's
        // size limit; only the former makes a missing heap fatal.
        let heap_allocator = match DmaHeapAllocator::new(&settings.heap) {
            Ok(a) => {
                a.set_owner(&*self.obj());
                Some(a)
            }
            Err(e) if backing == Backing::Heap => {
                return Err(gst::error_msg!(
                    gst::ResourceError::OpenReadWrite,
                    ("No way to make dma-bufs: {udmabuf_why}{e}")
                ));
            }
            Err(e) => {
                gst::info!(CAT, imp = self, "no dma-heap for oversized frames: {e}");
                None
            }
        };
        gst::info!(
            CAT,
            imp = self,
            "backing {backing:?}{}",
            heap_allocator
                .as_ref()
                .and_then(|a| a.heap_name().ok())
                .map(|h| format!(", heap {h}"))
                .unwrap_or_default()
        );
        // Other system memory is exported in place when vmemexp is there (own pool first, then
        // vmemexp, then a copy).
        let vmemexp = if settings.pin_system_memory {
            Vmemexp::open().map_err(|e| {
                gst::info!(
                    CAT,
                    imp = self,
                    "frames from other memory will be copied: {e}"
                );
                e.to_string()
            })
        } else {
            Err("pin-system-memory=false".to_string())
        };
        Ok(State {
            backing,
            exporter: Arc::new(Exporter::new(udmabuf, vmemexp, name)),
            heap_allocator,
            in_info: None,
            copy_pool: None,
            zero_offset_for: None,
            warned: HashSet::new(),
            proposed: None,
            allocators: Vec::new(),
        })
    }

    /// A video pool of `info` frames whose memory comes from `allocator`, one memory per buffer.
    fn make_pool(
        &self,
        allocator: &gst::Allocator,
        caps: &gst::Caps,
        info: &gst_video::VideoInfo,
        min: u32,
    ) -> Result<gst::BufferPool, glib::BoolError> {
        let pool = gst_video::VideoBufferPool::new();
        let mut config = pool.config();
        config.set_params(Some(caps), info.size() as u32, min, 0);
        config.set_allocator(Some(allocator), None);
        config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
        pool.set_config(config)?;
        Ok(pool.upcast())
    }

    /// The allocator whose memory leaves without a copy for this backing; dma-bufs already
    /// when upstream `importer` hands the buffers' fds to a device.
    fn zero_copy_allocator(
        &self,
        state: &mut State,
        importer: Option<&str>,
    ) -> Option<gst::Allocator> {
        match (state.backing, importer) {
            (Backing::Heap, _) => state.heap_allocator.clone().map(|a| a.upcast()),
            (_, Some(importer)) => match UdmabufAllocator::for_element(self.obj().upcast_ref()) {
                Ok(a) => {
                    gst::info!(
                        CAT,
                        imp = self,
                        "{importer} imports dma-bufs: proposing udmabuf exports"
                    );
                    Some(a.upcast())
                }
                Err(e) => {
                    gst::warning!(CAT, imp = self, "no udmabuf for {importer}: {e}");
                    Some(self.memfd_allocator(state).upcast())
                }
            },
            (_, None) => Some(self.memfd_allocator(state).upcast()),
        }
    }

    /// A new memfd allocator, flushed at stop.
    fn memfd_allocator(&self, state: &mut State) -> MemfdAllocator {
        let allocator = MemfdAllocator::new(self.obj().upcast_ref());
        state.allocators.push(allocator.clone());
        allocator
    }

    /// The heap that copies of frames over udmabuf's size limit go to: the configured one, or
    /// with `heap=auto` the system heap when the CMA area cannot hold two such frames (one
    /// downstream while the next is copied).
    fn oversize_heap(&self, state: &State, size: usize) -> Option<gst::Allocator> {
        let heap = state.heap_allocator.as_ref()?;
        if heap.check_capacity_for(size, 2).is_err()
            && kernel::HeapSelection::parse(&self.settings().heap) == kernel::HeapSelection::Auto
            && let Ok(system) = DmaHeapAllocator::new("system")
        {
            gst::info!(
                CAT,
                imp = self,
                "{size}-byte frames do not fit in heap {}: copying into the system heap",
                heap.heap_name().unwrap_or_default()
            );
            system.set_owner(&*self.obj());
            return Some(system.upcast());
        }
        Some(heap.clone().upcast())
    }

    /// The pool frames are copied into, made on first use, and the input's video info.
    fn copy_pool(
        &self,
        notices: &mut Notices,
    ) -> Result<(gst::BufferPool, gst_video::VideoInfo), gst::FlowError> {
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        let info = state.in_info.clone().ok_or(gst::FlowError::NotNegotiated)?;
        if let Some(pool) = &state.copy_pool {
            return Ok((pool.clone(), info));
        }
        // Frames over udmabuf's limit can only be copied into heap memory.
        let fits = state
            .exporter
            .size_limit()
            .is_some_and(|l| kernel::page_align(info.size() as u64).is_some_and(|s| s <= l));
        let allocator: gst::Allocator = if fits {
            self.memfd_allocator(state).upcast()
        } else if let Some(heap) = self.oversize_heap(state, info.size()) {
            heap
        } else {
            let size = info.size();
            notices.add(move |imp| {
                gst::element_imp_error!(
                    imp,
                    gst::ResourceError::NoSpaceLeft,
                    ("Frames of {size} bytes exceed udmabuf's size limit and no dma-heap is usable")
                )
            });
            return Err(gst::FlowError::Error);
        };
        let caps = info.to_caps().map_err(|_| gst::FlowError::NotNegotiated)?;
        // No buffers allocated up front: GstBufferPool's start leaks them when a later one
        // fails; on demand, a failure is the allocator's error message and nothing leaks.
        let pool = self.make_pool(&allocator, &caps, &info, 0).map_err(|e| {
            gst::error!(CAT, imp = self, "copy pool: {e}");
            gst::FlowError::Error
        })?;
        pool.set_active(true).map_err(|e| {
            let e = e.to_string();
            notices.add(move |imp| {
                gst::element_imp_error!(
                    imp,
                    gst::ResourceError::Failed,
                    ("Cannot start the pool of dma-buf copies: {e}")
                )
            });
            gst::FlowError::Error
        })?;
        state.copy_pool = Some(pool.clone());
        Ok((pool, info))
    }

    /// Copies `inbuf` into a pooled buffer that can leave as a dma-buf. No lock is held while
    /// the pool allocates: its allocator posts its failures itself.
    fn copy_to_pool(
        &self,
        inbuf: &gst::BufferRef,
        notices: &mut Notices,
    ) -> Result<gst::Buffer, gst::FlowError> {
        let (pool, info) = self.copy_pool(notices)?;
        let mut outbuf = pool.acquire_buffer(None)?;
        let outm = outbuf.get_mut().unwrap();
        let Ok(src) = gst_video::VideoFrameRef::from_buffer_ref_readable(inbuf, &info) else {
            notices.add(|imp| {
                gst::element_imp_error!(
                    imp,
                    gst::StreamError::Format,
                    ("Cannot map the input frame")
                )
            });
            return Err(gst::FlowError::Error);
        };
        let Ok(mut dst) = gst_video::VideoFrameRef::from_buffer_ref_writable(outm, &info) else {
            notices.add(|imp| {
                gst::element_imp_error!(
                    imp,
                    gst::ResourceError::Write,
                    ("Cannot map a dma-buf for writing")
                )
            });
            return Err(gst::FlowError::Error);
        };
        src.copy(&mut dst).map_err(|_| gst::FlowError::Error)?;
        drop(dst);
        Ok(outbuf)
    }

    /// The output for `source` (the buffer whose pages leave): its dma-buf memory, metas,
    /// and a reference that returns `source` to its pool only when downstream is done.
    fn wrap(
        &self,
        target: &Target,
        settings: &Settings,
        source: &gst::Buffer,
        timing: &gst::BufferRef,
        stats: &mut Stats,
    ) -> Result<gst::Buffer, Refusal> {
        let (dmabuf, outcome) = target
            .exporter
            .dmabuf_of(source, target.zero_offset_for.as_deref())?;
        match outcome {
            Outcome::Exported => stats.exported += 1,
            Outcome::Pinned => {
                stats.exported += 1;
                stats.pinned_exports += 1;
            }
            Outcome::CacheHit => stats.export_cache_hits += 1,
            Outcome::AlreadyDmabuf => {}
        }
        if settings.sync && outcome != Outcome::AlreadyDmabuf {
            // The CPU wrote these pages through another mapping: make the writes visible to
            // devices (DMA_BUF_IOCTL_SYNC needs a begin before the end on udmabuf).
            // The writes are done already, so waiting for devices that still read the pages
            // (a fence a client holds past the release guard's timeout) gains nothing and
            // would stall the stream: a busy dma-buf skips the bracket.
            let fd = crate::memory::dmabuf_fd(&dmabuf).expect("exports are dma-buf memory");
            let synced = kernel::sync_start_within(fd, SyncAccess::Write, Duration::ZERO)
                .and_then(|_| kernel::sync_end(fd, SyncAccess::Write));
            match synced {
                Ok(()) => stats.syncs += 1,
                Err(e) => gst::warning!(CAT, imp = self, "DMA_BUF_IOCTL_SYNC: {e}"),
            }
        }
        let mut out = gst::Buffer::new();
        {
            let outm = out.get_mut().unwrap();
            outm.append_memory(dmabuf);
            // Metas describe the pages, so they come from `source`; flags and timestamps from
            // the frame as it arrived. A plain meta copy skips VideoMeta (it is tagged as
            // describing memory), so that one is carried over explicitly.
            source
                .copy_into(outm, gst::BufferCopyFlags::META, ..)
                .map_err(|e| Refusal::Metadata(e.to_string()))?;
            copy_video_meta(source, outm, target.info.as_ref());
            timing
                .copy_into(
                    outm,
                    gst::BufferCopyFlags::FLAGS | gst::BufferCopyFlags::TIMESTAMPS,
                    ..,
                )
                .map_err(|e| Refusal::Metadata(e.to_string()))?;
            gst::ParentBufferMeta::add(outm, source);
            crate::memory::guard_release(
                outm,
                crate::memory::memory_ref(outm.peek_memory(0)),
                source.clone(),
            );
        }
        Ok(out)
    }

    /// Whether a frame refused for `why` may be copied; the first refusal of each kind is
    /// a warning, a forbidden copy an error.
    fn refuse(
        &self,
        settings: &Settings,
        why: &Refusal,
        notices: &mut Notices,
    ) -> Result<(), gst::FlowError> {
        if !settings.copy_fallback {
            let why = why.to_string();
            notices.add(move |imp| {
                gst::element_imp_error!(
                    imp,
                    gst::StreamError::Failed,
                    ("Zero-copy is impossible: {why}"),
                    [
                        "copy-fallback=false forbids copying; put vmemexport right after the producer so it can use the proposed pool, or allow copies"
                    ]
                )
            });
            return Err(gst::FlowError::Error);
        }
        let first = {
            let mut guard = self.state.lock().unwrap();
            let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
            state.warned.insert(why.reason())
        };
        if first {
            let why = why.to_string();
            notices.add(move |imp| {
                gst::element_imp_warning!(
                    imp,
                    gst::CoreError::Negotiation,
                    ("Copying frames into dma-buf memory: {why}"),
                    ["Every such frame costs a copy; see the stats property"]
                )
            });
        }
        Ok(())
    }

    /// The output buffer for `inbuf`: its own pages as dma-buf memory, else a counted copy.
    fn output_for(
        &self,
        inbuf: &gst::BufferRef,
        settings: &Settings,
        stats: &mut Stats,
        notices: &mut Notices,
    ) -> Result<PrepareOutputBufferSuccess, gst::FlowError> {
        if self.obj().is_passthrough() {
            stats.passthrough += 1;
            return Ok(PrepareOutputBufferSuccess::InputBuffer);
        }
        let target = {
            let guard = self.state.lock().unwrap();
            let state = guard.as_ref().ok_or(gst::FlowError::Flushing)?;
            Target {
                exporter: state.exporter.clone(),
                info: state.in_info.clone(),
                zero_offset_for: state.zero_offset_for.clone(),
            }
        };
        let source = crate::memory::buffer_ref(inbuf);
        // Input that already is dma-buf memory never comes here: generate_output sends it on.
        let why = match self.wrap(&target, settings, &source, inbuf, stats) {
            Ok(out) => return Ok(PrepareOutputBufferSuccess::Buffer(out)),
            Err(why) => why,
        };
        gst::debug!(CAT, imp = self, "copy: {why}");
        self.refuse(settings, &why, notices)?;
        let mut copied = self.copy_to_pool(inbuf, notices)?;
        stats.count_copy(
            why.reason(),
            target.info.as_ref().map_or(0, |i| i.size() as u64),
        );
        if crate::memory::is_all_dmabuf(&copied) {
            // A dma-heap copy leaves as it is, with the frame's timing and metas (its own
            // VideoMeta stays: a meta copy skips that one).
            inbuf
                .copy_into(
                    copied.make_mut(),
                    gst::BufferCopyFlags::FLAGS
                        | gst::BufferCopyFlags::TIMESTAMPS
                        | gst::BufferCopyFlags::META,
                    ..,
                )
                .map_err(|_| gst::FlowError::Error)?;
            return Ok(PrepareOutputBufferSuccess::Buffer(copied));
        }
        self.wrap(&target, settings, &copied, inbuf, stats)
            .map(PrepareOutputBufferSuccess::Buffer)
            .map_err(|why| {
                let why = why.to_string();
                notices.add(move |imp| {
                    gst::element_imp_error!(
                        imp,
                        gst::ResourceError::Failed,
                        ("Cannot export the copy: {why}")
                    )
                });
                gst::FlowError::Error
            })
    }
}

/// Gives `out` the layout of `source`: its VideoMeta, or one for the default layout of `info`,
/// since dma-buf importers (DMA_DRM caps above all) expect the layout spelled out.
fn copy_video_meta(
    source: &gst::BufferRef,
    out: &mut gst::BufferRef,
    info: Option<&gst_video::VideoInfo>,
) {
    let layout = match source.meta::<gst_video::VideoMeta>() {
        Some(m) => Some((
            m.video_frame_flags(),
            m.format(),
            m.width(),
            m.height(),
            m.offset().to_vec(),
            m.stride().to_vec(),
        )),
        None => info.map(|i| {
            (
                gst_video::VideoFrameFlags::empty(),
                i.format(),
                i.width(),
                i.height(),
                i.offset().to_vec(),
                i.stride().to_vec(),
            )
        }),
    };
    if let Some((flags, format, width, height, offsets, strides)) = layout
        && let Err(e) =
            gst_video::VideoMeta::add_full(out, flags, format, width, height, &offsets, &strides)
    {
        gst::warning!(CAT, "cannot add VideoMeta: {e}");
    }
}

#[glib::object_subclass]
impl ObjectSubclass for VmemExport {
    const NAME: &'static str = "GstVmemExport";
    type Type = super::VmemExport;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for VmemExport {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecEnum::builder_with_default("backing", DEFAULT_BACKING)
                    .nick("Backing")
                    .blurb(
                        "Memory proposed to upstream: memfd pages exported through /dev/udmabuf, \
                         dma-heap buffers (see heap), or auto (memfd if /dev/udmabuf is usable)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("heap")
                    .nick("Heap")
                    .blurb(
                        "dma-heap for backing=heap and for copies of frames over udmabuf's size \
                         limit: a name (system, linux,cma, reserved...), an ordered list, or auto \
                         (CMA if present, else system)",
                    )
                    .default_value(Some(DEFAULT_HEAP))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("copy-fallback")
                    .nick("Copy fallback")
                    .blurb(
                        "When a frame cannot leave without a copy, copy it into dma-buf memory \
                         (counted in stats, warned once per reason); false makes that an error",
                    )
                    .default_value(DEFAULT_COPY_FALLBACK)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("propose-pool")
                    .nick("Propose pool")
                    .blurb(
                        "Offer upstream a pool of exportable memory (false makes upstream use its \
                         own memory: exported in place with pin-system-memory and /dev/vmemexp, \
                         else copied)",
                    )
                    .default_value(DEFAULT_PROPOSE_POOL)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("sync")
                    .nick("Sync")
                    .blurb(
                        "Bracket each hand-over with DMA_BUF_IOCTL_SYNC so CPU writes reach \
                         non-coherent devices",
                    )
                    .default_value(DEFAULT_SYNC)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("pin-system-memory")
                    .nick("Pin system memory")
                    .blurb(
                        "Export system memory that is not from the proposed pool (a decoder's own \
                         frames, an application's malloc) in place through /dev/vmemexp, pinning \
                         its pages, when that device is usable; false copies such frames",
                    )
                    .default_value(DEFAULT_PIN_SYSTEM_MEMORY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "frames, exported (new dma-bufs), pinned-exports (of those, made \
                         through /dev/vmemexp), export-cache-hits, passthrough, copies, \
                         bytes-copied, syncs, copy-reasons (copies by reason)",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "backing" => settings.backing = value.get().unwrap(),
            "heap" => {
                settings.heap = value
                    .get::<Option<String>>()
                    .unwrap()
                    .unwrap_or_else(|| DEFAULT_HEAP.into())
            }
            "copy-fallback" => settings.copy_fallback = value.get().unwrap(),
            "propose-pool" => settings.propose_pool = value.get().unwrap(),
            "sync" => settings.sync = value.get().unwrap(),
            "pin-system-memory" => settings.pin_system_memory = value.get().unwrap(),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "backing" => settings.backing.to_value(),
            "heap" => settings.heap.to_value(),
            "copy-fallback" => settings.copy_fallback.to_value(),
            "propose-pool" => settings.propose_pool.to_value(),
            "sync" => settings.sync.to_value(),
            "pin-system-memory" => settings.pin_system_memory.to_value(),
            "stats" => self.stats.lock().unwrap().to_structure().to_value(),
            _ => unimplemented!(),
        }
    }
}

impl GstObjectImpl for VmemExport {}

impl ElementImpl for VmemExport {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Virtual memory exporter",
                "Filter/Video",
                "Outputs system-memory video as DMABuf memory without copying: proposes a \
                 memfd-backed pool upstream and exports each buffer once through udmabuf",
                "gst-vmem developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let src_caps = formats::dmabuf_caps();
            let mut sink_caps = formats::sysmem_caps();
            // Dma-buf input is accepted and passed through.
            sink_caps.merge(formats::dmabuf_caps());
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &sink_caps,
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &src_caps,
                )
                .unwrap(),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for VmemExport {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::NeverInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings();
        let state = self.open_backing(&settings)?;
        *self.state.lock().unwrap() = Some(state);
        *self.stats.lock().unwrap() = Stats::default();
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let state = self.state.lock().unwrap().take();
        if let Some(state) = state {
            if let Some(pool) = state.copy_pool {
                let _ = pool.set_active(false);
            }
            for allocator in state.allocators {
                allocator.flush();
            }
        }
        gst::debug!(
            CAT,
            imp = self,
            "stats at stop: {:?}",
            *self.stats.lock().unwrap()
        );
        Ok(())
    }

    fn transform_caps(
        &self,
        direction: gst::PadDirection,
        caps: &gst::Caps,
        filter: Option<&gst::Caps>,
    ) -> Option<gst::Caps> {
        let other = match direction {
            gst::PadDirection::Sink => formats::sysmem_to_dmabuf(caps),
            _ => formats::dmabuf_to_sysmem(caps),
        };
        gst::trace!(CAT, imp = self, "{direction:?} {caps} -> {other}");
        Some(match filter {
            Some(filter) => filter.intersect_with_mode(&other, gst::CapsIntersectMode::First),
            None => other,
        })
    }

    fn fixate_caps(
        &self,
        direction: gst::PadDirection,
        caps: &gst::Caps,
        othercaps: gst::Caps,
    ) -> gst::Caps {
        if direction != gst::PadDirection::Sink {
            return self.parent_fixate_caps(direction, caps, othercaps);
        }
        // Prefer describing the output as dma-buf when downstream accepts that.
        let preferred = othercaps
            .iter_with_features()
            .position(|(_, f)| f.contains(formats::CAPS_FEATURE_DMABUF))
            .unwrap_or(0);
        let mut chosen = gst::Caps::new_empty();
        if let Some((s, f)) = othercaps.iter_with_features().nth(preferred) {
            chosen
                .get_mut()
                .unwrap()
                .append_structure_full(s.to_owned(), Some(f.to_owned()));
        }
        self.parent_fixate_caps(direction, caps, chosen)
    }

    fn set_caps(&self, incaps: &gst::Caps, outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let (in_info, in_kind) = formats::video_info_from_caps(incaps)
            .ok_or_else(|| gst::loggable_error!(CAT, "cannot parse input caps {incaps}"))?;
        let (out_info, out_kind) = formats::video_info_from_caps(outcaps)
            .ok_or_else(|| gst::loggable_error!(CAT, "cannot parse output caps {outcaps}"))?;
        if in_info.format() != out_info.format()
            || in_info.width() != out_info.width()
            || in_info.height() != out_info.height()
        {
            return Err(gst::loggable_error!(
                CAT,
                "caps differ beyond memory: {incaps} vs {outcaps}"
            ));
        }
        // Dma-buf caps in: the buffers already are what downstream wants.
        self.obj().set_passthrough(in_kind != CapsKind::Plain);
        gst::info!(
            CAT,
            imp = self,
            "{in_kind:?} {incaps} -> {out_kind:?} {outcaps}"
        );
        let mut state = self.state.lock().unwrap();
        let state = state
            .as_mut()
            .ok_or_else(|| gst::loggable_error!(CAT, "not started"))?;
        if let Some(pool) = state.copy_pool.take() {
            let _ = pool.set_active(false);
        }
        state.in_info = Some(in_info);
        Ok(())
    }

    fn propose_allocation(
        &self,
        decide_query: Option<&gst::query::Allocation>,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        let settings = self.settings();
        if self.obj().is_passthrough() {
            return self.parent_propose_allocation(decide_query, query);
        }
        let (Some(caps), need_pool) = query.get_owned() else {
            return Err(gst::loggable_error!(CAT, "allocation query without caps"));
        };
        let info = match formats::video_info_from_caps(&caps) {
            Some((info, CapsKind::Plain)) => info,
            // Dma-buf caps make vmemexport passthrough (set_caps): downstream's answer is the
            // right one, as BaseTransform gives it in passthrough.
            Some(_) => return self.parent_propose_allocation(decide_query, query),
            None => return Err(gst::loggable_error!(CAT, "cannot parse {caps}")),
        };
        if !settings.propose_pool {
            // Upstream keeps its own memory (the copy path, on purpose). Never downstream's
            // pool, which BaseTransform's default would hand on: the output is not upstream's
            // buffer. Any layout is fine for the copy.
            query.add_allocation_meta::<gst_video::VideoMeta>(None);
            return Ok(());
        }
        let importer = upstream::dmabuf_importer(self.obj().sink_pad());
        let mut state = self.state.lock().unwrap();
        let state = state
            .as_mut()
            .ok_or_else(|| gst::loggable_error!(CAT, "not started"))?;
        let dmabufs = importer.is_some() && state.backing != Backing::Heap;
        // The allocator of the pool proposed for these caps, so that the configuration a
        // decoder sets again on that pool is the one it set before.
        let reused = state
            .proposed
            .as_ref()
            .filter(|(proposed, _, a)| *proposed == caps && a.is::<UdmabufAllocator>() == dmabufs)
            .map(|(_, pool, allocator)| (pool.clone(), allocator.clone()));
        let Some(allocator) = reused
            .as_ref()
            .map(|(_, a)| a.clone())
            .or_else(|| self.zero_copy_allocator(state, importer.as_deref()))
        else {
            return Ok(());
        };
        if let Some(heap) = state
            .heap_allocator
            .as_ref()
            .filter(|_| state.backing == Backing::Heap)
            && let Err(e) = heap.check_capacity(info.size())
        {
            gst::element_imp_error!(
                self,
                gst::ResourceError::NoSpaceLeft,
                (
                    "Cannot allocate {}-byte frames from the dma-heap: {e}",
                    info.size()
                )
            );
            return Err(gst::loggable_error!(CAT, "heap cannot supply frames: {e}"));
        }
        if need_pool {
            let pool = match reused {
                // The same pool for the same caps: its buffers, and their cached exports, are
                // recycled. A decoder that configured it (alignment, buffer counts) finds its
                // own configuration again, which GstBufferPool accepts even while active.
                Some((pool, _)) => pool,
                None => {
                    let pool = self
                        .make_pool(&allocator, &caps, &info, MIN_POOL_BUFFERS)
                        .map_err(|e| gst::loggable_error!(CAT, "cannot configure the pool: {e}"))?;
                    state.proposed = Some((caps.clone(), pool.clone(), allocator.clone()));
                    pool
                }
            };
            query.add_allocation_pool(Some(&pool), info.size() as u32, MIN_POOL_BUFFERS, 0);
        }
        query.add_allocation_param(Some(&allocator), gst::AllocationParams::default());
        query.add_allocation_meta::<gst_video::VideoMeta>(None);
        gst::debug!(
            CAT,
            imp = self,
            "proposed {:?} pool for {caps}",
            state.backing
        );
        Ok(())
    }

    fn query(&self, direction: gst::PadDirection, query: &mut gst::QueryRef) -> bool {
        // BaseTransform answers ALLOCATION only once it has negotiated both sides; an
        // application that wants the pool before its first frame (to draw that frame into it)
        // asks earlier, with the caps in the query, which is all the proposal needs.
        if direction == gst::PadDirection::Sink
            && !self.obj().is_passthrough()
            && let gst::QueryViewMut::Allocation(q) = query.view_mut()
        {
            return self.propose_allocation(None, q).is_ok();
        }
        BaseTransformImplExt::parent_query(self, direction, query)
    }

    fn decide_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        // Downstream's pools (kmssink's dumb buffers, ...) are not used: our output is the
        // pages upstream wrote. Leaving them unconfigured keeps them from allocating at all.
        while query.allocation_pools().len() > 0 {
            query.remove_nth_allocation_pool(0);
        }
        // Downstream is linked and negotiated now: see whether it can take frames that start
        // inside their dma-buf (pinned exports of memory that is not page aligned).
        let consumer = downstream::zero_offset_consumer(self.obj().src_pad());
        gst::debug!(
            CAT,
            imp = self,
            "frames at offset 0 needed by: {}",
            consumer.as_deref().unwrap_or("nobody")
        );
        if let Some(state) = self.state.lock().unwrap().as_mut() {
            state.zero_offset_for = consumer;
        }
        Ok(())
    }

    fn prepare_output_buffer(
        &self,
        inbuf: InputBuffer,
    ) -> Result<PrepareOutputBufferSuccess, gst::FlowError> {
        let inbuf = match inbuf {
            InputBuffer::Readable(b) => b,
            InputBuffer::Writable(b) => &*b,
        };
        let settings = self.settings();
        let mut stats = *self.stats.lock().unwrap();
        stats.frames += 1;
        let mut notices = Notices::default();
        let result = self.output_for(inbuf, &settings, &mut stats, &mut notices);
        // Counted whatever happened to the frame, before anyone hears about it.
        *self.stats.lock().unwrap() = stats;
        notices.post(self);
        result
    }

    fn generate_output(&self) -> Result<GenerateOutputSuccess, gst::FlowError> {
        // Frames that already are dma-bufs (from a backing=heap pool, or a dma-buf producer)
        // leave as the very buffer that arrived. Wrapping their memory in a new buffer would
        // keep it shared when the pool takes the buffer back, and GstBufferPool discards a
        // buffer whose memory is shared (1.22 does): every frame would be a new allocation.
        let negotiated = self
            .state
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|s| s.in_info.is_some());
        if negotiated
            && !self.obj().is_passthrough()
            && self
                .queued_buffer()
                .is_some_and(|b| crate::memory::is_all_dmabuf(&b))
            && let Some(buffer) = self.take_queued_buffer()
        {
            self.stats.lock().unwrap().count_dmabuf_frame(&buffer);
            return Ok(GenerateOutputSuccess::Buffer(buffer));
        }
        self.parent_generate_output()
    }

    fn transform(
        &self,
        _inbuf: &gst::Buffer,
        _outbuf: &mut gst::BufferRef,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        // All the work is in prepare_output_buffer: the output shares the input's pages.
        Ok(gst::FlowSuccess::Ok)
    }
}
