// SPDX-License-Identifier: MPL-2.0
//! dmabufsink's socket side: accepts clients, sends them frames with their dma-buf fds and
//! keeps each sent frame alive until the client releases it. A small thread accepts clients,
//! reads their releases and expires frames held too long; frames are sent from the streaming
//! thread.
//!
//! Peers are untrusted, and the pipeline must never stall because of them. So every socket
//! operation is non-blocking, the work done for one client under the lock is bounded (a few
//! messages per wake-up, and a client can only send as many valid messages as it holds frames),
//! the number of clients is bounded (`max-clients`), and so is the time a client may hold a
//! frame (`hold-timeout`). The only wait is `drop-policy=wait`'s, which the lock is not held
//! across, which `hold-timeout` bounds and which `unlock` interrupts. Frames clients give back
//! are let go only once the lock is released ([`Locked`]).

use std::collections::VecDeque;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

use super::DropPolicy;
use super::protocol::{Frame, Hello, MAX_MESSAGE_SIZE, Message, RefusedReason};
use super::socket_file::SocketFile;
use crate::kernel;

/// Events kept for the element's log between two renders; more are counted, not stored.
const MAX_EVENTS: usize = 64;
/// Connections accepted per wake-up of the socket thread.
const ACCEPT_BUDGET: usize = 16;
/// How long the socket thread sleeps at most, so it sees `stop` and expired frames in time.
const TICK: Duration = Duration::from_millis(100);
/// Back-off after `accept` failed for want of fds or memory: doubles up to the maximum.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub max_pending: u32,
    pub drop_policy: DropPolicy,
    /// Serve clients of any uid (socket file mode 0666).
    pub allow_other_users: bool,
    /// Serve members of this group too (socket file mode 0660, owned by this group).
    pub socket_group: Option<u32>,
    pub max_clients: u32,
    pub hold_timeout: Duration,
}

impl ServerSettings {
    /// The socket file's mode: the kernel checks it at `connect`, before our peer check.
    fn mode(&self) -> u32 {
        if self.allow_other_users {
            0o666
        } else if self.socket_group.is_some() {
            0o660
        } else {
            0o600
        }
    }
}

/// What happened on the socket, for the element's stats and log.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerStats {
    /// Connected now.
    pub clients: u64,
    /// Ever served.
    pub clients_total: u64,
    pub clients_refused: u64,
    pub clients_timed_out: u64,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub frames_released: u64,
    pub protocol_errors: u64,
    pub accept_errors: u64,
}

struct Pending {
    frame_number: u64,
    sent: Instant,
    /// Keeps the frame's pages from being reused until the client releases them.
    _buffer: gst::Buffer,
}

struct Client {
    /// Shared with the socket thread's poll, so it waits without the lock and without a dup.
    fd: Arc<OwnedFd>,
    pid: i32,
    /// Frames sent and not yet released, oldest first (at most `max-pending`).
    pending: VecDeque<Pending>,
}

impl Client {
    /// When its oldest frame has been held for `hold`.
    fn deadline(&self, hold: Duration) -> Option<Instant> {
        self.pending.front().map(|p| p.sent + hold)
    }
}

/// How a client is named in the log: pid 0 means its process is in a PID namespace ours
/// cannot see.
fn who(pid: i32) -> String {
    if pid == 0 {
        "client (pid not visible: another PID namespace)".into()
    } else {
        format!("client pid {pid}")
    }
}

/// The socket server: its state, shared with the thread that services it.
pub struct Server {
    inner: Arc<Mutex<Inner>>,
    stop: Arc<AtomicBool>,
    /// Set by [`Server::interrupt`]: a waiting `send` returns at once.
    flushing: AtomicBool,
    /// An eventfd a waiting `send` polls, written by [`Server::interrupt`].
    wake: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Declared last: the file goes after the thread and the clients.
    _file: SocketFile,
}

