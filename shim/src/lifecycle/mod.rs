//! The ways containerd runs the binary: `start` (spawn the serving shim and
//! print its socket address), serve (no action: answer the Task service),
//! `delete` (clean up after a shim that died) and `-info` (describe the
//! runtime, containerd 2.x).

pub mod delete;
pub mod info;
pub mod serve;
pub mod start;

/// The fd on which `start` hands the bound socket to the serving shim.
pub const LISTENER_FD: i32 = 3;
