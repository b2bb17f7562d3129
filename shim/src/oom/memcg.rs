//! A process's memory cgroup (v1 controller or v2 unified) and the OOM
//! counters the kernel keeps in it.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memcg {
    /// A directory of the v1 memory hierarchy.
    V1(PathBuf),
    /// A directory of the v2 unified hierarchy.
    V2(PathBuf),
}

/// `memory.oom_control` (v1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OomControl {
    pub oom_kill_disable: u64,
    pub under_oom: u64,
    pub oom_kill: u64,
}

/// `memory.events` (v2).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEvents {
    pub low: u64,
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

/// The cgroup "flat keyed" format (`key value` a line), as in memory.stat,
/// cpu.stat, memory.events and memory.oom_control; other lines are skipped.
pub fn key_values(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let mut it = l.split_whitespace();
        let k = it.next()?;
        let v = it.next()?.parse().ok()?;
        Some((k, v))
    })
}

pub fn parse_oom_control(text: &str) -> OomControl {
    let mut c = OomControl::default();
    for (k, v) in key_values(text) {
        match k {
            "oom_kill_disable" => c.oom_kill_disable = v,
            "under_oom" => c.under_oom = v,
            "oom_kill" => c.oom_kill = v,
            _ => {}
        }
    }
    c
}

pub fn parse_memory_events(text: &str) -> MemoryEvents {
    let mut e = MemoryEvents::default();
    for (k, v) in key_values(text) {
        match k {
            "low" => e.low = v,
            "high" => e.high = v,
            "max" => e.max = v,
            "oom" => e.oom = v,
            "oom_kill" => e.oom_kill = v,
            "oom_group_kill" => e.oom_group_kill = v,
            _ => {}
        }
    }
    e
}

/// Mount points of the v1 memory controller and of cgroup2, from
/// `/proc/self/mountinfo`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgroupMounts {
    pub v1_memory: Option<PathBuf>,
    pub v2: Option<PathBuf>,
    /// Every v1 controller's mount point (cpu, cpuacct, pids, ...).
    pub v1: std::collections::BTreeMap<String, PathBuf>,
}

pub fn parse_mountinfo(text: &str) -> CgroupMounts {
    let mut m = CgroupMounts::default();
    for line in text.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mut r = right.split_whitespace();
        let fstype = r.next().unwrap_or_default();
        let superopts = r.nth(1).unwrap_or_default();
        match fstype {
            "cgroup" => {
                for opt in superopts.split(',') {
                    if matches!(opt, "rw" | "ro") || opt.contains('=') {
                        continue;
                    }
                    m.v1.entry(opt.to_string())
                        .or_insert_with(|| PathBuf::from(mount_point));
                }
                if superopts.split(',').any(|o| o == "memory") {
                    m.v1_memory
                        .get_or_insert_with(|| PathBuf::from(mount_point));
                }
            }
            "cgroup2" => {
                m.v2.get_or_insert_with(|| PathBuf::from(mount_point));
            }
            _ => {}
        }
    }
    m
}

/// The memory controller's path in `/proc/PID/cgroup` (v1 line, else v2).
pub fn memcg_rel(proc_cgroup: &str) -> Option<String> {
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            return Some(path.to_string());
        }
        if controllers.is_empty() {
            unified = Some(path.to_string());
        }
    }
    unified
}

/// The v1 directory of `controller` for a process, from `/proc/PID/cgroup`.
pub fn v1_dir(proc_cgroup: &str, mounts: &CgroupMounts, controller: &str) -> Option<PathBuf> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if !controllers.split(',').any(|c| c == controller) {
            return None;
        }
        Some(
            mounts
                .v1
                .get(controller)?
                .join(path.trim_start_matches('/')),
        )
    })
}

