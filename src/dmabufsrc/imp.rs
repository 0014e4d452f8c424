// SPDX-License-Identifier: MPL-2.0
//! The element: a live PushSrc reading dmabufsink's socket (docs/protocol.md).
//!
//! Each frame's fds become DmaBufMemory, one memory per fd, with a VideoMeta for the planes;
//! when the last buffer using them is gone, the frame is released to the server. The caps are
//! the frame's own, in the first form downstream takes (DMA_DRM, legacy DMABuf, plain).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_allocators::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;
use rustix::event::{EventfdFlags, PollFd, PollFlags};

use super::caps;
use crate::dmabufsink::{Client, Received, ReceivedFrame};
use crate::formats;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "dmabufsrc",
        gst::DebugColorFlags::empty(),
        Some("dma-buf frames from dmabufsink's socket"),
    )
});

const DEFAULT_SERVER_UID: i64 = -1;
const DEFAULT_IS_LIVE: bool = true;
/// Long enough for a producer that restarts (a pipeline set back to PLAYING, a service
/// restarted), short enough that a source with no server fails while the user still watches.
const DEFAULT_RETRY_TIMEOUT_MS: i32 = 10_000;
/// The first wait between attempts, doubled after each failure up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(10);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<String>,
    server_uid: i64,
    retry_timeout_ms: i32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket_path: None,
            server_uid: DEFAULT_SERVER_UID,
            retry_timeout_ms: DEFAULT_RETRY_TIMEOUT_MS,
        }
    }
}

/// Counters, shared with the frames' release hooks (which run on whichever thread drops the
/// last buffer of a frame).
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    released: AtomicU64,
    release_failures: AtomicU64,
    missed: AtomicU64,
    connects: AtomicU64,
}

