//! gVisor specifics: the runtime-monitoring ("trace") stream of the sentry,
//! and each container's own memory usage in a pod ([`usage`]) through the
//! sandbox's control server ([`control`] on the wire of [`urpc`]).
//!
//! [`trace`] decodes the wire format (pure, no I/O); [`listener`] is a tokio
//! `SOCK_SEQPACKET` listener that accepts the sandbox's connection, answers
//! the handshake and yields decoded points until EOF; [`socket_dir`] is the
//! private directory the socket lives in and [`peer`] who may connect.
//! Protocol facts and what was measured with real runsc 20221219 and
//! 20240729 are in `NOTES.md`.

pub mod control;
pub mod diagnose;
pub mod listener;
pub mod monitor;
pub mod peer;
pub mod socket_dir;
pub mod trace;
pub mod urpc;
pub mod usage;

pub use listener::{PeerCredentials, TraceError, TraceListener, TraceStream};
pub use trace::{
    parse_message, parse_message_limited, pod_init_config, ContainerStart, ContextData, Event,
    ExitNotifyParent, Header, Message, ParseError, RawWaitStatus, TaskExit,
};
