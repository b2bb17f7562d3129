//! The verdict: from the evidence gathered when a process exits, decide
//! whether memory killed it, whether containerd must hear TaskOOM, and the
//! exit status to report. Pure logic, so every case is a unit test.

use oomguard_runtimes::WaitStatus;

const SIGKILL: i32 = 9;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    /// How the process ended, as reaped.
    pub wait_status: Option<WaitStatus>,
    /// OOM kills in the container's memcg since its baseline (None: the
    /// counter could not be read).
    pub oom_kills: Option<u64>,
    /// OOM notifications (eventfd/inotify) seen since the baseline.
    pub oom_notifications: u64,
    /// The kernel log named this process as an OOM victim.
    pub process_was_victim: bool,
    /// OOM kills already reported to containerd while the task ran.
    pub already_reported: bool,
    /// The shim kills the whole container on any OOM kill.
    pub oom_group: bool,
    /// This is the container's init (its exit is the task's exit).
    pub is_init: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Memory killed this process (or, with oom_group, its container).
    pub oom_killed: bool,
    /// Publish TaskOOM before the exit.
    pub oom_event: bool,
    pub exit_status: u32,
    pub reason: String,
}

pub fn decide(e: &Evidence) -> Verdict {
    let Some(status) = e.wait_status else {
        // No status at all: never report success for an unknown end.
        let oom = e.oom_kills.unwrap_or(0) > 0 || e.process_was_victim;
        return Verdict {
            oom_killed: oom,
            oom_event: oom && !e.already_reported,
            exit_status: 137,
            reason: "wait status lost; reported as killed".to_string(),
        };
    };
    let kills = e.oom_kills.unwrap_or(0);
    let sigkilled = status.killed_by(SIGKILL);
    // A notification alone is ambiguous (it reaches every memcg below the
    // one that ran out): it only explains a SIGKILL.
    let memcg_oom = kills > 0 || (e.oom_notifications > 0 && sigkilled);
    let any_oom = memcg_oom || e.process_was_victim;

    let (oom_killed, exit_status, reason) = if sigkilled && (kills > 0 || e.process_was_victim) {
        (
            true,
            137,
            format!("killed by SIGKILL with {kills} OOM kill(s) in its memcg"),
        )
    } else if sigkilled && e.oom_notifications > 0 {
        (
            true,
            137,
            "killed by SIGKILL during a memcg OOM".to_string(),
        )
    } else if any_oom && e.is_init && e.oom_group && status.exit_code() != 137 {
        (
            true,
            137,
            format!("{status} after {kills} OOM kill(s) in the container; oom_group makes it 137"),
        )
    } else if any_oom && e.is_init && !e.oom_group {
        (
            false,
            status.exit_code(),
            format!("{status} after {kills} OOM kill(s) of other processes; oom_group off keeps its status"),
        )
    } else if any_oom {
        (
            sigkilled,
            status.exit_code(),
            format!("{status}; {kills} OOM kill(s) in the container"),
        )
    } else {
        (false, status.exit_code(), format!("{status}; no OOM kill"))
    };
    Verdict {
        oom_killed,
        oom_event: any_oom && !e.already_reported,
        exit_status,
        reason,
    }
}

