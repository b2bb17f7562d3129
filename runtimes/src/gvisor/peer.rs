//! Who may connect to a sandbox's monitoring socket.
//!
//! The connection comes from `runsc create` of the sandbox (measured with
//! runsc 20221219 and 20240729: `SO_PEERCRED` names the `runsc create`
//! process, a child of the shim; it hands the connected socket to the
//! sandbox). So a peer is admitted when it runs as the shim's user and is a
//! descendant of the shim. The shim is a subreaper, so an orphaned
//! grandchild stays its descendant. Anything else is refused before the
//! handshake: a process that is not ours gets no say in the verdict, and
//! it cannot stall `runsc create` behind a connection that never answers.

use std::fmt;

use super::listener::PeerCredentials;

/// How far up the parent chain to look before giving up (a runaway chain
/// means a bogus or racing /proc, not a descendant).
const MAX_DEPTH: usize = 64;

/// Why a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    WrongUser {
        uid: u32,
        want: u32,
    },
    NotDescendant {
        pid: i32,
        ancestor: i32,
    },
    /// No pid (a peer in another pid namespace shows as 0).
    NoPid,
    /// Its ancestry could not be read (it is gone, or /proc is unreadable).
    Unreadable {
        pid: i32,
        reason: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::WrongUser { uid, want } => write!(f, "peer uid {uid} is not {want}"),
            Refusal::NotDescendant { pid, ancestor } => {
                write!(
                    f,
                    "peer pid {pid} is not a descendant of the shim (pid {ancestor})"
                )
            }
            Refusal::NoPid => write!(f, "peer has no pid in the shim's pid namespace"),
            Refusal::Unreadable { pid, reason } => {
                write!(f, "ancestry of peer pid {pid} unreadable: {reason}")
            }
        }
    }
}

/// Admits `peer` if it runs as `uid` and descends from `ancestor`.
pub fn admit(peer: &PeerCredentials, ancestor: i32, uid: u32) -> Result<(), Refusal> {
    if peer.uid != uid {
        return Err(Refusal::WrongUser {
            uid: peer.uid,
            want: uid,
        });
    }
    if peer.pid <= 0 {
        return Err(Refusal::NoPid);
    }
    let mut pid = peer.pid;
    for _ in 0..MAX_DEPTH {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| {
            Refusal::Unreadable {
                pid,
                reason: e.to_string(),
            }
        })?;
        let parent = parent_pid(&stat).map_err(|reason| Refusal::Unreadable { pid, reason })?;
        if parent == ancestor {
            return Ok(());
        }
        if parent <= 1 {
            break;
        }
        pid = parent;
    }
    Err(Refusal::NotDescendant {
        pid: peer.pid,
        ancestor,
    })
}

/// The parent pid (4th field) of a `/proc/PID/stat` line. The command (2nd
/// field) is in parentheses and may itself hold spaces and ')': the fields
/// after it start after the last ')'.
pub fn parent_pid(stat: &str) -> Result<i32, String> {
    let close = stat
        .rfind(')')
        .ok_or_else(|| "no ')' closing the command field".to_string())?;
    let mut rest = stat[close + 1..].split_ascii_whitespace();
    let state = rest
        .next()
        .ok_or_else(|| "no state field after the command".to_string())?;
    if state.len() != 1 {
        return Err(format!("state field {state:?} is not one letter"));
    }
    let ppid = rest
        .next()
        .ok_or_else(|| "no parent pid field".to_string())?;
    ppid.parse::<i32>()
        .ok()
        .filter(|p| *p >= 0)
        .ok_or_else(|| format!("parent pid {ppid:?} is not a pid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_real_stat_lines() {
        // This machine's /proc/PID/stat (runsc create, then a comm with
        // spaces and parentheses).
        let line = "2077 (runsc) S 2074 2069 1949 0 -1 4194560 1010 0 0 0 3 2 0 0 20 0 9 0 283110 1254047744 6043 18446744073709551615 1 1 0 0 0 0 0 0 2143420159 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0";
        assert_eq!(parent_pid(line), Ok(2074));
        assert_eq!(parent_pid("7 (a) b) (c) R 1 7 7 0"), Ok(1));
        assert_eq!(parent_pid("1 (init) S 0 1 1"), Ok(0));
        assert!(parent_pid("7 (x R 1").unwrap_err().contains("')'"));
        assert!(parent_pid("7 (x)").unwrap_err().contains("state"));
        assert!(parent_pid("7 (x) R").unwrap_err().contains("parent pid"));
        assert!(parent_pid("7 (x) R -4").unwrap_err().contains("\"-4\""));
        assert!(parent_pid("7 (x) RR 3").unwrap_err().contains("one letter"));
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(
            parent_pid(&own),
            Ok(std::os::unix::process::parent_id() as i32)
        );
    }

    #[test]
    fn admits_descendants_of_the_right_user_only() {
        let me = std::process::id() as i32;
        let uid = nix::unistd::geteuid().as_raw();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let peer = PeerCredentials {
            pid: child.id() as i32,
            uid,
            gid: 0,
        };
        assert_eq!(admit(&peer, me, uid), Ok(()));
        // The test's parent is not a descendant of the test.
        let parent = std::os::unix::process::parent_id() as i32;
        let stranger = PeerCredentials {
            pid: parent,
            ..peer
        };
        assert_eq!(
            admit(&stranger, me, uid),
            Err(Refusal::NotDescendant {
                pid: parent,
                ancestor: me
            })
        );
        assert!(matches!(
            admit(&peer, me, uid + 1),
            Err(Refusal::WrongUser { .. })
        ));
        assert_eq!(
            admit(&PeerCredentials { pid: 0, ..peer }, me, uid),
            Err(Refusal::NoPid)
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // Gone: its ancestry cannot be read.
        assert!(matches!(
            admit(&peer, me, uid),
            Err(Refusal::Unreadable { .. })
        ));
    }
}