impl Server {
    /// Listens on `path` (see [`SocketFile::create`]) and starts servicing clients.
    pub fn bind(path: &Path, settings: ServerSettings) -> Result<Server, String> {
        let (listener, file) = SocketFile::create(path, settings.mode(), settings.socket_group)?;
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| format!("eventfd: {e}"))?;
        let released = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| format!("eventfd: {e}"))?;
        let inner = Arc::new(Mutex::new(Inner {
            listener: Arc::new(listener),
            released: Arc::new(released),
            waiting: false,
            settings,
            clients: Vec::new(),
            stats: ServerStats::default(),
            events: Vec::new(),
            events_lost: 0,
            accept_paused_until: None,
            accept_backoff: ACCEPT_BACKOFF_MIN,
            to_drop: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (inner, stop) = (inner.clone(), stop.clone());
            std::thread::Builder::new()
                .name("dmabufsink-socket".into())
                .spawn(move || service(&inner, &stop))
                .map_err(|e| format!("cannot start the socket thread: {e}"))?
        };
        Ok(Server {
            inner,
            stop,
            flushing: AtomicBool::new(false),
            wake,
            thread: Some(thread),
            _file: file,
        })
    }

    /// Sends `frame` (whose pages `buffer` holds) to every client that has room for it. With
    /// `drop-policy=wait` it first waits for full clients, without the lock, until each has
    /// room or has held its oldest frame for `hold-timeout` (and is then disconnected), or
    /// until [`Server::interrupt`].
    pub fn send(&self, frame: &Frame, fds: &[BorrowedFd<'_>], buffer: &gst::Buffer) {
        let bytes = Message::Frame(*frame).encode();
        let mut inner = lock(&self.inner);
        inner.service_clients(Instant::now());
        while inner.settings.drop_policy == DropPolicy::Wait && !self.flushing() {
            let hold = inner.settings.hold_timeout;
            let max = inner.settings.max_pending as usize;
            let full: Vec<(Arc<OwnedFd>, Instant)> = inner
                .clients
                .iter()
                .filter(|c| c.pending.len() >= max)
                .filter_map(|c| Some((c.fd.clone(), c.deadline(hold)?)))
                .collect();
            let Some(deadline) = full.iter().map(|(_, d)| *d).min() else {
                break;
            };
            // The socket thread may read the release we wait for: it then signals `released`.
            inner.waiting = true;
            let released = inner.released.clone();
            drop(inner);
            let mut polled: Vec<PollFd<'_>> = full
                .iter()
                .map(|(fd, _)| PollFd::new(fd.as_ref(), PollFlags::IN))
                .chain([
                    PollFd::new(&self.wake, PollFlags::IN),
                    PollFd::new(released.as_ref(), PollFlags::IN),
                ])
                .collect();
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = rustix::event::poll(
                &mut polled,
                Some(&timespec(left.max(Duration::from_millis(1)))),
            );
            drop(polled);
            inner = lock(&self.inner);
            inner.waiting = false;
            let mut count = [0u8; 8];
            let _ = rustix::io::read(released.as_ref(), &mut count);
            inner.service_clients(Instant::now());
        }
        inner.send(&bytes, frame.frame_number, fds, buffer);
    }

    fn flushing(&self) -> bool {
        self.flushing.load(Ordering::SeqCst)
    }

    /// Makes a waiting [`Server::send`] return now, and later ones not wait (BaseSink's
    /// `unlock`: flushing or a state change).
    pub fn interrupt(&self) {
        self.flushing.store(true, Ordering::SeqCst);
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Undoes [`Server::interrupt`] (BaseSink's `unlock_stop`).
    pub fn resume(&self) {
        self.flushing.store(false, Ordering::SeqCst);
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut buf);
    }

    pub fn stats(&self) -> ServerStats {
        let inner = lock(&self.inner);
        ServerStats {
            clients: inner.clients.len() as u64,
            ..inner.stats
        }
    }

    /// What happened since the last call, for the element's log.
    pub fn take_events(&self) -> Vec<String> {
        let mut inner = lock(&self.inner);
        let mut events = std::mem::take(&mut inner.events);
        let lost = std::mem::take(&mut inner.events_lost);
        if lost > 0 {
            events.push(format!("... and {lost} more socket events"));
        }
        events
    }

    /// Says goodbye to every client and lets them go with their unreleased frames.
    pub fn finish(&self) {
        lock(&self.inner).finish();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.finish();
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// The socket thread: wakes on a new connection, a client message or every [`TICK`]; each
/// wake-up does a bounded amount of work under the lock.
fn service(inner: &Mutex<Inner>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let (listener, clients, timeout) = {
            let inner = lock(inner);
            let now = Instant::now();
            let (listener, timeout) = match inner.accept_paused_until {
                Some(until) if until > now => (None, (until - now).min(TICK)),
                _ => (Some(inner.listener.clone()), TICK),
            };
            let clients: Vec<Arc<OwnedFd>> = inner.clients.iter().map(|c| c.fd.clone()).collect();
            (listener, clients, timeout)
        };
        let mut polled: Vec<PollFd<'_>> = listener
            .iter()
            .chain(clients.iter())
            .map(|fd| PollFd::new(fd.as_ref(), PollFlags::IN))
            .collect();
        match rustix::event::poll(&mut polled, Some(&timespec(timeout))) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => std::thread::sleep(TICK),
        }
        drop(polled);
        let mut inner = lock(inner);
        let now = Instant::now();
        inner.accept(now);
        inner.service_clients(now);
    }
}

/// The server's state: listener, clients and what they hold.
struct Inner {
    listener: Arc<OwnedFd>,
    /// An eventfd the socket thread writes when it read a release while `send` waits.
    released: Arc<OwnedFd>,
    waiting: bool,
    settings: ServerSettings,
    clients: Vec<Client>,
    stats: ServerStats,
    events: Vec<String>,
    events_lost: u64,
    /// After `accept` failed for want of fds or memory, the listener rests until then.
    accept_paused_until: Option<Instant>,
    accept_backoff: Duration,
    /// Frames no client holds any more, dropped once the lock is released ([`Locked`]).
    to_drop: Vec<Pending>,
}

/// The server's state, locked. A frame's last reference runs its owners' code (its pool's
/// release, its metas' free functions), which may call back into the sink (its `stats` lock
/// this): frames let go under the lock are dropped only after it is released.
struct Locked<'a>(Option<MutexGuard<'a, Inner>>);

fn lock(inner: &Mutex<Inner>) -> Locked<'_> {
    Locked(Some(inner.lock().unwrap()))
}

