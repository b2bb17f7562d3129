//! The Task service containerd calls: each RPC finds its container/process
//! and delegates; the answers carry gRPC codes containerd understands.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim_protos::api::Empty;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::types::task::ProcessInfo;
use log::{debug, info, warn};
use tokio::sync::Notify;

use crate::config::RuntimeConfig;
use crate::events::{timestamp, Event, Publisher};
use crate::inflight::InFlight;
use crate::metrics;
use crate::rpc::{self, RpcResult};
use crate::stdio::StdioSpec;
use crate::task::container::{Container, CreateRequest};
use crate::task::exit;
use crate::task::process::State;

pub struct TaskService {
    namespace: String,
    publisher: Publisher,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Notified when the last container is gone and containerd said Shutdown.
    pub shutdown: Arc<Notify>,
    /// RPCs whose answers must go out before the shim exits.
    pub inflight: Arc<InFlight>,
}

impl TaskService {
    pub fn new(namespace: String, publisher: Publisher) -> Self {
        TaskService {
            namespace,
            publisher,
            containers: Mutex::new(HashMap::new()),
            shutdown: Arc::new(Notify::new()),
            inflight: Arc::new(InFlight::default()),
        }
    }

    pub fn container_count(&self) -> usize {
        self.containers().len()
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn container(&self, id: &str) -> RpcResult<Arc<Container>> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| rpc::not_found(format!("container {id:?} does not exist in this shim")))
    }
}

