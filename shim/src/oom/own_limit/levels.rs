//! Where the sandbox's host memcg must wake the watch: the arithmetic that
//! makes a container's own limit hold inside a shared sandbox.
//!
//! The containers of a gVisor pod share the sandbox's host memcg. The sentry
//! takes the containers' memory from one memory file (shmem in the host
//! memcg's `memory.stat`) and charges each page to a container's memory
//! cgroup; the host memcg also holds the sentry's own memory (its Go heap,
//! the gofers), which no container can use. So a container can grow by `D`
//! only if the host memcg grows by at least `D - slack`, where the slack is
//! the memory file's pages no container is charged for (freed pages the
//! sentry has not yet returned to the host; measured ~0 on an idle pod,
//! they go back within ~0.1 s). With `room = smallest headroom - slack`, a
//! host level at `host + room / 2` (at most `room - GUARD`) is therefore
//! reached while every container is still at least half its headroom below
//! its limit; and if the host memcg falls by more than [`FALL`] (memory
//! returned to the host that a container may take again) the levels are
//! computed anew. A container that grows to its limit wakes the watch
//! about log2(limit / MIN_RISE) times on the way, each a pause of ~1 ms.

/// What the v1 threshold lags behind the usage (the kernel checks it every
/// 128 charged pages per CPU), with margin: the level sits this far below
/// the first byte over any container's limit.
pub const GUARD: u64 = 4 << 20;
/// The least rise the watch waits for, once a container is so close to its
/// limit that any growth could be its own: a container can go this far (and
/// the threshold's lag) over its limit without waking the watch; it is then
/// killed at the next reading.
pub const MIN_RISE: u64 = 2 << 20;
/// A fall of the host memcg larger than this makes the watch read again.
pub const FALL: u64 = GUARD;

/// The sandbox's host memcg, read at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    /// `memory.usage_in_bytes` (v1), `memory.current` (v2).
    pub usage: u64,
    /// `total_shmem`/`shmem` of `memory.stat`: the sentry's memory file.
    pub shmem: Option<u64>,
}

/// A container with a limit, as last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub usage: u64,
    pub limit: u64,
}

/// The host usages at which the watch wakes: `rise` (a container may be
/// near its limit: stop the sandbox and read) and `fall` (read again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub rise: u64,
    pub fall: Option<u64>,
    /// The smallest headroom among the containers.
    pub headroom: u64,
    /// Memory the sentry can hand to a container without the host growing.
    pub slack: u64,
}

/// The levels after a reading: `sandbox` is what the sentry charges to all
/// containers together. Without a shmem figure, all the host holds beyond
/// the containers' total counts as slack (a safe, earlier level).
pub fn levels(host: HostMemory, sandbox: u64, members: &[Member]) -> Levels {
    let headroom = members
        .iter()
        .map(|m| m.limit.saturating_sub(m.usage))
        .min()
        .unwrap_or(u64::MAX);
    let slack = host.shmem.unwrap_or(host.usage).saturating_sub(sandbox);
    // The host growth before some container could reach its limit; the
    // watch wakes at half of it (a burst is then stopped with half its way
    // to the limit still to go: the pause must land before the allocation
    // returns, and on a loaded host it took 54 ms once), never closer than
    // GUARD to the limit, never for less than MIN_RISE.
    let room = headroom.saturating_sub(slack);
    let rise = (room / 2).min(room.saturating_sub(GUARD)).max(MIN_RISE);
    Levels {
        rise: host.usage.saturating_add(rise),
        fall: host.usage.checked_sub(FALL),
        headroom,
        slack,
    }
}

/// Which threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Rise,
    Fall,
}

/// A kept rise level this far below the computed one is moved up (it would
/// wake the watch for nothing).
pub const REARM_BELOW: u64 = 16 << 20;

