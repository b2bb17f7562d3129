//! Kubernetes' CRI conformance suite (cri-tools' `critest`) run against a
//! private containerd (`hack/critest/run.sh`), handler after handler in the
//! same instance, and the comparison a lane asserts: every spec the stock
//! handler passes, oomguard's handler passes too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{hack, instance_dir, processes, repo, shim_dir, show_log_if_failing, tail};

/// Where `hack/critest/setup.sh` finds critest (`$CRITEST`, else
/// `../shared/critest/critest` beside the repository or a parent); `None`
/// when this machine has none.
/// crictl: `$CRICTL`, else the one beside critest (`../shared/critest/`).
pub fn crictl_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CRICTL").map(PathBuf::from) {
        return Some(p).filter(|p| p.is_file());
    }
    critest_path()
        .and_then(|c| c.parent().map(|d| d.join("crictl")))
        .filter(|p| p.is_file())
}

pub fn critest_path() -> Option<PathBuf> {
    let out = Command::new(repo().join("hack/critest/setup.sh"))
        .arg("--where")
        .output()
        .expect("run hack/critest/setup.sh --where");
    match out.status.code() {
        Some(0) => Some(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )),
        Some(3) => None,
        _ => panic!(
            "hack/critest/setup.sh --where: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// One spec's outcome in a ginkgo JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Skipped,
}

/// A critest run: outcome and failure message by spec name (its container
/// texts and leaf text, as ginkgo prints them), and the run's wall time.
#[derive(Debug, Default)]
pub struct Run {
    pub handler: String,
    pub specs: BTreeMap<String, (Outcome, String)>,
    pub wall: Duration,
}

impl Run {
    /// Parses a ginkgo v2 JSON report (`--ginkgo.json-report`).
    pub fn from_report(handler: &str, json: &str) -> Result<Run, String> {
        let suites: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("ginkgo report: {e}"))?;
        let mut run = Run {
            handler: handler.to_string(),
            ..Default::default()
        };
        let suites = suites.as_array().ok_or("ginkgo report: not an array")?;
        for suite in suites {
            let specs = suite.get("SpecReports").and_then(|s| s.as_array());
            for spec in specs.into_iter().flatten() {
                if spec.get("LeafNodeType").and_then(|t| t.as_str()) != Some("It") {
                    continue;
                }
                let text = |key: &str| {
                    spec.get(key)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                let mut name: Vec<String> = spec
                    .get("ContainerHierarchyTexts")
                    .and_then(|c| c.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect();
                name.push(text("LeafNodeText"));
                let outcome = match text("State").as_str() {
                    "passed" => Outcome::Passed,
                    "skipped" | "pending" => Outcome::Skipped,
                    _ => Outcome::Failed,
                };
                let message = spec
                    .pointer("/Failure/Message")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default()
                    .to_string();
                run.specs.insert(name.join(" "), (outcome, message));
            }
        }
        if run.specs.is_empty() {
            return Err("ginkgo report: no specs".to_string());
        }
        Ok(run)
    }

    pub fn with(&self, outcome: Outcome) -> BTreeSet<&str> {
        self.specs
            .iter()
            .filter(|(_, (o, _))| *o == outcome)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.with(outcome).len()
    }

    /// "N passed, N failed, N skipped in S s".
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped in {:.0} s",
            self.count(Outcome::Passed),
            self.count(Outcome::Failed),
            self.count(Outcome::Skipped),
            self.wall.as_secs_f64()
        )
    }
}

/// Specs the stock run passed that `ours` did not, with our failure.
pub fn regressions<'a>(stock: &'a Run, ours: &'a Run) -> Vec<(&'a str, String)> {
    stock
        .with(Outcome::Passed)
        .into_iter()
        .filter(|name| ours.specs.get(*name).map(|(o, _)| *o) != Some(Outcome::Passed))
        .map(|name| {
            let why = ours
                .specs
                .get(name)
                .map(|(o, m)| format!("{o:?}: {}", first_lines(m, 3)))
                .unwrap_or_else(|| "not run".to_string());
            (name, why)
        })
        .collect()
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).collect::<Vec<_>>().join(" / ")
}

