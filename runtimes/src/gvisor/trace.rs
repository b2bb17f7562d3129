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
//! The payloads are decoded by code rust-protobuf generates (build.rs) from
//! our own minimal description of the few messages the shim reads,
//! `runtimes/proto/gvisor_monitor.proto`.

use protobuf::rt::WireType;
use protobuf::{Message as _, UnknownFields};

/// The generated messages.
pub(crate) mod pb {
    include!(concat!(env!("OUT_DIR"), "/proto/mod.rs"));
}
pub(crate) use pb::gvisor_monitor as wire;

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
    #[error("message type {message_type} ({}): {error}", type_name(*message_type))]
    Payload {
        message_type: u16,
        error: DecodeError,
    },
    #[error("bad handshake: {0}")]
    Handshake(DecodeError),
}

/// What was wrong with a protobuf payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The protobuf decoder's own error (truncated input, a bad varint, a
    /// bad tag or wire type, a string that is not UTF-8, ...).
    #[error("bad protobuf {message}: {reason}")]
    Protobuf {
        message: &'static str,
        reason: String,
    },
    /// A known field arrived with another wire type than its declaration's.
    /// Not skipped as unknown: a missing `exit_status` would read as 0.
    #[error("{message}.{field} (field {number}) has wire type {got:?}, expected {want:?}")]
    WrongWireType {
        message: &'static str,
        field: &'static str,
        number: u32,
        got: WireType,
        want: WireType,
    },
}

/// The point a message type carries, for error messages.
pub fn type_name(message_type: u16) -> &'static str {
    match message_type {
        message_type::CONTAINER_START => "container/start",
        message_type::SENTRY_CLONE => "sentry/clone",
        message_type::SENTRY_EXEC => "sentry/execve",
        message_type::SENTRY_EXIT_NOTIFY_PARENT => "sentry/exit_notify_parent",
        message_type::SENTRY_TASK_EXIT => "sentry/task_exit",
        message_type::SYSCALL_RAW => "syscall/raw",
        message_type::SYSCALL_OPEN..=message_type::SYSCALL_WRITE => "syscall",
        _ => "unknown",
    }
}

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

/// `gvisor.common.ContextData`, the fields the shim asks for
/// ([`CONTEXT_FIELDS`]); a field not requested reads as zero/empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextData {
    /// Sandbox realtime clock, ns since the epoch (`time`).
    pub time_ns: i64,
    /// The task's thread id in the sandbox's **root** PID namespace (`thread_id`).
    pub thread_id: i32,
    /// The thread group (process) id, root PID namespace (`group_id`).
    pub thread_group_id: i32,
    /// The container the task's thread group leader belongs to (`container_id`).
    pub container_id: String,
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
    let hs = wire::Handshake {
        version,
        ..Default::default()
    };
    // Writing a message to a Vec cannot fail; an empty packet (version 0)
    // would be refused by the sentry as it is refused here.
    hs.write_to_bytes().unwrap_or_default()
}

/// Decodes a handshake packet into the peer's version (0 when absent).
pub fn decode_handshake(packet: &[u8]) -> Result<u32, ParseError> {
    if packet.len() > MAX_HANDSHAKE_SIZE {
        return Err(ParseError::Oversized {
            len: packet.len(),
            max: MAX_HANDSHAKE_SIZE,
        });
    }
    let hs = decode::<wire::Handshake>("Handshake", packet).map_err(ParseError::Handshake)?;
    check_wire_types(
        "Handshake",
        hs.special_fields.unknown_fields(),
        &[(1, "version", WireType::Varint)],
    )
    .map_err(ParseError::Handshake)?;
    Ok(hs.version)
}

// ---------------------------------------------------------------------------
// From the generated messages

fn decode<M: protobuf::Message>(message: &'static str, bytes: &[u8]) -> Result<M, DecodeError> {
    let bad = |e: protobuf::Error| DecodeError::Protobuf {
        message,
        reason: e.to_string(),
    };
    check_extents(bytes).map_err(bad)?;
    M::parse_from_bytes(bytes).map_err(bad)
}

/// Every top-level field must lie within the input. rust-protobuf 3.7.2
/// decodes an embedded message whose length runs past the end of the input
/// as if it ended there (measured: `0a 05` gives an empty `context_data`),
/// so a cut `TaskExit` would read as a clean exit with `exit_status` 0.
/// Skipping each field with the crate's own reader catches that ("truncated
/// message"); what lies inside an embedded message is bounded by it.
fn check_extents(bytes: &[u8]) -> protobuf::Result<()> {
    let mut is = protobuf::CodedInputStream::from_bytes(bytes);
    while let Some(tag) = is.read_raw_tag_or_eof()? {
        let (_, wire_type) = protobuf::rt::WireType::new(tag & 7)
            .map(|wt| (tag >> 3, wt))
            .ok_or_else(|| {
                protobuf::Error::from(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("tag {tag:#x}: undefined wire type {}", tag & 7),
                ))
            })?;
        is.skip_field(wire_type)?;
    }
    Ok(())
}

