//! Out-of-memory truth: the kernel's signals about a container's memcg and
//! the verdict made from them when a process exits.

mod verdict;

pub use verdict::{decide, Evidence, Verdict};
pub mod memcg;
