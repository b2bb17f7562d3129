//! One container: its bundle, its runtime, its init and exec processes, and
//! the runtime calls that create, start, exec into and delete it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};
use oomguard_runtimes::reaper::reaper;
use oomguard_runtimes::runc::Runc;
use oomguard_runtimes::runsc::Runsc;
use oomguard_runtimes::{CreateOptions, ExecOptions, ExitReceiver, OciRuntime};

use crate::config::RuntimeConfig;
use crate::events::Publisher;
use crate::oom::own_limit::limit_of;
use crate::oom::{oom_group_for, ContainerMemory, OomWatch};
use crate::rootfs;
use crate::rpc::{self, RpcResult};
use crate::stdio::{self, ConsoleSocket, IoHandles, StdioSpec};
use crate::story::{self, Targets};
use crate::task::process::{Process, State};

/// How long the exit path waits for the processes a kill-all killed.
const KILL_ALL_WAIT: Duration = Duration::from_secs(2);

/// Where the shim keeps what `delete` needs after a crash.
pub const SAVED_CONFIG: &str = "oomguard.json";

pub struct Container {
    pub id: String,
    pub namespace: String,
    pub bundle: PathBuf,
    pub runtime: Arc<dyn OciRuntime>,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    pub oom: Arc<OomWatch>,
    /// The container has no pid namespace of its own: its processes outlive
    /// its init unless the shim kills them (see `kills_all_on_exit`).
    pub kill_all_on_exit: bool,
    /// Its own memory usage and limit where its host memcg is shared.
    pub own_memory: Arc<ContainerMemory>,
    /// Where an OOM kill's story goes besides containerd.
    pub story: Targets,
    /// The memory warning's level, and its watch once the container runs.
    warning_level: crate::warning::Level,
    warning_stall: crate::warning::Level,
    /// Where the warning's event goes, and the pod it names.
    warning_to: (Publisher, Option<String>),
    warning: std::sync::Mutex<
        Option<(
            Arc<crate::warning::Sink>,
            Option<crate::warning::MemoryWarning>,
        )>,
    >,
    rootfs_mounted: bool,
}

/// Whether the processes of a container outlive its init: true unless the
/// spec gives it a pid namespace of its own (a `pid` entry without a path).
/// A host-pid container, or one that joins another's pid namespace (a
/// Kubernetes pod sharing its process namespace), keeps its children when
/// the init exits; they hold the container's stdout/stderr open, and CRI's
/// StopContainer waits for those to close. containerd's Go shim decides the
/// same way (`ShouldKillAllOnExit`). An unreadable spec keeps the safe side:
/// kill, as the Go shim does.
pub fn kills_all_on_exit(spec: &serde_json::Value) -> bool {
    let Some(namespaces) = spec.pointer("/linux/namespaces").and_then(|n| n.as_array()) else {
        return true;
    };
    !namespaces.iter().any(|ns| {
        ns.get("type").and_then(|t| t.as_str()) == Some("pid")
            && ns
                .get("path")
                .and_then(|p| p.as_str())
                .is_none_or(str::is_empty)
    })
}

/// The pod sandbox a container belongs to, for its OOM reports: the CRI
/// annotation, else, under gVisor, its own sandbox (runsc names a sandbox
/// after the container that made it).
pub fn sandbox_of(spec: &serde_json::Value, id: &str, runtime: &dyn OciRuntime) -> Option<String> {
    spec.pointer("/annotations")
        .and_then(|a| a.get(oomguard_runtimes::spec::SANDBOX_ID))
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| (!runtime.processes_on_host()).then(|| id.to_string()))
}

/// Builds the runtime driver a configuration names.
pub fn runtime_for(config: &RuntimeConfig, bundle: &Path, namespace: &str) -> Arc<dyn OciRuntime> {
    let binary = PathBuf::from(&config.binary_name);
    let root = config
        .root
        .clone()
        .unwrap_or_else(|| oomguard_runtimes::default_root(&binary, namespace));
    let log = bundle.join("log.json");
    if config.is_runsc() {
        Arc::new(
            Runsc::new(binary, root, log, config.runtime_global_flags(), bundle)
                .with_config_source(&config.source),
        )
    } else {
        Arc::new(Runc::new(binary, root, log, config.systemd_cgroup))
    }
}

pub struct CreateRequest<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    pub bundle: &'a Path,
    pub rootfs: &'a [containerd_shim_protos::types::mount::Mount],
    pub stdio: StdioSpec,
    pub config: RuntimeConfig,
    pub publisher: Publisher,
}

