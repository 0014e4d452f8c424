// SPDX-License-Identifier: MPL-2.0
//! The element: properties, pads and the BaseTransform virtual methods. The work is split by
//! concern: [`backing`] (what `start` opens, the pools proposed), [`output`] (each frame's pages
//! as dma-buf memory) and [`copy`] (the counted fallback).

use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::base_transform::{
    GenerateOutputSuccess, InputBuffer, PrepareOutputBufferSuccess,
};
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;

mod backing;
mod copy;
mod output;

use self::backing::State;
use super::Backing;
use super::MemfdAllocator;
use super::backend::Devices;
use super::caps;
use super::downstream;
use super::layout;
use super::stats::Stats;
use super::udmabuf_allocator::UdmabufAllocator;
use super::upstream;
use crate::formats::{self, CapsKind};

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
    /// Not a property: a fake udmabuf for tests (`super::use_fake_udmabuf`).
    devices: Devices,
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
            devices: Devices::Kernel,
        }
    }
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

    /// Queues `error` as the element's error message; returns the flow error that stops the
    /// stream with it.
    fn error(&mut self, error: gst::ErrorMessage) -> gst::FlowError {
        self.add(move |imp| imp.post_error_message(error));
        gst::FlowError::Error
    }

    fn post(self, imp: &VmemExport) {
        for post in self.0 {
            post(imp);
        }
    }
}
#[derive(Default)]
pub struct VmemExport {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Mutex<Stats>,
    /// The consumer downstream that imports only physically contiguous memory, as the last
    /// negotiation found it: its frames come from the CMA heap, or are copied there. Kept after
    /// stop, like the counters, for `stats`' contiguous-for.
    contiguous_for: Mutex<Option<String>>,
}

