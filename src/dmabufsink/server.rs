// SPDX-License-Identifier: MPL-2.0
//! dmabufsink's socket side: accepts clients, sends them frames with their dma-buf fds and
//! keeps each sent frame alive until the client releases it. A small thread accepts clients
//! and reads their releases as they come; frames are sent from the streaming thread. Every
//! socket operation is non-blocking: a slow, dead or hostile client can cost itself frames,
//! never the pipeline its throughput.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

use super::DropPolicy;
use super::protocol::{Frame, Hello, MAX_MESSAGE_SIZE, Message};
use crate::kernel;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub max_pending: u32,
    pub drop_policy: DropPolicy,
    pub allow_other_users: bool,
}

/// What happened on the socket, for the element's stats and log.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerStats {
    pub clients: u64,
    pub clients_refused: u64,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub frames_released: u64,
    pub protocol_errors: u64,
}

struct Client {
    fd: OwnedFd,
    pid: i32,
    /// Frames sent and not yet released, kept alive (with their pages) until then.
    pending: HashMap<u64, gst::Buffer>,
}

/// The socket server: its state, shared with the thread that services it.
pub struct Server {
    inner: Arc<Mutex<Inner>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Server {
    /// Listens on `path` (see [`Inner::bind`]) and starts servicing clients.
    pub fn bind(path: &Path, settings: ServerSettings) -> Result<Server, String> {
        let inner = Arc::new(Mutex::new(Inner::bind(path, settings)?));
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
            thread: Some(thread),
            path: path.into(),
        })
    }

    pub fn send(&self, frame: &Frame, fds: &[BorrowedFd<'_>], buffer: &gst::Buffer) {
        let mut inner = self.inner.lock().unwrap();
        inner.poll();
        inner.send(frame, fds, buffer);
    }

    pub fn stats(&self) -> ServerStats {
        self.inner.lock().unwrap().stats
    }

    pub fn client_count(&self) -> usize {
        self.inner.lock().unwrap().clients.len()
    }

    /// What happened since the last call, for the element's log.
    pub fn take_events(&self) -> Vec<String> {
        std::mem::take(&mut self.inner.lock().unwrap().events)
    }

    /// Says goodbye to every client and lets them go with their unreleased frames.
    pub fn finish(&self) {
        self.inner.lock().unwrap().finish();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.finish();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The service thread: wakes on a new connection or a client message, or every 100 ms to
/// see whether it should stop.
fn service(inner: &Mutex<Inner>, stop: &AtomicBool) {
    use rustix::event::{PollFd, PollFlags, Timespec};
    while !stop.load(Ordering::SeqCst) {
        // Wait on dups of the fds, so the lock is not held while waiting.
        let fds: Vec<OwnedFd> = {
            let inner = inner.lock().unwrap();
            std::iter::once(inner.listener.as_fd())
                .chain(inner.clients.iter().map(|c| c.fd.as_fd()))
                .filter_map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 0).ok())
                .collect()
        };
        let mut polled: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        match rustix::event::poll(&mut polled, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => inner.lock().unwrap().poll(),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// The server's state: listener, clients and what they hold.
pub struct Inner {
    listener: OwnedFd,
    settings: ServerSettings,
    clients: Vec<Client>,
    stats: ServerStats,
    events: Vec<String>,
}

impl Inner {
    /// Listens on `path` (`SOCK_SEQPACKET`, mode 0600). A stale socket file left by a dead
    /// process is replaced; a live one, or any other file, is an error.
    pub fn bind(path: &Path, settings: ServerSettings) -> Result<Inner, String> {
        let addr = SocketAddrUnix::new(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Ok(md) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !md.file_type().is_socket() {
                return Err(format!("{} exists and is not a socket", path.display()));
            }
            let probe = new_socket().map_err(|e| format!("socket: {e}"))?;
            match rustix::net::connect(&probe, &addr) {
                Err(rustix::io::Errno::CONNREFUSED) => {
                    let _ = std::fs::remove_file(path);
                }
                Ok(()) | Err(rustix::io::Errno::AGAIN) => {
                    return Err(format!("{} is in use by another server", path.display()));
                }
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        let listener = new_socket().map_err(|e| format!("socket: {e}"))?;
        rustix::net::bind(&listener, &addr).map_err(|e| format!("bind {}: {e}", path.display()))?;
        // Owner only; the peer-uid check below also covers the instant before this chmod.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        rustix::net::listen(&listener, 8).map_err(|e| format!("listen {}: {e}", path.display()))?;
        Ok(Inner {
            listener,
            settings,
            clients: Vec::new(),
            stats: ServerStats::default(),
            events: Vec::new(),
        })
    }

    /// Accepts waiting clients and reads what connected ones sent (releases, disconnects).
    pub fn poll(&mut self) {
        self.accept();
        let mut i = 0;
        while i < self.clients.len() {
            if self.read_client(i) {
                i += 1;
            } else {
                let c = self.clients.swap_remove(i);
                self.events.push(format!(
                    "client pid {} left ({} frames were unreleased)",
                    c.pid,
                    c.pending.len()
                ));
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let fd = match rustix::net::accept_with(
                &self.listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => return,
                Err(e) => {
                    self.events.push(format!("accept: {e}"));
                    return;
                }
            };
            let cred = match rustix::net::sockopt::socket_peercred(&fd) {
                Ok(c) => c,
                Err(e) => {
                    self.events.push(format!("SO_PEERCRED: {e}"));
                    continue;
                }
            };
            let uid = rustix::process::geteuid();
            if cred.uid != uid && !self.settings.allow_other_users {
                self.stats.clients_refused += 1;
                self.events.push(format!(
                    "refused client pid {} of uid {} (not uid {}; set allow-other-users to permit)",
                    cred.pid.as_raw_nonzero(),
                    cred.uid.as_raw(),
                    uid.as_raw()
                ));
                continue;
            }
            let hello = Message::Hello(Hello {
                max_pending: self.settings.max_pending,
            })
            .encode();
            if kernel::send_with_fds(&fd, &hello, &[], SendFlags::DONTWAIT).is_err() {
                continue;
            }
            self.stats.clients += 1;
            self.events.push(format!(
                "client pid {} connected",
                cred.pid.as_raw_nonzero()
            ));
            self.clients.push(Client {
                fd,
                pid: cred.pid.as_raw_nonzero().get(),
                pending: HashMap::new(),
            });
        }
    }

    /// Reads every message a client has sent; false when it should go.
    fn read_client(&mut self, i: usize) -> bool {
        let mut buf = [0u8; MAX_MESSAGE_SIZE];
        loop {
            let (n, _fds) =
                match kernel::recv_with_fds(&self.clients[i].fd, &mut buf, RecvFlags::DONTWAIT) {
                    Ok((0, _)) => return false,
                    Ok(r) => r,
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::AGAIN.raw_os_error()) => {
                        return true;
                    }
                    Err(_) => return false,
                };
            // Clients send no fds; any that came were closed when `_fds` dropped.
            match Message::decode(&buf[..n], 0) {
                Ok(Message::Release { frame_number }) => {
                    if self.clients[i].pending.remove(&frame_number).is_some() {
                        self.stats.frames_released += 1;
                    }
                }
                Ok(other) => return self.protocol_error(i, &format!("unexpected {other:?}")),
                Err(e) => return self.protocol_error(i, &e.to_string()),
            }
        }
    }

    fn protocol_error(&mut self, i: usize, what: &str) -> bool {
        self.stats.protocol_errors += 1;
        self.events.push(format!(
            "client pid {}: protocol error ({what}): disconnecting it",
            self.clients[i].pid
        ));
        false
    }

    /// Sends `frame` (whose pages `buffer` holds) to every client that has room for it.
    pub fn send(&mut self, frame: &Frame, fds: &[BorrowedFd<'_>], buffer: &gst::Buffer) {
        let bytes = Message::Frame(*frame).encode();
        let mut i = 0;
        while i < self.clients.len() {
            let client = &mut self.clients[i];
            if client.pending.len() >= self.settings.max_pending as usize {
                self.stats.frames_dropped += 1;
                if self.settings.drop_policy == DropPolicy::Disconnect {
                    let c = self.clients.swap_remove(i);
                    self.events.push(format!(
                        "client pid {} holds {} frames: disconnecting it",
                        c.pid,
                        c.pending.len()
                    ));
                    continue;
                }
                i += 1;
                continue;
            }
            match kernel::send_with_fds(&client.fd, &bytes, fds, SendFlags::DONTWAIT) {
                Ok(_) => {
                    client.pending.insert(frame.frame_number, buffer.clone());
                    self.stats.frames_sent += 1;
                    i += 1;
                }
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::AGAIN.raw_os_error()) => {
                    self.stats.frames_dropped += 1;
                    i += 1;
                }
                Err(e) => {
                    let c = self.clients.swap_remove(i);
                    self.events.push(format!("client pid {} gone ({e})", c.pid));
                }
            }
        }
    }

    /// Tells clients the stream ended and lets them go; their unreleased frames are released.
    pub fn finish(&mut self) {
        let bye = Message::Bye.encode();
        for c in self.clients.drain(..) {
            let _ = kernel::send_with_fds(&c.fd, &bye, &[], SendFlags::DONTWAIT);
        }
    }
}

fn new_socket() -> rustix::io::Result<OwnedFd> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
}
