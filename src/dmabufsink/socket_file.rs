// SPDX-License-Identifier: MPL-2.0
//! dmabufsink's socket file: created without following or replacing anything an attacker put
//! at its path, with the mode and group the access policy asks for, told apart from a stale
//! one by a lock, and removed at the end only if it is still the one we bound.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

static PRIVATE_DIRS: AtomicU64 = AtomicU64::new(0);

/// The socket file at `path`, its lock `path.lock`, and how we know they are still ours.
pub(super) struct SocketFile {
    path: PathBuf,
    /// Device and inode of the socket file we bound: only that is removed at the end.
    id: (u64, u64),
    /// Declared last: released after the socket file is gone.
    _lock: Lock,
}

fn file_id(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

impl SocketFile {
    /// Listens on `path` (`SOCK_SEQPACKET`) with the file mode `mode` (and group `group`).
    ///
    /// The socket is bound inside a fresh private (0700) directory next to `path`, given its
    /// mode and group there, where nobody can swap it for a symlink, and then moved to `path`
    /// without replacing anything. A socket file already at `path` is replaced only when it is
    /// stale: its lock is free and nothing answers on it.
    pub(super) fn create(
        path: &Path,
        mode: u32,
        group: Option<u32>,
    ) -> Result<(OwnedFd, SocketFile), String> {
        let show = path.display();
        SocketAddrUnix::new(path).map_err(|e| format!("{show}: {e}"))?;
        let lock = Lock::acquire(PathBuf::from(format!("{}.lock", path.display())))?;
        if let Ok(md) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !md.file_type().is_socket() {
                return Err(format!("{show} exists and is not a socket"));
            }
            let probe = new_socket().map_err(|e| format!("socket: {e}"))?;
            match rustix::net::connect(&probe, &SocketAddrUnix::new(path).unwrap()) {
                Err(rustix::io::Errno::CONNREFUSED) => {
                    std::fs::remove_file(path)
                        .map_err(|e| format!("cannot remove the stale {show}: {e}"))?;
                }
                Ok(()) | Err(rustix::io::Errno::AGAIN) => {
                    return Err(format!("{show} is in use by another server"));
                }
                Err(e) => return Err(format!("{show}: {e}")),
            }
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = PrivateDir::new(parent)?;
        let tmp = dir.path.join("s");
        let listener = new_socket().map_err(|e| format!("socket: {e}"))?;
        let tmp_addr = SocketAddrUnix::new(&tmp)
            .or_else(|_| SocketAddrUnix::new(format!("/proc/self/fd/{}/s", dir.fd_number())))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        rustix::net::bind(&listener, &tmp_addr).map_err(|e| format!("bind {show}: {e}"))?;
        let guard = Unlink(&tmp);
        rustix::fs::chmod(&tmp, rustix::fs::Mode::from_raw_mode(mode))
            .map_err(|e| format!("chmod {show}: {e}"))?;
        if let Some(gid) = group {
            // Inside our private directory: `tmp` is the socket we bound, not a planted link.
            rustix::fs::chownat(
                rustix::fs::CWD,
                &tmp,
                None,
                Some(rustix::fs::Gid::from_raw(gid)),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| {
                format!("cannot give {show} to group {gid}: {e} (is this user a member of it?)")
            })?;
        }
        let id = file_id(&rustix::fs::lstat(&tmp).map_err(|e| format!("stat {show}: {e}"))?);
        rustix::net::listen(&listener, 8).map_err(|e| format!("listen {show}: {e}"))?;
        move_no_replace(&tmp, path).map_err(|e| match e {
            rustix::io::Errno::EXIST => {
                format!("{show} appeared meanwhile: in use by another server")
            }
            e => format!("cannot move the socket to {show}: {e}"),
        })?;
        std::mem::forget(guard);
        drop(dir);
        Ok((
            listener,
            SocketFile {
                path: path.into(),
                id,
                _lock: lock,
            },
        ))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Only what we bound: another sink may own the path by now.
        if rustix::fs::lstat(&self.path).is_ok_and(|st| file_id(&st) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `PATH.lock`, held (`flock`) while we own `PATH`: every dmabufsink locks before touching
/// `PATH`, so a socket file whose lock is free is stale. Removed (if still ours) on drop.
struct Lock {
    path: PathBuf,
    fd: OwnedFd,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let ours = rustix::fs::fstat(&self.fd).map(|st| file_id(&st));
        if rustix::fs::lstat(&self.path).map(|st| file_id(&st)).ok() == ours.ok() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Lock {
    /// Opens and locks `lock_path`, retrying if its previous holder removed it meanwhile.
    fn acquire(lock_path: PathBuf) -> Result<Lock, String> {
        use rustix::fs::{FlockOperation, Mode, OFlags};
        let show = lock_path.display();
        for _ in 0..8 {
            let fd = rustix::fs::open(
                &lock_path,
                OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| format!("cannot open the lock file {show}: {e}"))?;
            let st = rustix::fs::fstat(&fd).map_err(|e| format!("stat {show}: {e}"))?;
            let uid = rustix::process::geteuid().as_raw();
            if st.st_uid != uid {
                return Err(format!(
                    "the lock file {show} belongs to uid {}, not to us (uid {uid})",
                    st.st_uid
                ));
            }
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(format!(
                        "{} is in use by another dmabufsink (it holds {show})",
                        lock_path.with_extension("").display()
                    ));
                }
                Err(e) => return Err(format!("cannot lock {show}: {e}")),
            }
            if rustix::fs::lstat(&lock_path).is_ok_and(|now| file_id(&now) == file_id(&st)) {
                return Ok(Lock {
                    path: lock_path,
                    fd,
                });
            }
        }
        Err(format!("cannot lock {show}: it keeps being replaced"))
    }
}

/// A fresh directory only we can enter, removed (with whatever is left in it) on drop.
struct PrivateDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl PrivateDir {
    fn new(parent: &Path) -> Result<PrivateDir, String> {
        use rustix::fs::{Mode, OFlags};
        for _ in 0..16 {
            let n = PRIVATE_DIRS.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = parent.join(format!(".dmabufsink-{}-{n}-{nanos:x}", std::process::id()));
            match rustix::fs::mkdir(&path, Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => {
                    return Err(format!(
                        "cannot create a directory in {}: {e}",
                        parent.display()
                    ));
                }
            }
            let dir = rustix::fs::open(
                &path,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            let dir = match dir {
                Ok(fd) => PrivateDir { path, fd },
                Err(e) => {
                    let _ = std::fs::remove_dir(&path);
                    return Err(format!("cannot open {}: {e}", path.display()));
                }
            };
            // A umask with owner bits would leave us a directory we cannot use.
            let st = rustix::fs::fstat(&dir.fd).map_err(|e| format!("stat: {e}"))?;
            if st.st_mode & 0o777 != 0o700 {
                return Err(format!(
                    "{} got mode {:o}, not 0700 (umask?)",
                    dir.path.display(),
                    st.st_mode & 0o777
                ));
            }
            return Ok(dir);
        }
        Err(format!(
            "cannot create a private directory in {}",
            parent.display()
        ))
    }

    fn fd_number(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.fd.as_fd().as_raw_fd()
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path.join("s"));
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Removes a path on drop unless forgotten.
struct Unlink<'a>(&'a Path);

impl Drop for Unlink<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Moves `from` to `to`, failing with EEXIST rather than replacing anything at `to`.
fn move_no_replace(from: &Path, to: &Path) -> Result<(), rustix::io::Errno> {
    use rustix::fs::{CWD, RenameFlags};
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        // Filesystems without RENAME_NOREPLACE: a hard link never replaces either.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            rustix::fs::link(from, to)?;
            let _ = std::fs::remove_file(from);
            Ok(())
        }
        r => r,
    }
}

pub(super) fn new_socket() -> rustix::io::Result<OwnedFd> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
}