impl Container {
    /// Creates the container; returns it with a receiver for its init's exit.
    pub async fn create(req: CreateRequest<'_>) -> RpcResult<(Arc<Container>, ExitReceiver)> {
        let bundle = req.bundle.to_path_buf();
        let saved = serde_json::to_vec(&req.config).map_err(|e| rpc::internal(e.to_string()))?;
        std::fs::write(bundle.join(SAVED_CONFIG), saved).map_err(|e| {
            rpc::invalid(format!(
                "bundle {}: cannot write {SAVED_CONFIG}: {e}",
                bundle.display()
            ))
        })?;

        // Checked before anything is created: a bad value fails Create clean.
        let spec = std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or_default();
        let oom_group = oom_group_for(&spec, req.config.oom_group)
            .map_err(|e| rpc::invalid(format!("bundle {}: config.json: {e}", bundle.display())))?;
        let kill_all_on_exit = kills_all_on_exit(&spec);
        let settings = story::Settings::resolve(req.id, &spec, req.config.report_settings());
        let story_targets = Targets::for_container(req.id, &spec, &settings);
        let (warning_level, bad) =
            crate::warning::level::for_spec(&spec, req.config.warning_level());
        let (warning_stall, bad_stall) = crate::warning::level::for_spec_key(
            &spec,
            crate::warning::level::STALL_ANNOTATION,
            req.config.warning_stall(),
        );
        for e in [bad, bad_stall].into_iter().flatten() {
            warn!("create id={}: {e}", req.id);
        }

        let rootfs_mounted = !req.rootfs.is_empty();
        rootfs::mount(req.rootfs, &bundle.join("rootfs"))
            .map_err(|e| rpc::internal(format!("rootfs: {e}")))?;

        let runtime = runtime_for(&req.config, &bundle, req.namespace);
        let init = Arc::new(Process::new(String::new(), req.stdio.clone()));
        let created =
            Self::create_init(&req, &bundle, runtime.as_ref(), &init, settings.stderr).await;
        let exit = match created {
            Ok(exit) => exit,
            Err(e) => {
                // The runtime may have made the container before it failed
                // (or before the pid file or console went wrong): nothing
                // of it may stay behind, `runc init` included.
                match runtime.delete(req.id, true).await {
                    Err(d) if !d.is_not_found() => {
                        warn!("create id={}: delete after failure: {d}", req.id)
                    }
                    _ => {}
                }
                if let Err(u) = rootfs::unmount(&bundle.join("rootfs")) {
                    warn!("create id={}: unmount after failure: {u}", req.id);
                }
                return Err(e);
            }
        };
        let sandbox = sandbox_of(&spec, req.id, runtime.as_ref());
        let oom = OomWatch::start(
            req.id,
            sandbox.clone(),
            init.pid(),
            oom_group,
            req.publisher.clone(),
            runtime.clone(),
        );
        let warning_to = (req.publisher.clone(), sandbox.clone());
        let own_memory =
            ContainerMemory::new(req.id, sandbox, limit_of(&spec), req.publisher.clone());
        let container = Arc::new(Container {
            id: req.id.to_string(),
            namespace: req.namespace.to_string(),
            bundle,
            runtime,
            init,
            execs: Mutex::new(HashMap::new()),
            oom,
            kill_all_on_exit,
            own_memory,
            story: story_targets,
            warning_level,
            warning_stall,
            warning_to,
            warning: std::sync::Mutex::new(None),
            rootfs_mounted,
        });
        Ok((container, exit))
    }

    async fn create_init(
        req: &CreateRequest<'_>,
        bundle: &Path,
        runtime: &dyn OciRuntime,
        init: &Process,
        keep_stderr: bool,
    ) -> RpcResult<ExitReceiver> {
        let pid_file = bundle.join("init.pid");
        let console = if req.stdio.terminal {
            Some(ConsoleSocket::new().map_err(|e| rpc::internal(format!("console socket: {e}")))?)
        } else {
            None
        };
        let (process_stdio, mut handles) = if req.stdio.terminal {
            (Default::default(), IoHandles::default())
        } else {
            stdio::open(&req.stdio, req.namespace, req.id, keep_stderr)
                .await
                .map_err(|e| rpc::invalid(format!("stdio: {e}")))?
        };
        let early_exits = reaper().hold_early_exits();
        runtime
            .create(
                req.id,
                CreateOptions {
                    bundle,
                    pid_file: &pid_file,
                    console_socket: console.as_ref().map(|c| c.path()),
                    no_pivot_root: req.config.no_pivot_root,
                    no_new_keyring: req.config.no_new_keyring,
                    stdio: process_stdio,
                },
            )
            .await
            .map_err(rpc::from_runtime)?;
        let pid = read_pid(&pid_file)?;
        let exit = runtime.watch_init(req.id, pid);
        drop(early_exits);
        init.set_pid(pid);
        if let Some(socket) = console {
            let master = receive_console(&socket).await?;
            handles = stdio::attach_console(&req.stdio, master)
                .map_err(|e| rpc::invalid(format!("stdio: {e}")))?;
        }
        *init.io.lock().await = handles;
        info!(
            "create id={} pid={pid} runtime={}",
            req.id,
            runtime.binary().display()
        );
        Ok(exit)
    }