impl std::ops::Deref for Locked<'_> {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        self.0.as_ref().unwrap()
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let to_drop = self
            .0
            .as_mut()
            .map(|inner| std::mem::take(&mut inner.to_drop));
        drop(self.0.take());
        drop(to_drop);
    }
}

impl Inner {
    /// Lets `client` go; its unreleased frames are dropped once the lock is released.
    fn retire(&mut self, client: Client) {
        self.to_drop.extend(client.pending);
    }

    fn event(&mut self, what: String) {
        if self.events.len() < MAX_EVENTS {
            self.events.push(what);
        } else {
            self.events_lost += 1;
        }
    }

    /// Accepts at most [`ACCEPT_BUDGET`] waiting connections.
    fn accept(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| until > now) {
            return;
        }
        self.accept_paused_until = None;
        for _ in 0..ACCEPT_BUDGET {
            let fd = match rustix::net::accept_with(
                &*self.listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => return,
                Err(rustix::io::Errno::CONNABORTED) => continue,
                Err(e) => {
                    // Out of fds (EMFILE, ENFILE) or memory: the connection stays queued and
                    // the listener stays readable, so retrying now would spin. Rest instead.
                    self.stats.accept_errors += 1;
                    if self.accept_backoff == ACCEPT_BACKOFF_MIN {
                        self.event(format!(
                            "cannot accept clients: {e}; retrying with back-off (raise ulimit -n?)"
                        ));
                    }
                    self.accept_paused_until = Some(now + self.accept_backoff);
                    self.accept_backoff = (self.accept_backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    return;
                }
            };
            self.accept_backoff = ACCEPT_BACKOFF_MIN;
            self.admit(fd);
        }
    }

    /// Serves a new connection, or tells it why not and closes it.
    fn admit(&mut self, fd: OwnedFd) {
        let cred = match kernel::peer_credentials(&fd) {
            Ok(c) => c,
            Err(e) => {
                self.event(format!("refused a client: {e}"));
                self.stats.clients_refused += 1;
                return;
            }
        };
        let refuse = if !self.allowed(&fd, &cred) {
            self.event(format!(
                "refused {} of uid {}: not our uid {}{}",
                who(cred.pid),
                cred.uid,
                rustix::process::geteuid().as_raw(),
                match self.settings.socket_group {
                    Some(g) => format!(" nor a member of group {g}"),
                    None => "; set allow-other-users or socket-group to permit".into(),
                }
            ));
            Some(RefusedReason::UserNotAllowed)
        } else if self.clients.len() >= self.settings.max_clients as usize {
            self.event(format!(
                "refused {}: already {} clients (max-clients)",
                who(cred.pid),
                self.clients.len()
            ));
            Some(RefusedReason::TooManyClients)
        } else {
            None
        };
        if let Some(reason) = refuse {
            self.stats.clients_refused += 1;
            let msg = Message::Refused(reason).encode();
            let _ = kernel::send_with_fds(&fd, &msg, &[], SendFlags::DONTWAIT);
            return;
        }
        let hello = Message::Hello(Hello {
            max_pending: self.settings.max_pending,
        })
        .encode();
        if kernel::send_with_fds(&fd, &hello, &[], SendFlags::DONTWAIT).is_err() {
            return;
        }
        self.stats.clients_total += 1;
        self.event(format!("{} (uid {}) connected", who(cred.pid), cred.uid));
        self.clients.push(Client {
            fd: Arc::new(fd),
            pid: cred.pid,
            pending: VecDeque::new(),
        });
    }

