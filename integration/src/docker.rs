//! Private dockerd instances (started by `hack/dockerd.sh`) on a private
//! containerd (`harness::Containerd`), and what tests read through the docker
//! CLI: `docker inspect`, `docker events`, `docker stats`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    hack, hack_start_env, hack_stop, instance_dir, repo, run_with_timeout, show_log_if_failing,
    Containerd,
};

/// Docker versions under test, each with the containerd Debian pairs it with
/// (trixie: docker.io 26 + containerd 1.7; sid: docker.io 28 + containerd 2.x).
pub const PAIRS: [(&str, &str); 2] = [("26", "1.7"), ("28", "2")];

/// The image `hack/dockerd.sh image` imports (busybox, no registry).
pub const IMAGE: &str = "oomguard/busybox:local";

static DEPS: Once = Once::new();

/// `hack/deps.sh docker` (and `runsc` when asked): quick when all is there.
pub fn ensure_deps(extra: &[&str]) {
    DEPS.call_once(|| deps(&["docker"]));
    if !extra.is_empty() {
        deps(extra);
    }
}

fn deps(args: &[&str]) {
    hack("deps.sh", args, &format!("hack/deps.sh {args:?}"));
}

pub struct Dockerd {
    pub version: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub image: String,
    /// The containerd it runs on; stopped after dockerd.
    pub containerd: Containerd,
    docker: PathBuf,
    stopped: bool,
}

impl Dockerd {
    /// Starts containerd `containerd_version` and dockerd `version` on it,
    /// and imports the busybox image.
    pub fn start(version: &str, containerd_version: &str) -> Dockerd {
        Dockerd::start_with(version, containerd_version, None)
    }

