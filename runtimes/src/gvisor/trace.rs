//! gVisor runtime monitoring ("trace", seccheck) remote sink: the wire format.
//!
//! The sentry streams monitoring points to a listener over an `AF_UNIX`
//! `SOCK_SEQPACKET` socket (gVisor `pkg/sentry/seccheck/sinks/remote`). Every
//! packet after the handshake is one point:
//!
//! ```text
//!  0            2             4              8
//!  | HeaderSize | MessageType | DroppedCount | protobuf payload ...
//!  |  u16 LE    |   u16 LE    |    u32 LE    | (starts at HeaderSize)
//! ```
//!
//! The handshake is a bare protobuf `gvisor.common.Handshake { uint32 version = 1 }`
//! with no header: the sentry (really `runsc create`, before it hands the socket
//! to the sandbox) sends its version first (`08 01`), then waits for the
//! listener's (send [`encode_handshake`]`(`[`WIRE_VERSION`]`)`). Both runsc
//! 20221219 and 20240729 speak version 1. See `NOTES.md` beside this file.
//!
//! Everything here treats the stream as untrusted input: no panics, every
//! length checked, and a malformed packet is an error for that packet only.
//! The protobuf payloads are decoded by field number by a small hand-written
//! reader (only the few messages the shim needs), so no code generation.

use std::fmt;

/// Wire/protocol version this side speaks (gVisor `wire.CurrentVersion`).
pub const WIRE_VERSION: u32 = 1;

/// Lowest sentry version accepted. Per gVisor's `common.proto`, a peer with a
/// higher version is accepted: it is responsible for sending messages
/// compatible with ours.
pub const MIN_SENTRY_VERSION: u32 = 1;

/// Size of the header struct gVisor writes today (`wire.HeaderStructSize`).
/// `HeaderSize` in a packet may be larger (future fields): the payload starts
/// at `HeaderSize` either way.
pub const HEADER_STRUCT_SIZE: usize = 8;

/// Default upper bound for one packet. The sentry sends each point as one
/// `writev` on a non-blocking socket, so a point larger than the socket send
/// buffer (`net.core.wmem_default`, ~208 KiB) fails with `EMSGSIZE` and is
/// dropped before it reaches the listener; anything larger is bogus.
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024;

/// Largest handshake the sentry accepts (its read buffer is 10240 bytes; a
/// handshake filling it is refused as "too big"). Used for ours as well.
pub const MAX_HANDSHAKE_SIZE: usize = 10240;

/// `gvisor.common.MessageType` numbers (the `MessageType` header field).
pub mod message_type {
    pub const UNKNOWN: u16 = 0;
    pub const CONTAINER_START: u16 = 1;
    pub const SENTRY_CLONE: u16 = 2;
    pub const SENTRY_EXEC: u16 = 3;
    pub const SENTRY_EXIT_NOTIFY_PARENT: u16 = 4;
    pub const SENTRY_TASK_EXIT: u16 = 5;
    pub const SYSCALL_RAW: u16 = 6;
    /// 7..=34 are the schematized `syscall/*` points (open, close, ...).
    pub const SYSCALL_OPEN: u16 = 7;
    pub const SYSCALL_WRITE: u16 = 34;
}

/// Point names as `--pod-init-config` / `runsc trace` take them. All three
/// exist in runsc 20221219 and 20240729.
pub mod points {
    pub const CONTAINER_START: &str = "container/start";
    pub const TASK_EXIT: &str = "sentry/task_exit";
    pub const EXIT_NOTIFY_PARENT: &str = "sentry/exit_notify_parent";
}

/// Context fields to request for every point: without `context_fields` in
/// the point's configuration the sentry sends **no** `ContextData` at all (a
/// `TaskExit` of status 0 is then an empty payload). These four plus
/// `process_name` are valid for all three points in both runsc versions
/// (`cwd` is not: 20240729 dropped it from `sentry/exit_notify_parent`, and an
/// unknown field fails the whole configuration).
pub const CONTEXT_FIELDS: &[&str] = &[
    "time",
    "thread_id",
    "group_id",
    "container_id",
    "process_name",
];

/// The `--pod-init-config` JSON that enables the three points the shim needs
/// and sends them to the remote sink at `endpoint`.
///
/// `retries`: how many times the sentry retries a point when the socket is
/// full (`EAGAIN`, with 25 µs..10 ms backoff, stalling the task that hit the
/// point) before dropping it; 0 drops at once (gVisor's default).
/// `ignore_setup_error`: when false, `runsc create` fails if it cannot
/// connect or handshake ("cannot init config: connect(...)"); when true, the
/// container runs without monitoring.
pub fn pod_init_config(
    endpoint: &str,
    retries: u32,
    ignore_setup_error: bool,
) -> serde_json::Value {
    let point = |name: &str| serde_json::json!({ "name": name, "context_fields": CONTEXT_FIELDS });
    serde_json::json!({
        "trace_session": {
            "name": "Default",
            "points": [
                point(points::CONTAINER_START),
                point(points::TASK_EXIT),
                point(points::EXIT_NOTIFY_PARENT),
            ],
            "sinks": [{
                "name": "remote",
                "config": { "endpoint": endpoint, "retries": retries },
                "ignore_setup_error": ignore_setup_error,
            }],
        }
    })
}

