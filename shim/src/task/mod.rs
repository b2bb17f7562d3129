//! The task side of the shim: containers, their processes, the Task service
//! and the exit path.

pub mod container;
pub mod exit;
pub mod process;
pub mod service;