    /// `start`, with dockerd on `daemon_json` as it is (instead of the
    /// documented daemon.json, `hack/docker/`) when given.
    pub fn start_with(
        version: &str,
        containerd_version: &str,
        daemon_json: Option<&Path>,
    ) -> Dockerd {
        ensure_deps(&[]);
        let containerd = Containerd::start(containerd_version);
        let dir = instance_dir(&format!("docker{version}"));
        let env: Vec<(&str, &OsStr)> = daemon_json
            .map(|p| ("OOMGUARD_DOCKERD_CONFIG", p.as_os_str()))
            .into_iter()
            .collect();
        hack_start_env(
            "dockerd.sh",
            version,
            &dir,
            &containerd.socket,
            &env,
            &format!("dockerd {version} did not start"),
        );
        let mut d = Dockerd {
            version: version.to_string(),
            socket: dir.join("docker.sock"),
            docker: repo().join(format!(".cache/docker/{version}/bin/docker")),
            image: String::new(),
            dir,
            containerd,
            stopped: false,
        };
        d.image = hack(
            "dockerd.sh",
            &[OsStr::new("image"), d.dir.as_ref()],
            "docker image import",
        );
        d
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.docker);
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()));
        cmd
    }

    /// The client's command line, for a shell (e.g. under `script -c`).
    pub fn docker_command_line(&self) -> String {
        format!(
            "{} -H unix://{}",
            self.docker.display(),
            self.socket.display()
        )
    }

    /// Runs the docker client (60 s at most).
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(args).stdin(Stdio::null());
        run_with_timeout(cmd, Duration::from_secs(60))
    }

    /// `docker run --name NAME --pull never --network none --runtime RUNTIME
    /// OPTS... IMAGE CMD...` (foreground unless OPTS has `-d`).
    pub fn run(&self, runtime: &str, name: &str, opts: &[&str], cmd: &[&str]) -> Output {
        let mut args = vec![
            "run",
            "--name",
            name,
            "--pull",
            "never",
            "--network",
            "none",
            "--runtime",
            runtime,
        ];
        args.extend_from_slice(opts);
        args.push(&self.image);
        args.extend_from_slice(cmd);
        self.docker(&args)
    }

    /// `docker inspect NAME` (the object, not the one-element array).
    pub fn inspect(&self, name: &str) -> Value {
        let out = self.docker(&["inspect", name]);
        crate::harness::assert_ok(&out, &format!("docker inspect {name}"));
        let v: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
        v[0].clone()
    }

    /// `.State` of a container, once it is no longer running or restarting.
    pub fn wait_exited(&self, name: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.inspect(name)["State"].clone();
            if state["Status"] == "exited" || state["Status"] == "dead" {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "{name} still {} after {timeout:?}",
                state["Status"]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The events dockerd recorded for a container so far, oldest first, as
    /// (action, attributes). dockerd keeps recent events in memory; `--until`
    /// makes the client return instead of following.
    pub fn events(&self, name: &str) -> Vec<(String, Value)> {
        let until = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 1)
        .to_string();
        // By id: a name filter matches substrings ("a" matches "a-stock").
        let id = self.inspect(name)["Id"]
            .as_str()
            .unwrap_or(name)
            .to_string();
        let filter = format!("container={id}");
        let out = self.docker(&[
            "events",
            "--since",
            "0",
            "--until",
            &until,
            "--filter",
            &filter,
            "--format",
            "{{json .}}",
        ]);
        crate::harness::assert_ok(&out, "docker events");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|e| {
                let action = e["Action"].as_str().unwrap_or_default().to_string();
                (action, e["Actor"]["Attributes"].clone())
            })
            .collect()
    }

    /// The actions among `events(name)` that are container lifecycle ones
    /// (create, start, oom, die, ...; not exec_* nor health).
    pub fn actions(&self, name: &str) -> Vec<String> {
        self.events(name)
            .into_iter()
            .map(|(a, _)| a)
            .filter(|a| !a.starts_with("exec_"))
            .collect()
    }

    /// Removes every container and checks that nothing of them is left:
    /// no shim, no mount under dockerd's or containerd's directory, no cgroup
    /// under dockerd's cgroup parent.
    pub fn assert_clean(&self) {
        let out = self.docker(&["ps", "-aq"]);
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            crate::harness::assert_ok(&self.docker(&args), "docker rm -f");
        }
        self.containerd.assert_clean(&[]);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // dockerd's own: it bind-mounts its data root onto itself while it runs.
        let own = format!(" {0}/data {0}/data ", self.dir.display());
        let dir = self.dir.display().to_string();
        let left: Vec<&str> = mounts
            .lines()
            .filter(|l| l.contains(&dir) && !l.contains(&own))
            .collect();
        assert!(left.is_empty(), "mounts left: {left:#?}");
        let parent = self.cgroup_parent();
        for ctl in ["memory", "pids", "cpu", "freezer"] {
            let cg = PathBuf::from(format!("/sys/fs/cgroup/{ctl}/{parent}"));
            let children: Vec<_> = std::fs::read_dir(&cg)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path())
                .collect();
            assert!(children.is_empty(), "cgroups left: {children:?}");
        }
        let ns = PathBuf::from("/run/containerd/runc/moby");
        let left: Vec<_> = std::fs::read_dir(&ns)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| ids.iter().any(|id| e.file_name().to_string_lossy() == *id))
            .collect();
        assert!(left.is_empty(), "runc state left: {left:?}");
    }

    /// The cgroup parent `hack/dockerd.sh` gave this instance's containers.
    pub fn cgroup_parent(&self) -> String {
        std::fs::read_to_string(self.dir.join("cgroup-parent"))
            .expect("DIR/cgroup-parent")
            .trim()
            .trim_start_matches('/')
            .to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Stops dockerd, then its containerd (also done on drop).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        hack_stop("dockerd.sh", &self.dir);
        self.containerd.stop();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        show_log_if_failing(&self.dir.join("dockerd.log"));
        show_log_if_failing(&self.containerd.dir.join("containerd.log"));
        self.stop();
    }
}

/// The exit code `docker run` (foreground) returned: the container's.
pub fn exit_code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}