// ---------------------------------------------------------------------------
// Errors

/// Why a packet (or handshake) could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet of {len} bytes is shorter than the {HEADER_STRUCT_SIZE}-byte header")]
    ShortHeader { len: usize },
    #[error("header size {header_size} is below the {HEADER_STRUCT_SIZE}-byte minimum")]
    HeaderTooSmall { header_size: u16 },
    #[error("header size {header_size} runs past the end of the {len}-byte packet")]
    HeaderPastEnd { header_size: u16, len: usize },
    #[error("packet of {len} bytes exceeds the {max}-byte limit")]
    Oversized { len: usize, max: usize },
    #[error("message type {message_type}: bad protobuf payload: {error}")]
    Payload {
        message_type: u16,
        error: DecodeError,
    },
    #[error("bad handshake: {0}")]
    Handshake(DecodeError),
}

/// A protobuf decoding failure: what, and at which byte of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Input ended inside a varint, a fixed-width value or a length-delimited field.
    Truncated,
    /// A varint longer than 10 bytes, or a key over 32 bits.
    VarintOverflow,
    /// Field number 0 (never valid).
    FieldZero,
    /// Wire type 3/4 (groups, never emitted by proto3) or 6/7 (undefined).
    BadWireType(u8),
    /// A known field arrived with another wire type than its declaration's.
    /// (Not skipped as unknown: a missing `exit_status` would read as 0.)
    WrongWireType { field: u32, wire_type: u8 },
    /// A `string` field that is not UTF-8.
    InvalidUtf8 { field: u32 },
    /// Nested messages deeper than this decoder ever expects.
    TooDeep,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DecodeErrorKind::Truncated => write!(f, "truncated")?,
            DecodeErrorKind::VarintOverflow => write!(f, "varint overflow")?,
            DecodeErrorKind::FieldZero => write!(f, "field number 0")?,
            DecodeErrorKind::BadWireType(w) => write!(f, "unsupported wire type {w}")?,
            DecodeErrorKind::WrongWireType { field, wire_type } => {
                write!(f, "field {field} has unexpected wire type {wire_type}")?
            }
            DecodeErrorKind::InvalidUtf8 { field } => write!(f, "field {field} is not UTF-8")?,
            DecodeErrorKind::TooDeep => write!(f, "messages nested too deep")?,
        }
        write!(f, " at payload byte {}", self.offset)
    }
}

impl std::error::Error for DecodeError {}

// ---------------------------------------------------------------------------
// Messages

/// The fixed packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Where the payload starts (>= 8).
    pub header_size: u16,
    /// A [`message_type`] number.
    pub message_type: u16,
    /// Points the sentry failed to send so far (cumulative, wraps at u32::MAX).
    pub dropped_count: u32,
}

impl Header {
    /// Reads and checks the header of `packet` (the payload is `packet[header_size..]`).
    pub fn parse(packet: &[u8]) -> Result<Header, ParseError> {
        let Some(fixed) = packet.get(..HEADER_STRUCT_SIZE) else {
            return Err(ParseError::ShortHeader { len: packet.len() });
        };
        let header = Header {
            header_size: u16::from_le_bytes([fixed[0], fixed[1]]),
            message_type: u16::from_le_bytes([fixed[2], fixed[3]]),
            dropped_count: u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        };
        if usize::from(header.header_size) < HEADER_STRUCT_SIZE {
            return Err(ParseError::HeaderTooSmall {
                header_size: header.header_size,
            });
        }
        if usize::from(header.header_size) > packet.len() {
            return Err(ParseError::HeaderPastEnd {
                header_size: header.header_size,
                len: packet.len(),
            });
        }
        Ok(header)
    }

    /// The 8-byte encoding (as the sentry writes it; for tests and fakes).
    pub fn encode(&self) -> [u8; HEADER_STRUCT_SIZE] {
        let mut out = [0u8; HEADER_STRUCT_SIZE];
        out[0..2].copy_from_slice(&self.header_size.to_le_bytes());
        out[2..4].copy_from_slice(&self.message_type.to_le_bytes());
        out[4..8].copy_from_slice(&self.dropped_count.to_le_bytes());
        out
    }
}

/// `gvisor.common.Credentials`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub real_uid: u32,
    pub effective_uid: u32,
    pub saved_uid: u32,
    pub real_gid: u32,
    pub effective_gid: u32,
    pub saved_gid: u32,
}

/// `gvisor.common.ContextData`: only the fields requested in the point's
/// `context_fields` are filled; the rest read as zero/empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextData {
    /// Sandbox realtime clock, ns since the epoch (`time`).
    pub time_ns: i64,
    /// The task's thread id in the sandbox's **root** PID namespace (`thread_id`).
    pub thread_id: i32,
    pub thread_start_time_ns: i64,
    /// The thread group (process) id, root PID namespace (`group_id`).
    pub thread_group_id: i32,
    pub thread_group_start_time_ns: i64,
    /// The container the task's thread group leader belongs to (`container_id`).
    pub container_id: String,
    pub credentials: Option<Credentials>,
    pub cwd: String,
    /// The task's comm (`process_name`).
    pub process_name: String,
}

