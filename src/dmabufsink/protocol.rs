// SPDX-License-Identifier: MPL-2.0
//! The wire protocol dmabufsink speaks on its Unix socket (see docs/protocol.md).
//!
//! A `SOCK_SEQPACKET` Unix socket: connection-oriented and ordered like a stream socket, but
//! every message arrives whole, so each message's fds (`SCM_RIGHTS`) belong unambiguously to
//! its bytes. All integers are little-endian; every message starts with the same 16-byte header.

/// `b"VMEM"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"VMEM");
pub const VERSION: u16 = 1;
pub const HEADER_SIZE: usize = 16;
/// Planes a frame can describe (GStreamer's GST_VIDEO_MAX_PLANES).
pub const MAX_PLANES: usize = 4;
/// The largest message either side ever sends; receive buffers of this size never truncate.
pub const MAX_MESSAGE_SIZE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    /// Server -> client, once after connecting: the server's limits.
    Hello = 1,
    /// Server -> client: a frame, with one fd per distinct dma-buf attached.
    Frame = 2,
    /// Client -> server: the client no longer uses a frame's fds' contents.
    Release = 3,
    /// Server -> client: end of stream; the server closes the connection after it.
    Bye = 4,
    /// Server -> client, instead of a hello: why the server will not serve this client; the
    /// server closes the connection after it.
    Refused = 5,
}

/// Why a server refused a client (the `reason` of a refused message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RefusedReason {
    /// The server already serves `max-clients` clients.
    TooManyClients = 1,
    /// The client's user is not allowed (see `allow-other-users` and `socket-group`).
    UserNotAllowed = 2,
}

impl RefusedReason {
    fn from_u32(v: u32) -> Option<RefusedReason> {
        match v {
            1 => Some(RefusedReason::TooManyClients),
            2 => Some(RefusedReason::UserNotAllowed),
            _ => None,
        }
    }
}

impl std::fmt::Display for RefusedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RefusedReason::TooManyClients => "the server already serves max-clients clients",
            RefusedReason::UserNotAllowed => {
                "this user is not allowed (see dmabufsink's allow-other-users and socket-group)"
            }
        })
    }
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("message of {0} bytes is shorter than its header or body")]
    Short(usize),
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported protocol version {0}")]
    Version(u16),
    #[error("reserved header field is {0}, not 0")]
    Reserved(u32),
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    #[error("length field {field} does not match the {actual} bytes received")]
    Length { field: u32, actual: usize },
    #[error("frame describes {0} planes (at most {MAX_PLANES})")]
    Planes(u32),
    #[error("frame names fd index {0} but carries {1} fds")]
    FdIndex(u8, u32),
    #[error("unknown refusal reason {0}")]
    Reason(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Frames a client may hold unreleased before it misses frames.
    pub max_pending: u32,
}