/// A received frame's hold on the server's pages: released (a message to the server) when the
/// last memory of the frame is freed.
struct Hold {
    client: Arc<Client>,
    frame_number: u64,
    counters: Arc<Counters>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        // Never blocks: a server that reads nothing gets no release, and its hold timeout
        // frees the frame.
        match self.client.release_nonblocking(self.frame_number) {
            Ok(()) => self.counters.released.fetch_add(1, Ordering::Relaxed),
            Err(_) => self
                .counters
                .release_failures
                .fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// What each memory of a frame keeps (as qdata) until it is freed.
struct MemoryHold(#[allow(dead_code)] Arc<Hold>);

impl crate::memory::Attached for MemoryHold {}

static HOLD_QUARK: LazyLock<glib::Quark> =
    LazyLock::new(|| glib::Quark::from_str("gst-vmem-dmabufsrc-hold"));

/// The run's connection and what was negotiated.
#[derive(Default)]
struct State {
    client: Option<Arc<Client>>,
    /// The caps set on the pad, and the frame description they were made for.
    caps: Option<gst::Caps>,
    described: Option<(u32, u32, u32, u64, u64)>,
    /// Downstream asked again (a reconfigure): negotiate with the next frame.
    renegotiate: bool,
    /// The caps the next negotiation offers (`caps`): the current frame's, in the form picked.
    offered: Option<gst::Caps>,
    last_frame_number: Option<u64>,
    duration: Option<gst::ClockTime>,
}

pub struct DmabufSrc {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    counters: Arc<Counters>,
    allocator: gst_allocators::DmaBufAllocator,
    /// Woken by `unlock`: every wait of `create` (for a frame, between connection attempts)
    /// polls it too.
    wake: OwnedFd,
}

impl Default for DmabufSrc {
    fn default() -> Self {
        DmabufSrc {
            settings: Mutex::default(),
            state: Mutex::default(),
            counters: Arc::default(),
            allocator: gst_allocators::DmaBufAllocator::new(),
            wake: rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                .expect("an eventfd (the fd limit is exhausted)"),
        }
    }
}

/// Why waiting ended.
enum Waited {
    Ready,
    Unlocked,
}

impl DmabufSrc {
    fn stats_structure(&self) -> gst::Structure {
        let c = &self.counters;
        gst::Structure::builder("dmabufsrc-stats")
            .field("frames", c.frames.load(Ordering::Relaxed))
            .field("released", c.released.load(Ordering::Relaxed))
            .field(
                "release-failures",
                c.release_failures.load(Ordering::Relaxed),
            )
            .field("missed", c.missed.load(Ordering::Relaxed))
            .field("connects", c.connects.load(Ordering::Relaxed))
            .build()
    }

    /// Waits until `fd` is readable (or, without one, for `timeout`), or `unlock` is called.
    fn wait(&self, fd: Option<&OwnedFd>, timeout: Option<Duration>) -> Waited {
        let timeout = timeout.map(|t| rustix::time::Timespec {
            tv_sec: t.as_secs() as i64,
            tv_nsec: t.subsec_nanos().into(),
        });
        loop {
            let mut fds = vec![PollFd::new(&self.wake, PollFlags::IN)];
            if let Some(fd) = fd {
                fds.push(PollFd::new(fd, PollFlags::IN));
            }
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return Waited::Ready,
                Ok(_) => {
                    if !fds[0].revents().is_empty() {
                        return Waited::Unlocked;
                    }
                    return Waited::Ready;
                }
            }
        }
    }

    /// The connection, made now if there is none: attempts with a growing delay until the
    /// server answers or `retry-timeout` has passed.
    fn connection(&self) -> Result<Arc<Client>, gst::FlowError> {
        if let Some(client) = self.state.lock().unwrap().client.clone() {
            return Ok(client);
        }
        let settings = self.settings.lock().unwrap().clone();
        // `start` refused to start without one, and it cannot change after READY.
        let path = settings.socket_path.ok_or(gst::FlowError::Error)?;
        let uid = u32::try_from(settings.server_uid)
            .unwrap_or_else(|_| rustix::process::geteuid().as_raw());
        let deadline = u64::try_from(settings.retry_timeout_ms)
            .ok()
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let err = match Client::connect_to_uid(&path, uid) {
                Ok(client) => {
                    let client = Arc::new(client);
                    gst::info!(
                        CAT,
                        imp = self,
                        "connected to {path} after {attempts} attempt(s); the server lets us hold {} frames",
                        client.max_pending
                    );
                    self.counters.connects.fetch_add(1, Ordering::Relaxed);
                    let mut state = self.state.lock().unwrap();
                    state.client = Some(client.clone());
                    state.last_frame_number = None;
                    return Ok(client);
                }
                Err(e) => e,
            };
            let server_absent = [
                rustix::io::Errno::NOENT,
                rustix::io::Errno::CONNREFUSED,
                rustix::io::Errno::AGAIN,
            ]
            .iter()
            .any(|n| err.raw_os_error() == Some(n.raw_os_error()));
            let now = Instant::now();
            if !server_absent {
                // A server of another user, a refusal, a socket we may not open: retrying
                // changes nothing.
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::OpenRead,
                    ("Cannot receive from {path}: {err}")
                );
                return Err(gst::FlowError::Error);
            }
            if deadline.is_some_and(|d| now >= d) {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::OpenRead,
                    ("No dmabufsink serves {path}: {err}"),
                    [
                        "{attempts} attempts in {} ms (retry-timeout); is the producer running, with socket-path={path}?",
                        settings.retry_timeout_ms
                    ]
                );
                return Err(gst::FlowError::Error);
            }
            if attempts == 1 {
                gst::info!(
                    CAT,
                    imp = self,
                    "no server at {path} yet ({err}): trying again"
                );
            }
            let wait = deadline.map_or(delay, |d| delay.min(d.saturating_duration_since(now)));
            if let Waited::Unlocked = self.wait(None, Some(wait)) {
                return Err(gst::FlowError::Flushing);
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// The buffer of a received frame: one DmaBufMemory per fd, read-only (other clients and
    /// the producer share the pages: a writer downstream gets a copy), a VideoMeta, and the
    /// hold that releases the frame when the last memory goes.
    fn buffer(
        &self,
        client: &Arc<Client>,
        frame: ReceivedFrame,
    ) -> Result<gst::Buffer, gst::FlowError> {
        let info = frame.info;
        let Some(format) = caps::format_of(info.fourcc) else {
            return Err(self.protocol_error(&format!(
                "frame {} has fourcc {}, which no GStreamer video format matches",
                info.frame_number,
                caps::fourcc_name(info.fourcc)
            )));
        };
        let Some(offsets) = caps::meta_offsets(&info, &frame.fd_sizes) else {
            return Err(self.protocol_error(&format!(
                "frame {} places a plane in an fd it does not have",
                info.frame_number
            )));
        };
        let hold = Arc::new(Hold {
            client: client.clone(),
            frame_number: info.frame_number,
            counters: self.counters.clone(),
        });
        let mut buffer = gst::Buffer::new();
        {
            let b = buffer.get_mut().unwrap();
            for (i, (fd, &size)) in frame.fds.into_iter().zip(&frame.fd_sizes).enumerate() {
                let size = usize::try_from(size).map_err(|_| gst::FlowError::Error)?;
                // SAFETY: a dma-buf fd we own (checked by the client on arrival); the memory
                // takes it over and closes it when freed.
                let mut mem = unsafe { self.allocator.alloc_dmabuf(fd, size) }.map_err(|e| {
                    gst::error!(CAT, imp = self, "cannot wrap a received dma-buf: {e}");
                    gst::FlowError::Error
                })?;
                // The first fd's memory holds the frame's bytes (its `size`), the rest of the
                // dma-buf is its maxsize: an importer told the whole dma-buf is in use takes
                // more than the frame (vicodec refuses such a V4L2 buffer).
                if i == 0 && (info.size as usize) < size && info.size > 0 {
                    mem.get_mut().unwrap().resize(0..info.size as usize);
                }
                // SAFETY: a fresh memory nobody else has seen; READONLY makes a writer
                // downstream map a copy instead of the shared pages.
                unsafe {
                    (*mem.as_mut_ptr()).mini_object.flags |= gst::ffi::GST_MEMORY_FLAG_READONLY;
                }
                crate::memory::attach(mem.upcast_ref(), *HOLD_QUARK, MemoryHold(hold.clone()));
                b.append_memory(mem);
            }
            drop(hold);
            let strides: Vec<i32> = info.strides[..info.n_planes as usize]
                .iter()
                .map(|&s| s as i32)
                .collect();
            gst_video::VideoMeta::add_full(
                b,
                gst_video::VideoFrameFlags::empty(),
                format,
                info.width,
                info.height,
                &offsets,
                &strides,
            )
            .map_err(|e| self.protocol_error(&format!("frame {}: {e}", info.frame_number)))?;
            if info.duration != u64::MAX {
                b.set_duration(gst::ClockTime::from_nseconds(info.duration));
            }
            if !self.obj().does_timestamp() && info.pts != u64::MAX {
                b.set_pts(gst::ClockTime::from_nseconds(info.pts));
            }
        }
        Ok(buffer)
    }

    /// Posts a protocol violation of the server as an error; the value for `create` to return.
    fn protocol_error(&self, what: &str) -> gst::FlowError {
        gst::element_imp_error!(
            self,
            gst::StreamError::Decode,
            ("The server broke the protocol: {what}"),
            ["docs/protocol.md"]
        );
        gst::FlowError::Error
    }

    /// Sets caps for `frame` if it differs from the last one described (or downstream asked
    /// to negotiate again). Called without the state lock: setting caps sends an event.
    fn negotiate_frame(
        &self,
        frame: &crate::dmabufsink::protocol::Frame,
    ) -> Result<(), gst::FlowError> {
        let described = (
            frame.fourcc,
            frame.width,
            frame.height,
            frame.modifier,
            frame.duration,
        );
        let asked = {
            let mut state = self.state.lock().unwrap();
            if state.described == Some(described) && !state.renegotiate {
                return Ok(());
            }
            std::mem::take(&mut state.renegotiate)
        };
        let obj = self.obj();
        let pad = obj.src_pad();
        let peer = pad.peer_query_caps(None);
        let Some(caps) = caps::negotiate(frame, Some(&peer)) else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                (
                    "Downstream takes none of the forms of the server's {}x{} {} frames",
                    frame.width,
                    frame.height,
                    caps::fourcc_name(frame.fourcc)
                ),
                ["downstream accepts {peer}"]
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        let changed = self.state.lock().unwrap().caps.as_ref() != Some(&caps);
        if changed || asked {
            gst::info!(CAT, imp = self, "caps {caps}");
            // BaseSrc's own negotiation with these caps alone: it sets them and sends the
            // ALLOCATION query, through which downstream learns how many buffers to expect
            // (V4L2 importers size their queue by it).
            self.state.lock().unwrap().offered = Some(caps.clone());
            let negotiated = self.parent_negotiate();
            self.state.lock().unwrap().offered = None;
            if let Err(e) = negotiated {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ("Downstream refused caps {caps}"),
                    ["{e}"]
                );
                return Err(gst::FlowError::NotNegotiated);
            }
        }
        let mut state = self.state.lock().unwrap();
        state.caps = Some(caps);
        state.described = Some(described);
        state.duration = (frame.duration != u64::MAX && frame.duration != 0)
            .then(|| gst::ClockTime::from_nseconds(frame.duration));
        Ok(())
    }

    /// The connection is gone: forget it, so the next attempt connects anew.
    fn disconnected(&self) {
        let mut state = self.state.lock().unwrap();
        state.client = None;
        state.last_frame_number = None;
    }
}

#[glib::object_subclass]
impl ObjectSubclass for DmabufSrc {
    const NAME: &'static str = "GstDmabufSrc";
    type Type = super::DmabufSrc;
    type ParentType = gst_base::PushSrc;
}

impl ObjectImpl for DmabufSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb("The socket of the dmabufsink to receive frames from (its socket-path)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt64::builder("server-uid")
                    .nick("Server uid")
                    .blurb(
                        "The uid the server must run as (SO_PEERCRED), so another user's process that \
                         took the path is not trusted; -1: our own uid",
                    )
                    .minimum(-1)
                    .maximum(u32::MAX.into())
                    .default_value(DEFAULT_SERVER_UID)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("is-live")
                    .nick("Is live")
                    .blurb("Act as a live source (frames come at the producer's pace)")
                    .default_value(DEFAULT_IS_LIVE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("retry-timeout")
                    .nick("Retry timeout")
                    .blurb(
                        "Milliseconds to keep trying to connect, at start and when the server went away \
                         without ending its stream, before failing; -1: forever",
                    )
                    .minimum(-1)
                    .default_value(DEFAULT_RETRY_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "frames (received), released (frames given back to the server), release-failures, \
                         missed (frames the server skipped for us), connects",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        match pspec.name() {
            "socket-path" => s.socket_path = value.get().unwrap(),
            "server-uid" => s.server_uid = value.get().unwrap(),
            // BaseSrc keeps it.
            "is-live" => {
                drop(s);
                self.obj().set_live(value.get().unwrap());
            }
            "retry-timeout" => s.retry_timeout_ms = value.get().unwrap(),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats_structure().to_value();
        }
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "socket-path" => s.socket_path.to_value(),
            "server-uid" => s.server_uid.to_value(),
            "is-live" => self.obj().is_live().to_value(),
            "retry-timeout" => s.retry_timeout_ms.to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_live(DEFAULT_IS_LIVE);
        obj.set_format(gst::Format::Time);
        // Frames are stamped with our running time when they arrive: the producer's
        // timestamps belong to its own clock.
        obj.set_do_timestamp(true);
    }
}

impl GstObjectImpl for DmabufSrc {}

impl ElementImpl for DmabufSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "dma-buf source",
                "Source/Video",
                "Receives the dma-buf frames a dmabufsink shares over its Unix socket, without a copy",
                "gst-vmem developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &formats::dmabuf_caps(),
                )
                .unwrap(),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseSrcImpl for DmabufSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        if self.settings.lock().unwrap().socket_path.is_none() {
            return Err(gst::error_msg!(
                gst::ResourceError::NotFound,
                ("No socket-path: set it to the socket-path of the dmabufsink to receive from")
            ));
        }
        *self.state.lock().unwrap() = State::default();
        for c in [
            &self.counters.frames,
            &self.counters.released,
            &self.counters.release_failures,
            &self.counters.missed,
            &self.counters.connects,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Frames still held downstream keep the connection (their release hooks own it) until
        // they are freed; the source lets go of it now.
        *self.state.lock().unwrap() = State::default();
        Ok(())
    }