/// `gvisor.container.Start` (message type 1): a container's init was created
/// and is about to run. Sent for the root container and for each container
/// that joins the sandbox later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerStart {
    /// Context of the container's init (its `thread_id`/`thread_group_id` are
    /// the init's ids in the root PID namespace).
    pub context: Option<ContextData>,
    /// The container id (always set, no context field needed).
    pub id: String,
    pub cwd: String,
    pub args: Vec<String>,
    /// Only with the point's optional field `env`.
    pub env: Vec<String>,
    pub terminal: bool,
}

/// `gvisor.sentry.TaskExit` (message type 5): a **task (thread)** is exiting.
/// `exit_status` is its thread group's raw `wait(2)` status at that moment
/// (`exit(3)` = 768, killed by SIGKILL = 9); a thread leaving before its
/// group ends reports the group's status so far (0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskExit {
    pub context: Option<ContextData>,
    pub exit_status: i32,
}

/// `gvisor.sentry.ExitNotifyParentInfo` (message type 4): a whole thread group
/// is dead and its parent is being notified; `exit_status` is final. Never
/// sent for the sandbox's first process (the root container's init).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitNotifyParent {
    pub context: Option<ContextData>,
    pub exit_status: i32,
}

/// One decoded point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ContainerStart(ContainerStart),
    TaskExit(TaskExit),
    ExitNotifyParent(ExitNotifyParent),
    /// Any other message type (clone, execve, syscalls, newer types): the
    /// payload is not decoded.
    Unknown {
        message_type: u16,
        payload_len: usize,
    },
}

impl Event {
    pub fn context(&self) -> Option<&ContextData> {
        match self {
            Event::ContainerStart(s) => s.context.as_ref(),
            Event::TaskExit(e) => e.context.as_ref(),
            Event::ExitNotifyParent(e) => e.context.as_ref(),
            Event::Unknown { .. } => None,
        }
    }

    /// The container this point is about: `Start.id`, else the context's
    /// `container_id` (None when it was not requested or is empty).
    pub fn container_id(&self) -> Option<&str> {
        if let Event::ContainerStart(s) = self {
            if !s.id.is_empty() {
                return Some(&s.id);
            }
        }
        self.context()
            .map(|c| c.container_id.as_str())
            .filter(|id| !id.is_empty())
    }

    /// The raw wait status of an exit point.
    pub fn exit_status(&self) -> Option<RawWaitStatus> {
        match self {
            Event::TaskExit(e) => Some(RawWaitStatus(e.exit_status)),
            Event::ExitNotifyParent(e) => Some(RawWaitStatus(e.exit_status)),
            _ => None,
        }
    }
}

/// A raw `wait(2)` status word as the sentry reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawWaitStatus(pub i32);

impl RawWaitStatus {
    /// `WEXITSTATUS` when `WIFEXITED`.
    pub fn exit_code(self) -> Option<i32> {
        libc::WIFEXITED(self.0).then(|| libc::WEXITSTATUS(self.0))
    }

    /// `WTERMSIG` when `WIFSIGNALED`.
    pub fn signal(self) -> Option<i32> {
        libc::WIFSIGNALED(self.0).then(|| libc::WTERMSIG(self.0))
    }

    pub fn core_dumped(self) -> bool {
        libc::WIFSIGNALED(self.0) && libc::WCOREDUMP(self.0)
    }
}

/// A decoded packet: its header (for `dropped_count`) and the point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub event: Event,
}

impl Message {
    /// Cumulative number of points the sentry dropped before this one. A
    /// change between two messages means points were lost in between.
    pub fn dropped_count(&self) -> u32 {
        self.header.dropped_count
    }
}

/// Decodes one received packet, rejecting packets over [`MAX_MESSAGE_SIZE`].
pub fn parse_message(packet: &[u8]) -> Result<Message, ParseError> {
    parse_message_limited(packet, MAX_MESSAGE_SIZE)
}

/// Decodes one received packet, rejecting packets over `max` bytes.
pub fn parse_message_limited(packet: &[u8], max: usize) -> Result<Message, ParseError> {
    if packet.len() > max {
        return Err(ParseError::Oversized {
            len: packet.len(),
            max,
        });
    }
    let header = Header::parse(packet)?;
    let payload = packet
        .get(usize::from(header.header_size)..)
        .unwrap_or_default();
    let payload_err = |error| ParseError::Payload {
        message_type: header.message_type,
        error,
    };
    let event = match header.message_type {
        message_type::CONTAINER_START => {
            Event::ContainerStart(decode_start(payload).map_err(payload_err)?)
        }
        message_type::SENTRY_TASK_EXIT => {
            let (context, exit_status) = decode_exit(payload).map_err(payload_err)?;
            Event::TaskExit(TaskExit {
                context,
                exit_status,
            })
        }
        message_type::SENTRY_EXIT_NOTIFY_PARENT => {
            let (context, exit_status) = decode_exit(payload).map_err(payload_err)?;
            Event::ExitNotifyParent(ExitNotifyParent {
                context,
                exit_status,
            })
        }
        other => Event::Unknown {
            message_type: other,
            payload_len: payload.len(),
        },
    };
    Ok(Message { header, event })
}