/// How many OOM episodes (one TaskOOM each) a container's kills make.
///
/// `kills` counts processes; one episode can take several: a kernel group
/// kill (`memory.oom.group`, counted once in `group_kills`) takes every
/// member, and with the shim's `oom_group` the first kill ends the whole
/// container, so later kills before its exit are the same episode. Only
/// without either is each kill its own episode (the kernel takes one
/// victim per OOM).
pub fn episodes(kills: u64, group_kills: u64, oom_group: bool) -> u64 {
    // Where the kernel group-kills, every OOM in the memcg is a group kill.
    let episodes = if group_kills > 0 { group_kills } else { kills };
    if oom_group {
        episodes.min(1)
    } else {
        episodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn killed(sig: i32) -> Option<WaitStatus> {
        Some(WaitStatus::Signaled {
            signal: sig,
            core_dumped: false,
        })
    }

    fn init(wait_status: Option<WaitStatus>) -> Evidence {
        Evidence {
            wait_status,
            oom_kills: Some(0),
            oom_group: true,
            is_init: true,
            ..Default::default()
        }
    }

    #[test]
    fn clean_exits_are_not_oom() {
        for code in [0, 1, 3] {
            let v = decide(&init(Some(WaitStatus::Exited(code))));
            assert_eq!(
                (v.oom_killed, v.oom_event, v.exit_status),
                (false, false, code as u32)
            );
        }
    }

    #[test]
    fn user_kills_are_not_oom() {
        let v = decide(&init(killed(9)));
        assert_eq!(
            (v.oom_killed, v.oom_event, v.exit_status),
            (false, false, 137)
        );
        let v = decide(&init(killed(15)));
        assert_eq!(
            (v.oom_killed, v.oom_event, v.exit_status),
            (false, false, 143)
        );
    }

    #[test]
    fn init_oom_kill() {
        let mut e = init(killed(9));
        e.oom_kills = Some(1);
        let v = decide(&e);
        assert_eq!(
            (v.oom_killed, v.oom_event, v.exit_status),
            (true, true, 137)
        );
    }

    #[test]
    fn eventfd_before_the_counter_moved() {
        let mut e = init(killed(9));
        e.oom_notifications = 1;
        let v = decide(&e);
        assert_eq!(
            (v.oom_killed, v.oom_event, v.exit_status),
            (true, true, 137)
        );
    }

    #[test]
    fn a_notification_alone_does_not_fail_a_clean_exit() {
        let mut e = init(Some(WaitStatus::Exited(0)));
        e.oom_notifications = 2;
        let v = decide(&e);
        assert_eq!(
            (v.oom_killed, v.oom_event, v.exit_status),
            (false, false, 0)
        );
    }

    #[test]
    fn child_oom_then_exit_0() {
        let mut e = init(Some(WaitStatus::Exited(0)));
        e.oom_kills = Some(1);
        let v = decide(&e);
        assert_eq!(
            (v.oom_killed, v.oom_event, v.exit_status),
            (true, true, 137)
        );
        e.oom_group = false;
        let v = decide(&e);
        assert_eq!((v.oom_killed, v.oom_event, v.exit_status), (false, true, 0));
        assert!(v.reason.contains("oom_group off"), "{}", v.reason);
    }

    #[test]
    fn an_event_reported_while_running_is_not_repeated() {
        let mut e = init(killed(9));
        e.oom_kills = Some(1);
        e.already_reported = true;
        let v = decide(&e);
        assert_eq!(
            (v.oom_killed, v.oom_event, v.exit_status),
            (true, false, 137)
        );
    }

    #[test]
    fn global_oom_seen_only_in_the_kernel_log() {
        let mut e = init(killed(9));
        e.oom_kills = None;
        e.process_was_victim = true;
        let v = decide(&e);
        assert_eq!(
            (v.oom_killed, v.oom_event, v.exit_status),
            (true, true, 137)
        );
    }

    #[test]
    fn lost_status_is_never_success() {
        let v = decide(&init(None));
        assert_eq!(v.exit_status, 137);
        assert!(!v.oom_event);
    }

    #[test]
    fn exec_killed_by_oom_keeps_its_status() {
        let e = Evidence {
            wait_status: killed(9),
            oom_kills: Some(1),
            ..Default::default()
        };
        let v = decide(&e);
        assert_eq!(
            (v.oom_killed, v.oom_event, v.exit_status),
            (true, true, 137)
        );
    }

    #[test]
    fn episodes_count_ooms_not_victims() {
        // Kernel group kill of 3 processes, seen mid-way and at the end.
        assert_eq!(episodes(1, 0, true), 1);
        assert_eq!(episodes(3, 1, true), 1);
        assert_eq!(episodes(3, 1, false), 1);
        // oom_group: the first kill ends the container.
        assert_eq!(episodes(2, 0, true), 1);
        // Without any group kill each victim is one OOM.
        assert_eq!(episodes(2, 0, false), 2);
        assert_eq!(episodes(0, 0, false), 0);
        assert_eq!(episodes(0, 0, true), 0);
    }
}
