// SPDX-License-Identifier: MPL-2.0
//! The element: properties, pads and the BaseSink virtual methods. The work is split by job:
//! [`drm`] (PRIME import into `drm-device`, the scan-out check) and [`share`] (the socket).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;

mod drm;
mod share;

use self::drm::{Drm, open_drm_device};
use self::share::frame_layout;
use super::DropPolicy;
use super::server::{Server, ServerSettings, ServerStats};
use crate::formats;
use crate::kernel::{self, DrmUse};
use crate::memory::dmabuf_fd;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "dmabufsink",
        gst::DebugColorFlags::empty(),
        Some("dma-buf consumer and sharer"),
    )
});

/// Imports kept at most; past it the cache starts over (a pool that keeps allocating).
pub(super) const MAX_IMPORTS: usize = 64;

const DEFAULT_DRM_ADDFB: bool = false;
const DEFAULT_ALLOW_NON_DMABUF: bool = false;
const DEFAULT_MAX_PENDING: u32 = 4;
const DEFAULT_DROP_POLICY: DropPolicy = DropPolicy::Skip;
const DEFAULT_ALLOW_OTHER_USERS: bool = false;
/// Enough for a few viewers and recorders; each client costs an fd and may hold
/// `max-pending` frames, so this also bounds how far upstream's pool can grow for clients.
const DEFAULT_MAX_CLIENTS: u32 = 16;
/// Generous for a consumer that encodes or displays a frame (even under emulation), short
/// enough that a fixed-size upstream pool does not stall for long on a client that hangs.
const DEFAULT_HOLD_TIMEOUT_MS: u32 = 5000;

#[derive(Debug, Clone)]
struct Settings {
    drm_device: Option<String>,
    drm_addfb: bool,
    allow_non_dmabuf: bool,
    socket_path: Option<String>,
    max_pending: u32,
    drop_policy: DropPolicy,
    allow_other_users: bool,
    socket_group: Option<String>,
    max_clients: u32,
    hold_timeout_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            drm_device: None,
            drm_addfb: DEFAULT_DRM_ADDFB,
            allow_non_dmabuf: DEFAULT_ALLOW_NON_DMABUF,
            socket_path: None,
            max_pending: DEFAULT_MAX_PENDING,
            drop_policy: DEFAULT_DROP_POLICY,
            allow_other_users: DEFAULT_ALLOW_OTHER_USERS,
            socket_group: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            hold_timeout_ms: DEFAULT_HOLD_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    frames: u64,
    imported: u64,
    import_failures: u64,
    addfb_failures: u64,
    non_dmabuf: u64,
}

struct State {
    info: Option<gst_video::VideoInfo>,
    fourcc: u32,
    /// Taken out of the state while a frame is imported, which is done without the lock.
    drm: Option<Drm>,
    server: Option<Arc<Server>>,
}

#[derive(Default)]
pub struct DmabufSink {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    /// The socket server as well, for `unlock` and the stats, which must not wait for `state`.
    server: Mutex<Option<Arc<Server>>>,
    stats: Mutex<Stats>,
    /// Whether this run posted its warning already (only the first is posted; all are logged).
    warned: AtomicBool,
    /// The socket's counters as they were when the sink last stopped.
    last_server_stats: Mutex<ServerStats>,
}

impl DmabufSink {
    fn stats_structure(&self) -> gst::Structure {
        let s = *self.stats.lock().unwrap();
        let server = self.server.lock().unwrap().clone();
        let ss = server
            .as_ref()
            .map_or_else(|| *self.last_server_stats.lock().unwrap(), |s| s.stats());
        gst::Structure::builder("dmabufsink-stats")
            .field("frames", s.frames)
            .field("imported", s.imported)
            .field("import-failures", s.import_failures)
            .field("addfb-failures", s.addfb_failures)
            .field("non-dmabuf", s.non_dmabuf)
            .field("clients", if server.is_some() { ss.clients } else { 0 })
            .field("clients-total", ss.clients_total)
            .field("clients-refused", ss.clients_refused)
            .field("clients-timed-out", ss.clients_timed_out)
            .field("frames-sent", ss.frames_sent)
            .field("frames-dropped", ss.frames_dropped)
            .field("frames-released", ss.frames_released)
            .field("protocol-errors", ss.protocol_errors)
            .field("accept-errors", ss.accept_errors)
            .build()
    }