/// The handshake packet announcing `version` (`Handshake{version}`; version 0
/// encodes as an empty packet, which the sentry refuses).
pub fn encode_handshake(version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(6);
    if version != 0 {
        out.push(0x08); // field 1, varint
        let mut v = version;
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    out
}

/// Decodes a handshake packet into the peer's version (0 when absent).
pub fn decode_handshake(packet: &[u8]) -> Result<u32, ParseError> {
    if packet.len() > MAX_HANDSHAKE_SIZE {
        return Err(ParseError::Oversized {
            len: packet.len(),
            max: MAX_HANDSHAKE_SIZE,
        });
    }
    let mut version = 0u32;
    let mut r = Reader::new(packet, 0);
    while let Some((field, wt)) = r.key().map_err(ParseError::Handshake)? {
        match field {
            1 => version = r.uint32(field, wt).map_err(ParseError::Handshake)?,
            _ => r.skip(wt).map_err(ParseError::Handshake)?,
        }
    }
    Ok(version)
}

// ---------------------------------------------------------------------------
// Protobuf reader (proto3 wire format, by field number)

const WT_VARINT: u8 = 0;
const WT_FIXED64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_FIXED32: u8 = 5;

/// ContextData inside a point, Credentials inside ContextData.
const MAX_DEPTH: u8 = 2;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the whole payload, for error positions.
    base: usize,
    depth: u8,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], depth: u8) -> Self {
        Reader {
            buf,
            pos: 0,
            base: 0,
            depth,
        }
    }

    fn err(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            offset: self.base + self.pos,
            kind,
        }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err(DecodeErrorKind::Truncated));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(self.err(DecodeErrorKind::VarintOverflow));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(self.err(DecodeErrorKind::VarintOverflow))
    }

    /// Next (field number, wire type), or None at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, DecodeError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let start = self.pos;
        let key = self.varint()?;
        let Ok(key) = u32::try_from(key) else {
            self.pos = start;
            return Err(self.err(DecodeErrorKind::VarintOverflow));
        };
        let (field, wt) = (key >> 3, (key & 7) as u8);
        if field == 0 {
            self.pos = start;
            return Err(self.err(DecodeErrorKind::FieldZero));
        }
        match wt {
            WT_VARINT | WT_FIXED64 | WT_LEN | WT_FIXED32 => Ok(Some((field, wt))),
            _ => {
                self.pos = start;
                Err(self.err(DecodeErrorKind::BadWireType(wt)))
            }
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len());
        let Some(end) = end else {
            return Err(self.err(DecodeErrorKind::Truncated));
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        let Ok(len) = usize::try_from(len) else {
            return Err(self.err(DecodeErrorKind::Truncated));
        };
        self.take(len)
    }

    fn skip(&mut self, wt: u8) -> Result<(), DecodeError> {
        match wt {
            WT_VARINT => self.varint().map(drop),
            WT_FIXED64 => self.take(8).map(drop),
            WT_FIXED32 => self.take(4).map(drop),
            WT_LEN => self.len_delimited().map(drop),
            other => Err(self.err(DecodeErrorKind::BadWireType(other))),
        }
    }

    fn check_wire_type(&self, field: u32, wt: u8, want: u8) -> Result<(), DecodeError> {
        if wt == want {
            Ok(())
        } else {
            Err(self.err(DecodeErrorKind::WrongWireType {
                field,
                wire_type: wt,
            }))
        }
    }

    // Scalar decoders follow protobuf's rules: int32/uint32 truncate the
    // 64-bit varint (negative int32s are sent sign-extended to 10 bytes).
    fn int32(&mut self, field: u32, wt: u8) -> Result<i32, DecodeError> {
        self.check_wire_type(field, wt, WT_VARINT)?;
        Ok(self.varint()? as i32)
    }

    fn int64(&mut self, field: u32, wt: u8) -> Result<i64, DecodeError> {
        self.check_wire_type(field, wt, WT_VARINT)?;
        Ok(self.varint()? as i64)
    }

    fn uint32(&mut self, field: u32, wt: u8) -> Result<u32, DecodeError> {
        self.check_wire_type(field, wt, WT_VARINT)?;
        Ok(self.varint()? as u32)
    }

    fn boolean(&mut self, field: u32, wt: u8) -> Result<bool, DecodeError> {
        self.check_wire_type(field, wt, WT_VARINT)?;
        Ok(self.varint()? != 0)
    }

    fn string(&mut self, field: u32, wt: u8) -> Result<String, DecodeError> {
        self.check_wire_type(field, wt, WT_LEN)?;
        let start = self.pos;
        let bytes = self.len_delimited()?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => {
                self.pos = start;
                Err(self.err(DecodeErrorKind::InvalidUtf8 { field }))
            }
        }
    }

    /// A nested message's reader (one level deeper).
    fn message(&mut self, field: u32, wt: u8) -> Result<Reader<'a>, DecodeError> {
        self.check_wire_type(field, wt, WT_LEN)?;
        if self.depth >= MAX_DEPTH {
            return Err(self.err(DecodeErrorKind::TooDeep));
        }
        let bytes = self.len_delimited()?;
        let base = self.base + self.pos - bytes.len();
        Ok(Reader {
            buf: bytes,
            pos: 0,
            base,
            depth: self.depth + 1,
        })
    }
}