    fn is_seekable(&self) -> bool {
        false
    }

    /// Caps are set when the first frame tells what they are ([`DmabufSrc::negotiate_frame`]);
    /// a renegotiation downstream asks for happens with the next frame.
    fn negotiate(&self) -> Result<(), gst::LoggableError> {
        self.state.lock().unwrap().renegotiate = true;
        Ok(())
    }

    /// While a frame's caps are negotiated, those caps alone; else every form we can produce.
    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let offered = self.state.lock().unwrap().offered.clone();
        match offered {
            Some(caps) => Some(match filter {
                Some(f) => f.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
                None => caps,
            }),
            None => self.parent_caps(filter),
        }
    }

    /// Frames bring their own memory: no pool is used (nor allocated). Downstream's answer
    /// still told it what to expect.
    fn decide_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        while query.allocation_pools().len() > 0 {
            query.remove_nth_allocation_pool(0);
        }
        Ok(())
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            // A frame is out as soon as it arrives; until one has, its duration is unknown.
            let duration = self
                .state
                .lock()
                .unwrap()
                .duration
                .unwrap_or(gst::ClockTime::ZERO);
            let live = self.obj().is_live();
            q.set(
                live,
                if live { duration } else { gst::ClockTime::ZERO },
                Some(duration),
            );
            return true;
        }
        BaseSrcImplExt::parent_query(self, query)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut count);
        Ok(())
    }
}