    /// The peer policy: our own uid; any uid with `allow-other-users`; members of
    /// `socket-group` (its primary or a supplementary group) when set.
    fn allowed(&self, fd: &OwnedFd, cred: &kernel::PeerCred) -> bool {
        if cred.uid == rustix::process::geteuid().as_raw() || self.settings.allow_other_users {
            return true;
        }
        let Some(group) = self.settings.socket_group else {
            return false;
        };
        cred.gid == group || kernel::peer_groups(fd).is_ok_and(|groups| groups.contains(&group))
    }

    /// Reads what clients sent (bounded per client) and disconnects those that left, broke
    /// the protocol or held a frame longer than `hold-timeout`.
    fn service_clients(&mut self, now: Instant) {
        let hold = self.settings.hold_timeout;
        let mut i = 0;
        while i < self.clients.len() {
            let gone = match self.read_client(i) {
                Err(why) => Some(why),
                Ok(()) if self.clients[i].deadline(hold).is_some_and(|d| d <= now) => {
                    self.stats.clients_timed_out += 1;
                    Some(format!(
                        "held frame {} for more than hold-timeout ({} ms): disconnecting it",
                        self.clients[i].pending[0].frame_number,
                        hold.as_millis()
                    ))
                }
                Ok(()) => None,
            };
            match gone {
                Some(why) => {
                    let c = self.clients.swap_remove(i);
                    self.event(format!(
                        "{} {why} ({} frames were unreleased)",
                        who(c.pid),
                        c.pending.len()
                    ));
                    self.retire(c);
                }
                None => i += 1,
            }
        }
    }