/// A frame as sent: everything needed to map and interpret its dma-buf(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Frame {
    /// Counts the frames the sink rendered (gaps mean this client missed some).
    pub frame_number: u64,
    /// Presentation timestamp in ns, `u64::MAX` if none.
    pub pts: u64,
    /// Duration in ns, `u64::MAX` if none.
    pub duration: u64,
    pub width: u32,
    pub height: u32,
    /// DRM fourcc (`fourcc_code(a, b, c, d)`), e.g. `XR24` for BGRx.
    pub fourcc: u32,
    /// DRM format modifier; 0 is linear.
    pub modifier: u64,
    pub n_planes: u32,
    /// Per plane: the fd it lives in (index into the attached fds), its byte offset there and
    /// its stride.
    pub plane_fd: [u8; MAX_PLANES],
    pub offsets: [u32; MAX_PLANES],
    pub strides: [u32; MAX_PLANES],
    /// Bytes of frame data in the first fd, from its offset 0 (what a checksum covers).
    pub size: u64,
    /// How many fds are attached.
    pub n_fds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Frame(Frame),
    Release { frame_number: u64 },
    Bye,
    Refused(RefusedReason),
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: Kind) -> Writer {
        let mut w = Writer(Vec::with_capacity(MAX_MESSAGE_SIZE));
        w.u32(MAGIC);
        w.u16(VERSION);
        w.u16(kind as u16);
        w.u32(0); // length, patched in `finish`
        w.u32(0); // reserved
        w
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[8..12].copy_from_slice(&len.to_le_bytes());
        self.0
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let end = self.at + N;
        let chunk = self
            .bytes
            .get(self.at..end)
            .ok_or(ProtocolError::Short(self.bytes.len()))?;
        self.at = end;
        Ok(chunk.try_into().unwrap())
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.take().map(u64::from_le_bytes)
    }
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Hello(h) => {
                let mut w = Writer::new(Kind::Hello);
                w.u32(h.max_pending);
                w.finish()
            }
            Message::Frame(f) => {
                let mut w = Writer::new(Kind::Frame);
                w.u64(f.frame_number);
                w.u64(f.pts);
                w.u64(f.duration);
                w.u32(f.width);
                w.u32(f.height);
                w.u32(f.fourcc);
                w.u32(f.n_planes);
                w.u64(f.modifier);
                for o in f.offsets {
                    w.u32(o);
                }
                for s in f.strides {
                    w.u32(s);
                }
                w.u64(f.size);
                w.u32(f.n_fds);
                w.0.extend_from_slice(&f.plane_fd);
                w.finish()
            }
            Message::Release { frame_number } => {
                let mut w = Writer::new(Kind::Release);
                w.u64(*frame_number);
                w.finish()
            }
            Message::Bye => Writer::new(Kind::Bye).finish(),
            Message::Refused(reason) => {
                let mut w = Writer::new(Kind::Refused);
                w.u32(*reason as u32);
                w.finish()
            }
        }
    }

    /// Decodes one whole message; `n_fds` is how many fds arrived with it.
    pub fn decode(bytes: &[u8], n_fds: usize) -> Result<Message, ProtocolError> {
        let mut r = Reader { bytes, at: 0 };
        let magic = r.u32()?;
        if magic != MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(ProtocolError::Version(version));
        }
        let kind = r.u16()?;
        let length = r.u32()?;
        let reserved = r.u32()?;
        if reserved != 0 {
            return Err(ProtocolError::Reserved(reserved));
        }
        if length as usize != bytes.len() {
            return Err(ProtocolError::Length {
                field: length,
                actual: bytes.len(),
            });
        }
        let msg = match kind {
            1 => Message::Hello(Hello {
                max_pending: r.u32()?,
            }),
            2 => {
                let mut f = Frame {
                    frame_number: r.u64()?,
                    pts: r.u64()?,
                    duration: r.u64()?,
                    width: r.u32()?,
                    height: r.u32()?,
                    fourcc: r.u32()?,
                    n_planes: r.u32()?,
                    modifier: r.u64()?,
                    ..Frame::default()
                };
                for o in &mut f.offsets {
                    *o = r.u32()?;
                }
                for s in &mut f.strides {
                    *s = r.u32()?;
                }
                f.size = r.u64()?;
                f.n_fds = r.u32()?;
                f.plane_fd = r.take()?;
                if f.n_planes as usize > MAX_PLANES || f.n_planes == 0 {
                    return Err(ProtocolError::Planes(f.n_planes));
                }
                if f.n_fds as usize != n_fds {
                    return Err(ProtocolError::FdIndex(f.n_fds as u8, n_fds as u32));
                }
                if let Some(&i) = f.plane_fd[..f.n_planes as usize]
                    .iter()
                    .find(|&&i| u32::from(i) >= f.n_fds)
                {
                    return Err(ProtocolError::FdIndex(i, f.n_fds));
                }
                Message::Frame(f)
            }
            3 => Message::Release {
                frame_number: r.u64()?,
            },
            4 => Message::Bye,
            5 => {
                let v = r.u32()?;
                Message::Refused(RefusedReason::from_u32(v).ok_or(ProtocolError::Reason(v))?)
            }
            k => return Err(ProtocolError::UnknownKind(k)),
        };
        if r.at != bytes.len() {
            return Err(ProtocolError::Length {
                field: length,
                actual: r.at,
            });
        }
        Ok(msg)
    }
}

/// Rows of `plane` in a frame of `height` rows of DRM format `fourcc`. Only 4:2:0 formats
/// subsample vertically among the formats a dmabufsink sends; for a format it does not know,
/// the chroma planes are taken to be half height (the smallest any common format has).
pub fn plane_rows(fourcc: u32, plane: usize, height: u32) -> u32 {
    const FULL_HEIGHT: [&[u8; 4]; 22] = [
        b"NV16", b"NV61", b"NV24", b"YU16", b"YU24", b"YUYV", b"YVYU", b"UYVY", b"VYUY", b"XR24",
        b"AR24", b"XB24", b"AB24", b"BX24", b"BA24", b"RX24", b"RA24", b"BG24", b"RG24", b"RG16",
        b"BG16", b"R8  ",
    ];
    if plane == 0
        || FULL_HEIGHT
            .iter()
            .any(|f| u32::from_le_bytes(**f) == fourcc)
    {
        height
    } else {
        height.div_ceil(2)
    }
}

/// The bytes each attached fd must at least hold for `frame` to be what it says: every row of
/// every plane, and the `size` bytes of fd 0 a checksum reads. Indexed like the fds.
pub fn required_fd_sizes(frame: &Frame) -> Vec<u64> {
    let mut need = vec![0u64; frame.n_fds as usize];
    if let Some(first) = need.first_mut() {
        *first = frame.size;
    }
    for plane in 0..(frame.n_planes as usize).min(MAX_PLANES) {
        let Some(slot) = need.get_mut(frame.plane_fd[plane] as usize) else {
            continue;
        };
        let rows = u64::from(plane_rows(frame.fourcc, plane, frame.height));
        let end = u64::from(frame.offsets[plane]) + u64::from(frame.strides[plane]) * rows;
        *slot = (*slot).max(end);
    }
    need
}

