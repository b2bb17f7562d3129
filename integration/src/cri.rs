//! A private containerd serving Kubernetes' CRI (started by
//! `hack/cri/containerd.sh`: its own network namespace, CNI bridge, the
//! documented runtime handlers, local pause and busybox images), and a CRI v1
//! client (crate `k8s-cri`, tonic over the unix socket) with the calls a
//! kubelet makes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use containerd_client::tonic::{self, transport::Channel};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;

use crate::harness::{
    hack, hack_start, hack_start_env, hack_stop, instance_dir, repo, shim_dir, show_log_if_failing,
    tail, unique,
};

/// Handlers registered by `hack/cri/containerd-*.toml` (and the stock one).
pub const HANDLER: &str = "oomguard";
pub const RUNSC_HANDLER: &str = "oomguard-runsc";
pub const STOCK_HANDLER: &str = "runc";
/// Test-only handlers (`Cri::start_with_gvisor_lanes`), beside the documented
/// `oomguard-runsc` (runsc 20240729, gVisor's default platform, systrap):
/// the same runsc on ptrace (the smoke lane of gVisor's slower platform),
/// and bookworm's runsc 20221219 (ptrace, its default; it keeps no memory
/// per container). Their TOML is what install writes plus that.
pub const RUNSC_PTRACE_HANDLER: &str = "oomguard-runsc-ptrace";
pub const RUNSC_20221219_HANDLER: &str = "oomguard-runsc-20221219";
/// Stock gVisor beside them: containerd's runc shim running runsc 20240729
/// (a wrapper adding the flags oomguard-runsc's runsc.toml has here).
pub const STOCK_RUNSC_HANDLER: &str = "runsc-stock";
/// Images `hack/cri/setup.sh` builds and `hack/cri/containerd.sh` imports.
pub const IMAGE: &str = "localhost/oomguard/busybox:1";
pub const PAUSE_IMAGE: &str = "localhost/oomguard/pause:1";
/// The containerd versions CRI is tested on.
pub const VERSIONS: [&str; 2] = ["1.7", "2"];

/// A pod as the tests made it: its id and the config it was made with
/// (CreateContainer wants the config again).
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub handler: String,
}

pub struct Cri {
    pub version: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// First on containerd's PATH (where it finds the shim by name).
    pub shim_dir: PathBuf,
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// Every pod and container id made through this instance (leak checks).
    ids: Mutex<Vec<String>>,
    /// Pod-level cgroups made by `pod_cgroup` (removed on stop).
    pod_cgroups: Mutex<Vec<String>>,
    stopped: bool,
}

impl Cri {
    /// Starts containerd `version` for CRI and waits until CRI reports the
    /// runtime and the network ready.
    pub fn start(version: &str) -> Cri {
        Self::start_with(version, "")
    }

    /// `start` with more CRI runtime handlers: `extra` is TOML appended to
    /// containerd's configuration (OOMGUARD_CONTAINERD_EXTRA).
    pub fn start_with(version: &str, extra: &str) -> Cri {
        Self::start_in_with(version, instance_dir(&format!("cri{version}")), extra)
    }