/// A private CRI containerd set up for critest (`hack/critest/run.sh start`):
/// its registry, the stock and oomguard handlers, stock gVisor.
pub struct Lane {
    pub version: String,
    pub dir: PathBuf,
    pub critest: PathBuf,
    stopped: bool,
}

impl Lane {
    pub fn start(version: &str, critest: PathBuf) -> Lane {
        let dir = instance_dir(&format!("critest{version}"));
        hack(
            "critest/run.sh",
            &[
                "start".as_ref(),
                version.as_ref(),
                dir.as_os_str(),
                shim_dir().as_os_str(),
            ],
            &format!("critest lane: containerd {version} did not start"),
        );
        Lane {
            version: version.to_string(),
            dir,
            critest,
            stopped: false,
        }
    }

    /// Runs the suite with `handler` (narrowed or tuned by `critest_args`,
    /// e.g. `--ginkgo.focus`); the report goes beside DIR.
    pub fn run(&self, handler: &str, critest_args: &[&str]) -> Run {
        let report = self.dir.with_file_name(format!(
            "{}-{handler}.json",
            self.dir.file_name().unwrap().to_string_lossy()
        ));
        let started = Instant::now();
        let out = Command::new(repo().join("hack/critest/run.sh"))
            .arg("run")
            .arg(&self.dir)
            .arg(handler)
            .arg(&report)
            .args(critest_args)
            .output()
            .expect("run hack/critest/run.sh run");
        let wall = started.elapsed();
        let json = std::fs::read_to_string(&report).unwrap_or_default();
        let mut run = Run::from_report(handler, &json).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(report.with_extension("json.log"))
                .unwrap_or_default();
            panic!(
                "critest with handler {handler} gave no usable report ({e}); exit {:?}\n{}\n--- critest output (tail) ---\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr),
                tail(&log, 60)
            )
        });
        run.wall = wall;
        run
    }

    /// The pid of this lane's containerd.
    pub fn containerd_pid(&self) -> i32 {
        read_pid(&self.dir.join("containerd.pid")).expect("critest lane: containerd.pid")
    }

    fn registry_pid(&self) -> i32 {
        read_pid(&self.dir.join("registry/registry.pid")).unwrap_or(0)
    }

    /// Pod and container ids CRI handed out in this instance (from the
    /// debug log: "returns sandbox id" / "returns container id").
    pub fn cri_ids(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let mut ids = BTreeSet::new();
        for marker in ["returns sandbox id", "returns container id"] {
            for (i, _) in log.match_indices(marker) {
                let rest = &log[i + marker.len()..];
                let id: String = rest
                    .trim_start_matches([' ', '\\', '"'])
                    .chars()
                    .take_while(|c| c.is_ascii_hexdigit())
                    .collect();
                if id.len() == 64 {
                    ids.insert(id);
                }
            }
        }
        ids.into_iter().collect()
    }

    /// What the whole run left behind: shims of this containerd, mounts of
    /// its containers, and per pod/container id a cgroup, runc/runsc state
    /// or a shim socket. Empty when nothing was left.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let sock = self.dir.join("containerd.sock");
        // Shims (-address DIR/containerd.sock), sandboxes and gofers
        // (--bundle=DIR/...): anything naming DIR but containerd itself and
        // the registry.
        let dir = self.dir.display().to_string();
        let ours = [self.containerd_pid(), self.registry_pid()];
        let deadline = Instant::now() + Duration::from_secs(10);
        let procs = loop {
            let procs: Vec<(i32, String)> = processes()
                .into_iter()
                .filter(|(p, cmd)| {
                    cmd.contains(&dir) && !ours.contains(p) && *p != std::process::id() as i32
                })
                .collect();
            if procs.is_empty() || Instant::now() > deadline {
                break procs;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        left.extend(
            procs.into_iter().map(|(p, cmd)| {
                format!("process {p}: {}", cmd.chars().take(160).collect::<String>())
            }),
        );
        // containerd runs in a mount namespace of its own (propagation).
        let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.containerd_pid()))
            .unwrap_or_default();
        let bundles = "io.containerd.runtime.v2.task";
        for m in mounts.lines() {
            let point = m.split(' ').nth(4).unwrap_or_default();
            // The private network namespaces of hack/cri (this lane's and
            // other instances') are not the run's.
            if point.starts_with("/run/netns/oomguard-") {
                continue;
            }
            if point.contains(bundles) || point.contains("/sandboxes/") || point.contains("/netns/")
            {
                left.push(format!("mount {point}"));
            }
        }
        let ids = self.cri_ids();
        assert!(
            !ids.is_empty(),
            "critest lane: no CRI ids in containerd.log"
        );
        let cgroups: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("k8s.io"))
            .collect();
        let state_dirs: Vec<PathBuf> = ["runc", "runsc"]
            .iter()
            .map(|rt| Path::new("/run/containerd").join(rt).join("k8s.io"))
            .collect();
        let state: Vec<String> = state_dirs
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path().display().to_string())
            .collect();
        for id in &ids {
            for cg in &cgroups {
                if cg.join(id).exists() {
                    left.push(format!("cgroup {}", cg.join(id).display()));
                }
            }
            left.extend(
                state
                    .iter()
                    .filter(|s| s.contains(id.as_str()))
                    .map(|s| format!("runtime state {s}")),
            );
            let socket = shim_socket(&sock, "k8s.io", id);
            if socket.exists() {
                left.push(format!("shim socket {} (of {id})", socket.display()));
            }
        }
        left
    }

    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = Command::new(repo().join("hack/critest/run.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        show_log_if_failing(&self.dir.join("containerd.log"));
        self.stop();
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The socket containerd's shims use for (namespace, id):
/// /run/containerd/s/<sha256 of "ADDRESS/NS/ID">.
pub fn shim_socket(address: &Path, namespace: &str, id: &str) -> PathBuf {
    use sha2::Digest;
    let key = format!("{}/{namespace}/{id}", address.display());
    let hex: String = sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    PathBuf::from("/run/containerd/s").join(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of critest v1.34's --ginkgo.json-report (trimmed).
    const REPORT: &str = r#"[{"SuiteDescription":"CRI validation","SpecReports":[
      {"ContainerHierarchyTexts":["[k8s.io] Security Context","NamespaceOption"],"LeafNodeType":"It","LeafNodeText":"runtime should support PodPID","State":"passed"},
      {"ContainerHierarchyTexts":["[k8s.io] Image Manager"],"LeafNodeType":"It","LeafNodeText":"public image with digest should be pulled and removed","State":"skipped"},
      {"ContainerHierarchyTexts":["[k8s.io] Networking"],"LeafNodeType":"It","LeafNodeText":"runtime should support port mapping with only container port","State":"failed","Failure":{"Message":"timed out\nmore"}},
      {"LeafNodeType":"SynchronizedBeforeSuite","State":"passed"}
    ]}]"#;

    #[test]
    fn ginkgo_reports_are_read() {
        let run = Run::from_report("oomguard", REPORT).unwrap();
        assert_eq!(run.count(Outcome::Passed), 1);
        assert_eq!(run.count(Outcome::Failed), 1);
        assert_eq!(run.count(Outcome::Skipped), 1);
        assert!(run
            .with(Outcome::Passed)
            .contains("[k8s.io] Security Context NamespaceOption runtime should support PodPID"));
        assert!(Run::from_report("x", "[]").is_err());
        assert!(Run::from_report("x", "not json").is_err());
    }

    #[test]
    fn regressions_are_stock_passes_we_miss() {
        let stock = Run::from_report("runc", &REPORT.replace("\"failed\"", "\"passed\"")).unwrap();
        let ours = Run::from_report("oomguard", REPORT).unwrap();
        let r = regressions(&stock, &ours);
        assert_eq!(r.len(), 1);
        assert!(r[0].0.contains("port mapping"), "{r:?}");
        assert!(r[0].1.starts_with("Failed: timed out / more"), "{r:?}");
        assert!(regressions(&ours, &stock).is_empty());
    }
}