impl VmemExport {
    fn settings(&self) -> Settings {
        self.settings.lock().unwrap().clone()
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
                        "Memory proposed to upstream: memfd pages exported through /dev/udmabuf \
                         (or /dev/vmemexp), dma-heap buffers (see heap), or auto (memfd if either \
                         is usable)",
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
                        "Offer upstream a pool of exportable memory. false: upstream uses its own \
                         memory (asked to be page-aligned), pinned by pin-system-memory or copied",
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
                        "Export system memory that is not from the proposed pool in place, pinning \
                         its pages through /dev/vmemexp when the frame owns them. false: copy it",
                    )
                    .default_value(DEFAULT_PIN_SYSTEM_MEMORY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "frames, exported (new dma-bufs), pinned-exports (of those, made \
                         through /dev/vmemexp), export-cache-hits, passthrough, copies, \
                         bytes-copied, syncs, copy-reasons (copies by reason), contiguous-for \
                         (the consumer that imports only contiguous memory, if any)",
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
        if pspec.name() == "stats" {
            let mut stats = self.stats.lock().unwrap().to_structure();
            stats.set(
                "contiguous-for",
                self.contiguous_for
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or_default(),
            );
            return stats.to_value();
        }
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "backing" => settings.backing.to_value(),
            "heap" => settings.heap.to_value(),
            "copy-fallback" => settings.copy_fallback.to_value(),
            "propose-pool" => settings.propose_pool.to_value(),
            "sync" => settings.sync.to_value(),
            "pin-system-memory" => settings.pin_system_memory.to_value(),
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
                "Outputs system-memory video as DMABuf memory: exports the memfd pool it \
                 proposes upstream through udmabuf, pins other memory in place through the \
                 vmemexp module when the frame owns its pages, and copies what can leave \
                 neither way",
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
        *self.contiguous_for.lock().unwrap() = None;
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
            gst::PadDirection::Sink => caps::sysmem_to_dmabuf(caps),
            _ => caps::dmabuf_to_sysmem(caps),
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
        let old_copy_pool = {
            let mut state = self.state.lock().unwrap();
            let state = state
                .as_mut()
                .ok_or_else(|| gst::loggable_error!(CAT, "not started"))?;
            state.in_info = Some(in_info);
            state.copy_pool.take()
        };
        // Stopping a pool frees its buffers, which runs their allocator's code: not under the
        // lock.
        if let Some(pool) = old_copy_pool {
            let _ = pool.set_active(false);
        }
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
            // Memory upstream allocates page-aligned, its last page padded, holds nothing but
            // the frame's own bytes: vmemexp may export it in place (export.rs). Producers
            // that allocate with downstream's parameters (GstBaseSrc's and GstVideoDecoder's
            // default pools) then need no copy.
            let can_pin = self
                .state
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|s| s.exporter.can_pin());
            if can_pin {
                let page = crate::kernel::page_size() as usize;
                query.add_allocation_param(
                    None::<&gst::Allocator>,
                    gst::AllocationParams::new(gst::MemoryFlags::empty(), page - 1, 0, page - 1),
                );
            }
            return Ok(());
        }
        // Downstream is linked by now: a consumer that needs the natural layout gets a pool
        // upstream cannot pad (layout.rs).
        let natural_for = downstream::zero_offset_consumer(self.obj().src_pad());
        // An upstream that imports dma-bufs into a device gets a pool of dma-bufs (upstream.rs).
        let importer = upstream::dmabuf_importer(self.obj().sink_pad());
        let own_frames = upstream::own_frame_decoder(self.obj().sink_pad());
        // A consumer that imports only contiguous memory gets frames from the CMA heap
        // (backing.rs); finding out may open its device: before the lock is taken.
        let contiguous_for = self.contiguous_consumer(&settings);
        *self.contiguous_for.lock().unwrap() = contiguous_for.clone();
        // What the proposal needs from the state, taken out: opening udmabuf for an importer,
        // the heap's trial allocation and the error message all happen without the lock (an
        // application's sync bus handler runs in this thread and may stop the element).
        let (backing, heap_allocator, reused) = {
            let mut state = self.state.lock().unwrap();
            let state = state
                .as_mut()
                .ok_or_else(|| gst::loggable_error!(CAT, "not started"))?;
            let kind = if contiguous_for.is_some() || state.backing == Backing::Heap {
                PoolKind::Heap
            } else if importer.is_some() {
                PoolKind::Udmabuf
            } else {
                PoolKind::Memfd
            };
            // The allocator of the pool proposed for these caps, so that the configuration a
            // decoder sets again on that pool is the one it set before.
            let reused = state
                .proposed
                .as_ref()
                .filter(|(proposed, _, a)| {
                    *proposed == caps && state.natural_for == natural_for && PoolKind::of(a) == kind
                })
                .map(|(_, pool, allocator)| (pool.clone(), allocator.clone()));
            (state.backing, state.heap_allocator.clone(), reused)
        };
        let allocator = match (&reused, &contiguous_for) {
            (Some((_, a)), _) => Some(a.clone()),
            (None, Some(consumer)) => {
                match self.contiguous_allocator(heap_allocator.as_ref(), consumer, info.size()) {
                    Ok(a) => Some(a.upcast()),
                    Err(error) => {
                        self.post_error_message(error);
                        return Err(gst::loggable_error!(
                            CAT,
                            "no contiguous memory for {consumer}"
                        ));
                    }
                }
            }
            (None, None) => {
                self.zero_copy_allocator(backing, heap_allocator.as_ref(), importer.as_deref())
            }
        };
        let Some(allocator) = allocator else {
            return Ok(());
        };
        if let Some(heap) = heap_allocator.as_ref().filter(|_| backing == Backing::Heap)
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
        let pool = match (&reused, need_pool) {
            (_, false) => None,
            // The same pool for the same caps: its buffers, and their cached exports, are
            // recycled. A decoder that configured it (alignment, buffer counts) finds its
            // own configuration again, which GstBufferPool accepts even while active.
            (Some((pool, _)), true) => Some(pool.clone()),
            (None, true) => Some(
                match &natural_for {
                    Some(_) => layout::natural_pool(&allocator, &caps, &info, MIN_POOL_BUFFERS),
                    None => self.make_pool(&allocator, &caps, &info, MIN_POOL_BUFFERS),
                }
                .map_err(|e| gst::loggable_error!(CAT, "cannot configure the pool: {e}"))?,
            ),
        };
        if reused.is_none() {
            let mut state = self.state.lock().unwrap();
            let state = state
                .as_mut()
                .ok_or_else(|| gst::loggable_error!(CAT, "stopped while proposing"))?;
            if let Some(memfd) = allocator.downcast_ref::<MemfdAllocator>() {
                state.allocators.push(memfd.clone());
            }
            if let Some(pool) = &pool {
                state.proposed = Some((caps.clone(), pool.clone(), allocator.clone()));
                state.natural_for = natural_for.clone();
            }
        }
        if let Some(pool) = &pool {
            query.add_allocation_pool(Some(pool), info.size() as u32, MIN_POOL_BUFFERS, 0);
        }
        query.add_allocation_param(Some(&allocator), gst::AllocationParams::default());
        // A decoder told that downstream reads VideoMeta pushes its own padded frames when the
        // pool takes no alignment (avdec_* reuses its internal pool); without it, it copies
        // them into the pool in the natural layout. vpxdec pushes its own frames whatever the
        // pool, and those share their pages with other memory (upstream.rs): told nothing of
        // VideoMeta, it copies them into the pool instead.
        if natural_for.is_none() && own_frames.is_none() {
            query.add_allocation_meta::<gst_video::VideoMeta>(None);
        }
        gst::debug!(
            CAT,
            imp = self,
            "proposed {:?} pool for {caps}, contiguous for {}, natural layout for {}, no \
             VideoMeta for {}",
            PoolKind::of(&allocator),
            contiguous_for.as_deref().unwrap_or("nobody"),
            natural_for.as_deref().unwrap_or("nobody"),
            own_frames.as_deref().unwrap_or("nobody")
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
        // And whether it imports only contiguous memory: pinned and foreign frames are then
        // copied into the CMA heap (the frames of the proposed pool already are there).
        let contiguous_for = self.contiguous_consumer(&self.settings());
        *self.contiguous_for.lock().unwrap() = contiguous_for;
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

/// Which memory a proposed pool hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolKind {
    /// dma-heap buffers (backing=heap, or a contiguous-only consumer's CMA).
    Heap,
    /// udmabuf exports, for an upstream that imports the buffers into a device.
    Udmabuf,
    /// memfd pages, exported once they leave.
    Memfd,
}

impl PoolKind {
    fn of(allocator: &gst::Allocator) -> PoolKind {
        if allocator.is::<crate::heapalloc::DmaHeapAllocator>() {
            PoolKind::Heap
        } else if allocator.is::<UdmabufAllocator>() {
            PoolKind::Udmabuf
        } else {
            PoolKind::Memfd
        }
    }
}

impl VmemExport {
    /// See [`super::use_fake_udmabuf`].
    pub(super) fn use_fake_udmabuf(&self) {
        self.settings.lock().unwrap().devices = Devices::Fake;
    }
}
