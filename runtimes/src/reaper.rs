//! The shim is the subreaper of everything it starts: runtime binaries, the
//! container inits they leave behind, and exec processes. One SIGCHLD handler
//! reaps them all and hands each *raw* wait status to whoever waits for that
//! pid, because the OOM verdict must tell "killed by SIGKILL" from "exit(137)".

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use log::{debug, warn};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus as NixWaitStatus};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a process ended, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    Exited(i32),
    Signaled { signal: i32, core_dumped: bool },
}

impl WaitStatus {
    /// The status containerd shows: the exit code, or 128 + the signal.
    pub fn exit_code(&self) -> u32 {
        match *self {
            WaitStatus::Exited(code) => (code & 0xff) as u32,
            WaitStatus::Signaled { signal, .. } => 128 + signal as u32,
        }
    }

    pub fn killed_by(&self, sig: i32) -> bool {
        matches!(*self, WaitStatus::Signaled { signal, .. } if signal == sig)
    }

    /// Decodes a raw `wait(2)` status word (as gVisor's monitoring stream
    /// reports it). Stop/continue words are not exits and give `None`.
    pub fn from_raw(raw: i32) -> Option<Self> {
        if libc::WIFEXITED(raw) {
            Some(WaitStatus::Exited(libc::WEXITSTATUS(raw)))
        } else if libc::WIFSIGNALED(raw) {
            Some(WaitStatus::Signaled {
                signal: libc::WTERMSIG(raw),
                core_dumped: libc::WCOREDUMP(raw),
            })
        } else {
            None
        }
    }
}

impl fmt::Display for WaitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WaitStatus::Exited(code) => write!(f, "exited {code}"),
            WaitStatus::Signaled { signal, .. } => {
                let name = nix::sys::signal::Signal::try_from(signal)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {signal}"));
                write!(f, "killed by {name}")
            }
        }
    }
}

/// One reaped process.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub pid: i32,
    pub status: WaitStatus,
    pub at: SystemTime,
}

/// Resolves when the watched pid is reaped.
pub type ExitReceiver = oneshot::Receiver<Exit>;

#[derive(Default)]
struct Table {
    /// Several claims on one pid are normal under gVisor: every container
    /// of a pod names the sandbox's pid.
    waiters: HashMap<i32, Vec<oneshot::Sender<Exit>>>,
    /// Exits reaped before anyone claimed the pid: a container init can die
    /// between `runc create` returning and the shim reading its pid file.
    early: HashMap<i32, Exit>,
    /// Claims in progress; early exits are kept only while one is.
    holds: usize,
}

pub struct Reaper {
    table: Mutex<Table>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// The process-wide reaper. Exits are only delivered once [`Reaper::install`]
/// has run inside a tokio runtime.
pub fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| Reaper {
        table: Mutex::new(Table::default()),
    })
}

