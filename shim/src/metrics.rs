//! Stats: the container's cgroup metrics in the type containerd expects
//! (`io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`),
//! with the OOM kill counters containerd 2.3 looks at when a task exits 137.

use containerd_shim::cgroup::{collect_metrics, get_cgroup};
use containerd_shim_protos::cgroups::metrics::MemoryOomControl;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};

use crate::oom::memcg::{parse_memory_events, parse_oom_control, Memcg};

pub fn collect(pid: i32) -> Result<Any, String> {
    let memcg = Memcg::of_pid(pid).map_err(|e| e.to_string())?;
    let mut any = Any::new();
    match &memcg {
        Memcg::V1(path) => {
            let cgroup = get_cgroup(pid as u32).map_err(|e| e.to_string())?;
            let mut m = collect_metrics(&cgroup).map_err(|e| e.to_string())?;
            let text = std::fs::read_to_string(path.join("memory.oom_control"))
                .map_err(|e| format!("{}/memory.oom_control: {e}", path.display()))?;
            let c = parse_oom_control(&text);
            let mut oc = MemoryOomControl::new();
            oc.oom_kill_disable = c.oom_kill_disable;
            oc.under_oom = c.under_oom;
            oc.oom_kill = c.oom_kill;
            m.memory_oom_control = MessageField::some(oc);
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

fn read_u64(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn v2_metrics(dir: &std::path::Path) -> Result<v2::Metrics, String> {
    let mut m = v2::Metrics::new();
    let mut mem = v2::MemoryStat::new();
    mem.usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
    mem.usage_limit = read_u64(&dir.join("memory.max")).unwrap_or(u64::MAX);
    mem.swap_usage = read_u64(&dir.join("memory.swap.current")).unwrap_or(0);
    if let Ok(stat) = std::fs::read_to_string(dir.join("memory.stat")) {
        for line in stat.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(Ok(v))) = (it.next(), it.next().map(str::parse::<u64>)) else {
                continue;
            };
            match k {
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
    let e = parse_memory_events(&text);
    let mut ev = v2::MemoryEvents::new();
    ev.low = e.low;
    ev.high = e.high;
    ev.max = e.max;
    ev.oom = e.oom;
    ev.oom_kill = e.oom_kill;
    m.memory_events = MessageField::some(ev);
    let mut pids = v2::PidsStat::new();
    pids.current = read_u64(&dir.join("pids.current")).unwrap_or(0);
    pids.limit = read_u64(&dir.join("pids.max")).unwrap_or(0);
    m.pids = MessageField::some(pids);
    if let Ok(stat) = std::fs::read_to_string(dir.join("cpu.stat")) {
        let mut cpu = v2::CPUStat::new();
        for line in stat.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(Ok(v))) = (it.next(), it.next().map(str::parse::<u64>)) else {
                continue;
            };
            match k {
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
