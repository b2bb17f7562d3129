//! `burst`: a container's own memory limit inside a gVisor pod against a
//! burst that takes it over at once (issue 20's matrix).
//!
//! Per platform and pod shape (with or without a hog that holds 100 MB and
//! has no limit of its own): a pod (sandbox + A idle with its own limit),
//! then for each size, `runs` containers B with the same limit that
//! allocate SIZE MiB in one `dd` and exit 0 if nothing stops them. One line
//! per B:
//!
//! `burst KIND PLATFORM HOG SIZE_MIB RUN EXIT CAUGHT WOKE_TO_KILL_MS KILL_TO_EXIT_MS FROZEN`
//!
//! Both kinds run runsc with `--network=host` (the network mode `install`
//! writes where this kernel needs it) and the platform named.
//! KIND `oomguard`: B runs through containerd and oomguard (`ctr run`, pod
//! annotations as CRI sets them); CAUGHT = exit 137 and oomguard's verdict
//! line names its own limit; the times are the verdict line's (the wake of
//! the round that found B to its kill sent; the kill to the exit seen).
//! KIND `stock`: the same pod run by runsc itself, no shim (no stock shim
//! here can start a container that joins a gVisor sandbox: containerd's
//! runc shim hangs at `runsc start`, DESIGN.md §4, and gVisor's own shim is
//! not packaged); CAUGHT = exit 137.
//! After each pod: `alive A HOG...` lines say whether A (and the hog) were
//! still running. Then a markdown table of the matrix goes to `--table`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::ctr::Ctr;

pub struct Burst {
    pub ctr: Ctr,
    pub rootfs: String,
    pub work: PathBuf,
    /// containerd's log, for oomguard's verdict lines.
    pub log: PathBuf,
    /// runsc (a release that accounts each container: 20240729).
    pub runsc: String,
    pub platforms: Vec<String>,
    pub sizes: Vec<u64>,
    pub runs: u64,
    pub limit: u64,
    pub kinds: Vec<String>,
    pub table: PathBuf,
}

const CGROUP_MOUNT: &str =
    "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev";
const HOG: &str = "dd if=/dev/zero bs=100M count=1 | sleep 100000";

/// One B.
#[derive(Debug, Clone)]
struct Outcome {
    exit: i32,
    caught: bool,
    woke_to_kill_ms: Option<f64>,
    kill_to_exit_ms: Option<f64>,
    frozen: Option<bool>,
}

/// A Rust `Debug` duration as the shim logs it ("190.293482ms", "12.5µs",
/// "1.2s", "950ns"), in milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = text.split_at(split);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "s" => v * 1000.0,
        "ms" => v,
        "µs" | "us" => v / 1000.0,
        "ns" => v / 1e6,
        _ => return None,
    })
}

/// The value of `key=` in a log line, up to the next space or ';'.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    let end = rest.find([' ', ';', '"']).unwrap_or(rest.len());
    Some(&rest[..end])
}

impl Burst {
    pub fn run(&self) -> Result<(), String> {
        let mut results: BTreeMap<(String, String, bool, u64), Vec<Outcome>> = BTreeMap::new();
        for platform in &self.platforms {
            for hog in [false, true] {
                for kind in &self.kinds {
                    let outcomes = match kind.as_str() {
                        "oomguard" => self.oomguard_pod(platform, hog)?,
                        "stock" => self.stock_pod(platform, hog)?,
                        other => return Err(format!("unknown kind '{other}'")),
                    };
                    for (size, o) in outcomes {
                        results
                            .entry((kind.clone(), platform.clone(), hog, size))
                            .or_default()
                            .push(o);
                    }
                }
            }
        }
        std::fs::write(&self.table, table(&results, self.limit))
            .map_err(|e| format!("{}: {e}", self.table.display()))
    }

    fn print(kind: &str, platform: &str, hog: bool, size: u64, run: u64, o: &Outcome) {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!(
            "burst\t{kind}\t{platform}\t{}\t{size}\t{run}\t{}\t{}\t{}\t{}\t{}",
            if hog { "hog" } else { "nohog" },
            o.exit,
            o.caught as u8,
            ms(o.woke_to_kill_ms),
            ms(o.kill_to_exit_ms),
            o.frozen.map_or("-", |f| if f { "1" } else { "0" })
        );
    }

    // ------------------------------------------------------------ oomguard

