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
/// cpu.stat, memory.events and memory.oom_control. Every non-empty line must
/// be a key and an unsigned number; the error names the line.
pub fn key_values(text: &str) -> Result<Vec<(&str, u64)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut it = line.split_ascii_whitespace();
        let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) else {
            return Err(format!(
                "line {}: {:?} is not KEY VALUE",
                n + 1,
                excerpt(line)
            ));
        };
        let v = v.parse().map_err(|_| {
            format!(
                "line {}: {k}: value {:?} is not a number",
                n + 1,
                excerpt(v)
            )
        })?;
        out.push((k, v));
    }
    Ok(out)
}

/// At most 80 characters of untrusted text, for an error message.
pub fn excerpt(text: &str) -> String {
    text.chars().take(80).collect()
}

pub fn parse_oom_control(text: &str) -> Result<OomControl, String> {
    let mut c = OomControl::default();
    let mut seen = false;
    for (k, v) in key_values(text)? {
        match k {
            "oom_kill_disable" => c.oom_kill_disable = v,
            "under_oom" => c.under_oom = v,
            "oom_kill" => (c.oom_kill, seen) = (v, true),
            _ => {}
        }
    }
    // Kernels before 4.13 have no counter: unknown is not 0.
    if !seen {
        return Err("no oom_kill line".to_string());
    }
    Ok(c)
}

pub fn parse_memory_events(text: &str) -> Result<MemoryEvents, String> {
    let mut e = MemoryEvents::default();
    let mut seen = false;
    for (k, v) in key_values(text)? {
        match k {
            "low" => e.low = v,
            "high" => e.high = v,
            "max" => e.max = v,
            "oom" => e.oom = v,
            "oom_kill" => (e.oom_kill, seen) = (v, true),
            "oom_group_kill" => e.oom_group_kill = v,
            _ => {}
        }
    }
    if !seen {
        return Err("no oom_kill line".to_string());
    }
    Ok(e)
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

/// mountinfo escapes space, tab, newline and backslash in paths as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Result<CgroupMounts, String> {
    let mut m = CgroupMounts::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| format!("mountinfo line {}: {what}: {:?}", n + 1, excerpt(line));
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
        let (left, right) = line
            .split_once(" - ")
            .ok_or_else(|| bad("no ' - ' separator"))?;
        let mount_point = left
            .split_ascii_whitespace()
            .nth(4)
            .ok_or_else(|| bad("fewer than 6 fields before ' - '"))?;
        let mut r = right.split_ascii_whitespace();
        let (Some(fstype), Some(_source)) = (r.next(), r.next()) else {
            return Err(bad("no FSTYPE SOURCE after ' - '"));
        };
        let superopts = r.next().unwrap_or_default();
        let mount_point = PathBuf::from(unescape(mount_point));
        match fstype {
            "cgroup" => {
                for opt in superopts.split(',') {
                    if matches!(opt, "rw" | "ro" | "") || opt.contains('=') {
                        continue;
                    }
                    m.v1.entry(opt.to_string())
                        .or_insert_with(|| mount_point.clone());
                }
                if superopts.split(',').any(|o| o == "memory") {
                    m.v1_memory.get_or_insert_with(|| mount_point.clone());
                }
            }
            "cgroup2" => {
                m.v2.get_or_insert(mount_point);
            }
            _ => {}
        }
    }
    Ok(m)
}

/// One line of `/proc/PID/cgroup`: `HIERARCHY-ID:CONTROLLERS:PATH`
/// (controllers empty on the unified hierarchy's `0::PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine<'a> {
    pub hierarchy: u32,
    pub controllers: &'a str,
    pub path: &'a str,
}

impl CgroupLine<'_> {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.split(',').any(|c| c == controller)
    }
}

pub fn parse_proc_cgroup(text: &str) -> Result<Vec<CgroupLine<'_>>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}: {:?}", n + 1, excerpt(line));
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not HIERARCHY:CONTROLLERS:PATH"));
        };
        let hierarchy = id
            .parse()
            .map_err(|_| bad(&format!("hierarchy id {:?} is not a number", excerpt(id))))?;
        if !path.starts_with('/') {
            return Err(bad("the cgroup path is not absolute"));
        }
        out.push(CgroupLine {
            hierarchy,
            controllers,
            path,
        });
    }
    Ok(out)
}