    /// Logs `warnings` and posts the first of the run as a warning message. Must be called
    /// without the state lock: a bus sync handler may read `stats`, which takes it.
    fn warn(&self, warnings: &[String]) {
        for what in warnings {
            gst::warning!(CAT, imp = self, "{what}");
        }
        if let Some(what) = warnings.first()
            && !self.warned.swap(true, Ordering::SeqCst)
        {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Failed,
                ("{what}"),
                ["see the stats property for counts"]
            );
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for DmabufSink {
    const NAME: &'static str = "GstDmabufSink";
    type Type = super::DmabufSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for DmabufSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("drm-device")
                    .nick("DRM device")
                    .blurb(
                        "PRIME-import every new dma-buf into this DRM node: a path or driver:NAME \
                         (its render node; its card node with drm-addfb). Unset: no import",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("drm-addfb")
                    .nick("DRM AddFB2 check")
                    .blurb("Also check each imported dma-buf can be scanned out (DRM_IOCTL_MODE_ADDFB2 with the negotiated format)")
                    .default_value(DEFAULT_DRM_ADDFB)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("allow-non-dmabuf")
                    .nick("Allow non-dma-buf")
                    .blurb("Count buffers that are not dma-buf memory (stats: non-dmabuf) instead of failing on them")
                    .default_value(DEFAULT_ALLOW_NON_DMABUF)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb(
                        "Share frames over a Unix socket at this path, passing their dma-buf fds: any \
                         client may write to the pages (docs/protocol.md). Unset: no sharing",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-pending")
                    .nick("Max pending")
                    .blurb("Frames a client may hold unreleased; past it the drop policy applies")
                    .minimum(1)
                    .maximum(64)
                    .default_value(DEFAULT_MAX_PENDING)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("drop-policy", DEFAULT_DROP_POLICY)
                    .nick("Drop policy")
                    .blurb(
                        "What happens to a client holding max-pending frames: it misses frames (skip), is \
                         disconnected (disconnect), or the pipeline waits for it up to hold-timeout (wait)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("allow-other-users")
                    .nick("Allow other users")
                    .blurb(
                        "Serve clients of every uid: the socket file gets mode 0666 and the SO_PEERCRED \
                         uid check is off. Off: only our own uid (and socket-group's members, if set)",
                    )
                    .default_value(DEFAULT_ALLOW_OTHER_USERS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("socket-group")
                    .nick("Socket group")
                    .blurb(
                        "Also serve members of this group (a name or a gid; this user must be a member): \
                         the socket file gets this group and mode 0660. Unset: no group access",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-clients")
                    .nick("Max clients")
                    .blurb(
                        "Clients served at once; more are told so and disconnected (stats: clients-refused). \
                         Bounds the fds and the frames clients can hold (max-clients x max-pending)",
                    )
                    .minimum(1)
                    .maximum(1024)
                    .default_value(DEFAULT_MAX_CLIENTS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("hold-timeout")
                    .nick("Hold timeout")
                    .blurb(
                        "Milliseconds a client may hold a frame unreleased; a client that holds one longer \
                         is disconnected and its frames return upstream (stats: clients-timed-out)",
                    )
                    .minimum(10)
                    .maximum(3_600_000)
                    .default_value(DEFAULT_HOLD_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "frames, imported, import-failures, addfb-failures, non-dmabuf, and the socket's \
                         counters (clients, clients-total, clients-refused, clients-timed-out, frames-sent, \
                         frames-dropped, frames-released, protocol-errors, accept-errors: docs/protocol.md)",
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
            "drm-device" => s.drm_device = value.get().unwrap(),
            "drm-addfb" => s.drm_addfb = value.get().unwrap(),
            "allow-non-dmabuf" => s.allow_non_dmabuf = value.get().unwrap(),
            "socket-path" => s.socket_path = value.get().unwrap(),
            "max-pending" => s.max_pending = value.get().unwrap(),
            "drop-policy" => s.drop_policy = value.get().unwrap(),
            "allow-other-users" => s.allow_other_users = value.get().unwrap(),
            "socket-group" => s.socket_group = value.get().unwrap(),
            "max-clients" => s.max_clients = value.get().unwrap(),
            "hold-timeout" => s.hold_timeout_ms = value.get().unwrap(),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats_structure().to_value();
        }
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "drm-device" => s.drm_device.to_value(),
            "drm-addfb" => s.drm_addfb.to_value(),
            "allow-non-dmabuf" => s.allow_non_dmabuf.to_value(),
            "socket-path" => s.socket_path.to_value(),
            "max-pending" => s.max_pending.to_value(),
            "drop-policy" => s.drop_policy.to_value(),
            "allow-other-users" => s.allow_other_users.to_value(),
            "socket-group" => s.socket_group.to_value(),
            "max-clients" => s.max_clients.to_value(),
            "hold-timeout" => s.hold_timeout_ms.to_value(),
            _ => unimplemented!(),
        }
    }
}

impl GstObjectImpl for DmabufSink {}

impl ElementImpl for DmabufSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "dma-buf sink",
                "Sink/Video",
                "Verifies dma-buf video, imports it into a DRM device and shares it with other processes \
                 over a Unix socket",
                "gst-vmem developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &formats::dmabuf_caps(),
                )
                .unwrap(),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for DmabufSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        // Scan-out checks need a card node; import alone is better served by a render node.
        let purpose = if settings.drm_addfb {
            DrmUse::Kms
        } else {
            DrmUse::Import
        };
        let drm = match &settings.drm_device {
            Some(spec) => Some(Arc::new(open_drm_device(spec, purpose).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenReadWrite,
                    ("Cannot open DRM device {spec}: {e}")
                )
            })?)),
            None => None,
        };
        let socket_group = match &settings.socket_group {
            Some(name) => Some(kernel::group_id(name).ok_or_else(|| {
                gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("socket-group: no group {name}: give a group name or a numeric gid")
                )
            })?),
            None => None,
        };
        let server = match &settings.socket_path {
            Some(path) => Some(Arc::new(
                Server::bind(
                    Path::new(path),
                    ServerSettings {
                        max_pending: settings.max_pending,
                        drop_policy: settings.drop_policy,
                        allow_other_users: settings.allow_other_users,
                        socket_group,
                        max_clients: settings.max_clients,
                        hold_timeout: std::time::Duration::from_millis(
                            settings.hold_timeout_ms.into(),
                        ),
                    },
                )
                .map_err(|e| {
                    gst::error_msg!(
                        gst::ResourceError::OpenWrite,
                        ("Cannot serve on {path}: {e}")
                    )
                })?,
            )),
            None => None,
        };
        *self.server.lock().unwrap() = server.clone();
        if let Some(node) = &drm {
            gst::info!(
                CAT,
                imp = self,
                "importing into {} ({})",
                node.path().display(),
                node.driver()
            );
        }
        *self.state.lock().unwrap() = Some(State {
            info: None,
            fourcc: 0,
            drm: drm.map(|node| Drm {
                node,
                imports: HashMap::new(),
                checked_layouts: HashSet::new(),
                explained: false,
            }),
            server,
        });
        self.warned.store(false, Ordering::SeqCst);
        *self.stats.lock().unwrap() = Stats::default();
        *self.last_server_stats.lock().unwrap() = ServerStats::default();
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Clients, their unreleased frames, imports and the DRM node all go now.
        let state = self.state.lock().unwrap().take();
        let server = self.server.lock().unwrap().take();
        if let Some(server) = server {
            server.finish();
            self.log_server_events(&server);
            *self.last_server_stats.lock().unwrap() = server.stats();
        }
        drop(state);
        gst::debug!(
            CAT,
            imp = self,
            "stats at stop: {:?}",
            *self.stats.lock().unwrap()
        );
        Ok(())
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        let server = self.server.lock().unwrap().clone();
        if let Some(server) = server {
            server.interrupt();
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        let server = self.server.lock().unwrap().clone();
        if let Some(server) = server {
            server.resume();
        }
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let (info, _) = formats::video_info_from_caps(caps)
            .ok_or_else(|| gst::loggable_error!(CAT, "cannot parse caps {caps}"))?;
        let fourcc = formats::drm_fourcc(info.format()).unwrap_or(0);
        let mut state = self.state.lock().unwrap();
        let state = state
            .as_mut()
            .ok_or_else(|| gst::loggable_error!(CAT, "not started"))?;
        state.info = Some(info);
        state.fourcc = fourcc;
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        // Errors and warnings are posted with no lock held: a bus sync handler runs in this
        // thread and may read `stats`, which takes the state lock.
        let settings = self.settings.lock().unwrap().clone();
        // Counted at once, so a message about this frame comes with stats that include it.
        let mut stats = {
            let mut s = self.stats.lock().unwrap();
            s.frames += 1;
            *s
        };
        let frame_number = stats.frames;

        if !crate::memory::is_all_dmabuf(buffer) {
            if settings.allow_non_dmabuf {
                stats.non_dmabuf += 1;
                *self.stats.lock().unwrap() = stats;
                return Ok(gst::FlowSuccess::Ok);
            }
            let kind = buffer
                .iter_memories()
                .find(|m| dmabuf_fd(m).is_none())
                .and_then(|m| m.allocator())
                .map(|a| a.type_().name().to_string())
                .unwrap_or_else(|| "no memory".into());
            gst::element_imp_error!(
                self,
                gst::StreamError::WrongType,
                ("dmabufsink received memory that is not a dma-buf ({kind}): put vmemexport in front of it"),
                ["or set allow-non-dmabuf=true to count such buffers instead"]
            );
            return Err(gst::FlowError::Error);
        }
        for mem in buffer.iter_memories() {
            let fd = dmabuf_fd(mem).unwrap();
            let end = (mem.offset() + mem.size()) as u64;
            match kernel::dmabuf_size(fd) {
                Ok(size) if size >= end => {}
                Ok(size) => {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ("A memory claims bytes up to {end} of a dma-buf of {size} bytes")
                    );
                    return Err(gst::FlowError::Error);
                }
                Err(e) => {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ("Not a usable dma-buf: {e}")
                    );
                    return Err(gst::FlowError::Error);
                }
            }
        }
        // The frame's facts and the DRM imports are taken out of the state: importing and
        // the AddFB2 trial run without the lock, and the imports are put back after.
        let (format, drm, server) = {
            let mut guard = self.state.lock().unwrap();
            let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
            (
                state.info.clone().map(|info| (info, state.fourcc)),
                state.drm.take(),
                state.server.clone(),
            )
        };
        let planes = match format.as_ref().map(|(info, _)| frame_layout(buffer, info)) {
            Some(Ok(planes)) => Some(planes),
            Some(Err(e)) => {
                self.put_back(drm);
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Format,
                    ("A frame's planes do not fit in its memory: {e}"),
                    ["the VideoMeta's offsets and strides describe bytes the buffer does not have"]
                );
                return Err(gst::FlowError::Error);
            }
            None => None,
        };
        let warnings = match drm {
            Some(mut drm) => {
                let format = format.as_ref().map(|(info, fourcc)| (info, *fourcc));
                let warnings = self.import(
                    &mut drm,
                    format,
                    &settings,
                    buffer,
                    planes.as_deref(),
                    &mut stats,
                );
                self.put_back(Some(drm));
                warnings
            }
            None => Vec::new(),
        };
        // With drop-policy=wait, sending may wait: no lock is held.
        let share = match (format, planes, server) {
            (Some((info, fourcc)), Some(planes), Some(server)) => {
                Some((info, fourcc, planes, server))
            }
            _ => None,
        };
        *self.stats.lock().unwrap() = stats;
        self.warn(&warnings);
        if let Some((info, fourcc, planes, server)) = share {
            self.share(&server, &info, fourcc, buffer, &planes, frame_number);
            self.log_server_events(&server);
        }
        Ok(gst::FlowSuccess::Ok)
    }
}