    fn config(&self, platform: &str) -> Result<PathBuf, String> {
        let path = self.work.join(format!("burst-runsc-{platform}.toml"));
        let text = format!(
            "binary_name = \"{}\"\nroot = \"{}\"\n[runsc_config]\n  platform = \"{platform}\"\n  network = \"host\"\n",
            self.runsc,
            self.work.join(format!("burst-root-{platform}")).display()
        );
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    fn rootfs_copy(&self, id: &str) -> Result<String, String> {
        let dir = self.work.join(format!("rootfs-{id}"));
        let st = Command::new("cp")
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

    fn ctr_run(
        &self,
        config: &Path,
        pod: &str,
        id: &str,
        role: &str,
        opts: &[&str],
        cmd: &[&str],
    ) -> Result<std::process::Output, String> {
        let rootfs = self.rootfs_copy(id)?;
        let sandbox = format!("io.kubernetes.cri.sandbox-id={pod}");
        let ctype = format!("io.kubernetes.cri.container-type={role}");
        let config = config.display().to_string();
        let mut args = vec![
            "run",
            "--runtime",
            "io.containerd.oomguard.v2",
            "--runtime-config-path",
            &config,
            "--annotation",
            &ctype,
            "--annotation",
            &sandbox,
        ];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--rootfs", &rootfs, id]);
        args.extend_from_slice(cmd);
        self.ctr.run(&args)
    }

    fn remove(&self, id: &str) {
        self.ctr.remove(id);
        let _ = std::fs::remove_dir_all(self.work.join(format!("rootfs-{id}")));
    }

    fn oomguard_pod(&self, platform: &str, hog: bool) -> Result<Vec<(u64, Outcome)>, String> {
        let config = self.config(platform)?;
        let tag = format!("{platform}-{}", if hog { "hog" } else { "nohog" });
        let pod = format!("burst-{tag}");
        let a = format!("{pod}-a");
        let h = format!("{pod}-h");
        let limit = self.limit.to_string();
        let limited = ["--memory-limit", &limit, "--mount", CGROUP_MOUNT];
        let mut made = vec![pod.clone()];
        let result = (|| {
            let out = self.ctr_run(
                &config,
                &pod,
                &pod,
                "sandbox",
                &["-d"],
                &["/bin/sleep", "100000"],
            )?;
            ok(&out, "sandbox")?;
            made.push(a.clone());
            let mut opts = vec!["-d"];
            opts.extend_from_slice(&limited);
            let out = self.ctr_run(
                &config,
                &pod,
                &a,
                "container",
                &opts,
                &["/bin/sleep", "100000"],
            )?;
            ok(&out, "A")?;
            if hog {
                made.push(h.clone());
                let out = self.ctr_run(
                    &config,
                    &pod,
                    &h,
                    "container",
                    &["-d", "--mount", CGROUP_MOUNT],
                    &["/bin/sh", "-c", HOG],
                )?;
                ok(&out, "hog")?;
                std::thread::sleep(Duration::from_secs(2));
            }
            let mut outcomes = Vec::new();
            for &size in &self.sizes {
                for run in 0..self.runs {
                    let b = format!("{pod}-b{size}-{run}");
                    let bs = format!("bs={size}M");
                    let out = self.ctr_run(
                        &config,
                        &pod,
                        &b,
                        "container",
                        &["--rm", "--memory-limit", &limit, "--mount", CGROUP_MOUNT],
                        &["/bin/dd", "if=/dev/zero", "of=/dev/null", &bs, "count=1"],
                    )?;
                    let _ = std::fs::remove_dir_all(self.work.join(format!("rootfs-{b}")));
                    let exit = out.status.code().unwrap_or(-1);
                    let o = self.verdict(&b, exit);
                    Self::print("oomguard", platform, hog, size, run, &o);
                    outcomes.push((size, o));
                }
            }
            let mut alive = vec![a.clone()];
            if hog {
                alive.push(h.clone());
            }
            let running: Vec<String> = self
                .ctr
                .ok(&["task", "ls"])?
                .lines()
                .filter(|l| l.contains("RUNNING"))
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect();
            for id in &alive {
                println!(
                    "alive\toomguard\t{tag}\t{id}\t{}",
                    running.contains(id) as u8
                );
            }
            Ok(outcomes)
        })();
        for id in made.iter().rev() {
            self.remove(id);
        }
        result
    }

    /// B's verdict line in containerd's log (the shim may write it a moment
    /// after `ctr run` returned).
    fn verdict(&self, id: &str, exit: i32) -> Outcome {
        let needle = format!("verdict id={id} own_limit:");
        let deadline = Instant::now() + Duration::from_secs(2);
        let line = loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(l) = log.lines().find(|l| l.contains(&needle)) {
                break Some(l.to_string());
            }
            if exit != 137 || Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let Some(line) = line else {
            return Outcome {
                exit,
                caught: false,
                woke_to_kill_ms: None,
                kill_to_exit_ms: None,
                frozen: None,
            };
        };
        Outcome {
            exit,
            caught: exit == 137,
            woke_to_kill_ms: field(&line, "woke_to_kill").and_then(parse_duration_ms),
            kill_to_exit_ms: field(&line, "kill_to_exit").and_then(parse_duration_ms),
            frozen: field(&line, "frozen").map(|f| f == "true"),
        }
    }

    // ------------------------------------------------------------ stock

    fn runsc(&self, root: &Path, platform: &str) -> Command {
        let mut c = Command::new(&self.runsc);
        c.arg("--root")
            .arg(root)
            .arg(format!("--platform={platform}"))
            .arg("--network=host")
            .arg("--ignore-cgroups")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// An OCI bundle for `id` in `pod`, as CRI would make it.
    fn bundle(
        &self,
        pod: &str,
        id: &str,
        role: &str,
        args: &[&str],
        limit: bool,
    ) -> Result<PathBuf, String> {
        let dir = self.work.join(format!("bundle-{id}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut mounts = vec![
            serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}),
        ];
        if role == "container" {
            mounts.push(serde_json::json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]}));
        }
        let mut linux = serde_json::json!({
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        });
        if limit {
            linux["resources"] = serde_json::json!({"memory": {"limit": self.limit}});
        }
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin:/sbin:/usr/bin"],
                "cwd": "/"
            },
            "root": {"path": self.rootfs, "readonly": true},
            "hostname": pod,
            "mounts": mounts,
            "annotations": {
                "io.kubernetes.cri.container-type": role,
                "io.kubernetes.cri.sandbox-id": pod
            },
            "linux": linux
        });
        std::fs::write(dir.join("config.json"), spec.to_string())
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// `runsc create` and `runsc start` of one container of a stock pod.
    fn stock_start(
        &self,
        pod: &StockPod,
        id: &str,
        role: &str,
        args: &[&str],
        limit: bool,
    ) -> Result<(), String> {
        let bundle = self.bundle(&pod.name, id, role, args, limit)?;
        for action in [vec!["create", "--bundle"], vec!["start"]] {
            let mut c = self.runsc(&pod.root, &pod.platform);
            c.args(&action);
            if action[0] == "create" {
                c.arg(&bundle).arg("--pid-file").arg(bundle.join("pid"));
            }
            let st = c
                .arg(id)
                .status()
                .map_err(|e| format!("{}: {e}", self.runsc))?;
            if !st.success() {
                return Err(format!("runsc {} {id}: {st}", action[0]));
            }
        }
        Ok(())
    }

    fn stock_pod(&self, platform: &str, hog: bool) -> Result<Vec<(u64, Outcome)>, String> {
        let tag = format!("{platform}-{}", if hog { "hog" } else { "nohog" });
        let root = self.work.join(format!("burst-stock-root-{tag}"));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let name = format!("stock-{tag}");
        let a = format!("{name}-a");
        let h = format!("{name}-h");
        let pod = StockPod {
            root: root.clone(),
            platform: platform.to_string(),
            name: name.clone(),
        };
        let result = (|| {
            self.stock_start(&pod, &name, "sandbox", &["/bin/sleep", "100000"], false)?;
            self.stock_start(&pod, &a, "container", &["/bin/sleep", "100000"], true)?;
            if hog {
                self.stock_start(&pod, &h, "container", &["/bin/sh", "-c", HOG], false)?;
                std::thread::sleep(Duration::from_secs(2));
            }
            let mut outcomes = Vec::new();
            for &size in &self.sizes {
                for run in 0..self.runs {
                    let b = format!("{name}-b{size}-{run}");
                    let bs = format!("bs={size}M");
                    self.stock_start(
                        &pod,
                        &b,
                        "container",
                        &["/bin/dd", "if=/dev/zero", "of=/dev/null", &bs, "count=1"],
                        true,
                    )?;
                    let out = self
                        .runsc(&root, platform)
                        .arg("wait")
                        .arg(&b)
                        .stdout(Stdio::piped())
                        .output()
                        .map_err(|e| format!("runsc wait: {e}"))?;
                    let v: serde_json::Value =
                        serde_json::from_slice(&out.stdout).unwrap_or_default();
                    let exit = v.get("exitStatus").and_then(|e| e.as_i64()).unwrap_or(-1) as i32;
                    let _ = self
                        .runsc(&root, platform)
                        .args(["delete", "--force", &b])
                        .status();
                    let _ = std::fs::remove_dir_all(self.work.join(format!("bundle-{b}")));
                    let o = Outcome {
                        exit,
                        caught: exit == 137,
                        woke_to_kill_ms: None,
                        kill_to_exit_ms: None,
                        frozen: None,
                    };
                    Self::print("stock", platform, hog, size, run, &o);
                    outcomes.push((size, o));
                }
            }
            Ok(outcomes)
        })();
        for id in [&h, &a, &name] {
            let _ = self
                .runsc(&root, platform)
                .args(["delete", "--force", id])
                .status();
            let _ = std::fs::remove_dir_all(self.work.join(format!("bundle-{id}")));
        }
        result
    }
}