/// The memory controller's path in `/proc/PID/cgroup` (v1 line, else v2).
pub fn memcg_rel(proc_cgroup: &str) -> Result<String, String> {
    let lines = parse_proc_cgroup(proc_cgroup)?;
    lines
        .iter()
        .find(|l| l.has("memory"))
        .or_else(|| lines.iter().find(|l| l.controllers.is_empty()))
        .map(|l| l.path.to_string())
        .ok_or_else(|| "no memory controller or unified hierarchy line".to_string())
}

/// The v1 directory of `controller` for a process, from `/proc/PID/cgroup`
/// (`None` when that controller is not mounted or not listed).
pub fn v1_dir(
    proc_cgroup: &str,
    mounts: &CgroupMounts,
    controller: &str,
) -> Result<Option<PathBuf>, String> {
    let lines = parse_proc_cgroup(proc_cgroup)?;
    Ok(lines.iter().find(|l| l.has(controller)).and_then(|l| {
        Some(
            mounts
                .v1
                .get(controller)?
                .join(l.path.trim_start_matches('/')),
        )
    }))
}

impl Memcg {
    /// The memcg of a running process.
    pub fn of_pid(pid: i32) -> io::Result<Memcg> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?)
            .map_err(|e| invalid(format!("/proc/self/mountinfo: {e}")))?;
        Self::from_proc_cgroup(&cgroup, &mounts)
            .map_err(|e| invalid(format!("/proc/{pid}/cgroup: {e}")))
    }

    /// Resolves `/proc/PID/cgroup` against the mount points; a v1 memory
    /// controller wins over the unified hierarchy (hybrid hosts).
    pub fn from_proc_cgroup(text: &str, mounts: &CgroupMounts) -> Result<Memcg, String> {
        let lines = parse_proc_cgroup(text)?;
        if let Some(line) = lines.iter().find(|l| l.has("memory")) {
            let root = mounts
                .v1_memory
                .as_ref()
                .ok_or_else(|| "a memory controller line, but no v1 memory mount".to_string())?;
            return Ok(Memcg::V1(root.join(line.path.trim_start_matches('/'))));
        }
        let unified = lines
            .iter()
            .find(|l| l.controllers.is_empty())
            .ok_or_else(|| "no memory controller or unified hierarchy line".to_string())?;
        // A v2 hierarchy without the memory controller has no memcg.
        if mounts.v1_memory.is_some() {
            return Err("the v1 memory controller is mounted but not listed".to_string());
        }
        let root = mounts
            .v2
            .as_ref()
            .ok_or_else(|| "a unified hierarchy line, but no cgroup2 mount".to_string())?;
        Ok(Memcg::V2(root.join(unified.path.trim_start_matches('/'))))
    }

    /// The memcg path of a process as the kernel log names it (relative to
    /// the memory hierarchy's root).
    pub fn rel_of_pid(pid: i32) -> io::Result<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        memcg_rel(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/cgroup: {e}"),
            )
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            Memcg::V1(p) | Memcg::V2(p) => p,
        }
    }

    /// The cumulative OOM kill counters of this memcg.
    pub fn oom_counters(&self) -> io::Result<OomCounters> {
        let (file, v1) = match self {
            Memcg::V1(p) => (p.join("memory.oom_control"), true),
            Memcg::V2(p) => (p.join("memory.events"), false),
        };
        let text = std::fs::read_to_string(&file)?;
        let bad = |e: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", file.display()),
            )
        };
        if v1 {
            Ok(OomCounters {
                kills: parse_oom_control(&text).map_err(bad)?.oom_kill,
                ..OomCounters::default()
            })
        } else {
            let e = parse_memory_events(&text).map_err(bad)?;
            Ok(OomCounters {
                kills: e.oom_kill,
                group_kills: e.oom_group_kill,
                ooms: e.oom,
            })
        }
    }
}

/// A memcg's OOM kill counters. `kills` counts processes (a group kill
/// counts each member); `group_kills` counts the kernel's whole-cgroup kills
/// under `memory.oom.group` (v2 only; always 0 on v1); `ooms` counts the
/// times the memcg itself entered OOM, before any kill (v2's `oom`; v1 says
/// so only through its eventfd, so 0 there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OomCounters {
    pub kills: u64,
    pub group_kills: u64,
    pub ooms: u64,
}