impl PushSrcImpl for DmabufSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        loop {
            let client = self.connection()?;
            if let Waited::Unlocked = self.wait(Some(client.socket()), None) {
                return Err(gst::FlowError::Flushing);
            }
            let received = match client.next() {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    self.disconnected();
                    return Err(self.protocol_error(&e.to_string()));
                }
                Err(e) => {
                    gst::warning!(
                        CAT,
                        imp = self,
                        "reading the socket failed: {e}; reconnecting"
                    );
                    self.disconnected();
                    continue;
                }
            };
            match received {
                Received::Frame(frame) => {
                    self.counters.frames.fetch_add(1, Ordering::Relaxed);
                    let number = frame.info.frame_number;
                    let last = self.state.lock().unwrap().last_frame_number.replace(number);
                    if let Some(last) = last
                        && number > last + 1
                    {
                        self.counters
                            .missed
                            .fetch_add(number - last - 1, Ordering::Relaxed);
                    }
                    self.negotiate_frame(&frame.info)?;
                    let buffer = self.buffer(&client, frame)?;
                    return Ok(CreateSuccess::NewBuffer(buffer));
                }
                Received::Bye => {
                    gst::info!(CAT, imp = self, "the server ended its stream");
                    self.disconnected();
                    return Err(gst::FlowError::Eos);
                }
                Received::Closed => {
                    gst::warning!(
                        CAT,
                        imp = self,
                        "the server went away without ending its stream: reconnecting"
                    );
                    self.disconnected();
                }
            }
        }
    }
}
