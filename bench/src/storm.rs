//! An OOM storm: N containers behind one barrier, released at once, each
//! allocating past its limit.
//!
//! The barrier is a FIFO this process holds open for reading and writing,
//! so a container's `read x < /b/go` never blocks in open, only in read;
//! the release is one write of N newlines (atomic, under PIPE_BUF), of
//! which each `read` takes one. A container late to the barrier still finds
//! its byte.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::ctr::{story, Events};
use crate::{ms, Common, Kind};

pub fn run(c: &Common, count: u64, parallel: u64) -> Result<(), String> {
    if !(1..=4000).contains(&count) {
        return Err(format!("--count {count}: 1 to 4000 (one barrier write)"));
    }
    for kind in &c.kinds {
        let line = storm(c, kind, count as usize, parallel.max(1) as usize);
        match line {
            Ok(l) => println!("storm\t{}\t{count}\t{l}", kind.name),
            Err(e) => {
                eprintln!("storm {}: {e}", kind.name);
                println!("storm\t{}\t{count}\t-\t-\t-\t-\t-", kind.name);
            }
        }
    }
    Ok(())
}

fn storm(c: &Common, kind: &Kind, n: usize, parallel: usize) -> Result<String, String> {
    let stamp = std::process::id();
    let ids: Vec<String> = (0..n)
        .map(|i| format!("storm{stamp}-{}-{i}", kind.name))
        .collect();
    let barrier = c.work.join(format!("barrier-{}", kind.name));
    std::fs::create_dir_all(&barrier).map_err(|e| format!("{}: {e}", barrier.display()))?;
    let fifo = barrier.join("go");
    let _ = std::fs::remove_file(&fifo);
    let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
        .map_err(|_| "barrier path with NUL")?;
    // SAFETY: a valid C string.
    if unsafe { libc::mkfifo(path.as_ptr(), 0o666) } != 0 {
        return Err(format!(
            "mkfifo {}: {}",
            fifo.display(),
            std::io::Error::last_os_error()
        ));
    }
    let mut go = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&fifo)
        .map_err(|e| format!("{}: {e}", fifo.display()))?;
    let mut events = Events::subscribe(&c.ctr)?;

    let result = (|| {
        start_all(c, kind, &ids, &barrier, parallel)?;
        wait_at_barrier(c, &ids)?;
        let shim = shim_binary(&kind.runtime);
        let cpu0 = shims_cpu_ticks(&c.ctr.address, &shim);
        let released = Instant::now();
        go.write_all(&vec![b'\n'; n])
            .map_err(|e| format!("barrier write: {e}"))?;
        let all_exited = |seen: &[crate::ctr::Event]| {
            ids.iter().all(|id| {
                seen.iter()
                    .any(|e| e.topic == "/tasks/exit" && e.container == *id && e.process == *id)
            })
        };
        let finished = events.wait(Instant::now() + Duration::from_secs(900), all_exited);
        let cpu1 = shims_cpu_ticks(&c.ctr.address, &shim);
        // Anything published after an exit shows in the stories.
        events.wait(Instant::now() + Duration::from_millis(500), |_| false);
        let last_exit = ids
            .iter()
            .filter_map(|id| events.init_exit(id).map(|e| e.at))
            .max();
        let mut ok = 0;
        let mut oom_first = 0;
        let mut exit_137 = 0;
        for id in &ids {
            let s = story(&events, id);
            let status = events.init_exit(id).map(|e| e.exit_status);
            if s == "ok" {
                oom_first += 1;
            }
            if status == Some(137) {
                exit_137 += 1;
            }
            if s == "ok" && status == Some(137) {
                ok += 1;
            } else {
                eprintln!("storm {}: {id}: {s}, exit status {status:?}", kind.name);
            }
        }
        if !finished {
            eprintln!(
                "storm {}: not every container exited within 900 s",
                kind.name
            );
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(format!(
            "{ok}\t{oom_first}\t{exit_137}\t{}\t{:.0}",
            last_exit
                .map(|t| format!("{:.1}", ms(released, t)))
                .unwrap_or_else(|| "-".into()),
            cpu1.saturating_sub(cpu0) as f64 * 1000.0 / hz
        ))
    })();
    remove_all(c, &ids, parallel);
    let _ = std::fs::remove_file(&fifo);
    let _ = std::fs::remove_dir(&barrier);
    result
}

/// The shim binary of a runtime type (io.containerd.X.v2 ->
/// containerd-shim-X-v2).
fn shim_binary(runtime: &str) -> String {
    let name = runtime
        .strip_prefix("io.containerd.")
        .unwrap_or(runtime)
        .replace('.', "-");
    format!("containerd-shim-{name}")
}

/// utime+stime+cutime+cstime (their reaped children: the runtime binaries
/// they ran) of every `shim` process serving the containerd at `address`.
fn shims_cpu_ticks(address: &str, shim: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with(shim.as_bytes()));
        let ours = args.windows(2).any(|w| {
            w[0] == b"-address"
                && (w[1] == address.as_bytes() || w[1].ends_with(address.as_bytes()))
        });
        if !is_shim || !ours {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after "(comm) ": state is field 3; utime..cstime 14..17.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        total += f.get(11..15).map_or(0, |t| t.iter().sum::<u64>());
    }
    total
}

/// `ctr run -d` of every container, `parallel` at a time.
fn start_all(
    c: &Common,
    kind: &Kind,
    ids: &[String],
    barrier: &std::path::Path,
    parallel: usize,
) -> Result<(), String> {
    let next = AtomicUsize::new(0);
    let mount = format!(
        "type=bind,src={},dst=/b,options=rbind:rw",
        barrier.display()
    );
    let limit = c.limit.to_string();
    let cmd = format!("read x < /b/go; exec {}", c.alloc());
    let errors: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel)
            .map(|_| {
                s.spawn(|| {
                    let mut errors = vec![];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(id) = ids.get(i) else { break };
                        let cgroup = format!("{}/{id}", c.cgroup_parent);
                        let mut args = vec!["run", "-d", "--null-io", "--runtime", &kind.runtime];
                        args.extend(kind.args.iter().map(String::as_str));
                        args.extend([
                            "--memory-limit",
                            &limit,
                            "--cgroup",
                            &cgroup,
                            "--mount",
                            &mount,
                            "--rootfs",
                            &c.rootfs,
                            id,
                            "/bin/sh",
                            "-c",
                            &cmd,
                        ]);
                        if let Err(e) = c.ctr.ok(&args) {
                            errors.push(e);
                        }
                    }
                    errors
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|_| vec!["a starter panicked".into()])
            })
            .collect()
    });
    match errors.first() {
        None => Ok(()),
        Some(e) => Err(format!(
            "{} of {} did not start; first: {e}",
            errors.len(),
            ids.len()
        )),
    }
}

/// Until every container's init is blocked reading the barrier.
fn wait_at_barrier(c: &Common, ids: &[String]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pids = c.ctr.task_pids()?;
        let waiting = ids
            .iter()
            .filter(|id| {
                pids.iter().any(|(t, pid)| {
                    t == *id
                        && std::fs::read_to_string(format!("/proc/{pid}/wchan"))
                            .is_ok_and(|w| w.contains("poll") || w.contains("pipe"))
                })
            })
            .count();
        if waiting == ids.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{waiting} of {} at the barrier after 120 s",
                ids.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn remove_all(c: &Common, ids: &[String], parallel: usize) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                c.ctr.remove(id);
            });
        }
    });
}