    /// The container's warning sink (`None`: level off).
    async fn warning_sink(&self) -> Option<Arc<crate::warning::Sink>> {
        let stderr = self
            .init
            .io
            .lock()
            .await
            .stderr_report
            .as_ref()
            .and_then(|f| f.try_clone().ok());
        crate::warning::Sink::new(
            &self.id,
            self.warning_level,
            self.warning_stall,
            stderr,
            self.warning_to.clone(),
        )
    }

    /// Watches the running container's memory for the warning: its own
    /// memcg for processes on the host (a gVisor container's readings come
    /// from its sandbox's watch, armed with the same sink).
    fn start_warning(&self, sink: Option<Arc<crate::warning::Sink>>) {
        let Some(sink) = sink else { return };
        let watch = if self.runtime.processes_on_host() {
            crate::oom::memcg::Memcg::of_pid(self.init.pid())
                .ok()
                .and_then(|memcg| crate::warning::start(sink.clone(), &memcg))
        } else {
            None
        };
        if let Ok(mut slot) = self.warning.lock() {
            *slot = Some((sink, watch));
        }
    }

    /// Ends the warning (at the init's exit: it holds a stderr descriptor
    /// whose end the log's reader waits for).
    pub fn stop_warning(&self) {
        if let Ok(mut slot) = self.warning.lock() {
            if let Some((sink, watch)) = slot.take() {
                sink.close();
                drop(watch);
            }
        }
    }

    pub async fn start(&self) -> RpcResult<i32> {
        match self.init.state() {
            State::Created => {}
            State::Stopped => {
                return Err(rpc::precondition(format!(
                    "container {} has already exited",
                    self.id
                )))
            }
            _ => {
                return Err(rpc::precondition(format!(
                    "container {} is already started",
                    self.id
                )))
            }
        }
        // A container sharing its sandbox's memcg is watched from its first
        // instruction: a burst in its first milliseconds is one too.
        let sink = self.warning_sink().await;
        self.own_memory
            .arm(self.runtime.clone(), self.init.pid(), sink.clone())
            .await;
        let started = self.runtime.start(&self.id).await;
        self.own_memory.started(started.is_ok()).await;
        started.map_err(rpc::from_runtime)?;
        self.init.set_state(State::Running);
        self.start_warning(sink);
        Ok(self.init.pid())
    }

    pub fn exec_process(&self, exec_id: &str) -> RpcResult<Arc<Process>> {
        let execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        execs.get(exec_id).cloned().ok_or_else(|| {
            rpc::not_found(format!(
                "exec {exec_id:?} of container {} does not exist",
                self.id
            ))
        })
    }

    /// The init for an empty exec id, else that exec.
    pub fn process(&self, exec_id: &str) -> RpcResult<Arc<Process>> {
        if exec_id.is_empty() {
            Ok(self.init.clone())
        } else {
            self.exec_process(exec_id)
        }
    }

    pub fn add_exec(&self, exec_id: &str, stdio: StdioSpec) -> RpcResult<()> {
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        if execs.contains_key(exec_id) {
            return Err(rpc::already_exists(format!(
                "exec {exec_id:?} of container {} already exists",
                self.id
            )));
        }
        execs.insert(
            exec_id.to_string(),
            Arc::new(Process::new(exec_id.to_string(), stdio)),
        );
        Ok(())
    }

    pub fn remove_exec(&self, exec_id: &str) {
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        execs.remove(exec_id);
        let _ = std::fs::remove_file(self.exec_file(exec_id, "json"));
        let _ = std::fs::remove_file(self.exec_file(exec_id, "pid"));
        let _ = std::fs::remove_file(self.exec_file(exec_id, "pid.internal"));
    }

    pub fn exec_file(&self, exec_id: &str, ext: &str) -> PathBuf {
        self.bundle.join(format!("exec-{exec_id}.{ext}"))
    }