    /// `start`, plus the handlers [`RUNSC_PTRACE_HANDLER`],
    /// [`RUNSC_20221219_HANDLER`] (their TOML in DIR/) and
    /// [`STOCK_RUNSC_HANDLER`].
    pub fn start_with_gvisor_lanes(version: &str) -> Cri {
        let dir = instance_dir(&format!("cri{version}"));
        let plugin = if version == "2" {
            "io.containerd.cri.v1.runtime"
        } else {
            "io.containerd.grpc.v1.cri"
        };
        let lanes = [
            (
                RUNSC_PTRACE_HANDLER,
                "20240729",
                "  platform = \"ptrace\"\n",
            ),
            (RUNSC_20221219_HANDLER, "20221219", ""),
        ];
        let mut extra = String::new();
        for (handler, _, _) in lanes {
            let table = format!("plugins.\"{plugin}\".containerd.runtimes.{handler}");
            extra.push_str(&format!(
                "[{table}]\n  runtime_type = \"io.containerd.oomguard.v2\"\n  [{table}.options]\n    TypeUrl = \"io.containerd.oomguard.v1.options\"\n    ConfigPath = \"{}\"\n",
                dir.join(format!("{handler}.toml")).display()
            ));
        }
        let wrapper = dir.join("runsc-lane");
        let table = format!("plugins.\"{plugin}\".containerd.runtimes.{STOCK_RUNSC_HANDLER}");
        extra.push_str(&format!(
            "[{table}]\n  runtime_type = \"io.containerd.runc.v2\"\n  [{table}.options]\n    BinaryName = \"{}\"\n",
            wrapper.display()
        ));
        let cri = Self::start_in_with(version, dir, &extra);
        // runsc with the flags of the lane's oomguard-runsc runsc.toml.
        let lane = std::fs::read_to_string(cri.dir.join("oomguard/runsc.toml")).unwrap_or_default();
        let flags: String = lane
            .lines()
            .filter_map(|l| l.trim().split_once(" = "))
            .filter(|(k, _)| !k.starts_with('#') && *k != "binary_name" && *k != "root")
            .map(|(k, v)| format!("--{k}={} ", v.trim_matches('"')))
            .collect();
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec \"{}\" {flags}\"$@\"\n",
                crate::gvisor::runsc_binary("20240729").display()
            ),
        )
        .expect("the stock runsc wrapper");
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the stock runsc wrapper");
        // The shim reads them when a pod is made, not containerd at start.
        for (handler, build, flags) in lanes {
            crate::gvisor::installed_runsc_toml(
                &cri.dir.join(format!("{handler}.toml")),
                build,
                &crate::gvisor::runsc_binary(build),
                None,
                flags,
            );
        }
        cri
    }

    /// A directory for `start_in` with the config.toml a private CRI
    /// containerd `version` would run on, less any oomguard handler (an
    /// operator's file before `install`): `hack/cri/containerd.sh config`.
    /// Returns the directory; the file is DIR/config.toml.
    pub fn prepare(version: &str) -> PathBuf {
        let dir = instance_dir(&format!("cri{version}"));
        hack(
            "cri/containerd.sh",
            &[OsStr::new("config"), version.as_ref(), dir.as_ref()],
            "hack/cri/containerd.sh config",
        );
        dir
    }

    /// Starts containerd `version` for CRI in `dir` (on DIR/config.toml as it
    /// is, when `prepare` made it).
    pub fn start_in(version: &str, dir: PathBuf) -> Cri {
        Self::start_in_with(version, dir, "")
    }

    /// `start` with CNI's portmap plugin (host ports), for networked pods.
    pub fn start_networked(version: &str) -> Cri {
        Self::start_in_with_env(
            version,
            instance_dir(&format!("cri{version}")),
            "",
            &[("OOMGUARD_CNI_PORTMAP", OsStr::new("1"))],
        )
    }

    fn start_in_with(version: &str, dir: PathBuf, extra: &str) -> Cri {
        Self::start_in_with_env(version, dir, extra, &[])
    }

    /// `start_in` with `shim_dir` first on containerd's PATH instead of the
    /// build's (a node where an installer put the shim there).
    pub fn start_in_with_shim_dir(version: &str, dir: PathBuf, shim_dir: PathBuf) -> Cri {
        Self::start_full(version, dir, shim_dir, "", &[])
    }

    fn start_in_with_env(version: &str, dir: PathBuf, extra: &str, env: &[(&str, &OsStr)]) -> Cri {
        Self::start_full(version, dir, shim_dir(), extra, env)
    }

    fn start_full(
        version: &str,
        dir: PathBuf,
        shim_dir: PathBuf,
        extra: &str,
        env: &[(&str, &OsStr)],
    ) -> Cri {
        let mut vars = vec![("OOMGUARD_CONTAINERD_EXTRA", OsStr::new(extra))];
        vars.extend_from_slice(env);
        let socket = hack_start_env(
            "cri/containerd.sh",
            version,
            &dir,
            &shim_dir,
            &vars,
            &format!("containerd {version} (CRI) did not start"),
        );
        let socket = PathBuf::from(socket);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (runtime, images) = clients(&rt, &socket);
        let cri = Cri {
            version: version.to_string(),
            dir,
            socket,
            shim_dir,
            rt,
            runtime,
            images,
            ids: Mutex::new(Vec::new()),
            pod_cgroups: Mutex::new(Vec::new()),
            stopped: false,
        };
        cri.wait_ready(Duration::from_secs(20));
        cri
    }

    /// Sends containerd alone `signal` ("KILL" or "TERM"); shims, pods and
    /// containers stay (`hack/containerd.sh kill`).
    pub fn kill(&self, signal: &str) {
        hack(
            "containerd.sh",
            &[
                std::ffi::OsStr::new("kill"),
                self.dir.as_os_str(),
                std::ffi::OsStr::new(signal),
            ],
            &format!("containerd {} did not die of SIG{signal}", self.version),
        );
    }

    /// Starts containerd again on the same root, state and sockets (CRI
    /// recovers its pods and containers), connects anew and waits until CRI
    /// is ready.
    pub fn restart(&mut self) {
        hack_start(
            "cri/containerd.sh",
            &self.version,
            &self.dir,
            &self.shim_dir,
            &format!("containerd {} (CRI) did not restart", self.version),
        );
        self.reconnect();
    }

    /// Connects anew to a containerd someone else restarted and waits until
    /// CRI is ready.
    pub fn reconnect(&mut self) {
        (self.runtime, self.images) = clients(&self.rt, &self.socket);
        self.wait_ready(Duration::from_secs(20));
    }

    /// A client for CRI's RuntimeService (cheap: shares the connection).
    pub fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    fn rs(&self) -> RuntimeServiceClient<Channel> {
        self.runtime_client()
    }

    /// Runs one async CRI call to completion (60 s at most).
    pub fn call<T, F>(&self, what: &str, fut: F) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rt.block_on(async {
            match tokio::time::timeout(Duration::from_secs(60), fut).await {
                Ok(r) => r.map(|r| r.into_inner()),
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "{what}: no answer in 60 s"
                ))),
            }
        })
    }

    fn ok<T>(&self, what: &str, r: Result<T, tonic::Status>) -> T {
        r.unwrap_or_else(|e| {
            panic!(
                "CRI {what} failed: {e:?}\n--- containerd.log (tail) ---\n{}",
                self.log_tail(40)
            )
        })
    }

    /// CRI Status: the conditions by type (RuntimeReady, NetworkReady).
    pub fn conditions(&self) -> HashMap<String, bool> {
        let r = self.call("Status", self.rs().status(StatusRequest { verbose: false }));
        let r = self.ok("Status", r);
        r.status
            .map(|s| {
                s.conditions
                    .into_iter()
                    .map(|c| (c.r#type, c.status))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for CRI's runtime and network, and for the images
    /// `hack/cri/containerd.sh` imported: containerd 2.x's CRI learns of
    /// them from image events, a moment after the import (CI once listed
    /// only the pause image).
    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            // A CRI that is still starting (after a restart) answers
            // "server is not initialized yet": not ready, not a failure.
            let status = self.call("Status", self.rs().status(StatusRequest { verbose: false }));
            if let Err(e) = &status {
                assert!(
                    Instant::now() < deadline,
                    "CRI not ready after {timeout:?}: {e:?}\n{}",
                    self.log_tail(20)
                );
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let c = self.conditions();
            let tags = self.image_tags();
            let images = [IMAGE, PAUSE_IMAGE]
                .iter()
                .all(|want| tags.iter().any(|t| t == want));
            if c.get("RuntimeReady") == Some(&true)
                && c.get("NetworkReady") == Some(&true)
                && images
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "CRI not ready after {timeout:?}: {c:?}, images {tags:?}\n{}",
                self.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The images CRI knows (their tags).
    pub fn image_tags(&self) -> Vec<String> {
        let r = self.call(
            "ListImages",
            self.images
                .clone()
                .list_images(ListImagesRequest { filter: None }),
        );
        self.ok("ListImages", r)
            .images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect()
    }

    /// The pod config a kubelet would send for a plain pod: its own network
    /// namespace (CNI) and, per container, its own PID namespace.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let n = unique();
        let logs = self.dir.join(format!("pods/{name}-{n}"));
        std::fs::create_dir_all(&logs).expect("pod log directory");
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("{name}-uid-{}-{n}", std::process::id()),
                namespace: "oomguard-test".to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: logs.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A pod-level cgroup with a memory limit, as a kubelet makes one per pod
    /// (`kubepods/.../pod<uid>`, limited to the sum of its containers'
    /// limits): the memory cgroup `/oomguard-pod-<pid>-<n>`; runc creates the
    /// other controllers' directories. Returns the path for
    /// `LinuxPodSandboxConfig.cgroup_parent`; removed when the instance stops.
    pub fn pod_cgroup(&self, memory_limit: i64) -> String {
        let n = unique();
        let name = format!("/oomguard-pod-{}-{n}", std::process::id());
        let dir = format!("/sys/fs/cgroup/memory{name}");
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {dir}: {e}"));
        self.pod_cgroups.lock().unwrap().push(name.clone());
        std::fs::write(
            format!("{dir}/memory.limit_in_bytes"),
            memory_limit.to_string(),
        )
        .unwrap_or_else(|e| panic!("{dir}/memory.limit_in_bytes: {e}"));
        name
    }

    /// RunPodSandbox as it answered (for handlers expected to fail).
    pub fn try_run_pod(&self, name: &str, handler: &str) -> Result<String, tonic::Status> {
        let r = self.call(
            "RunPodSandbox",
            self.rs().run_pod_sandbox(RunPodSandboxRequest {
                config: Some(self.pod_config(name)),
                runtime_handler: handler.to_string(),
            }),
        );
        if let Ok(ok) = &r {
            self.ids.lock().unwrap().push(ok.pod_sandbox_id.clone());
        }
        r.map(|ok| ok.pod_sandbox_id)
    }

    /// RunPodSandbox with `handler` (the RuntimeClass handler).
    pub fn run_pod(&self, name: &str, handler: &str) -> Pod {
        let config = self.pod_config(name);
        self.run_pod_with(config, handler)
    }

    pub fn run_pod_with(&self, config: PodSandboxConfig, handler: &str) -> Pod {
        let r = self.call(
            "RunPodSandbox",
            self.rs().run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.to_string(),
            }),
        );
        let id = self.ok("RunPodSandbox", r).pod_sandbox_id;
        self.ids.lock().unwrap().push(id.clone());
        Pod {
            id,
            config,
            handler: handler.to_string(),
        }
    }

    pub fn pod_status(&self, pod: &Pod) -> PodSandboxStatus {
        let r = self.call(
            "PodSandboxStatus",
            self.rs().pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            }),
        );
        self.ok("PodSandboxStatus", r)
            .status
            .expect("PodSandboxStatus.status")
    }

    /// The container config a kubelet would send: `sh -c SCRIPT` in the
    /// busybox image, its own PID namespace, an optional memory limit, a log
    /// file NAME.log in the pod's log directory.
    pub fn container_config(
        &self,
        name: &str,
        script: &str,
        memory_limit: Option<i64>,
    ) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: IMAGE.to_string(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), script.to_string()],
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    memory_limit_in_bytes: memory_limit.unwrap_or(0),
                    ..Default::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    pub fn create_container_with(&self, pod: &Pod, config: ContainerConfig) -> String {
        let r = self.call(
            "CreateContainer",
            self.rs().create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }),
        );
        let id = self.ok("CreateContainer", r).container_id;
        self.ids.lock().unwrap().push(id.clone());
        id
    }

    /// CreateContainer + StartContainer; returns the container id.
    pub fn run_container(
        &self,
        pod: &Pod,
        name: &str,
        script: &str,
        memory_limit: Option<i64>,
    ) -> String {
        let id = self.create_container_with(pod, self.container_config(name, script, memory_limit));
        self.start_container(&id);
        id
    }

    pub fn start_container(&self, id: &str) {
        let r = self.call(
            "StartContainer",
            self.rs().start_container(StartContainerRequest {
                container_id: id.to_string(),
            }),
        );
        self.ok("StartContainer", r);
    }

    pub fn container_status(&self, id: &str) -> ContainerStatus {
        let r = self.call(
            "ContainerStatus",
            self.rs().container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }),
        );
        self.ok("ContainerStatus", r)
            .status
            .expect("ContainerStatus.status")
    }

    /// Polls ContainerStatus until the container has exited.
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.container_status(id);
            if s.state == ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "container {} still in state {} after {timeout:?}",
                s.metadata.map(|m| m.name).unwrap_or_default(),
                s.state
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the container has exited; returns (exit code, reason).
    pub fn exit_of(&self, id: &str) -> (i32, String) {
        let s = self.wait_exited(id, Duration::from_secs(30));
        (s.exit_code, s.reason)
    }

    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_s: i64) -> ExecSyncResponse {
        let r = self.call(
            "ExecSync",
            self.rs().exec_sync(ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout_s,
            }),
        );
        self.ok("ExecSync", r)
    }

    pub fn container_stats(&self, id: &str) -> ContainerStats {
        let r = self.call(
            "ContainerStats",
            self.rs().container_stats(ContainerStatsRequest {
                container_id: id.to_string(),
            }),
        );
        self.ok("ContainerStats", r)
            .stats
            .expect("ContainerStats.stats")
    }

    pub fn stop_container(&self, id: &str, timeout_s: i64) {
        let r = self.call(
            "StopContainer",
            self.rs().stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout: timeout_s,
            }),
        );
        self.ok("StopContainer", r);
    }

    pub fn list_containers(&self, pod: &Pod) -> Vec<Container> {
        let r = self.call(
            "ListContainers",
            self.rs().list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    pod_sandbox_id: pod.id.clone(),
                    ..Default::default()
                }),
            }),
        );
        self.ok("ListContainers", r).containers
    }

    /// StopPodSandbox then RemovePodSandbox (what a kubelet does when a pod
    /// is deleted).
    pub fn remove_pod(&self, pod: &Pod) {
        let r = self.call(
            "StopPodSandbox",
            self.rs().stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }),
        );
        self.ok("StopPodSandbox", r);
        let r = self.call(
            "RemovePodSandbox",
            self.rs().remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }),
        );
        self.ok("RemovePodSandbox", r);
    }

    /// The pod's container log (CRI format: "TIME STREAM TAG text" lines).
    pub fn container_log(&self, pod: &Pod, name: &str) -> String {
        let p = Path::new(&pod.config.log_directory).join(format!("{name}.log"));
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// Shims (any) started for this containerd.
    pub fn shim_pids(&self) -> Vec<i32> {
        let needle = format!("-address {}", self.socket.display());
        crate::harness::processes()
            .into_iter()
            // (not an `events` subscriber: its --address matches too)
            .filter(|(_, cmd)| {
                cmd.contains("containerd-shim")
                    && cmd.contains(&needle)
                    && !cmd.contains(" events ")
            })
            .map(|(pid, _)| pid)
            .collect()
    }

    /// After every pod was removed: no pod or container left in CRI, no
    /// shim, no mount under DIR, no cgroup, no runc/runsc state.
    pub fn assert_clean(&self) {
        let r = self.call(
            "ListPodSandbox",
            self.rs()
                .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        );
        let pods = self.ok("ListPodSandbox", r).items;
        assert!(pods.is_empty(), "pods left: {pods:?}");
        let r = self.call(
            "ListContainers",
            self.rs()
                .list_containers(ListContainersRequest { filter: None }),
        );
        let containers = self.ok("ListContainers", r).containers;
        assert!(containers.is_empty(), "containers left: {containers:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.shim_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(self.shim_pids(), Vec::<i32>::new(), "shims left running");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.display().to_string();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&dir)).collect();
        assert!(left.is_empty(), "mounts left: {left:#?}");
        let mut parents = vec!["/k8s.io".to_string()];
        parents.extend(self.pod_cgroups.lock().unwrap().iter().cloned());
        for id in self.ids.lock().unwrap().iter() {
            for ctl in ["memory", "pids", "cpu", "freezer"] {
                for parent in &parents {
                    let cg = format!("/sys/fs/cgroup/{ctl}{parent}/{id}");
                    assert!(!Path::new(&cg).exists(), "cgroup left: {cg}");
                }
            }
            for rt in ["runc", "runsc"] {
                let state = format!("/run/containerd/{rt}/k8s.io/{id}");
                assert!(!Path::new(&state).exists(), "{rt} state left: {state}");
            }
        }
    }

    /// The network namespace containerd, CNI and the pods' hosts live in
    /// (the "node" of these tests).
    pub fn netns(&self) -> String {
        let out = std::process::Command::new(repo().join("hack/cri/containerd.sh"))
            .arg("netns")
            .arg(&self.dir)
            .output()
            .expect("hack/cri/containerd.sh netns");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// An HTTP GET of `url` (`http://HOST:PORT/PATH`) from the node's
    /// network namespace, by a thread that joins it; the body of a 200
    /// answer. Retried until `timeout` (a server may be starting).
    pub fn fetch_on_node(&self, url: &str, timeout: Duration) -> Result<String, String> {
        let netns = format!("/run/netns/{}", self.netns());
        let deadline = Instant::now() + timeout;
        loop {
            let (ns, u) = (netns.clone(), url.to_string());
            let got = std::thread::spawn(move || http_get_in(&ns, &u))
                .join()
                .unwrap_or_else(|_| Err("the fetching thread panicked".into()));
            match got {
                Ok(body) => return Ok(body),
                Err(e) if Instant::now() > deadline => return Err(format!("GET {url}: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    /// `args` run in the node's network namespace (mounts: the host's).
    pub fn on_node(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns()))
            .args(args);
        cmd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// Stops containerd and removes its network namespace (also on drop).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        hack_stop("cri/containerd.sh", &self.dir);
        for name in self.pod_cgroups.lock().unwrap().drain(..) {
            for entry in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let dir = entry.path().join(name.trim_start_matches('/'));
                if dir.is_dir() {
                    if let Err(e) = std::fs::remove_dir(&dir) {
                        eprintln!("could not remove cgroup {}: {e}", dir.display());
                    }
                }
            }
        }
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        show_log_if_failing(&self.dir.join("containerd.log"));
        self.stop();
    }
}

fn clients(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
    let channel = rt
        .block_on(containerd_client::connect(socket))
        .expect("connect to containerd's socket");
    (
        RuntimeServiceClient::new(channel.clone()),
        ImageServiceClient::new(channel),
    )
}

/// One HTTP/1.0 GET from the network namespace `netns` (this thread joins
/// it for good: call it on a thread of its own).
fn http_get_in(netns: &str, url: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(netns).map_err(|e| format!("{netns}: {e}"))?;
    // SAFETY: setns on a descriptor owned here, for this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "setns {netns}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: not http://"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr: std::net::SocketAddr = host.parse().map_err(|e| format!("{host}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1);
    if !head.starts_with("HTTP/1.") || status != Some("200") {
        return Err(format!(
            "answer {:?}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.to_string())
}

/// `hack/deps.sh runsc` (gVisor's runsc on PATH): quick when it is there.
pub fn ensure_runsc() {
    hack("deps.sh", &["runsc"], "hack/deps.sh runsc");
}
