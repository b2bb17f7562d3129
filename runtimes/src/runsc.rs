//! runsc (gVisor): the runc command line plus what a sandbox changes.
//!
//! - Containers of a pod share one sandbox process; the pid file of every
//!   one of them names it. The sandbox's exit is every container's exit.
//! - A container that joins a sandbox gets its stdio from `runsc start`, not
//!   `runsc create`, and its exit only from `runsc wait`.
//! - After the sandbox is killed, `runsc wait` cannot know the status (exit
//!   128, "sandbox no longer running"): only its parent can, and the shim,
//!   as subreaper, is that parent. A missing status is never made a 0.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;
use log::{info, warn};
use serde::Deserialize;
use tokio::sync::{oneshot, watch};

use crate::command::{self, Streams};
use crate::gvisor::diagnose;
use crate::gvisor::monitor;
use crate::gvisor::usage::{self, GvisorSandbox};
use crate::reaper::reaper;
use crate::runc::Runc;
use crate::spec::{self, PodRole};
use crate::{
    ContainerState, CreateOptions, Error, ExecOptions, Exit, ExitReceiver, OciRuntime, OwnMemory,
    ProcessStdio, Result, WaitStatus,
};

/// A container's pod role from its bundle's spec (see [`crate::spec`]).
fn pod_role(bundle: &Path) -> std::result::Result<PodRole, String> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    spec::pod_role(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Where `runsc exec` writes the exec's pid inside the sandbox.
fn internal_pid_file(pid_file: &Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(".internal");
    PathBuf::from(name)
}

pub struct Runsc {
    runc: Runc,
    binary: PathBuf,
    root: PathBuf,
    global_args: Vec<String>,
    joins: bool,
    /// The sandbox this container runs in (its own id for the root).
    sandbox: Option<String>,
    bundle: PathBuf,
    /// Why the spec's pod annotations could not be read (Create fails).
    bad_spec: Option<String>,
    /// A joining container's stdio, kept from Create for `runsc start`.
    held: Mutex<Option<ProcessStdio>>,
    /// `runsc wait` answers only for a started container.
    started: watch::Sender<bool>,
    /// The sandbox process (the pid file's), once created.
    sandbox_pid: AtomicI32,
    /// Where `global_args` came from (the oomguard TOML's path), for errors
    /// that name the key to change.
    config_source: String,
}

#[derive(Deserialize)]
struct WaitResult {
    #[serde(rename = "exitStatus")]
    exit_status: i32,
}

impl Runsc {
    pub fn new(
        binary: PathBuf,
        root: PathBuf,
        log: PathBuf,
        global_args: Vec<String>,
        bundle: &Path,
    ) -> Self {
        let runc = Runc::new(binary.clone(), root.clone(), log, false)
            .with_global_args(global_args.clone());
        let (role, bad_spec) = match pod_role(bundle) {
            Ok(role) => (role, None),
            Err(e) => (PodRole::default(), Some(e)),
        };
        Runsc {
            runc,
            binary,
            root,
            global_args,
            joins: role.joins,
            sandbox: role.sandbox,
            bundle: bundle.to_path_buf(),
            bad_spec,
            held: Mutex::new(None),
            started: watch::channel(false).0,
            sandbox_pid: AtomicI32::new(0),
            config_source: String::new(),
        }
    }

    /// Names the configuration `global_args` came from in errors.
    pub fn with_config_source(mut self, source: &str) -> Self {
        self.config_source = source.to_string();
        self
    }

    /// A runsc refusal that a `[runsc_config]` key explains gets the key,
    /// the file and what to do appended (`diagnose.rs`). A flag runsc does
    /// not take is reported on its stderr only, which a sandbox's create
    /// hands to the container: when the message says nothing, the keys are
    /// checked against `runsc flags` and `runsc help platforms` (only then:
    /// asking costs two runsc runs).
    async fn explained(&self, mut e: Error) -> Error {
        let Error::Failed { message, .. } = &mut e else {
            return e;
        };
        let mut x = diagnose::explain(message);
        if x.is_none() {
            if let Some((flags, platforms)) = offers_of(&self.binary).await {
                x = diagnose::check_flags(&self.global_args, &flags, &platforms).err();
            }
        }
        if let Some(x) = x {
            let source = self.source_name();
            message.push_str(&format!(
                "; [runsc_config] {} in {source}: {}",
                x.key, x.advice
            ));
        }
        e
    }

    /// `explained`, for a result.
    async fn or_explained<T>(&self, r: Result<T>) -> Result<T> {
        match r {
            Err(e) => Err(self.explained(e).await),
            ok => ok,
        }
    }

    /// Where the global flags came from, for errors.
    fn source_name(&self) -> &str {
        if self.config_source.is_empty() {
            "the runtime's options"
        } else {
            &self.config_source
        }
    }

    /// The `--platform` the global flags ask for, if any.
    fn platform(&self) -> Option<&str> {
        self.global_args
            .iter()
            .rev()
            .find_map(|a| a.strip_prefix("--platform="))
    }

    fn command(&self, action: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .args(&self.global_args)
            .arg(action);
        cmd
    }

    /// `runsc wait ID`: the container's status as the sandbox knows it, or
    /// `None` when the sandbox is gone and cannot say.
    async fn runsc_wait(&self, id: &str) -> Option<WaitStatus> {
        let mut cmd = self.command("wait");
        cmd.arg(id);
        let out = command::run(cmd, Streams::Capture).await.ok()?;
        if out.status != WaitStatus::Exited(0) {
            warn!(
                "runsc wait {id}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let r: WaitResult = serde_json::from_slice(&out.stdout).ok()?;
        Some(if r.exit_status > 128 && r.exit_status < 128 + 65 {
            WaitStatus::Signaled {
                signal: r.exit_status - 128,
                core_dumped: false,
            }
        } else {
            WaitStatus::Exited(r.exit_status)
        })
    }
}

/// The release date of a runsc binary (`runsc --version`), once per binary.
async fn release_of(binary: &Path) -> Option<u32> {
    static SEEN: OnceLock<Mutex<HashMap<PathBuf, Option<u32>>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(r) = seen.lock().unwrap_or_else(|p| p.into_inner()).get(binary) {
        return *r;
    }
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("--version");
    let release = match command::run(cmd, Streams::Capture).await {
        Ok(out) => usage::parse_release(&String::from_utf8_lossy(&out.stdout)),
        Err(e) => {
            warn!("{} --version: {e}", binary.display());
            None
        }
    };
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(binary.to_path_buf(), release);
    release
}

/// What a runsc binary offers: its flags (`runsc flags`) and platforms
/// (`runsc help platforms`), once per binary; `None` if it would not say.
async fn offers_of(binary: &Path) -> Option<(BTreeSet<String>, Vec<String>)> {
    type Offers = Option<(BTreeSet<String>, Vec<String>)>;
    static SEEN: OnceLock<Mutex<HashMap<PathBuf, Offers>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(o) = seen.lock().unwrap_or_else(|p| p.into_inner()).get(binary) {
        return o.clone();
    }
    let ask = |args: &[&str]| {
        let mut cmd = std::process::Command::new(binary);
        cmd.args(args);
        cmd
    };
    let flags = command::run(ask(&["flags"]), Streams::Capture).await.ok();
    let platforms = command::run(ask(&["help", "platforms"]), Streams::Capture)
        .await
        .ok();
    let offers = match (flags, platforms) {
        (Some(f), Some(p)) => {
            // `runsc flags` prints to stderr in some releases.
            let mut text = String::from_utf8_lossy(&f.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&f.stderr));
            let names = diagnose::flag_names(&text);
            (!names.is_empty()).then(|| {
                (
                    names,
                    diagnose::platform_names(&String::from_utf8_lossy(&p.stdout)),
                )
            })
        }
        _ => None,
    };
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(binary.to_path_buf(), offers.clone());
    offers
}

#[async_trait]
impl OciRuntime for Runsc {
    fn binary(&self) -> &Path {
        &self.binary
    }

    fn root(&self) -> &Path {
        &self.root
    }

    async fn create(&self, id: &str, mut opts: CreateOptions<'_>) -> Result<()> {
        // runsc has no --no-pivot / --no-new-keyring.
        opts.no_pivot_root = false;
        opts.no_new_keyring = false;
        if let Some(message) = &self.bad_spec {
            return Err(crate::Error::Spec {
                id: id.to_string(),
                message: message.clone(),
            });
        }
        // runsc on a kvm platform without /dev/kvm does not fail: its
        // sandbox spins (seen on a nested VM), holding Create forever.
        if self.platform() == Some("kvm") && !Path::new("/dev/kvm").exists() {
            return Err(crate::Error::Spec {
                id: id.to_string(),
                message: format!(
                    "[runsc_config] platform = \"kvm\" in {} needs /dev/kvm, which this host lacks: \
                     set platform = \"systrap\" (gVisor's default) or \"ptrace\", or leave it out",
                    self.source_name()
                ),
            });
        }
        if self.joins {
            // Learn the release now: at Start the first usage sample should
            // not wait for `runsc --version`.
            let binary = self.binary.clone();
            tokio::spawn(async move { release_of(&binary).await });
            let stdio = std::mem::take(&mut opts.stdio);
            *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(stdio);
            return self.or_explained(self.runc.create(id, opts).await).await;
        }
        // A new sandbox: its monitoring stream is evidence for the verdict.
        let sandbox = self.sandbox.clone().unwrap_or_else(|| id.to_string());
        match monitor::listen(&sandbox, &self.bundle) {
            Ok(config) => {
                let mut args = self.global_args.clone();
                args.push(format!("--pod-init-config={}", config.display()));
                let created = self
                    .runc
                    .clone()
                    .with_global_args(args)
                    .create(id, opts)
                    .await;
                if created.is_err() {
                    monitor::close(&sandbox);
                }
                self.or_explained(created).await
            }
            Err(e) => {
                warn!("runsc id={id}: no gVisor monitoring stream ({e}); host signals only");
                self.or_explained(self.runc.create(id, opts).await).await
            }
        }
    }

    async fn start(&self, id: &str) -> Result<()> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        let started = match held {
            Some(stdio) => self.runc.start_with_stdio(id, stdio).await,
            None => self.runc.start(id).await,
        };
        self.or_explained(started).await?;
        self.started.send_replace(true);
        Ok(())
    }

    async fn exec(&self, id: &str, opts: ExecOptions<'_>) -> Result<()> {
        let internal = internal_pid_file(opts.pid_file);
        self.runc
            .exec_with(
                id,
                opts,
                &[OsStr::new("--internal-pid-file"), internal.as_os_str()],
            )
            .await
    }

    /// `runsc kill --pid`, with the pid inside the sandbox that `runsc exec
    /// --internal-pid-file` wrote (as gVisor's own shim does): a SIGKILL to
    /// the host's `runsc exec` would leave the process running, so an
    /// ExecSync past its timeout (Kubernetes exec probes) would never end.
    async fn kill_exec(&self, id: &str, pid_file: &Path, signal: u32) -> Option<Result<()>> {
        let path = internal_pid_file(pid_file);
        let pid = std::fs::read_to_string(&path)
            .ok()?
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|p| *p > 0)?;
        Some(self.runc.kill_pid(id, pid, signal).await)
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let res = self.runc.kill(id, signal, all).await;
        let pid = self.sandbox_pid.load(Ordering::Relaxed);
        match res {
            // runsc signals no container before it starts. A sandbox whose
            // root container never started (its `runsc start` failed) has
            // no application yet: the sandbox process stands in for the
            // init, as `runc init` does for runc, so it takes the signal and
            // the task can end. (A joining container is the sandbox's
            // guest: its caller handles that case.)
            Err(e)
                if !self.joins
                    && pid > 0
                    && !*self.started.borrow()
                    && e.to_string().contains("in state created") =>
            {
                info!("runsc id={id}: not started; signal {signal} goes to sandbox pid {pid}");
                let sig =
                    nix::sys::signal::Signal::try_from(signal as i32).map_err(|_| Error::Io {
                        what: format!("kill {id}: signal {signal}"),
                        source: std::io::Error::from_raw_os_error(libc::EINVAL),
                    })?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|errno| {
                    Error::Io {
                        what: format!("kill {id}: sandbox pid {pid}"),
                        source: std::io::Error::from_raw_os_error(errno as i32),
                    }
                })
            }
            other => other,
        }
    }

    async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let res = self.runc.delete(id, force).await;
        if !self.joins {
            monitor::close(self.sandbox.as_deref().unwrap_or(id));
        }
        res
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.runc.pause(id).await
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.runc.resume(id).await
    }

    async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        self.runc.ps(id).await
    }

    async fn update(&self, id: &str, resources: &[u8]) -> Result<()> {
        self.runc.update(id, resources).await
    }

    async fn state(&self, id: &str) -> Result<ContainerState> {
        self.runc.state(id).await
    }

    /// A root container's host memcg is the sandbox's own (its limit is the
    /// pod's); a joining container's usage is the sentry's memory cgroup of
    /// that container, where the runsc release keeps one. Asked before
    /// Start: the sandbox answers already, the container's own cgroup
    /// appears when it starts.
    async fn own_memory(&self, id: &str) -> OwnMemory {
        if !self.joins {
            return OwnMemory::HostMemcg;
        }
        let Some(sandbox) = self.sandbox.as_deref() else {
            return OwnMemory::Unavailable(format!(
                "no {} annotation names the container's sandbox",
                spec::SANDBOX_ID
            ));
        };
        let release = release_of(&self.binary).await;
        if let Some(r) = release.filter(|r| *r < usage::PER_CONTAINER_MEMCG_SINCE) {
            return OwnMemory::Unavailable(format!(
                "runsc {r} keeps no memory usage per container (the sentry's memory cgroupfs and \
                 `runsc events` give the sandbox's total; gVisor accounts each container \
                 separately since release-{})",
                usage::PER_CONTAINER_MEMCG_SINCE
            ));
        }
        match usage::control_socket(&self.root, id, sandbox) {
            Ok(socket) => OwnMemory::Shared(Arc::new(GvisorSandbox::new(socket))),
            Err(e) => OwnMemory::Unavailable(format!("no sandbox control socket: {e}")),
        }
    }

    fn exit_evidence(&self, id: &str) -> Option<String> {
        monitor::evidence(self.sandbox.as_deref().unwrap_or(id)).map(|e| e.summary(id))
    }

    fn processes_on_host(&self) -> bool {
        false
    }

    /// `runsc exec`/`runsc wait` exit 128 when the sandbox died under them
    /// and the real status is unavailable.
    fn status_unavailable(&self, status: &WaitStatus) -> bool {
        *status == WaitStatus::Exited(128)
    }

    /// A root container ends with its sandbox process (reaped by the
    /// shim). A joining container ends when `runsc wait` says so, or with
    /// the sandbox if that dies first (its status then is the sandbox's).
    fn watch_init(&self, id: &str, pid: i32) -> ExitReceiver {
        self.sandbox_pid.store(pid, Ordering::Relaxed);
        let sandbox = reaper().watch(pid);
        if !self.joins {
            return sandbox;
        }
        let (tx, rx) = oneshot::channel();
        let me = RunscWaiter {
            runsc: Runsc::new(
                self.binary.clone(),
                self.root.clone(),
                PathBuf::from("/dev/null"),
                self.global_args.clone(),
                Path::new("/nonexistent"),
            ),
            id: id.to_string(),
            pid,
            started: self.started.subscribe(),
        };
        tokio::spawn(async move {
            let exit = me.wait(sandbox).await;
            let _ = tx.send(exit);
        });
        rx
    }
}