/// Merges one encoded ContextData into `ctx` (protobuf merges repeated
/// occurrences of an embedded message).
fn decode_context(mut r: Reader<'_>, ctx: &mut ContextData) -> Result<(), DecodeError> {
    while let Some((field, wt)) = r.key()? {
        match field {
            1 => ctx.time_ns = r.int64(field, wt)?,
            2 => ctx.thread_id = r.int32(field, wt)?,
            3 => ctx.thread_start_time_ns = r.int64(field, wt)?,
            4 => ctx.thread_group_id = r.int32(field, wt)?,
            5 => ctx.thread_group_start_time_ns = r.int64(field, wt)?,
            6 => ctx.container_id = r.string(field, wt)?,
            7 => {
                let sub = r.message(field, wt)?;
                decode_credentials(sub, ctx.credentials.get_or_insert_with(Default::default))?
            }
            8 => ctx.cwd = r.string(field, wt)?,
            9 => ctx.process_name = r.string(field, wt)?,
            _ => r.skip(wt)?,
        }
    }
    Ok(())
}

fn decode_credentials(mut r: Reader<'_>, c: &mut Credentials) -> Result<(), DecodeError> {
    while let Some((field, wt)) = r.key()? {
        match field {
            1 => c.real_uid = r.uint32(field, wt)?,
            2 => c.effective_uid = r.uint32(field, wt)?,
            3 => c.saved_uid = r.uint32(field, wt)?,
            4 => c.real_gid = r.uint32(field, wt)?,
            5 => c.effective_gid = r.uint32(field, wt)?,
            6 => c.saved_gid = r.uint32(field, wt)?,
            _ => r.skip(wt)?,
        }
    }
    Ok(())
}

/// `gvisor.container.Start`.
fn decode_start(payload: &[u8]) -> Result<ContainerStart, DecodeError> {
    let mut r = Reader::new(payload, 0);
    let mut start = ContainerStart::default();
    while let Some((field, wt)) = r.key()? {
        match field {
            1 => {
                let sub = r.message(field, wt)?;
                decode_context(sub, start.context.get_or_insert_with(Default::default))?
            }
            2 => start.id = r.string(field, wt)?,
            3 => start.cwd = r.string(field, wt)?,
            4 => start.args.push(r.string(field, wt)?),
            5 => start.env.push(r.string(field, wt)?),
            6 => start.terminal = r.boolean(field, wt)?,
            _ => r.skip(wt)?,
        }
    }
    Ok(start)
}

