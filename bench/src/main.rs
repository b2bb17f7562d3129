//! `oomguard-bench`: the measurements of `hack/bench.sh` that a shell cannot
//! make (an eventfd on a memcg, event arrival times, a paced kernel log).
//!
//! ```text
//! oomguard-bench latency COMMON --runs N
//! oomguard-bench storm   COMMON --count N [--parallel P]
//! oomguard-bench kmsg-flood --rate LINES_PER_S --seconds S
//! oomguard-bench burst   --ctr PATH --address SOCK --namespace NS --rootfs DIR
//!                        --work DIR --log CONTAINERD_LOG --runsc PATH
//!                        [--platforms ptrace,systrap] [--sizes 68,72,...]
//!                        [--runs N] [--limit BYTES] [--kinds oomguard,stock]
//!                        --table FILE
//! COMMON: --ctr PATH --address SOCK --namespace NS --rootfs DIR --work DIR
//!         --cgroup-parent /P [--limit BYTES] [--alloc-mb MB] [--own-rootfs 1]
//!         --kind NAME,RUNTIME[,CTR_RUN_ARG...]...
//! ```
//!
//! `latency`: per run and kind (kinds interleaved, ABBA), a container with a
//! memory limit sleeps 1 s and then allocates past it. t0 is this process's
//! own OOM notification on the container's memcg (v1: an eventfd on
//! `memory.oom_control` via `cgroup.event_control`; v2: inotify on
//! `memory.events`, the first change with `oom` above its start value); t1
//! is the arrival of the container's `/tasks/oom` line from `ctr events`.
//! One tab-separated line per run on stdout:
//! `latency KIND RUN OOM_MS EXIT_MS EXIT_STATUS STORY KILL_MS`, where
//! KILL_MS is when the memcg's kill counter moved after t0, as this process
//! saw it reading the counter every ~0.1 ms: the earliest a shim that
//! publishes only a confirmed kill can know of it.
//!
//! `storm`: per kind, N containers wait behind a barrier (a FIFO this
//! process holds open; each container's `read` takes one byte), then are
//! released at once and allocate past their limit. One line per kind:
//! `storm KIND N OK OOM_BEFORE_EXIT EXIT_137 MS_RELEASE_TO_LAST_EXIT
//! SHIM_CPU_MS` (the kind's shims' CPU from the release to the last exit,
//! with the runtime binaries they ran).
//!
//! `burst`: a container's own limit in a gVisor pod against allocations
//! that take it over at once (see `burst.rs`).
//!
//! `kmsg-flood`: writes paced lines to `/dev/kmsg` (the caller sets
//! `kernel.printk_devkmsg=on`, or the kernel keeps 10 per 5 s) and prints
//! how many it wrote.

mod burst;
mod ctr;
mod latency;
mod memcg;
mod storm;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// One runtime under test: its name in the output, containerd's runtime
/// type, and extra `ctr run` arguments (e.g. `--runc-binary`).
#[derive(Debug, Clone)]
pub struct Kind {
    pub name: String,
    pub runtime: String,
    pub args: Vec<String>,
}

/// What every measurement needs.
#[derive(Debug, Clone)]
pub struct Common {
    pub ctr: ctr::Ctr,
    pub rootfs: String,
    pub work: PathBuf,
    pub cgroup_parent: String,
    pub limit: u64,
    /// MiB the container allocates past its limit.
    pub alloc_mb: u64,
    /// A copy of the rootfs per container (gVisor keeps a filestore file in
    /// it).
    pub own_rootfs: bool,
    pub kinds: Vec<Kind>,
}

impl Common {
    /// The container's command after its wait.
    pub fn alloc(&self) -> String {
        format!("dd if=/dev/zero of=/dev/null bs={}M count=1", self.alloc_mb)
    }

    /// The rootfs for container `id` (a copy of its own when asked).
    pub fn rootfs_for(&self, id: &str) -> Result<String, String> {
        if !self.own_rootfs {
            return Ok(self.rootfs.clone());
        }
        let dir = self.work.join(format!("rootfs-{id}"));
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(&self.rootfs)
            .arg(&dir)
            .status()
            .map_err(|e| format!("cp: {e}"))?;
        if !st.success() {
            return Err(format!("cp -a {} {}: {st}", self.rootfs, dir.display()));
        }
        Ok(dir.display().to_string())
    }

    pub fn drop_rootfs(&self, id: &str) {
        if self.own_rootfs {
            let _ = std::fs::remove_dir_all(self.work.join(format!("rootfs-{id}")));
        }
    }
}

