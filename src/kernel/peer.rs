// SPDX-License-Identifier: MPL-2.0
//! Who is at the other end of a Unix socket (`SO_PEERCRED`, `SO_PEERGROUPS`), and group
//! names.
//!
//! rustix's `UCred` holds the pid as a `NonZero`, but the kernel reports pid 0 for a peer in
//! another PID namespace (one that ours cannot see): reading that into a `NonZero` is undefined
//! behaviour. These wrappers read the kernel's `struct ucred` as plain integers.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};

use super::{Error, Result};

/// The credentials the kernel recorded for a socket's peer when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// 0 when the peer's process is not visible in our PID namespace.
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// The peer's credentials (`SO_PEERCRED`).
pub fn peer_credentials(socket: impl AsFd) -> Result<PeerCred> {
    let mut cred = MaybeUninit::<libc::ucred>::zeroed();
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes of a `struct ucred` into `cred`, whose
    // fields are plain integers valid for any value (zeroed beforehand).
    let res = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            cred.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if res != 0 {
        return Err(Error::Io {
            op: "getsockopt(SO_PEERCRED)",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: zero-initialised and then (partly) written by the kernel: any bytes are valid.
    let cred = unsafe { cred.assume_init() };
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// The peer's supplementary groups (`SO_PEERGROUPS`, Linux 4.13+), as recorded at connect.
pub fn peer_groups(socket: impl AsFd) -> Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `groups`' buffer, and sets `len`
        // to the bytes written, or on ERANGE to the bytes needed.
        let res = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if res == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        // NGROUPS_MAX is 65536: a bound on the retries.
        if err.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(Error::Io {
            op: "getsockopt(SO_PEERGROUPS)",
            source: err,
        });
    }
}

/// The gid of a group given by name (through the system's NSS, as `getgrnam`) or as a number.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        let mut grp = MaybeUninit::<libc::group>::uninit();
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: `cname` is NUL-terminated, `grp` and
        // `buf` are writable for their sizes, and `result` is written before it is read.
        let res = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                grp.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if res == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if res != 0 || result.is_null() {
            return None;
        }
        // SAFETY: on success `result` points to `grp`, which getgrnam_r filled in.
        return Some(unsafe { (*result).gr_gid });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socketpair_peer_is_ourselves() {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let (a, _b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let cred = peer_credentials(&a).unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);
        assert_eq!(cred.uid, rustix::process::geteuid().as_raw());
        assert_eq!(cred.gid, rustix::process::getegid().as_raw());
        let groups = peer_groups(&a).unwrap();
        let ours: Vec<u32> = rustix::process::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        assert_eq!(groups, ours);
    }

    #[test]
    fn groups_by_name_and_number() {
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("1234"), Some(1234));
        assert_eq!(group_id("no-such-group-here"), None);
    }
}
