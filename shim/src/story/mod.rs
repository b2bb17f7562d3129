//! Where an OOM kill's story goes besides containerd's events: the places
//! people look when a pod died. The kubelet's termination-message file
//! (`kubectl describe pod`: Last State, Message), on by default; and, opt
//! in, the container's own stderr (`kubectl logs --previous`, `crictl logs`,
//! `docker logs`).

mod settings;
mod termination;
pub mod text;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use log::{info, warn};

pub use settings::{parse_oom_report, Settings};
pub use text::Story;

/// Where one container's story goes, fixed at Create.
#[derive(Debug, Default)]
pub struct Targets {
    /// The host file the kubelet mounted as the termination-message path.
    pub termination_log: Option<PathBuf>,
}

impl Targets {
    /// Resolves the targets from the container's OCI spec and settings.
    pub fn for_container(id: &str, spec: &serde_json::Value, settings: &Settings) -> Targets {
        let termination_log = if settings.termination_message {
            termination::host_file(spec)
        } else {
            None
        };
        if let Some(p) = &termination_log {
            info!(
                "story id={id}: termination-message file {} (the story goes there on an OOM kill if empty)",
                p.display()
            );
        }
        Targets { termination_log }
    }

    /// Tells the story of an OOM kill wherever the settings say: called on
    /// the exit path, before TaskExit (the kubelet reads the file once the
    /// container is seen exited). Never fails the exit: a target that cannot
    /// take it is logged.
    /// `stderr`: the container's stderr destination when `oom_report =
    /// "stderr"` (kept since Create).
    pub fn oom_killed(&self, id: &str, story: &Story, stderr: Option<File>) {
        let line = story.line();
        if let Some(path) = &self.termination_log {
            match termination::write_if_empty(path, &line) {
                Ok(termination::Outcome::Written(n)) => info!(
                    "story id={id}: wrote the OOM story ({n} bytes) to the termination-message file {}",
                    path.display()
                ),
                Ok(termination::Outcome::KeptApplications(n)) => info!(
                    "story id={id}: kept the termination-message file {}: the application wrote {n} bytes there",
                    path.display()
                ),
                Err(e) => warn!(
                    "story id={id}: termination-message file {}: {e}; the story is in the shim's log only",
                    path.display()
                ),
            }
        }
        if let Some(mut f) = stderr {
            // Non-blocking: a reader that stopped reading loses the line
            // rather than holding the exit. (The flag is the destination's,
            // shared with the container's processes, which are gone.)
            let _ = set_nonblocking(&f);
            match f.write_all(format!("{line}\n").as_bytes()) {
                Ok(()) => info!("story id={id}: wrote the OOM story to the container's stderr"),
                Err(e) => {
                    warn!("story id={id}: container stderr: {e}; the story is not in its log")
                }
            }
        }
    }
}

fn set_nonblocking(f: &File) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(f, FcntlArg::F_GETFL)?);
    fcntl(f, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(|_| ())
}
