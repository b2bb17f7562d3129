//! Stats: the container's cgroup metrics in the type containerd expects
//! (`io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`),
//! with the OOM kill counters containerd 2.3 looks at when a task exits 137.

use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};

use crate::oom::memcg::{
    key_values, parse_memory_events, parse_mountinfo, parse_oom_control, v1_dir, Memcg,
};

pub fn collect(pid: i32) -> Result<Any, String> {
    let memcg = Memcg::of_pid(pid).map_err(|e| e.to_string())?;
    let mut any = Any::new();
    match &memcg {
        Memcg::V1(path) => {
            let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .map_err(|e| format!("/proc/{pid}/cgroup: {e}"))?;
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
            let mounts =
                parse_mountinfo(&mountinfo).map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
            let dir = |c: &str| {
                v1_dir(&proc_cgroup, &mounts, c).map_err(|e| format!("/proc/{pid}/cgroup: {e}"))
            };
            let m = v1_metrics(path, dir("cpuacct")?, dir("cpu")?, dir("pids")?)?;
            any.type_url = "io.containerd.cgroups.v1.Metrics".to_string();
            any.value = m.write_to_bytes().map_err(|e| e.to_string())?;
        }
        Memcg::V2(path) => {
            any.type_url = "io.containerd.cgroups.v2.Metrics".to_string();
            any.value = v2_metrics(path)?
                .write_to_bytes()
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(any)
}

/// The kernel's "no limit" for a v1 memcg (PAGE_COUNTER_MAX pages).
const V1_UNLIMITED: u64 = 9223372036854771712;

/// Replaces the memory figures of host metrics (those of a memcg shared by
/// a whole sandbox) with a container's own usage and limit, as its runtime
/// accounts them. The memcg's breakdown (rss, cache, ...) describes the
/// sandbox, not the container, so it is left out rather than misattributed.
pub fn with_own_memory(any: Any, usage: u64, limit: Option<u64>) -> Result<Any, String> {
    let mut out = Any::new();
    out.type_url = any.type_url.clone();
    match any.type_url.as_str() {
        "io.containerd.cgroups.v1.Metrics" => {
            let mut m = v1::Metrics::parse_from_bytes(&any.value).map_err(|e| e.to_string())?;
            let mut mem = v1::MemoryStat::new();
            let mut entry = v1::MemoryEntry::new();
            entry.usage = usage;
            entry.limit = limit.unwrap_or(V1_UNLIMITED);
            mem.hierarchical_memory_limit = entry.limit;
            mem.usage = MessageField::some(entry);
            m.memory = MessageField::some(mem);
            out.value = m.write_to_bytes().map_err(|e| e.to_string())?;
        }
        "io.containerd.cgroups.v2.Metrics" => {
            let mut m = v2::Metrics::parse_from_bytes(&any.value).map_err(|e| e.to_string())?;
            let mut mem = v2::MemoryStat::new();
            mem.usage = usage;
            mem.usage_limit = limit.unwrap_or(u64::MAX);
            m.memory = MessageField::some(mem);
            out.value = m.write_to_bytes().map_err(|e| e.to_string())?;
        }
        other => return Err(format!("unknown metrics type {other:?}")),
    }
    Ok(out)
}

/// A cgroup file's text; `None` when the file does not exist (a
/// controller or feature this kernel or hierarchy lacks).
fn read_text(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// A single-number cgroup file (`memory.usage_in_bytes`, `pids.current`);
/// `max` (no limit) reads as `unlimited`.
pub fn parse_single(text: &str, unlimited: u64) -> Result<u64, String> {
    match text.trim() {
        "max" => Ok(unlimited),
        v => v
            .parse()
            .map_err(|_| format!("{:?} is not a number", crate::oom::memcg::excerpt(v))),
    }
}

/// A missing file reads as `missing`; a malformed one is an error.
fn read_u64(path: &Path, missing: u64, unlimited: u64) -> Result<u64, String> {
    match read_text(path)? {
        None => Ok(missing),
        Some(t) => parse_single(&t, unlimited).map_err(|e| format!("{}: {e}", path.display())),
    }
}

/// `key value` lines (memory.stat, cpu.stat) as pairs; none if missing.
fn flat_keyed(path: &Path) -> Result<Vec<(String, u64)>, String> {
    let Some(text) = read_text(path)? else {
        return Ok(Vec::new());
    };
    key_values(&text)
        .map(|kv| kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `cpuacct.usage_percpu`: numbers separated by blanks.
pub fn parse_numbers(text: &str) -> Result<Vec<u64>, String> {
    text.split_ascii_whitespace()
        .enumerate()
        .map(|(i, v)| {
            v.parse().map_err(|_| {
                format!(
                    "value {} ({:?}) is not a number",
                    i + 1,
                    crate::oom::memcg::excerpt(v)
                )
            })
        })
        .collect()
}

fn v1_entry(dir: &Path, prefix: &str) -> Result<v1::MemoryEntry, String> {
    let mut e = v1::MemoryEntry::new();
    let f = |name: &str| read_u64(&dir.join(format!("{prefix}{name}")), 0, u64::MAX);
    e.usage = f("usage_in_bytes")?;
    e.limit = f("limit_in_bytes")?;
    e.max = f("max_usage_in_bytes")?;
    e.failcnt = f("failcnt")?;
    Ok(e)
}

fn v1_metrics(
    memcg: &Path,
    cpuacct: Option<PathBuf>,
    cpu: Option<PathBuf>,
    pids: Option<PathBuf>,
) -> Result<v1::Metrics, String> {
    let mut m = v1::Metrics::new();
    let mut mem = v1::MemoryStat::new();
    for (k, v) in flat_keyed(&memcg.join("memory.stat"))? {
        match k.as_str() {
            "cache" => mem.cache = v,
            "rss" => mem.rss = v,
            "rss_huge" => mem.rss_huge = v,
            "mapped_file" => mem.mapped_file = v,
            "dirty" => mem.dirty = v,
            "writeback" => mem.writeback = v,
            "pgpgin" => mem.pg_pg_in = v,
            "pgpgout" => mem.pg_pg_out = v,
            "pgfault" => mem.pg_fault = v,
            "pgmajfault" => mem.pg_maj_fault = v,
            "inactive_anon" => mem.inactive_anon = v,
            "active_anon" => mem.active_anon = v,
            "inactive_file" => mem.inactive_file = v,
            "active_file" => mem.active_file = v,
            "unevictable" => mem.unevictable = v,
            "hierarchical_memory_limit" => mem.hierarchical_memory_limit = v,
            "hierarchical_memsw_limit" => mem.hierarchical_swap_limit = v,
            "total_cache" => mem.total_cache = v,
            "total_rss" => mem.total_rss = v,
            "total_rss_huge" => mem.total_rss_huge = v,
            "total_mapped_file" => mem.total_mapped_file = v,
            "total_dirty" => mem.total_dirty = v,
            "total_writeback" => mem.total_writeback = v,
            "total_pgpgin" => mem.total_pg_pg_in = v,
            "total_pgpgout" => mem.total_pg_pg_out = v,
            "total_pgfault" => mem.total_pg_fault = v,
            "total_pgmajfault" => mem.total_pg_maj_fault = v,
            "total_inactive_anon" => mem.total_inactive_anon = v,
            "total_active_anon" => mem.total_active_anon = v,
            "total_inactive_file" => mem.total_inactive_file = v,
            "total_active_file" => mem.total_active_file = v,
            "total_unevictable" => mem.total_unevictable = v,
            _ => {}
        }
    }
    let usage = v1_entry(memcg, "memory.")?;
    if usage.limit == 0 && usage.usage == 0 && !memcg.exists() {
        return Err(format!("{}: memory cgroup is gone", memcg.display()));
    }
    mem.usage = MessageField::some(usage);
    mem.swap = MessageField::some(v1_entry(memcg, "memory.memsw.")?);
    mem.kernel = MessageField::some(v1_entry(memcg, "memory.kmem.")?);
    mem.kernel_tcp = MessageField::some(v1_entry(memcg, "memory.kmem.tcp.")?);
    m.memory = MessageField::some(mem);

    let text = std::fs::read_to_string(memcg.join("memory.oom_control"))
        .map_err(|e| format!("{}/memory.oom_control: {e}", memcg.display()))?;
    let c = parse_oom_control(&text)
        .map_err(|e| format!("{}/memory.oom_control: {e}", memcg.display()))?;
    let mut oc = v1::MemoryOomControl::new();
    oc.oom_kill_disable = c.oom_kill_disable;
    oc.under_oom = c.under_oom;
    oc.oom_kill = c.oom_kill;
    m.memory_oom_control = MessageField::some(oc);

    let mut cpu_stat = v1::CPUStat::new();
    let mut usage = v1::CPUUsage::new();
    if let Some(dir) = &cpuacct {
        usage.total = read_u64(&dir.join("cpuacct.usage"), 0, u64::MAX)?;
        let percpu = dir.join("cpuacct.usage_percpu");
        usage.per_cpu = parse_numbers(&read_text(&percpu)?.unwrap_or_default())
            .map_err(|e| format!("{}: {e}", percpu.display()))?;
        // cpuacct.stat is in USER_HZ ticks; containerd reports nanoseconds.
        for (k, v) in flat_keyed(&dir.join("cpuacct.stat"))? {
            match k.as_str() {
                "user" => usage.user = v.saturating_mul(10_000_000),
                "system" => usage.kernel = v.saturating_mul(10_000_000),
                _ => {}
            }
        }
    }
    cpu_stat.usage = MessageField::some(usage);
    if let Some(dir) = &cpu {
        let mut t = v1::Throttle::new();
        for (k, v) in flat_keyed(&dir.join("cpu.stat"))? {
            match k.as_str() {
                "nr_periods" => t.periods = v,
                "nr_throttled" => t.throttled_periods = v,
                "throttled_time" => t.throttled_time = v,
                _ => {}
            }
        }
        cpu_stat.throttling = MessageField::some(t);
    }
    m.cpu = MessageField::some(cpu_stat);

    if let Some(dir) = &pids {
        let mut p = v1::PidsStat::new();
        p.current = read_u64(&dir.join("pids.current"), 0, 0)?;
        // "max" (no limit) reads as 0, as containerd reports it.
        p.limit = read_u64(&dir.join("pids.max"), 0, 0)?;
        m.pids = MessageField::some(p);
    }
    Ok(m)
}

fn v2_metrics(dir: &Path) -> Result<v2::Metrics, String> {
    let mut m = v2::Metrics::new();
    let mut mem = v2::MemoryStat::new();
    mem.usage = read_u64(&dir.join("memory.current"), 0, u64::MAX)?;
    mem.usage_limit = read_u64(&dir.join("memory.max"), u64::MAX, u64::MAX)?;
    mem.swap_usage = read_u64(&dir.join("memory.swap.current"), 0, u64::MAX)?;
    {
        for (k, v) in flat_keyed(&dir.join("memory.stat"))? {
            match k.as_str() {
                "anon" => mem.anon = v,
                "file" => mem.file = v,
                "kernel_stack" => mem.kernel_stack = v,
                "slab" => mem.slab = v,
                "sock" => mem.sock = v,
                "shmem" => mem.shmem = v,
                "file_mapped" => mem.file_mapped = v,
                "file_dirty" => mem.file_dirty = v,
                "pgfault" => mem.pgfault = v,
                "pgmajfault" => mem.pgmajfault = v,
                "inactive_file" => mem.inactive_file = v,
                "active_file" => mem.active_file = v,
                "inactive_anon" => mem.inactive_anon = v,
                "active_anon" => mem.active_anon = v,
                _ => {}
            }
        }
    }
    m.memory = MessageField::some(mem);
    let text = std::fs::read_to_string(dir.join("memory.events"))
        .map_err(|e| format!("{}/memory.events: {e}", dir.display()))?;
    let e =
        parse_memory_events(&text).map_err(|e| format!("{}/memory.events: {e}", dir.display()))?;
    let mut ev = v2::MemoryEvents::new();
    ev.low = e.low;
    ev.high = e.high;
    ev.max = e.max;
    ev.oom = e.oom;
    ev.oom_kill = e.oom_kill;
    m.memory_events = MessageField::some(ev);
    let mut pids = v2::PidsStat::new();
    pids.current = read_u64(&dir.join("pids.current"), 0, 0)?;
    pids.limit = read_u64(&dir.join("pids.max"), 0, 0)?;
    m.pids = MessageField::some(pids);
    let cpu_stat = dir.join("cpu.stat");
    if cpu_stat.exists() {
        let mut cpu = v2::CPUStat::new();
        for (k, v) in flat_keyed(&cpu_stat)? {
            match k.as_str() {
                "usage_usec" => cpu.usage_usec = v,
                "user_usec" => cpu.user_usec = v,
                "system_usec" => cpu.system_usec = v,
                "nr_periods" => cpu.nr_periods = v,
                "nr_throttled" => cpu.nr_throttled = v,
                "throttled_usec" => cpu.throttled_usec = v,
                _ => {}
            }
        }
        m.cpu = MessageField::some(cpu);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_replaces_the_shared_memcg_figures() {
        let host = collect(std::process::id() as i32).unwrap();
        let own = with_own_memory(host.clone(), 5 << 20, Some(64 << 20)).unwrap();
        assert_eq!(own.type_url, host.type_url);
        match own.type_url.as_str() {
            "io.containerd.cgroups.v1.Metrics" => {
                let before = v1::Metrics::parse_from_bytes(&host.value).unwrap();
                let m = v1::Metrics::parse_from_bytes(&own.value).unwrap();
                assert_eq!(
                    (m.memory.usage.usage, m.memory.usage.limit),
                    (5 << 20, 64 << 20)
                );
                assert_eq!(m.memory.total_inactive_file, 0, "the sandbox's breakdown");
                assert_eq!(m.cpu, before.cpu, "only memory changes");
                assert_eq!(m.memory_oom_control, before.memory_oom_control);
                let unlimited = with_own_memory(host, 1, None).unwrap();
                let m = v1::Metrics::parse_from_bytes(&unlimited.value).unwrap();
                assert_eq!(m.memory.usage.limit, V1_UNLIMITED);
            }
            _ => {
                let m = v2::Metrics::parse_from_bytes(&own.value).unwrap();
                assert_eq!((m.memory.usage, m.memory.usage_limit), (5 << 20, 64 << 20));
            }
        }
        let mut bad = Any::new();
        bad.type_url = "x".into();
        assert!(with_own_memory(bad, 1, None).is_err());
    }

    #[test]
    fn own_cgroup_metrics_are_filled() {
        let any = collect(std::process::id() as i32).unwrap();
        match Memcg::of_pid(std::process::id() as i32).unwrap() {
            Memcg::V1(_) => {
                assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
                let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
                assert!(m.memory.usage.usage > 0, "{m:?}");
                assert!(m.cpu.usage.total > 0, "{m:?}");
                assert!(m.pids.is_some(), "{m:?}");
                assert!(m.memory_oom_control.is_some());
            }
            Memcg::V2(_) => {
                assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
                let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
                assert!(m.memory_events.is_some());
            }
        }
    }

    #[test]
    fn single_values_and_lists() {
        assert_eq!(parse_single("123\n", 0), Ok(123));
        assert_eq!(parse_single("max\n", 7), Ok(7));
        assert!(parse_single("12k", 0)
            .unwrap_err()
            .contains("\"12k\" is not a number"));
        assert!(parse_single("", 0).is_err());
        assert_eq!(parse_numbers("1 2  3\n"), Ok(vec![1, 2, 3]));
        assert_eq!(parse_numbers(""), Ok(vec![]));
        let err = parse_numbers("1 x 3").unwrap_err();
        assert!(err.contains("value 2 (\"x\")"), "{err}");
    }
}