/// A field of `message` that the generated decoder put among the unknown
/// fields although its number is declared: it came with the wrong wire
/// type. The lowest such field number is reported.
fn check_wire_types(
    message: &'static str,
    unknown: &UnknownFields,
    declared: &[(u32, &'static str, WireType)],
) -> Result<(), DecodeError> {
    let wrong = unknown
        .iter()
        .filter_map(|(number, value)| {
            declared
                .iter()
                .find(|(n, _, _)| *n == number)
                .map(|&(_, field, want)| (number, field, value.wire_type(), want))
        })
        .min_by_key(|(number, ..)| *number);
    match wrong {
        None => Ok(()),
        Some((number, field, got, want)) => Err(DecodeError::WrongWireType {
            message,
            field,
            number,
            got,
            want,
        }),
    }
}

fn context(ctx: &wire::ContextData) -> Result<ContextData, DecodeError> {
    check_wire_types(
        "ContextData",
        ctx.special_fields.unknown_fields(),
        &[
            (1, "time_ns", WireType::Varint),
            (2, "thread_id", WireType::Varint),
            (4, "thread_group_id", WireType::Varint),
            (6, "container_id", WireType::LengthDelimited),
            (9, "process_name", WireType::LengthDelimited),
        ],
    )?;
    Ok(ContextData {
        time_ns: ctx.time_ns,
        thread_id: ctx.thread_id,
        thread_group_id: ctx.thread_group_id,
        container_id: ctx.container_id.clone(),
        process_name: ctx.process_name.clone(),
    })
}

/// `gvisor.container.Start`.
fn decode_start(payload: &[u8]) -> Result<ContainerStart, DecodeError> {
    let m = decode::<wire::Start>("Start", payload)?;
    check_wire_types(
        "Start",
        m.special_fields.unknown_fields(),
        &[
            (1, "context_data", WireType::LengthDelimited),
            (2, "id", WireType::LengthDelimited),
        ],
    )?;
    Ok(ContainerStart {
        context: m.context_data.as_ref().map(context).transpose()?,
        id: m.id,
    })
}

/// `gvisor.sentry.TaskExit` and `ExitNotifyParentInfo` share their layout:
/// `context_data = 1`, `int32 exit_status = 2`.
fn decode_exit(payload: &[u8]) -> Result<(Option<ContextData>, i32), DecodeError> {
    let m = decode::<wire::Exit>("Exit", payload)?;
    check_wire_types(
        "Exit",
        m.special_fields.unknown_fields(),
        &[
            (1, "context_data", WireType::LengthDelimited),
            (2, "exit_status", WireType::Varint),
        ],
    )?;
    Ok((
        m.context_data.as_ref().map(context).transpose()?,
        m.exit_status,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The captures of NOTES.md are hex dumps.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
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
        let ctx = s.context.as_ref().unwrap();
        assert_eq!(ctx.thread_id, 1);
        assert_eq!(ctx.thread_group_id, 1);
        assert_eq!(ctx.container_id, "c1");
        assert_eq!(ctx.process_name, "sh");
        assert_eq!(ctx.time_ns, 1795334045724552474);
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

    fn payload_err(h: &str) -> String {
        match parse_message(&hex(h)) {
            Err(e @ ParseError::Payload { .. }) => e.to_string(),
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
        let cases = [
            // exit_status varint cut short
            (
                "08000500000000001080",
                "sentry/task_exit): bad protobuf Exit: ",
            ),
            // context_data length past the end
            ("08000500000000000a05", "bad protobuf Exit: "),
            // an 11-byte varint
            (
                "080005000000000010ffffffffffffffffffff01",
                "bad protobuf Exit: ",
            ),
            // field number 0
            ("08000500000000000001", "bad protobuf Exit: "),
            // wire type 7
            ("08000500000000000f", "bad protobuf Exit: "),
            // exit_status as a string must not read as status 0
            (
                "080005000000000012017a",
                "Exit.exit_status (field 2) has wire type LengthDelimited, expected Varint",
            ),
            // context data as a varint
            (
                "08000500000000000801",
                "Exit.context_data (field 1) has wire type Varint, expected LengthDelimited",
            ),
            // container_id as a varint, inside the context
            (
                "08000400000000000a023001",
                "ContextData.container_id (field 6) has wire type Varint",
            ),
            // container_id that is not UTF-8
            ("08000500000000000a043202ff00", "bad protobuf Exit: "),
            // the start's id as a fixed32
            (
                "080001000000000015deadbeef",
                "Start.id (field 2) has wire type Fixed32",
            ),
        ];
        for (packet, want) in cases {
            let got = payload_err(packet);
            assert!(got.contains(want), "{packet}: {got}");
        }
        // Garbage.
        assert!(parse_message(&hex("0800010000000000deadbeefdeadbeef")).is_err());
    }

    #[test]
    fn negative_and_odd_values() {
        // int32 -1 is sent sign-extended to ten bytes.
        let m = parse("080005000000000010ffffffffffffffffff01");
        assert_eq!(m.event.exit_status(), Some(RawWaitStatus(-1)));
        // Unknown fields of every wire type are skipped; last scalar wins; a
        // second context replaces the first (rust-protobuf 3.7.2; the
        // protobuf spec says merge: gVisor never sends two).
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
        assert_eq!((ctx.thread_id, ctx.thread_group_id), (0, 11));
        assert_eq!(ctx.time_ns, 0);
        // Fields the shim does not read (credentials, cwd) are skipped, of
        // whatever wire type.
        let m = parse("08000500000000000a0d3a0808011002180318044201ff");
        assert_eq!(m.event.context(), Some(&ContextData::default()));
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