struct RunscWaiter {
    runsc: Runsc,
    id: String,
    pid: i32,
    started: watch::Receiver<bool>,
}

impl RunscWaiter {
    async fn wait(mut self, mut sandbox: ExitReceiver) -> Exit {
        let sigkill = WaitStatus::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        };
        tokio::select! {
            reaped = &mut sandbox => {
                let status = reaped.map(|e| e.status).unwrap_or(sigkill);
                info!("runsc id={}: sandbox pid {} ended before the container started ({status})", self.id, self.pid);
                return Exit { pid: self.pid, status, at: SystemTime::now() };
            }
            started = async { self.started.wait_for(|s| *s).await.is_ok() } => {
                if !started {
                    // Deleted before Start: no exit to report but the sandbox's.
                    let status = sandbox.await.map(|e| e.status).unwrap_or(sigkill);
                    return Exit { pid: self.pid, status, at: SystemTime::now() };
                }
            }
        }
        tokio::select! {
            reaped = &mut sandbox => {
                let status = reaped.map(|e| e.status).unwrap_or(WaitStatus::Signaled { signal: libc::SIGKILL, core_dumped: false });
                info!("runsc id={}: sandbox pid {} ended ({status}); the container ends with it", self.id, self.pid);
                Exit { pid: self.pid, status, at: SystemTime::now() }
            }
            waited = self.runsc.runsc_wait(&self.id) => match waited {
                Some(status) => Exit { pid: self.pid, status, at: SystemTime::now() },
                None => {
                    // The sandbox is going away; its reaped status is the truth.
                    let status = sandbox.await.map(|e| e.status).unwrap_or(WaitStatus::Signaled { signal: libc::SIGKILL, core_dumped: false });
                    info!("runsc id={}: runsc wait had no status; sandbox pid {} ended ({status})", self.id, self.pid);
                    Exit { pid: self.pid, status, at: SystemTime::now() }
                }
            },
        }
    }
}