impl OomCounters {
    pub fn since(self, baseline: OomCounters) -> OomCounters {
        OomCounters {
            kills: self.kills.saturating_sub(baseline.kills),
            group_kills: self.group_kills.saturating_sub(baseline.group_kills),
            ooms: self.ooms.saturating_sub(baseline.ooms),
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
        assert_eq!(parse_oom_control(OOM_CONTROL).unwrap().oom_kill, 2);
        let e = parse_memory_events(MEMORY_EVENTS).unwrap();
        assert_eq!((e.max, e.oom, e.oom_kill, e.oom_group_kill), (12, 1, 1, 0));
        // Newer kernels add keys: skipped.
        let e = parse_memory_events(
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 3\noom_group_kill 1\nsock_throttled 0\n",
        )
        .unwrap();
        assert_eq!(e.oom_kill, 3);
    }

    #[test]
    fn bad_counter_files_name_the_line() {
        let cases: [(&str, &str); 5] = [
            (
                "garbage\noom_kill 1\n",
                "line 1: \"garbage\" is not KEY VALUE",
            ),
            (
                "oom_kill_disable 0\noom_kill x\n",
                "line 2: oom_kill: value \"x\" is not a number",
            ),
            ("oom_kill -1\n", "value \"-1\""),
            ("oom_kill 1 2\n", "is not KEY VALUE"),
            ("oom_kill_disable 0\nunder_oom 0\n", "no oom_kill line"),
        ];
        for (text, want) in cases {
            let got = parse_oom_control(text).unwrap_err();
            assert!(got.contains(want), "{text:?}: {got}");
        }
        let got = parse_memory_events("oom_kill 18446744073709551616\n").unwrap_err();
        assert!(got.contains("not a number"), "{got}");
    }

    #[test]
    fn hybrid_host_uses_the_v1_memory_controller() {
        let mounts = parse_mountinfo(MOUNTINFO).unwrap();
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
            Ok(Memcg::V1(PathBuf::from("/sys/fs/cgroup/memory/default/t1")))
        );
        assert_eq!(
            v1_dir(cg, &mounts, "pids"),
            Ok(None),
            "pids is not mounted in MOUNTINFO"
        );
    }

    #[test]
    fn mountinfo_escapes_and_errors() {
        let m = parse_mountinfo(
            "36 30 0:32 / /sys/fs/cgroup/mem\\040ory rw,relatime - cgroup cgroup rw,memory\n",
        )
        .unwrap();
        assert_eq!(
            m.v1_memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/mem ory"))
        );
        let err = parse_mountinfo("36 30 0:32 / /x rw cgroup cgroup rw,memory\n").unwrap_err();
        assert!(err.contains("line 1: no ' - ' separator"), "{err}");
        let err = parse_mountinfo("36 30 / - cgroup cgroup rw\n").unwrap_err();
        assert!(err.contains("fewer than 6 fields"), "{err}");
        let err = parse_mountinfo("36 30 0:32 / /x rw - cgroup\n").unwrap_err();
        assert!(err.contains("no FSTYPE SOURCE"), "{err}");
    }

    #[test]
    fn memcg_as_the_kernel_log_names_it() {
        assert_eq!(
            memcg_rel("4:memory:/default/t1\n0::/default/t1\n").as_deref(),
            Ok("/default/t1")
        );
        assert_eq!(
            memcg_rel("0::/kubepods/p/c\n").as_deref(),
            Ok("/kubepods/p/c")
        );
        // A cgroup path may hold ':'.
        assert_eq!(memcg_rel("0::/a:b\n").as_deref(), Ok("/a:b"));
        let cases = [
            ("", "no memory controller or unified hierarchy line"),
            ("4:pids:/x\n", "no memory controller"),
            ("x:memory:/a\n", "hierarchy id \"x\" is not a number"),
            ("4:memory\n", "not HIERARCHY:CONTROLLERS:PATH"),
            ("4:memory:a\n", "not absolute"),
        ];
        for (text, want) in cases {
            let got = memcg_rel(text).unwrap_err();
            assert!(got.contains(want), "{text:?}: {got}");
        }
    }

    #[test]
    fn pure_v2_host() {
        let mounts = parse_mountinfo(
            "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        )
        .unwrap();
        assert_eq!(
            Memcg::from_proc_cgroup("0::/kubepods/pod1/c1\n", &mounts),
            Ok(Memcg::V2(PathBuf::from("/sys/fs/cgroup/kubepods/pod1/c1")))
        );
        let err = Memcg::from_proc_cgroup("0::/a\n", &CgroupMounts::default()).unwrap_err();
        assert!(err.contains("no cgroup2 mount"), "{err}");
    }

    #[test]
    fn own_memcg_resolves_here() {
        let m = Memcg::of_pid(std::process::id() as i32).unwrap();
        assert!(m.path().exists(), "{m:?}");
        m.oom_counters().unwrap();
    }
}