/// Which threshold to register next (rise first), given the levels of the
/// ones armed now and the host usage; `None`: the armed ones are safe. A
/// registration costs the kernel an RCU grace period, so an armed threshold
/// is kept while safe: a rise level above the usage and at or below the
/// computed one (an earlier wake costs a round, never a miss; but not more
/// than [`REARM_BELOW`] below), a fall level below the usage and at or
/// above the computed one.
pub fn to_arm(
    rise: Option<u64>,
    fall: Option<u64>,
    levels: &Levels,
    usage: u64,
) -> Option<(Which, u64)> {
    let rise_ok = |r: u64| r > usage && r <= levels.rise && levels.rise - r < REARM_BELOW;
    if !rise.is_some_and(rise_ok) {
        return Some((Which::Rise, levels.rise));
    }
    let level = levels.fall?;
    if !fall.is_some_and(|f| f < usage && level <= f) {
        return Some((Which::Fall, level));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn member(usage: u64, limit: u64) -> Member {
        Member {
            usage: usage * MIB,
            limit: limit * MIB,
        }
    }

    /// Figures of runsc 20240729 on this machine: an idle pod (host 17.1
    /// MiB, shmem 0.8 MiB, the sentry's root cgroup 1.9 MiB), A idle at 1.9
    /// MiB of 64 and B about to start (0 of 64).
    #[test]
    fn idle_pod() {
        let host = HostMemory {
            usage: 17_930_240,
            shmem: Some(838_860),
        };
        let l = levels(host, 1_992_294, &[member(0, 64), member(2, 64)]);
        // No slack: the memory file holds less than the containers' total.
        assert_eq!(l.slack, 0);
        assert_eq!(l.headroom, 62 * MIB);
        // Half the way: a burst is stopped with 31 MiB still to go.
        assert_eq!(l.rise, host.usage + 31 * MIB);
        assert_eq!(l.fall, Some(host.usage - FALL));
    }

    /// Slack is memory the sentry can reuse: it lowers the level.
    #[test]
    fn slack_lowers_the_level() {
        let host = HostMemory {
            usage: 130 * MIB,
            shmem: Some(110 * MIB),
        };
        let l = levels(host, 100 * MIB, &[member(20, 64)]);
        assert_eq!(l.slack, 10 * MIB);
        assert_eq!(l.rise, 130 * MIB + (44 - 10) * MIB / 2);
        // Without a shmem figure everything beyond the containers is slack.
        let host = HostMemory {
            usage: 130 * MIB,
            shmem: None,
        };
        let l = levels(host, 100 * MIB, &[member(20, 64)]);
        assert_eq!(l.slack, 30 * MIB);
        assert_eq!(l.rise, 130 * MIB + (44 - 30) * MIB / 2);
    }

    /// The container nearest its limit sets the level; at or over it (or
    /// closer than the slack and guard), the watch waits for the least rise.
    #[test]
    fn nearest_container_and_least_rise() {
        let host = HostMemory {
            usage: 200 * MIB,
            shmem: Some(150 * MIB),
        };
        let l = levels(host, 150 * MIB, &[member(10, 64), member(40, 48)]);
        assert_eq!(l.headroom, 8 * MIB);
        assert_eq!(l.rise, 200 * MIB + 4 * MIB);
        // 10 MiB of room: half of it.
        let l = levels(host, 150 * MIB, &[member(38, 48)]);
        assert_eq!(l.rise, 200 * MIB + 5 * MIB);
        // 7 MiB: half would leave less than GUARD to the limit.
        let l = levels(host, 150 * MIB, &[member(41, 48)]);
        assert_eq!(l.rise, 200 * MIB + 7 * MIB - GUARD);
        let l = levels(host, 150 * MIB, &[member(63, 64)]);
        assert_eq!(l.rise, 200 * MIB + MIN_RISE);
        let l = levels(host, 150 * MIB, &[member(70, 64)]);
        assert_eq!((l.headroom, l.rise), (0, 200 * MIB + MIN_RISE));
    }

    /// The sequence of a burst: armed at Join, the Start reading lowers
    /// the level (the container is using memory now), the rise passes.
    #[test]
    fn kept_while_safe() {
        let at = |rise: u64, fall: Option<u64>| Levels {
            rise: rise * MIB,
            fall: fall.map(|f| f * MIB),
            headroom: 0,
            slack: 0,
        };
        // Nothing armed: the rise first, then the fall.
        assert_eq!(
            to_arm(None, None, &at(76, Some(10)), 14 * MIB),
            Some((Which::Rise, 76 * MIB))
        );
        assert_eq!(
            to_arm(Some(76 * MIB), None, &at(76, Some(10)), 14 * MIB),
            Some((Which::Fall, 10 * MIB))
        );
        assert_eq!(
            to_arm(Some(76 * MIB), Some(10 * MIB), &at(76, Some(10)), 14 * MIB),
            None
        );
        // A higher computed rise, a higher computed fall: a lower rise and
        // a lower fall stay (safe, and not far off).
        assert_eq!(
            to_arm(Some(76 * MIB), Some(10 * MIB), &at(80, Some(29)), 33 * MIB),
            Some((Which::Fall, 29 * MIB))
        );
        assert_eq!(
            to_arm(Some(76 * MIB), Some(30 * MIB), &at(80, Some(29)), 33 * MIB),
            None
        );
        // A lower computed rise: the armed one is unsafe.
        assert_eq!(
            to_arm(Some(76 * MIB), Some(30 * MIB), &at(75, Some(29)), 33 * MIB),
            Some((Which::Rise, 75 * MIB))
        );
        // Far below the computed one: moved up.
        assert_eq!(
            to_arm(Some(76 * MIB), Some(30 * MIB), &at(100, Some(29)), 33 * MIB),
            Some((Which::Rise, 100 * MIB))
        );
        // The usage passed the armed rise (or fell under the armed fall).
        assert_eq!(
            to_arm(Some(76 * MIB), Some(30 * MIB), &at(96, Some(86)), 90 * MIB),
            Some((Which::Rise, 96 * MIB))
        );
        assert_eq!(
            to_arm(Some(96 * MIB), Some(30 * MIB), &at(96, Some(10)), 14 * MIB),
            Some((Which::Fall, 10 * MIB))
        );
        assert_eq!(
            to_arm(Some(80 * MIB), Some(30 * MIB), &at(76, Some(10)), 14 * MIB),
            Some((Which::Rise, 76 * MIB))
        );
        assert_eq!(
            to_arm(Some(76 * MIB), Some(30 * MIB), &at(76, Some(10)), 14 * MIB),
            Some((Which::Fall, 10 * MIB))
        );
        // No fall level (the host holds less than FALL): none armed.
        assert_eq!(to_arm(Some(76 * MIB), None, &at(76, None), MIB), None);
    }

    #[test]
    fn extremes() {
        let host = HostMemory {
            usage: u64::MAX,
            shmem: Some(u64::MAX),
        };
        let l = levels(host, 0, &[member(0, 64)]);
        assert_eq!(l.rise, u64::MAX);
        let host = HostMemory {
            usage: MIB,
            shmem: None,
        };
        let l = levels(host, 0, &[]);
        assert_eq!(l.fall, None);
        assert_eq!(l.headroom, u64::MAX);
    }
}