    /// Starts an exec process from the OCI process document saved at Exec.
    pub async fn start_exec(&self, process: &Process) -> RpcResult<(i32, ExitReceiver)> {
        if self.init.state() == State::Stopped {
            return Err(rpc::precondition(format!(
                "container {} is not running",
                self.id
            )));
        }
        if process.state() != State::Created {
            return Err(rpc::precondition(format!(
                "exec {:?} is already started",
                process.exec_id
            )));
        }
        let process_file = self.exec_file(&process.exec_id, "json");
        let pid_file = self.exec_file(&process.exec_id, "pid");
        let console = if process.stdio.terminal {
            Some(ConsoleSocket::new().map_err(|e| rpc::internal(format!("console socket: {e}")))?)
        } else {
            None
        };
        let (process_stdio, mut handles) = if process.stdio.terminal {
            (Default::default(), IoHandles::default())
        } else {
            stdio::open(&process.stdio, &self.namespace, &self.id, false)
                .await
                .map_err(|e| rpc::invalid(format!("stdio: {e}")))?
        };
        let early_exits = reaper().hold_early_exits();
        self.runtime
            .exec(
                &self.id,
                ExecOptions {
                    process_file: &process_file,
                    pid_file: &pid_file,
                    console_socket: console.as_ref().map(|c| c.path()),
                    stdio: process_stdio,
                },
            )
            .await
            .map_err(rpc::from_runtime)?;
        let pid = read_pid(&pid_file)?;
        let exit = reaper().watch(pid);
        drop(early_exits);
        process.set_pid(pid);
        process.set_state(State::Running);
        if let Some(socket) = console {
            let master = receive_console(&socket).await?;
            handles = stdio::attach_console(&process.stdio, master)
                .map_err(|e| rpc::invalid(format!("stdio: {e}")))?;
        }
        *process.io.lock().await = handles;
        info!("exec id={} exec_id={} pid={pid}", self.id, process.exec_id);
        Ok((pid, exit))
    }

    /// SIGKILL to every process left in the container after its init
    /// exited (runc: straight from its memcg, see `OomWatch::kill_all`;
    /// runsc: the container's processes in the sandbox), and, for host
    /// processes, a wait (pidfd, 2 s at most) until they are gone, so
    /// TaskExit never precedes their end.
    pub async fn kill_all_after_init(&self) {
        let how = self.oom.kill_all(KILL_ALL_WAIT).await;
        info!(
            "exit id={}: init exited without a pid namespace of its own: {how}",
            self.id
        );
    }

    /// Removes the container from its runtime and unmounts its rootfs.
    pub async fn delete(&self) -> RpcResult<()> {
        match self.runtime.delete(&self.id, true).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(rpc::from_runtime(e)),
        }
        if self.rootfs_mounted {
            rootfs::unmount(&self.bundle.join("rootfs"))
                .map_err(|e| rpc::internal(format!("rootfs: {e}")))?;
        }
        Ok(())
    }

    /// Execs that have not yet been reaped.
    pub fn running_execs(&self) -> Vec<Arc<Process>> {
        let execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        execs
            .values()
            .filter(|p| matches!(p.state(), State::Running | State::Paused))
            .cloned()
            .collect()
    }
}

fn read_pid(path: &Path) -> RpcResult<i32> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| rpc::internal(format!("pid file {}: {e}", path.display())))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            rpc::internal(format!(
                "pid file {}: not a pid: {:?}",
                path.display(),
                text.trim()
            ))
        })
}

async fn receive_console(socket: &ConsoleSocket) -> RpcResult<stdio::Console> {
    match tokio::time::timeout(Duration::from_secs(10), socket.receive()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(rpc::internal(format!("console socket: {e}"))),
        Err(_) => Err(rpc::internal(
            "console socket: runtime sent no terminal within 10s",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: &str) -> serde_json::Value {
        serde_json::from_str(&format!(r#"{{"linux":{{"namespaces":{namespaces}}}}}"#)).unwrap()
    }

    #[test]
    fn kill_all_only_without_an_own_pid_namespace() {
        // As runc's spec and CRI write them.
        assert!(!kills_all_on_exit(&spec(
            r#"[{"type":"pid"},{"type":"ipc"},{"type":"mount"}]"#
        )));
        assert!(!kills_all_on_exit(&spec(r#"[{"type":"pid","path":""}]"#)));
        // A pod sharing its process namespace: the pause container's.
        assert!(kills_all_on_exit(&spec(
            r#"[{"type":"pid","path":"/proc/4242/ns/pid"},{"type":"mount"}]"#
        )));
        // Host pid: no pid entry at all.
        assert!(kills_all_on_exit(&spec(
            r#"[{"type":"ipc"},{"type":"mount"}]"#
        )));
        assert!(kills_all_on_exit(&serde_json::json!({})));
    }
}