struct Args {
    values: HashMap<String, Vec<String>>,
}

impl Args {
    fn parse(argv: &[String]) -> Result<Args, String> {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        let mut it = argv.iter();
        while let Some(a) = it.next() {
            let key = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument '{a}'"))?;
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            values.entry(key.to_string()).or_default().push(v.clone());
        }
        Ok(Args { values })
    }

    fn get(&self, key: &str) -> Result<&str, String> {
        self.opt(key).ok_or_else(|| format!("--{key} is required"))
    }

    fn opt(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    fn num(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.opt(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{key} {v}: not a number")),
        }
    }

    fn list(&self, key: &str, default: &str) -> Vec<String> {
        self.opt(key)
            .unwrap_or(default)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn burst(&self) -> Result<burst::Burst, String> {
        let sizes = self
            .list("sizes", "68,72,80,96,120,300")
            .iter()
            .map(|s| s.parse().map_err(|_| format!("--sizes: {s}: not a number")))
            .collect::<Result<Vec<u64>, _>>()?;
        Ok(burst::Burst {
            ctr: ctr::Ctr {
                bin: self.get("ctr")?.into(),
                address: self.get("address")?.into(),
                namespace: self.get("namespace")?.into(),
            },
            rootfs: self.get("rootfs")?.into(),
            work: self.get("work")?.into(),
            log: self.get("log")?.into(),
            runsc: self.get("runsc")?.into(),
            platforms: self.list("platforms", "ptrace,systrap"),
            sizes,
            runs: self.num("runs", 10)?,
            limit: self.num("limit", 64 << 20)?,
            kinds: self.list("kinds", "oomguard,stock"),
            table: self.get("table")?.into(),
        })
    }

    fn common(&self) -> Result<Common, String> {
        let kinds = self
            .values
            .get("kind")
            .ok_or("--kind is required")?
            .iter()
            .map(|k| {
                let mut parts = k.split(',').map(str::to_string);
                let name = parts.next().filter(|n| !n.is_empty());
                let runtime = parts.next().filter(|r| !r.is_empty());
                match (name, runtime) {
                    (Some(name), Some(runtime)) => Ok(Kind {
                        name,
                        runtime,
                        args: parts.collect(),
                    }),
                    _ => Err(format!("--kind {k}: expected NAME,RUNTIME[,ARG...]")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Common {
            ctr: ctr::Ctr {
                bin: self.get("ctr")?.into(),
                address: self.get("address")?.into(),
                namespace: self.get("namespace")?.into(),
            },
            rootfs: self.get("rootfs")?.into(),
            work: self.get("work")?.into(),
            cgroup_parent: self.get("cgroup-parent")?.trim_end_matches('/').into(),
            limit: self.num("limit", 32 << 20)?,
            alloc_mb: self.num("alloc-mb", 100)?,
            own_rootfs: self.opt("own-rootfs") == Some("1"),
            kinds,
        })
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        eprintln!(
            "usage: oomguard-bench latency|storm|kmsg-flood|burst ARGS (see the source's header)"
        );
        return ExitCode::from(2);
    };
    let result = Args::parse(rest).and_then(|a| match cmd.as_str() {
        "latency" => latency::run(&a.common()?, a.num("runs", 20)?),
        "storm" => storm::run(&a.common()?, a.num("count", 200)?, a.num("parallel", 4)?),
        "kmsg-flood" => flood(a.num("rate", 2000)?, a.num("seconds", 10)?),
        "burst" => a.burst()?.run(),
        other => Err(format!("unknown command '{other}'")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oomguard-bench {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `rate` lines a second to /dev/kmsg for `seconds`, paced by the
/// clock (a burst catches up after a late wake-up).
fn flood(rate: u64, seconds: u64) -> Result<(), String> {
    let mut kmsg = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .map_err(|e| format!("/dev/kmsg: {e}"))?;
    let start = Instant::now();
    let total = rate * seconds;
    let mut written = 0u64;
    while written < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while written < due {
            // One write is one record; <6> = info.
            kmsg.write_all(
                format!("<6>oomguard-bench: kernel log flood line {written}\n").as_bytes(),
            )
            .map_err(|e| format!("write /dev/kmsg: {e}"))?;
            written += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    println!(
        "kmsg-flood\t{written}\t{:.2}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Milliseconds between two instants, for the output.
pub fn ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        (to - from).as_secs_f64() * 1000.0
    } else {
        -((from - to).as_secs_f64() * 1000.0)
    }
}