/// `gvisor.sentry.TaskExit` and `ExitNotifyParentInfo` share their layout:
/// `context_data = 1`, `int32 exit_status = 2`.
fn decode_exit(payload: &[u8]) -> Result<(Option<ContextData>, i32), DecodeError> {
    let mut r = Reader::new(payload, 0);
    let mut context: Option<ContextData> = None;
    let mut exit_status = 0;
    while let Some((field, wt)) = r.key()? {
        match field {
            1 => {
                let sub = r.message(field, wt)?;
                decode_context(sub, context.get_or_insert_with(Default::default))?
            }
            2 => exit_status = r.int32(field, wt)?,
            _ => r.skip(wt)?,
        }
    }
    Ok((context, exit_status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Real packets captured from runsc with context_fields
    // [time, thread_id, group_id, container_id, process_name] (NOTES.md).

    /// 20221219, container "c1", init `sh -c 'dd ...; sleep 0.2 & wait; exit 3'`.
    const START_C1: &str = "08000100000000000a16089adace84d7d993f51810012001320263314a027368120263311a012f22072f62696e2f736822022d63224464642069663d2f6465762f7a65726f206f663d2f6465762f6e756c6c2062733d314d20636f756e743d313b20736c65657020302e32202620776169743b20657869742033";
    /// 20221219: child `dd` (tid 2) exits 0 (no exit_status field).
    const TASK_EXIT_DD: &str = "08000500000000000a1608ffe6d28bd7d993f51810022002320263314a026464";
    /// 20221219: `dd`'s parent notified, status 0.
    const NOTIFY_DD: &str = "08000400000000000a1608e4a5e78bd7d993f51810022002320263314a026464";
    /// 20221219: the root container's init (tid 1) exits 3 (raw 768); no
    /// ExitNotifyParent follows for it, then EOF.
    const TASK_EXIT_INIT_3: &str =
        "08000500000000000a1608f1afb2f1d7d993f51810012001320263314a027368108006";
    /// 20240729, container "c2": child `sh -c 'kill -9 $$'` (tid 3) killed by SIGKILL.
    const TASK_EXIT_KILLED: &str =
        "08000500000000000a1608bdeb9cbffdd993f51810032003320263324a0273681009";
    const NOTIFY_KILLED: &str =
        "08000400000000000a1608ee92abbffdd993f51810032003320263324a0273681009";
    /// 20240729, OOM: the only point before EOF (the sentry was killed by the
    /// host memcg OOM killer while `dd bs=200M` ran).
    const START_OOM_C: &str = "08000100000000000a1808f2fd9896efe293f5181001200132046f6f6d434a02736812046f6f6d431a012f22072f62696e2f736822022d6322556563686f2073746172743b2064642069663d2f6465762f7a65726f206f663d2f6465762f6e756c6c2062733d3230304d20636f756e743d313b206563686f2061667465722d64642072633d243f3b20657869742030";
    /// 20240729 pod "podS": a joining container "podA" starts (init tid 2).
    const START_POD_A: &str = "08000100000000000a1808f3e5d7a190e593f518100220023204706f64414a0273681204706f64411a012f22072f62696e2f736822022d632221736c65657020302e32202620776169743b206563686f2068693b20657869742035";
    /// 20240729: podA's init exits 5 (raw 1280): TaskExit then ExitNotifyParent.
    const TASK_EXIT_POD_A: &str =
        "08000500000000000a180886bb8f8891e593f518100220023204706f64414a02736810800a";
    const NOTIFY_POD_A: &str =
        "08000400000000000a1808ee81e28891e593f518100220023204706f64414a02736810800a";
    /// 20240729 without context_fields (the brief's minimal config): empty
    /// payload for a 0 status, only exit_status otherwise.
    const TASK_EXIT_NO_CONTEXT_0: &str = "0800050000000000";
    const TASK_EXIT_NO_CONTEXT_768: &str = "0800050000000000108006";
    const NOTIFY_NO_CONTEXT_9: &str = "08000400000000001009";
    const START_NO_CONTEXT: &str = "08000100000000001205706c61696e1a012f22072f62696e2f736822022d63225a64642069663d2f6465762f7a65726f206f663d2f6465762f6e756c6c2062733d314d20636f756e743d313b207368202d6320226b696c6c202d39205c245c24223b20736c65657020302e32202620776169743b20657869742033";

    fn parse(h: &str) -> Message {
        parse_message(&hex(h)).unwrap()
    }

    #[test]
    fn container_start_real() {
        let m = parse(START_C1);
        assert_eq!(
            m.header,
            Header {
                header_size: 8,
                message_type: 1,
                dropped_count: 0
            }
        );
        let Event::ContainerStart(s) = &m.event else {
            panic!("{m:?}")
        };
        assert_eq!(s.id, "c1");
        assert_eq!(s.cwd, "/");
        assert_eq!(
            s.args,
            [
                "/bin/sh",
                "-c",
                "dd if=/dev/zero of=/dev/null bs=1M count=1; sleep 0.2 & wait; exit 3"
            ]
        );
        assert!(s.env.is_empty());
        assert!(!s.terminal);
        let ctx = s.context.as_ref().unwrap();
        assert_eq!(ctx.thread_id, 1);
        assert_eq!(ctx.thread_group_id, 1);
        assert_eq!(ctx.container_id, "c1");
        assert_eq!(ctx.process_name, "sh");
        assert_eq!(ctx.time_ns, 1795334045724552474);
        assert_eq!(ctx.credentials, None);
        assert_eq!(m.event.container_id(), Some("c1"));
        assert_eq!(m.event.exit_status(), None);
    }

    #[test]
    fn task_exit_and_notify_real() {
        let m = parse(TASK_EXIT_DD);
        let Event::TaskExit(e) = &m.event else {
            panic!("{m:?}")
        };
        assert_eq!(e.exit_status, 0);
        let ctx = e.context.as_ref().unwrap();
        assert_eq!((ctx.thread_id, ctx.thread_group_id), (2, 2));
        assert_eq!(
            (ctx.container_id.as_str(), ctx.process_name.as_str()),
            ("c1", "dd")
        );
        assert_eq!(m.event.exit_status().unwrap().exit_code(), Some(0));

        let m = parse(NOTIFY_DD);
        let Event::ExitNotifyParent(e) = &m.event else {
            panic!("{m:?}")
        };
        assert_eq!(e.exit_status, 0);
        assert_eq!(e.context.as_ref().unwrap().thread_id, 2);

        let m = parse(TASK_EXIT_INIT_3);
        let Event::TaskExit(e) = &m.event else {
            panic!("{m:?}")
        };
        assert_eq!(e.exit_status, 768);
        assert_eq!(e.context.as_ref().unwrap().thread_id, 1);
        let st = m.event.exit_status().unwrap();
        assert_eq!((st.exit_code(), st.signal()), (Some(3), None));

        for h in [TASK_EXIT_KILLED, NOTIFY_KILLED] {
            let m = parse(h);
            let st = m.event.exit_status().unwrap();
            assert_eq!(st, RawWaitStatus(9));
            assert_eq!(
                (st.exit_code(), st.signal(), st.core_dumped()),
                (None, Some(9), false)
            );
            assert_eq!(m.event.container_id(), Some("c2"));
            assert_eq!(m.event.context().unwrap().thread_id, 3);
        }
    }

    #[test]
    fn pod_and_oom_real() {
        let m = parse(START_OOM_C);
        assert_eq!(m.event.container_id(), Some("oomC"));

        let m = parse(START_POD_A);
        let Event::ContainerStart(s) = &m.event else {
            panic!("{m:?}")
        };
        assert_eq!(s.id, "podA");
        assert_eq!(s.context.as_ref().unwrap().thread_group_id, 2);

        let t = parse(TASK_EXIT_POD_A);
        let n = parse(NOTIFY_POD_A);
        assert!(matches!(
            t.event,
            Event::TaskExit(TaskExit {
                exit_status: 1280,
                ..
            })
        ));
        assert!(matches!(
            n.event,
            Event::ExitNotifyParent(ExitNotifyParent {
                exit_status: 1280,
                ..
            })
        ));
        assert_eq!(n.event.exit_status().unwrap().exit_code(), Some(5));
        assert_eq!(n.event.container_id(), Some("podA"));
    }

    #[test]
    fn without_context_fields_real() {
        let m = parse(TASK_EXIT_NO_CONTEXT_0);
        assert_eq!(
            m.event,
            Event::TaskExit(TaskExit {
                context: None,
                exit_status: 0
            })
        );
        assert_eq!(m.event.container_id(), None);
        let m = parse(TASK_EXIT_NO_CONTEXT_768);
        assert_eq!(
            m.event,
            Event::TaskExit(TaskExit {
                context: None,
                exit_status: 768
            })
        );
        let m = parse(NOTIFY_NO_CONTEXT_9);
        assert_eq!(
            m.event,
            Event::ExitNotifyParent(ExitNotifyParent {
                context: None,
                exit_status: 9
            })
        );
        let m = parse(START_NO_CONTEXT);
        let Event::ContainerStart(s) = &m.event else {
            panic!("{m:?}")
        };
        assert_eq!((s.id.as_str(), s.context.is_none()), ("plain", true));
        assert_eq!(m.event.container_id(), Some("plain"));
    }

    #[test]
    fn handshake() {
        // What runsc sends (both versions) and what the listener answers.
        assert_eq!(decode_handshake(&hex("0801")), Ok(1));
        assert_eq!(encode_handshake(WIRE_VERSION), hex("0801"));
        assert_eq!(encode_handshake(0), Vec::<u8>::new());
        assert_eq!(encode_handshake(300), hex("08ac02"));
        assert_eq!(decode_handshake(&encode_handshake(u32::MAX)), Ok(u32::MAX));
        assert_eq!(decode_handshake(&[]), Ok(0));
        // Unknown fields are skipped.
        assert_eq!(
            decode_handshake(&hex("10051a0178 0802".replace(' ', "").as_str())),
            Ok(2)
        );
        assert!(matches!(
            decode_handshake(&hex("ffffffff")),
            Err(ParseError::Handshake(_))
        ));
        assert!(matches!(
            decode_handshake(&hex("0a0501")),
            Err(ParseError::Handshake(_))
        ));
        assert!(matches!(
            decode_handshake(&vec![0u8; MAX_HANDSHAKE_SIZE + 1]),
            Err(ParseError::Oversized { .. })
        ));
    }

    #[test]
    fn header_roundtrip_and_larger_header() {
        let h = Header {
            header_size: 8,
            message_type: 5,
            dropped_count: 0x01020304,
        };
        assert_eq!(Header::parse(&h.encode()), Ok(h));
        // A future, longer header: the payload still starts at header_size.
        let mut pkt = Header {
            header_size: 12,
            message_type: 5,
            dropped_count: 7,
        }
        .encode()
        .to_vec();
        pkt.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        pkt.extend_from_slice(&hex("108006"));
        let m = parse_message(&pkt).unwrap();
        assert_eq!(m.dropped_count(), 7);
        assert_eq!(
            m.event,
            Event::TaskExit(TaskExit {
                context: None,
                exit_status: 768
            })
        );
    }

    #[test]
    fn malformed_headers() {
        assert_eq!(parse_message(&[]), Err(ParseError::ShortHeader { len: 0 }));
        assert_eq!(
            parse_message(&hex("08000500000000")),
            Err(ParseError::ShortHeader { len: 7 })
        );
        assert_eq!(
            parse_message(&hex("0400050000000000")),
            Err(ParseError::HeaderTooSmall { header_size: 4 })
        );
        assert_eq!(
            parse_message(&hex("ffff050000000000")),
            Err(ParseError::HeaderPastEnd {
                header_size: 0xffff,
                len: 8
            })
        );
        assert_eq!(
            parse_message(&hex("0900050000000000")),
            Err(ParseError::HeaderPastEnd {
                header_size: 9,
                len: 8
            })
        );
        let big = vec![0u8; MAX_MESSAGE_SIZE + 1];
        assert_eq!(
            parse_message(&big),
            Err(ParseError::Oversized {
                len: MAX_MESSAGE_SIZE + 1,
                max: MAX_MESSAGE_SIZE
            })
        );
        assert!(matches!(
            parse_message_limited(&hex(TASK_EXIT_INIT_3), 16),
            Err(ParseError::Oversized { max: 16, .. })
        ));
    }

    fn payload_err(h: &str) -> DecodeErrorKind {
        match parse_message(&hex(h)) {
            Err(ParseError::Payload { error, .. }) => error.kind,
            other => panic!("{h}: {other:?}"),
        }
    }

    #[test]
    fn malformed_payloads() {
        // Every proper prefix of a real packet's payload fails cleanly (no panic).
        for h in [START_C1, TASK_EXIT_INIT_3, TASK_EXIT_KILLED, START_POD_A] {
            let full = hex(h);
            for cut in 9..full.len() {
                let r = parse_message(&full[..cut]);
                if let Err(e) = &r {
                    assert!(matches!(e, ParseError::Payload { .. }), "{cut}: {e}");
                }
            }
        }
        assert_eq!(
            payload_err("08000500000000001080"),
            DecodeErrorKind::Truncated
        );
        assert_eq!(
            payload_err("08000500000000000a05"),
            DecodeErrorKind::Truncated
        );
        assert_eq!(
            payload_err("08000500000000000affffffffffffffffff01"),
            DecodeErrorKind::Truncated
        );
        assert_eq!(
            payload_err("080005000000000010ffffffffffffffffffff01"),
            DecodeErrorKind::VarintOverflow
        );
        assert_eq!(
            payload_err("08000500000000000001"),
            DecodeErrorKind::FieldZero
        );
        assert_eq!(
            payload_err("08000500000000000b"),
            DecodeErrorKind::BadWireType(3)
        );
        assert_eq!(
            payload_err("08000500000000000f"),
            DecodeErrorKind::BadWireType(7)
        );
        // exit_status as a string must not read as status 0.
        assert_eq!(
            payload_err("080005000000000012017a"),
            DecodeErrorKind::WrongWireType {
                field: 2,
                wire_type: 2
            }
        );
        // Context data as a varint.
        assert_eq!(
            payload_err("08000500000000000801"),
            DecodeErrorKind::WrongWireType {
                field: 1,
                wire_type: 0
            }
        );
        // container_id with invalid UTF-8, inside the context.
        let e = parse_message(&hex("08000500000000000a043202ff00")).unwrap_err();
        assert_eq!(
            e,
            ParseError::Payload {
                message_type: 5,
                error: DecodeError {
                    offset: 3,
                    kind: DecodeErrorKind::InvalidUtf8 { field: 6 }
                },
            }
        );
        // Garbage.
        assert!(parse_message(&hex("0800010000000000deadbeefdeadbeef")).is_err());
    }

    #[test]
    fn negative_and_odd_values() {
        // int32 -1 is sent sign-extended to ten bytes.
        let m = parse("080005000000000010ffffffffffffffffff01");
        assert_eq!(m.event.exit_status(), Some(RawWaitStatus(-1)));
        // Unknown fields of every wire type are skipped; last scalar wins;
        // context occurrences merge.
        let m = parse(
            "08000400000000001001 1805 21 0102030405060708 2d01020304 2a00 1002 0a021001 0a02200b"
                .replace(' ', "")
                .as_str(),
        );
        let Event::ExitNotifyParent(e) = &m.event else {
            panic!("{m:?}")
        };
        assert_eq!(e.exit_status, 2);
        let ctx = e.context.as_ref().unwrap();
        assert_eq!((ctx.thread_id, ctx.thread_group_id), (1, 11));
        assert_eq!(ctx.time_ns, 0);
        // Credentials.
        let m = parse("08000500000000000a0a3a080801100218031804");
        let creds = m.event.context().unwrap().credentials.clone().unwrap();
        assert_eq!(
            creds,
            Credentials {
                real_uid: 1,
                effective_uid: 2,
                saved_uid: 4,
                ..Default::default()
            }
        );
    }

    #[test]
    fn unknown_type_is_not_an_error() {
        let m = parse("08000200000000000a020801");
        assert_eq!(
            m.event,
            Event::Unknown {
                message_type: 2,
                payload_len: 4
            }
        );
        // Even with a garbage payload: it is not decoded.
        let m = parse("0800ffff05000000ffffffff");
        assert_eq!(
            m.event,
            Event::Unknown {
                message_type: 0xffff,
                payload_len: 4
            }
        );
        assert_eq!(m.dropped_count(), 5);
    }

    #[test]
    fn pod_init_config_shape() {
        let v = pod_init_config("/run/x.sock", 3, false);
        let s = &v["trace_session"];
        assert_eq!(s["name"], "Default");
        let names: Vec<_> = s["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].clone())
            .collect();
        assert_eq!(
            names,
            [
                "container/start",
                "sentry/task_exit",
                "sentry/exit_notify_parent"
            ]
        );
        assert_eq!(s["points"][1]["context_fields"][3], "container_id");
        assert_eq!(s["sinks"][0]["name"], "remote");
        assert_eq!(s["sinks"][0]["config"]["endpoint"], "/run/x.sock");
        assert_eq!(s["sinks"][0]["config"]["retries"], 3);
        assert_eq!(s["sinks"][0]["ignore_setup_error"], false);
    }

    /// Cheap fuzz: random bytes and random mutations of real packets never
    /// panic.
    #[test]
    fn no_panic_on_noise() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let reals: Vec<Vec<u8>> = [START_C1, TASK_EXIT_INIT_3, NOTIFY_KILLED, START_POD_A]
            .iter()
            .map(|h| hex(h))
            .collect();
        for i in 0..20000 {
            let mut pkt = reals[i % reals.len()].clone();
            let flips = 1 + (next() % 4) as usize;
            for _ in 0..flips {
                let at = (next() as usize) % pkt.len();
                pkt[at] = next() as u8;
            }
            let _ = parse_message(&pkt);
            let len = (next() % 64) as usize;
            let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse_message(&noise);
            let _ = decode_handshake(&noise);
        }
    }
}