impl Reaper {
    /// Makes this process the subreaper and starts reaping on SIGCHLD.
    pub fn install(&'static self) -> io::Result<()> {
        nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)?;
        let mut sigchld = signal(SignalKind::child())?;
        tokio::spawn(async move {
            // A child may have ended before the handler existed.
            self.reap_all();
            while sigchld.recv().await.is_some() {
                self.reap_all();
            }
        });
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A poisoned table is still consistent: every update is one insert/remove.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reap_all(&self) {
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(NixWaitStatus::Exited(pid, code)) => (pid, WaitStatus::Exited(code)),
                Ok(NixWaitStatus::Signaled(pid, sig, core)) => (
                    pid,
                    WaitStatus::Signaled {
                        signal: sig as i32,
                        core_dumped: core,
                    },
                ),
                Ok(NixWaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("reaper: waitpid failed: {e}");
                    return;
                }
            };
            self.deliver(Exit {
                pid: pid.as_raw(),
                status,
                at: SystemTime::now(),
            });
        }
    }

    fn deliver(&self, exit: Exit) {
        let mut table = self.lock();
        if let Some(txs) = table.waiters.remove(&exit.pid) {
            for tx in txs {
                let _ = tx.send(exit);
            }
        } else if table.holds > 0 {
            table.early.insert(exit.pid, exit);
        } else {
            debug!("reaper: pid={} {} (no owner)", exit.pid, exit.status);
        }
    }

    /// Spawns `cmd` and returns a receiver for its exit. The waiter is in
    /// place before the child can be reaped.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, ExitReceiver)> {
        reset_child_nice(cmd);
        let mut table = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        table.early.remove(&pid);
        let (tx, rx) = oneshot::channel();
        table.waiters.insert(pid, vec![tx]);
        Ok((child, rx))
    }

    /// Claims a pid learned after the fact (a container init read from its
    /// pid file). Call while holding an [`EarlyExitHold`] taken before the
    /// process was started.
    pub fn watch(&self, pid: i32) -> ExitReceiver {
        let mut table = self.lock();
        let (tx, rx) = oneshot::channel();
        match table.early.remove(&pid) {
            Some(exit) => {
                let _ = tx.send(exit);
            }
            None => {
                table.waiters.entry(pid).or_default().push(tx);
            }
        }
        rx
    }

    /// Keeps exits of unclaimed pids while a process is being started.
    pub fn hold_early_exits(&'static self) -> EarlyExitHold {
        self.lock().holds += 1;
        EarlyExitHold { reaper: self }
    }
}

pub struct EarlyExitHold {
    reaper: &'static Reaper,
}

impl Drop for EarlyExitHold {
    fn drop(&mut self) {
        let mut table = self.reaper.lock();
        table.holds = table.holds.saturating_sub(1);
        if table.holds == 0 {
            table.early.clear();
        }
    }
}

/// The nice value the shim started with, once its runtime thread runs at
/// another (`CHILD_NICE_UNSET` until then).
static CHILD_NICE: std::sync::atomic::AtomicI32 =
    std::sync::atomic::AtomicI32::new(CHILD_NICE_UNSET);
const CHILD_NICE_UNSET: i32 = i32::MIN;

/// Children inherit the nice value of the thread that spawns them: once the
/// shim's thread runs at a raised priority, what it starts (runtime
/// commands, a sandbox's gofers, logging binaries) must run at the shim's
/// original one.
pub fn set_child_nice(nice: i32) {
    CHILD_NICE.store(nice, std::sync::atomic::Ordering::Relaxed);
}

/// Has `cmd` set the nice value of [`set_child_nice`] in the child.
pub fn reset_child_nice(cmd: &mut Command) {
    let nice = CHILD_NICE.load(std::sync::atomic::Ordering::Relaxed);
    if nice == CHILD_NICE_UNSET {
        return;
    }
    // SAFETY: setpriority is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_status_words_decode() {
        // Encodings as wait(2) produces them.
        assert_eq!(WaitStatus::from_raw(0), Some(WaitStatus::Exited(0)));
        assert_eq!(WaitStatus::from_raw(3 << 8), Some(WaitStatus::Exited(3)));
        assert_eq!(
            WaitStatus::from_raw(9),
            Some(WaitStatus::Signaled {
                signal: 9,
                core_dumped: false
            })
        );
        assert_eq!(
            WaitStatus::from_raw(11 | 0x80),
            Some(WaitStatus::Signaled {
                signal: 11,
                core_dumped: true
            })
        );
        // Stopped by SIGSTOP: not an exit.
        assert_eq!(WaitStatus::from_raw((19 << 8) | 0x7f), None);
    }

    #[test]
    fn exit_codes_follow_containerd() {
        assert_eq!(WaitStatus::Exited(3).exit_code(), 3);
        let kill = WaitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(kill.exit_code(), 137);
        assert!(kill.killed_by(9));
        assert!(!WaitStatus::Exited(137).killed_by(9));
        assert_eq!(kill.to_string(), "killed by SIGKILL");
    }
}