/// FNV-1a over `bytes`: the checksum the example client prints and the tests compare.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame {
            frame_number: 7,
            pts: 1_000_000,
            duration: u64::MAX,
            width: 640,
            height: 480,
            fourcc: u32::from_le_bytes(*b"NV12"),
            modifier: 0,
            n_planes: 2,
            plane_fd: [0, 0, 0, 0],
            offsets: [0, 307_200, 0, 0],
            strides: [640, 640, 0, 0],
            size: 460_800,
            n_fds: 1,
        }
    }

    #[test]
    fn messages_round_trip() {
        for (msg, fds) in [
            (Message::Hello(Hello { max_pending: 4 }), 0),
            (Message::Frame(frame()), 1),
            (Message::Release { frame_number: 9 }, 0),
            (Message::Bye, 0),
            (Message::Refused(RefusedReason::TooManyClients), 0),
            (Message::Refused(RefusedReason::UserNotAllowed), 0),
        ] {
            let bytes = msg.encode();
            assert!(bytes.len() <= MAX_MESSAGE_SIZE);
            assert_eq!(Message::decode(&bytes, fds).unwrap(), msg);
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let bytes = Message::Frame(frame()).encode();
        assert_eq!(bytes.len(), 112);
        assert_eq!(&bytes[0..4], b"VMEM");
        assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), 2);
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 112);
        assert_eq!(u64::from_le_bytes(bytes[16..24].try_into().unwrap()), 7);
        assert_eq!(Message::Release { frame_number: 1 }.encode().len(), 24);
    }

    #[test]
    fn garbage_is_refused_not_trusted() {
        assert!(matches!(
            Message::decode(b"", 0),
            Err(ProtocolError::Short(0))
        ));
        assert!(matches!(
            Message::decode(b"XXXXXXXXXXXXXXXX", 0),
            Err(ProtocolError::BadMagic(_))
        ));
        let mut bytes = Message::Release { frame_number: 1 }.encode();
        bytes[8] = 200;
        assert!(matches!(
            Message::decode(&bytes, 0),
            Err(ProtocolError::Length { .. })
        ));
        let mut f = frame();
        f.n_planes = 9;
        assert_eq!(
            Message::decode(&Message::Frame(f).encode(), 1),
            Err(ProtocolError::Planes(9))
        );
        let mut f = frame();
        f.plane_fd[1] = 3;
        assert!(matches!(
            Message::decode(&Message::Frame(f).encode(), 1),
            Err(ProtocolError::FdIndex(3, 1))
        ));
        assert!(matches!(
            Message::decode(&Message::Frame(frame()).encode(), 0),
            Err(ProtocolError::FdIndex(..))
        ));
        let mut bytes = Message::Bye.encode();
        bytes[6] = 42;
        assert_eq!(
            Message::decode(&bytes, 0),
            Err(ProtocolError::UnknownKind(42))
        );
    }

    #[test]
    fn required_sizes_follow_the_layout() {
        // NV12 640x480 in one fd: luma 640x480, chroma 640x240 from 307200.
        assert_eq!(required_fd_sizes(&frame()), vec![460_800]);
        let mut f = frame();
        f.size = 0;
        f.n_fds = 2;
        f.plane_fd = [0, 1, 0, 0];
        f.offsets = [0, 4096, 0, 0];
        assert_eq!(required_fd_sizes(&f), vec![307_200, 4096 + 153_600]);
        let mut f = frame();
        f.fourcc = u32::from_le_bytes(*b"YU16");
        f.n_planes = 3;
        f.offsets = [0, 307_200, 460_800, 0];
        f.strides = [640, 320, 320, 0];
        f.size = 0;
        assert_eq!(required_fd_sizes(&f), vec![460_800 + 320 * 480]);
        // Fields a hostile server made up cannot overflow.
        let mut f = frame();
        f.offsets = [u32::MAX; 4];
        f.strides = [u32::MAX; 4];
        f.height = u32::MAX;
        assert!(required_fd_sizes(&f)[0] > u64::from(u32::MAX));
    }

    /// A deterministic fuzz: random bytes, and valid messages with one byte changed, never
    /// panic the decoder, and what it accepts re-encodes to the same bytes.
    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let mut next = crate::xorshift();
        let valid = [
            Message::Hello(Hello { max_pending: 4 }).encode(),
            Message::Frame(frame()).encode(),
            Message::Release { frame_number: 3 }.encode(),
            Message::Bye.encode(),
            Message::Refused(RefusedReason::TooManyClients).encode(),
        ];
        for round in 0..50_000 {
            let mut bytes = if round % 2 == 0 {
                let len = (next() % (MAX_MESSAGE_SIZE as u64 + 1)) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                valid[(next() % valid.len() as u64) as usize].clone()
            };
            if !bytes.is_empty() {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            let fds = (next() % 3) as usize;
            if let Ok(msg) = Message::decode(&bytes, fds) {
                assert_eq!(
                    msg.encode(),
                    bytes,
                    "accepted bytes must be exactly what we would send"
                );
            }
        }
    }
}
