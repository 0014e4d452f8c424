// SPDX-License-Identifier: MPL-2.0
//! weston as a real Wayland compositor for the tests: started from the test on vkms, waited on
//! through its socket and its desktop, one client per weston, retried when weston crashes
//! (README, "Compositor and GL consumers").

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gstvmem::kernel::{DrmNode, DrmUse};

use super::LogCapture;

#[path = "../../bench/driver/scanout.rs"]
mod scanout;

/// weston took 8-40 s to create its socket under TCG; be generous, a loaded host is slower.
pub const COMPOSITOR_START: Duration = Duration::from_secs(180);
const SOCKET: &str = "wayland-vmem";

/// A weston process of this test: its own XDG_RUNTIME_DIR, killed (and the directory removed)
/// on drop.
pub struct Weston {
    child: Child,
    runtime_dir: PathBuf,
    log: PathBuf,
}

/// A fresh 0700 directory (what XDG_RUNTIME_DIR must be).
fn private_dir(tag: &str) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vmem-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Weston {
    /// Starts weston on vkms and waits for its socket and its desktop. `Err` with its log if it
    /// crashed meanwhile (the caller tries a fresh one); panics if it cannot be run at all (a
    /// missing weston is a failure: the 1.26 and 1.28 userlands have it) or is not up within
    /// [`COMPOSITOR_START`].
    pub fn start() -> Result<Weston, String> {
        let vkms = DrmNode::open_driver("vkms", DrmUse::Kms).expect("the vkms DRM device");
        let card = vkms
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        drop(vkms);
        let runtime_dir = private_dir("weston");
        let log = runtime_dir.join("weston.log");
        let output = std::fs::File::create(runtime_dir.join("weston.out")).unwrap();
        let started = Instant::now();
        // The DRM backend on vkms, so the screen tells when weston-desktop-shell is up (the
        // headless backend crashed as often, README "Compositor and GL consumers"). libseat's
        // noop backend opens devices directly (the guest runs as root, without seatd/logind).
        let child = Command::new("weston")
            .args([
                "--backend=drm",
                &format!("--drm-device={card}"),
                "--renderer=gl",
                &format!("--socket={SOCKET}"),
                "--continue-without-input",
                &format!("--log={}", log.display()),
            ])
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .env("LIBSEAT_BACKEND", "noop")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run weston (the 1.26 and 1.28 userlands must have it): {e}")
            });
        let mut weston = Weston {
            child,
            runtime_dir,
            log,
        };
        let socket = weston.socket();
        while !socket.exists() {
            if let Some(status) = weston.child.try_wait().unwrap() {
                panic!(
                    "weston exited ({status}) before creating its socket:\n{}",
                    weston.logs()
                );
            }
            assert!(
                started.elapsed() < COMPOSITOR_START,
                "weston did not create its socket within {COMPOSITOR_START:?}:\n{}",
                weston.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "weston: socket after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // A client that maps a surface before weston-desktop-shell has drawn the desktop
        // crashed weston (SIGSEGV) in 2 of 2 runs; the screen leaves black once it has.
        while screen().pixels.iter().all(|&b| b == 0) {
            weston.alive("before its desktop was drawn")?;
            assert!(
                started.elapsed() < COMPOSITOR_START,
                "weston drew no desktop within {COMPOSITOR_START:?}:\n{}",
                weston.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!(
            "weston: desktop drawn after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(weston)
    }

    /// The socket's absolute path: waylandsink's `display` takes it (libwayland connects to an
    /// absolute path as is), so this process's environment stays free of WAYLAND_DISPLAY, which
    /// would send GstGL's display selection to the compositor in later tests.
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join(SOCKET)
    }

    pub fn logs(&self) -> String {
        format!(
            "--- weston log (tail)\n{}\n--- weston stdout/stderr (tail)\n{}",
            tail(&self.log, 40),
            tail(&self.runtime_dir.join("weston.out"), 20)
        )
    }

    /// `Err` with weston's log if it is no longer running.
    pub fn alive(&mut self, when: &str) -> Result<(), String> {
        match self.child.try_wait().unwrap() {
            Some(status) => Err(format!("weston died {when} ({status}):\n{}", self.logs())),
            None => Ok(()),
        }
    }
}

impl Drop for Weston {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// The vkms screen, read back through its CRTC's framebuffer (what weston composited).
fn screen() -> scanout::Scanout {
    let vkms = DrmNode::open_driver("vkms", DrmUse::Kms).expect("the vkms DRM device");
    scanout::read_scanout(&vkms).expect("read the vkms scanout")
}

/// What waylandsink's own log says about its wl_buffers (1.26-1.28 wording): buffers created
/// from dma-bufs, buffers created by copying into wl_shm, and dma-buf imports the compositor
/// did not answer in time (waylandsink then copies).
pub struct WlBuffers {
    pub dmabuf: usize,
    pub shm: usize,
    pub timeouts: usize,
}

/// A capture of what waylandsink says about its wl_buffers, for [`on_fresh_weston`].
pub fn wl_log() -> LogCapture {
    LogCapture::new(&["wl_dmabuf", "wl_shm"], gst::DebugLevel::Debug)
}

pub fn wl_buffers(log: &LogCapture) -> WlBuffers {
    WlBuffers {
        dmabuf: log.count("wl_dmabuf", "created linux_dmabuf wl_buffer"),
        shm: log.count("wl_shm", "Creating wl_buffer from SHM"),
        timeouts: log.count("wl_dmabuf", "time out"),
    }
}

/// How many fresh weston processes a compositor test tries before it fails: weston crashed
/// in about half of the runs in this guest (README, "Compositor and GL consumers").
pub const ATTEMPTS: usize = 4;

/// Runs `client` (one waylandsink pipeline played to EOS against the socket it is given) on a
/// fresh weston, and again on another fresh weston when weston died meanwhile: such a run
/// proves nothing either way. Returns what `client` returned from the run weston survived,
/// waylandsink's wl_buffers of that run (from `log`, which must capture `wl_dmabuf` and
/// `wl_shm` at DEBUG) and how many westons crashed before. Panics after [`ATTEMPTS`] crashes.
pub fn on_fresh_weston<T>(
    what: &str,
    log: &LogCapture,
    mut client: impl FnMut(&Path) -> T,
) -> (T, WlBuffers, usize) {
    let mut crashes = 0;
    loop {
        let attempt = Weston::start().and_then(|mut weston| {
            log.clear();
            let out = client(&weston.socket());
            weston.alive("while its client played")?;
            Ok((out, wl_buffers(log)))
        });
        match attempt {
            Ok((out, buffers)) => return (out, buffers, crashes),
            Err(e) if crashes + 1 < ATTEMPTS => {
                crashes += 1;
                let first = e.lines().next().unwrap_or_default();
                eprintln!("{what}: attempt {crashes} lost to a weston crash ({first})");
            }
            Err(e) => panic!("{what}: weston crashed in all {ATTEMPTS} attempts; the last:\n{e}"),
        }
    }
}

/// Panics unless weston took the client's frames as linux-dmabuf wl_buffers. weston answers an
/// import late while it compiles shaders (seconds under TCG) and waylandsink then copies into
/// wl_shm; anything else that makes it copy is a failure.
pub fn assert_dmabuf_wl_buffers(what: &str, seen: &WlBuffers) {
    assert!(
        seen.dmabuf >= 1,
        "{what}: weston created no linux-dmabuf wl_buffer from our dma-bufs"
    );
    assert!(
        seen.shm <= seen.timeouts,
        "{what}: waylandsink copied into wl_shm {} times with {} import timeouts",
        seen.shm,
        seen.timeouts
    );
}
