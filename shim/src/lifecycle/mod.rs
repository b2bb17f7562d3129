//! The three ways containerd runs the binary: `start` (spawn the serving
//! shim and print its socket address), serve (no action: answer the Task
//! service), and `delete` (clean up after a shim that died).

pub mod delete;
pub mod serve;
pub mod start;

/// The fd on which `start` hands the bound socket to the serving shim.
pub const LISTENER_FD: i32 = 3;