fn require_id(id: &str) -> RpcResult<()> {
    if id.is_empty() {
        return Err(rpc::invalid("id: must not be empty"));
    }
    Ok(())
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> RpcResult<CreateTaskResponse> {
        let _rpc = self.inflight.enter();
        require_id(&req.id)?;
        if !req.checkpoint.is_empty() {
            return Err(rpc::unimplemented(
                "checkpoint: restore is not supported by oomguard",
            ));
        }
        if self.containers().contains_key(&req.id) {
            return Err(rpc::already_exists(format!(
                "container {:?} already exists",
                req.id
            )));
        }
        let config = RuntimeConfig::from_any(req.options.as_ref())
            .map_err(|e| rpc::invalid(e.to_string()))?;
        if let Some(level) = &config.log_level {
            match level.parse::<log::LevelFilter>() {
                Ok(l) => log::set_max_level(l),
                Err(_) => warn!("create id={}: log_level {level:?} is not a level (error, warn, info, debug, trace)", req.id),
            }
        }
        let stdio = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (container, exited) = Container::create(CreateRequest {
            id: &req.id,
            namespace: &self.namespace,
            bundle: Path::new(&req.bundle),
            rootfs: &req.rootfs,
            stdio,
            config,
            publisher: self.publisher.clone(),
        })
        .await?;
        let pid = container.init.pid();
        self.containers().insert(req.id.clone(), container.clone());

        let publisher = self.publisher.clone();
        let watched = container.clone();
        tokio::spawn(async move {
            if let Ok(e) = exited.await {
                exit::init_exited(watched, e, publisher).await;
            }
        });

        let mut ev = TaskCreate::new();
        ev.container_id = req.id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let mut io = TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        ev.io = MessageField::some(io);
        ev.pid = pid as u32;
        self.publisher.publish(Event::Create(ev));

        let mut resp = CreateTaskResponse::new();
        resp.pid = pid as u32;
        Ok(resp)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> RpcResult<StartResponse> {
        let _rpc = self.inflight.enter();
        let container = self.container(&req.id)?;
        let pid = if req.exec_id.is_empty() {
            let _starting = container.init.starting.lock().await;
            let pid = container.start().await?;
            let mut ev = TaskStart::new();
            ev.container_id = req.id.clone();
            ev.pid = pid as u32;
            self.publisher.publish(Event::Start(ev));
            pid
        } else {
            let process = container.exec_process(&req.exec_id)?;
            let (pid, exited) = container.start_exec(&process).await?;
            let mut ev = TaskExecStarted::new();
            ev.container_id = req.id.clone();
            ev.exec_id = req.exec_id.clone();
            ev.pid = pid as u32;
            self.publisher.publish(Event::ExecStarted(ev));
            let publisher = self.publisher.clone();
            let c = container.clone();
            tokio::spawn(async move {
                if let Ok(e) = exited.await {
                    exit::exec_exited(c, process, e, publisher).await;
                }
            });
            pid
        };
        let mut resp = StartResponse::new();
        resp.pid = pid as u32;
        Ok(resp)
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> RpcResult<StateResponse> {
        let _rpc = self.inflight.enter();
        let container = self.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        let mut resp = StateResponse::new();
        resp.id = if req.exec_id.is_empty() {
            req.id.clone()
        } else {
            req.exec_id.clone()
        };
        resp.exec_id = req.exec_id.clone();
        resp.bundle = container.bundle.display().to_string();
        resp.pid = process.pid() as u32;
        resp.status = process.state().to_proto().into();
        resp.stdin = process.stdio.stdin.clone();
        resp.stdout = process.stdio.stdout.clone();
        resp.stderr = process.stdio.stderr.clone();
        resp.terminal = process.stdio.terminal;
        if let Some(exit) = process.exit() {
            resp.exit_status = exit.exit_status;
            resp.exited_at = MessageField::some(timestamp(exit.at));
        }
        Ok(resp)
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> RpcResult<DeleteResponse> {
        let _rpc = self.inflight.enter();
        let container = self.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        let state = process.state();
        if req.exec_id.is_empty() {
            if matches!(state, State::Running | State::Paused) {
                return Err(rpc::precondition(format!(
                    "container {} must be stopped before delete",
                    req.id
                )));
            }
            container.delete().await?;
            if state == State::Created {
                // runc delete --force killed the never-started init; a
                // container that joined a gVisor sandbox has no exit of its
                // own until started, so it is recorded as killed.
                let waited =
                    tokio::time::timeout(std::time::Duration::from_secs(2), process.wait()).await;
                if waited.is_err() {
                    process.set_exited(crate::task::process::ExitInfo {
                        exit_status: 128 + libc::SIGKILL as u32,
                        at: std::time::SystemTime::now(),
                    });
                }
            }
            self.containers().remove(&req.id);
        } else {
            if matches!(state, State::Running | State::Paused) {
                return Err(rpc::precondition(format!(
                    "exec {} must be stopped before delete",
                    req.exec_id
                )));
            }
            container.remove_exec(&req.exec_id);
        }
        let exit = process.exit();
        let mut resp = DeleteResponse::new();
        resp.pid = process.pid() as u32;
        resp.exit_status = exit.map(|e| e.exit_status).unwrap_or(0);
        resp.exited_at = exit.map(|e| timestamp(e.at)).into();
        if req.exec_id.is_empty() {
            let mut ev = TaskDelete::new();
            ev.container_id = req.id.clone();
            ev.id = req.id.clone();
            ev.pid = resp.pid;
            ev.exit_status = resp.exit_status;
            ev.exited_at = resp.exited_at.clone();
            self.publisher.publish(Event::Delete(ev));
            info!("delete id={} exit_status={}", req.id, resp.exit_status);
        }
        Ok(resp)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> RpcResult<PidsResponse> {
        let _rpc = self.inflight.enter();
        let container = self.container(&req.id)?;
        let listed = container.runtime.ps(&req.id).await;
        // containerd, when it starts again, deletes a task whose shim lists
        // no process as a leftover of a Create that never finished
        // (loadShims, "cleaning leaked shim process"). A container whose exit
        // containerd has not been told about yet must not go that way: it
        // keeps its init listed until its events are delivered.
        let init = container.init.pid();
        let untold = init > 0
            && (container.init.state() != State::Stopped || self.publisher.has_pending(&req.id));
        let pids = match listed {
            Ok(mut pids) => {
                if untold && !pids.contains(&init) {
                    pids.insert(0, init);
                }
                pids
            }
            Err(e) if untold => {
                debug!(
                    "pids id={}: {e}; listing the init until containerd has its exit",
                    req.id
                );
                vec![init]
            }
            Err(e) => return Err(rpc::from_runtime(e)),
        };
        let execs: HashMap<i32, String> = container
            .execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| (p.pid(), p.exec_id.clone()))
            .collect();
        let mut resp = PidsResponse::new();
        for pid in pids {
            let mut info = ProcessInfo::new();
            info.pid = pid as u32;
            if let Some(exec_id) = execs.get(&pid) {
                let mut d = ProcessDetails::new();
                d.exec_id = exec_id.clone();
                let mut any = Any::new();
                any.type_url = "containerd.runc.v1.ProcessDetails".to_string();
                any.value = d.write_to_bytes().unwrap_or_default();
                info.info = MessageField::some(any);
            }
            resp.processes.push(info);
        }
        Ok(resp)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> RpcResult<Empty> {
        let _rpc = self.inflight.enter();
        let container = self.container(&req.id)?;
        container
            .runtime
            .pause(&req.id)
            .await
            .map_err(rpc::from_runtime)?;
        container.init.set_state(State::Paused);
        let mut ev = TaskPaused::new();
        ev.container_id = req.id.clone();
        self.publisher.publish(Event::Paused(ev));
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> RpcResult<Empty> {
        let _rpc = self.inflight.enter();
        let container = self.container(&req.id)?;
        container
            .runtime
            .resume(&req.id)
            .await
            .map_err(rpc::from_runtime)?;
        container.init.set_state(State::Running);
        let mut ev = TaskResumed::new();
        ev.container_id = req.id.clone();
        self.publisher.publish(Event::Resumed(ev));
        Ok(Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> RpcResult<Empty> {
        let _rpc = self.inflight.enter();
        let container = self.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        let _signalling = process.signalling.lock().await;
        if process.state() == State::Stopped {
            return Err(rpc::not_found(format!(
                "process {:?} of {}: process already finished",
                req.exec_id, req.id
            )));
        }
        info!(
            "kill id={} exec_id={} signal={} all={}",
            req.id, req.exec_id, req.signal, req.all
        );
        if req.exec_id.is_empty() {
            match container.runtime.kill(&req.id, req.signal, req.all).await {
                Ok(()) => Ok(Empty::new()),
                // A created, never started container that joined a gVisor
                // sandbox has no process yet: Delete removes it.
                Err(e) if e.to_string().contains("in state created") => Ok(Empty::new()),
                Err(e) if e.is_not_running() || e.is_not_found() => Err(rpc::not_found(format!(
                    "container {}: process already finished ({e})",
                    req.id
                ))),
                Err(e) => Err(rpc::from_runtime(e)),
            }
        } else {
            let signal = nix::sys::signal::Signal::try_from(req.signal as i32)
                .map_err(|_| rpc::invalid(format!("signal: {} is not a signal", req.signal)))?;
            let pid_file = container.exec_file(&req.exec_id, "pid");
            match container
                .runtime
                .kill_exec(&req.id, &pid_file, req.signal)
                .await
            {
                Some(Ok(())) => return Ok(Empty::new()),
                Some(Err(e)) if e.is_not_running() || e.is_not_found() => {
                    return Err(rpc::not_found(format!(
                        "exec {} of {}: process already finished ({e})",
                        req.exec_id, req.id
                    )))
                }
                Some(Err(e)) => warn!(
                    "kill id={} exec_id={}: {e}; signalling its host process instead",
                    req.id, req.exec_id
                ),
                None => {}
            }
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(process.pid()), signal) {
                Ok(()) => Ok(Empty::new()),
                Err(nix::errno::Errno::ESRCH) => Err(rpc::not_found(format!(
                    "exec {} of {}: process already finished",
                    req.exec_id, req.id
                ))),
                Err(e) => Err(rpc::internal(format!("kill exec {}: {e}", req.exec_id))),
            }
        }
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> RpcResult<Empty> {
        let _rpc = self.inflight.enter();
        require_id(&req.exec_id).map_err(|_| rpc::invalid("exec_id: must not be empty"))?;
        let container = self.container(&req.id)?;
        if container.init.state() == State::Stopped {
            return Err(rpc::precondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| rpc::invalid("spec: missing process spec"))?;
        // The process spec is JSON (an OCI runtime-spec Process); check it
        // parses before handing it to the runtime.
        serde_json::from_slice::<oci_spec::runtime::Process>(&spec.value)
            .map_err(|e| rpc::invalid(format!("spec: not an OCI process: {e}")))?;
        container.add_exec(
            &req.exec_id,
            StdioSpec {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        )?;
        let file = container.exec_file(&req.exec_id, "json");
        if let Err(e) = std::fs::write(&file, &spec.value) {
            container.remove_exec(&req.exec_id);
            return Err(rpc::internal(format!("write {}: {e}", file.display())));
        }
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.publisher.publish(Event::ExecAdded(ev));
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> RpcResult<Empty> {
        let _rpc = self.inflight.enter();
        let container = self.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        let io = process.io.lock().await;
        let console = io.console.as_ref().ok_or_else(|| {
            rpc::precondition(format!(
                "process {:?} of {} has no terminal",
                req.exec_id, req.id
            ))
        })?;
        console
            .resize(req.width, req.height)
            .map_err(|e| rpc::internal(format!("resize terminal: {e}")))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> RpcResult<Empty> {
        let _rpc = self.inflight.enter();
        let container = self.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        if req.stdin {
            process.io.lock().await.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> RpcResult<Empty> {
        let _rpc = self.inflight.enter();
        let container = self.container(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .ok_or_else(|| rpc::invalid("resources: missing"))?;
        serde_json::from_slice::<oci_spec::runtime::LinuxResources>(&resources.value)
            .map_err(|e| rpc::invalid(format!("resources: not OCI LinuxResources JSON: {e}")))?;
        container
            .runtime
            .update(&req.id, &resources.value)
            .await
            .map_err(rpc::from_runtime)?;
        info!("update id={}", req.id);
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> RpcResult<WaitResponse> {
        let container = self.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        let exit = process.wait().await;
        // Counted from here only: a Wait whose process still runs is owed
        // no answer when the shim goes (SIGTERM does not wait for it).
        let _rpc = self.inflight.enter();
        let mut resp = WaitResponse::new();
        resp.exit_status = exit.exit_status;
        resp.exited_at = MessageField::some(timestamp(exit.at));
        Ok(resp)
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> RpcResult<StatsResponse> {
        let _rpc = self.inflight.enter();
        let container = self.container(&req.id)?;
        let pid = container.init.pid();
        if container.init.state() == State::Stopped {
            return Err(rpc::not_found(format!(
                "container {}: process already finished",
                req.id
            )));
        }
        let mut stats = metrics::collect(pid)
            .map_err(|e| rpc::internal(format!("stats of {}: {e}", req.id)))?;
        // In a shared sandbox the host memcg is the pod's: report the
        // container's own memory where its runtime accounts it.
        if let Some(own) = container.own_memory.usage().await {
            let (usage, _source) = own.map_err(|e| {
                rpc::internal(format!("stats of {}: its own memory usage: {e}", req.id))
            })?;
            stats = metrics::with_own_memory(stats, usage, container.own_memory.limit())
                .map_err(|e| rpc::internal(format!("stats of {}: {e}", req.id)))?;
        }
        let mut resp = StatsResponse::new();
        resp.stats = MessageField::some(stats);
        Ok(resp)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> RpcResult<ConnectResponse> {
        let _rpc = self.inflight.enter();
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        // A lookup, not an error: Connect answers for an unknown id too.
        if let Some(c) = self.containers().get(&req.id) {
            resp.task_pid = c.init.pid() as u32;
        }
        resp.version = env!("CARGO_PKG_VERSION").to_string();
        Ok(resp)
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> RpcResult<Empty> {
        if self.containers().is_empty() {
            info!("shutdown: no containers left");
            self.shutdown.notify_one();
        } else {
            warn!("shutdown: containers still present; staying up");
        }
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: containerd_shim_protos::api::CheckpointTaskRequest,
    ) -> RpcResult<Empty> {
        let _rpc = self.inflight.enter();
        Err(rpc::unimplemented(format!(
            "checkpoint of {}: not implemented by oomguard",
            req.id
        )))
    }
}