/// A pod run by runsc alone.
struct StockPod {
    root: PathBuf,
    platform: String,
    name: String,
}

fn ok(out: &std::process::Output, what: &str) -> Result<(), String> {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: ctr run: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank - 1).copied()
}

fn p50_p99(values: impl Iterator<Item = f64>) -> String {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match (pct(&v, 50.0), pct(&v, 99.0)) {
        (Some(a), Some(b)) => format!("{a:.1} / {b:.1}"),
        _ => "-".into(),
    }
}

fn table(results: &BTreeMap<(String, String, bool, u64), Vec<Outcome>>, limit: u64) -> String {
    let mut t = format!(
        "| runtime | platform | hog | B allocates (limit {} MiB) | caught (137) | wake → kill, ms p50 / p99 | kill → exit, ms p50 / p99 | rounds frozen |\n| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
        limit >> 20
    );
    for ((kind, platform, hog, size), outcomes) in results {
        let caught = outcomes.iter().filter(|o| o.caught).count();
        let frozen = outcomes.iter().filter(|o| o.frozen == Some(true)).count();
        let runtime = if kind == "stock" {
            "stock gVisor (runsc, no shim)"
        } else {
            "oomguard"
        };
        t.push_str(&format!(
            "| {runtime} | {platform} | {} | {size} MiB | {caught}/{} | {} | {} | {} |\n",
            if *hog { "100 MB" } else { "none" },
            outcomes.len(),
            p50_p99(outcomes.iter().filter_map(|o| o.woke_to_kill_ms)),
            p50_p99(outcomes.iter().filter_map(|o| o.kill_to_exit_ms)),
            if kind == "stock" {
                "-".to_string()
            } else {
                format!("{frozen}/{}", outcomes.len())
            },
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_logged() {
        assert_eq!(parse_duration_ms("190.293482ms"), Some(190.293482));
        assert_eq!(parse_duration_ms("12.5µs"), Some(0.0125));
        assert_eq!(parse_duration_ms("1.5s"), Some(1500.0));
        assert_eq!(parse_duration_ms("950ns"), Some(0.00095));
        assert_eq!(parse_duration_ms("ms"), None);
        assert_eq!(parse_duration_ms("3h"), None);
    }

    #[test]
    fn fields_of_a_verdict_line() {
        let line = r#"time="2026-12-04T16:29:36.373740576Z" level=info msg="verdict id=lb own_limit: usage=316579840 limit=67108864 sandbox_usage=318627840 source=gvisor_memcg(/lb via /tmp/x/runsc-lpod.sock) wake=rise frozen=true woke_to_kill=190.293482ms kill=sent kill_to_exit=27.048399ms; host verdict: oom_killed=false""#;
        assert_eq!(field(line, "woke_to_kill"), Some("190.293482ms"));
        assert_eq!(field(line, "kill_to_exit"), Some("27.048399ms"));
        assert_eq!(field(line, "frozen"), Some("true"));
        assert_eq!(field(line, "absent"), None);
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(pct(&v, 50.0), Some(5.0));
        assert_eq!(pct(&v, 99.0), Some(10.0));
        assert_eq!(pct(&[], 50.0), None);
    }
}
