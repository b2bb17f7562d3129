pub mod cri;
pub mod docker;
pub mod harness;