    /// Reads at most `max-pending + 1` messages of client `i`: a client can have no more
    /// valid ones (each releases a frame it holds), so a flood is caught in one pass. Err:
    /// the client must go, and why.
    fn read_client(&mut self, i: usize) -> Result<(), String> {
        let mut buf = [0u8; MAX_MESSAGE_SIZE];
        for _ in 0..=self.settings.max_pending {
            let client = &mut self.clients[i];
            let (n, fds) = match kernel::recv_with_fds(&*client.fd, &mut buf, RecvFlags::DONTWAIT) {
                Ok((0, _)) => return Err("left".into()),
                Ok(r) => r,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::AGAIN.raw_os_error()) => {
                    return Ok(());
                }
                Err(e) => return Err(format!("is gone ({e})")),
            };
            let error = match Message::decode(&buf[..n], 0) {
                // Clients send no fds; any that came were closed when `fds` dropped.
                _ if !fds.is_empty() => format!("sent {} fds", fds.len()),
                Ok(Message::Release { frame_number }) => {
                    match client
                        .pending
                        .iter()
                        .position(|p| p.frame_number == frame_number)
                    {
                        Some(at) => {
                            let released = client.pending.remove(at);
                            self.to_drop.extend(released);
                            self.stats.frames_released += 1;
                            if self.waiting {
                                let _ = rustix::io::write(&*self.released, &1u64.to_ne_bytes());
                            }
                            continue;
                        }
                        None => format!("released frame {frame_number}, which it does not hold"),
                    }
                }
                Ok(other) => format!("sent unexpected {other:?}"),
                Err(e) => e.to_string(),
            };
            self.stats.protocol_errors += 1;
            return Err(format!("broke the protocol ({error}): disconnecting it"));
        }
        Ok(())
    }

    /// Sends the encoded frame to every client that has room for it.
    fn send(
        &mut self,
        bytes: &[u8],
        frame_number: u64,
        fds: &[BorrowedFd<'_>],
        buffer: &gst::Buffer,
    ) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.clients.len() {
            let client = &mut self.clients[i];
            if client.pending.len() >= self.settings.max_pending as usize {
                self.stats.frames_dropped += 1;
                if self.settings.drop_policy == DropPolicy::Disconnect {
                    let c = self.clients.swap_remove(i);
                    self.event(format!(
                        "{} holds {} frames: disconnecting it",
                        who(c.pid),
                        c.pending.len()
                    ));
                    self.retire(c);
                    continue;
                }
                i += 1;
                continue;
            }
            match kernel::send_with_fds(&*client.fd, bytes, fds, SendFlags::DONTWAIT) {
                Ok(_) => {
                    client.pending.push_back(Pending {
                        frame_number,
                        sent: now,
                        _buffer: buffer.clone(),
                    });
                    self.stats.frames_sent += 1;
                    i += 1;
                }
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::AGAIN.raw_os_error()) => {
                    self.stats.frames_dropped += 1;
                    i += 1;
                }
                Err(e) => {
                    let c = self.clients.swap_remove(i);
                    self.event(format!("{} is gone ({e})", who(c.pid)));
                    self.retire(c);
                }
            }
        }
    }

    /// Tells clients the stream ended and lets them go; their unreleased frames are released.
    fn finish(&mut self) {
        let bye = Message::Bye.encode();
        for i in 0..self.clients.len() {
            // Read what the client sent first: closing a socket with unread messages makes the
            // kernel report ECONNRESET to the peer before the frames still queued for it.
            let _ = self.read_client(i);
            let _ = kernel::send_with_fds(&*self.clients[i].fd, &bye, &[], SendFlags::DONTWAIT);
        }
        for client in std::mem::take(&mut self.clients) {
            self.retire(client);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rustix::net::SocketAddrUnix;

    use super::super::socket_file::new_socket;
    use super::*;

    fn settings() -> ServerSettings {
        ServerSettings {
            max_pending: 4,
            drop_policy: DropPolicy::Skip,
            allow_other_users: false,
            socket_group: None,
            max_clients: 16,
            hold_timeout: Duration::from_secs(5),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmem-server-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn the_socket_file_gets_its_mode_and_only_it_is_removed() {
        let dir = scratch("mode");
        let path = dir.join("s.sock");
        for (s, mode) in [
            (settings(), 0o600),
            (
                ServerSettings {
                    allow_other_users: true,
                    ..settings()
                },
                0o666,
            ),
            (
                ServerSettings {
                    socket_group: Some(rustix::process::getegid().as_raw()),
                    ..settings()
                },
                0o660,
            ),
        ] {
            let server = Server::bind(&path, s).unwrap();
            assert_eq!(mode_of(&path), mode);
            assert!(dir.join("s.sock.lock").exists());
            drop(server);
            assert!(!path.exists() && !dir.join("s.sock.lock").exists());
        }
        // Nothing but the socket and its lock ever appear next to it.
        let server = Server::bind(&path, settings()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["s.sock", "s.sock.lock"]);
        // Someone else's file at the path by the time we stop is left alone.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not ours").unwrap();
        drop(server);
        assert_eq!(std::fs::read(&path).unwrap(), b"not ours");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_live_sink_keeps_its_path_and_a_stale_socket_is_replaced() {
        let dir = scratch("stale");
        let path = dir.join("s.sock");
        let first = Server::bind(&path, settings()).unwrap();
        let err = Server::bind(&path, settings()).err().unwrap();
        assert!(err.contains("in use by another dmabufsink"), "{err}");
        drop(first);
        // A stale socket file: bound, then its process "died" (no lock, nothing listening).
        let stale = new_socket().unwrap();
        rustix::net::bind(&stale, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        drop(stale);
        let server = Server::bind(&path, settings()).unwrap();
        drop(server);
        // A live server that is no dmabufsink (no lock) is not replaced.
        let other = new_socket().unwrap();
        rustix::net::bind(&other, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&other, 1).unwrap();
        let err = Server::bind(&path, settings()).err().unwrap();
        assert!(err.contains("in use by another server"), "{err}");
        drop(other);
        std::fs::remove_file(&path).unwrap();
        // Not a socket: refused, untouched.
        std::fs::write(&path, b"data").unwrap();
        let err = Server::bind(&path, settings()).err().unwrap();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_at_the_path_is_neither_followed_nor_replaced() {
        let dir = scratch("symlink");
        let target = dir.join("precious");
        std::fs::write(&target, b"keep").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.join("s.sock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = Server::bind(&path, settings()).err().unwrap();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(mode_of(&target), 0o644);
        // A symlink as the lock file is not followed either.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("s.sock.lock")).unwrap();
        assert!(Server::bind(&path, settings()).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_long_path_still_binds() {
        let dir = scratch("long");
        // sun_path holds 107 bytes: a name that just fits, so the private directory's would not.
        let base = dir.display().to_string().len() + 1;
        let path = dir.join("x".repeat(107 - base));
        let server = Server::bind(&path, settings()).unwrap();
        let c = new_socket().unwrap();
        rustix::net::connect(&c, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        drop((c, server));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