impl Memcg {
    /// The memcg of a running process.
    pub fn of_pid(pid: i32) -> io::Result<Memcg> {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?);
        Self::from_proc_cgroup(&cgroup, &mounts).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("/proc/{pid}/cgroup: no memory cgroup"),
            )
        })
    }

    /// Resolves `/proc/PID/cgroup` against the mount points; a v1 memory
    /// controller wins over the unified hierarchy (hybrid hosts).
    pub fn from_proc_cgroup(text: &str, mounts: &CgroupMounts) -> Option<Memcg> {
        let mut unified = None;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rel = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "memory") {
                if let Some(root) = &mounts.v1_memory {
                    return Some(Memcg::V1(root.join(rel)));
                }
            } else if controllers.is_empty() {
                unified = mounts.v2.as_ref().map(|root| root.join(rel));
            }
        }
        let path = unified?;
        // A v2 hierarchy without the memory controller has no memcg.
        if mounts.v1_memory.is_none() {
            Some(Memcg::V2(path))
        } else {
            None
        }
    }

    /// The memcg path of a process as the kernel log names it (relative to
    /// the memory hierarchy's root).
    pub fn rel_of_pid(pid: i32) -> io::Result<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        memcg_rel(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("/proc/{pid}/cgroup: no memory cgroup"),
            )
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            Memcg::V1(p) | Memcg::V2(p) => p,
        }
    }

    /// The processes in this memcg (`cgroup.procs`; exited ones have left).
    pub fn procs(&self) -> io::Result<Vec<i32>> {
        let text = std::fs::read_to_string(self.path().join("cgroup.procs"))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// The cumulative OOM kill counters of this memcg.
    pub fn oom_counters(&self) -> io::Result<OomCounters> {
        match self {
            Memcg::V1(p) => {
                let text = std::fs::read_to_string(p.join("memory.oom_control"))?;
                Ok(OomCounters {
                    kills: parse_oom_control(&text).oom_kill,
                    group_kills: 0,
                })
            }
            Memcg::V2(p) => {
                let text = std::fs::read_to_string(p.join("memory.events"))?;
                let e = parse_memory_events(&text);
                Ok(OomCounters {
                    kills: e.oom_kill,
                    group_kills: e.oom_group_kill,
                })
            }
        }
    }
}

/// A memcg's OOM kill counters. `kills` counts processes (a group kill
/// counts each member); `group_kills` counts the kernel's whole-cgroup kills
/// under `memory.oom.group` (v2 only; always 0 on v1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OomCounters {
    pub kills: u64,
    pub group_kills: u64,
}

impl OomCounters {
    pub fn since(self, baseline: OomCounters) -> OomCounters {
        OomCounters {
            kills: self.kills.saturating_sub(baseline.kills),
            group_kills: self.group_kills.saturating_sub(baseline.group_kills),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Read off this machine's kernel (6.x, cgroup v1 memory controller).
    const OOM_CONTROL: &str = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
    const MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
    const MOUNTINFO: &str = "\
25 1 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 30 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
36 30 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn counters() {
        assert_eq!(parse_oom_control(OOM_CONTROL).oom_kill, 2);
        let e = parse_memory_events(MEMORY_EVENTS);
        assert_eq!((e.max, e.oom, e.oom_kill, e.oom_group_kill), (12, 1, 1, 0));
        assert_eq!(
            parse_oom_control("garbage\noom_kill x\n"),
            OomControl::default()
        );
    }

    #[test]
    fn hybrid_host_uses_the_v1_memory_controller() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(
            mounts.v1_memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            mounts.v2.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        let cg = "12:pids:/default/t1\n4:memory:/default/t1\n0::/default/t1\n";
        assert_eq!(
            Memcg::from_proc_cgroup(cg, &mounts),
            Some(Memcg::V1(PathBuf::from("/sys/fs/cgroup/memory/default/t1")))
        );
    }

    #[test]
    fn memcg_as_the_kernel_log_names_it() {
        assert_eq!(
            memcg_rel("4:memory:/default/t1\n0::/default/t1\n").as_deref(),
            Some("/default/t1")
        );
        assert_eq!(
            memcg_rel("0::/kubepods/p/c\n").as_deref(),
            Some("/kubepods/p/c")
        );
        assert_eq!(memcg_rel(""), None);
    }

    #[test]
    fn pure_v2_host() {
        let mounts = parse_mountinfo(
            "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(
            Memcg::from_proc_cgroup("0::/kubepods/pod1/c1\n", &mounts),
            Some(Memcg::V2(PathBuf::from("/sys/fs/cgroup/kubepods/pod1/c1")))
        );
    }

    #[test]
    fn own_memcg_resolves_here() {
        let m = Memcg::of_pid(std::process::id() as i32).unwrap();
        assert!(m.path().exists(), "{m:?}");
        m.oom_counters().unwrap();
    }
}
