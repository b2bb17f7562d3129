//! The cluster rollout (deploy/): its manifests against Kubernetes' schemas,
//! and the installer DaemonSet's pod run the way a kubelet would run it (no
//! kubelet exists here): its pod spec read from deploy/daemonset.yaml, turned
//! into CRI calls to a private containerd (1.7 and 2.x) whose config.toml is
//! the "node's". The installer places the binary, installs, restarts that
//! containerd through its configured command; a pod under handler
//! `oomguard` is then OOM-killed and reported; a second installer start
//! changes nothing; deleting the pod (SIGTERM) restores the config byte for
//! byte and removes the binary.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use containerd_client::tonic;
use k8s_cri::v1::*;
use oomguard_integration::cri::{Cri, Pod, HANDLER, VERSIONS};
use oomguard_integration::harness::{assert_ok, hack, hack_start, repo, shim_dir};
use serde_json::Value;

const SHIM: &str = "containerd-shim-oomguard-v2";
const LABEL: (&str, &str) = ("oomguard.io/runtime", "true");

/// A manifest file of deploy/ as the API server would read it.
fn manifest(file: &str) -> Vec<Value> {
    let json = hack(
        "kube-validate.sh",
        &["json", &repo().join("deploy").join(file).to_string_lossy()],
        &format!("read deploy/{file}"),
    );
    serde_json::from_str(&json).expect("kube-validate.sh json prints JSON")
}

fn daemonset() -> Value {
    let docs = manifest("daemonset.yaml");
    assert_eq!(docs.len(), 1, "daemonset.yaml holds the DaemonSet alone");
    docs.into_iter().next().unwrap()
}

fn version() -> String {
    let out = Command::new(shim_dir().join(SHIM))
        .arg("-v")
        .output()
        .expect("shim -v");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .nth(1)
        .expect("a version")
        .to_string()
}

#[test]
fn deploy_validates_against_kubernetes_schemas() {
    let said = hack("kube-validate.sh", &[] as &[&str], "deploy/ validates");
    for k in ["1.25", "1.37"] {
        assert!(said.contains(&format!("Kubernetes {k}")), "{said}");
    }
    // The validator refuses what the API server would: a misspelt field.
    let dir = oomguard_integration::harness::instance_dir("kube-validate");
    fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("daemonset.yaml");
    let text = fs::read_to_string(repo().join("deploy/daemonset.yaml")).unwrap();
    fs::write(&bad, text.replace("hostPID: true", "hostPid: true")).unwrap();
    let out = Command::new(repo().join("hack/kube-validate.sh"))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt field validated");
    let _ = fs::remove_dir_all(&dir);
}

/// The pieces name each other: kustomization lists every manifest, the image
/// is this version's, the DaemonSet and both RuntimeClasses select the label
/// the README tells operators to set, the handlers are the snippets'.
#[test]
fn deploy_pieces_agree() {
    let kustomization = &manifest("kustomization.yaml")[0];
    let mut listed: Vec<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut present: Vec<String> = fs::read_dir(repo().join("deploy"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    assert_eq!(listed, present, "kustomization.yaml lists deploy/'s files");

    let version = version();
    let ds = daemonset();
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"][0]["image"],
        format!("docker.io/oomguard/installer:{version}"),
        "the DaemonSet's image is the one make image builds"
    );
    assert_eq!(kustomization["images"][0]["newTag"], version);
    assert_eq!(spec["nodeSelector"][LABEL.0], LABEL.1);
    let classes = manifest("runtimeclasses.yaml");
    let mut handlers: Vec<&str> = Vec::new();
    for class in &classes {
        assert_eq!(class["scheduling"]["nodeSelector"][LABEL.0], LABEL.1);
        handlers.push(class["handler"].as_str().unwrap());
    }
    for snippet in [
        "hack/cri/containerd-1.x.toml",
        "hack/cri/containerd-2.x.toml",
    ] {
        let text = fs::read_to_string(repo().join(snippet)).unwrap();
        for h in &handlers {
            assert!(text.contains(&format!(".{h}]")), "{snippet} lacks {h}");
        }
    }
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    for says in [
        format!("kubectl label node NODE {}={}", LABEL.0, LABEL.1),
        "kubectl apply -k deploy/".to_string(),
        format!(
            "kubectl -n {} rollout status daemonset/{}",
            ds["metadata"]["namespace"].as_str().unwrap(),
            ds["metadata"]["name"].as_str().unwrap()
        ),
    ] {
        assert!(readme.contains(&says), "README lacks {says:?}");
    }
}

/// The test's stand-in for the node's systemd: the installer's restart
/// command (a script) asks it through a FIFO to restart containerd, and
/// waits for its answer, as `systemctl restart` asks systemd. (The command
/// runs in the installer's cgroup with its capabilities: a containerd it
/// started itself would live there.)
struct Supervisor {
    restarts: Arc<(Mutex<usize>, Condvar)>,
    request: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    fn start(cri: &Cri, scratch: &Path) -> (Supervisor, PathBuf) {
        let request = scratch.join("restart.fifo");
        let answer = scratch.join("restarted.fifo");
        for fifo in [&request, &answer] {
            let out = Command::new("mkfifo").arg(fifo).output().unwrap();
            assert_ok(&out, "mkfifo");
        }
        let script = scratch.join("restart-containerd");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\n# Asks the test (this node's systemd) to restart containerd.\n\
                 echo restart > {req}\nread answer < {ans}\necho \"restart: $answer\"\n\
                 [ \"$answer\" = ok ]\n",
                req = request.display(),
                ans = answer.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();

        let restarts = Arc::new((Mutex::new(0usize), Condvar::new()));
        let (version, dir, bin) = (cri.version.clone(), cri.dir.clone(), cri.shim_dir.clone());
        let counter = restarts.clone();
        let req = request.clone();
        let thread = std::thread::spawn(move || loop {
            let mut line = String::new();
            let Ok(f) = fs::File::open(&req) else { return };
            if BufReader::new(f).read_line(&mut line).is_err() || line.trim() != "restart" {
                return;
            }
            let result = std::panic::catch_unwind(|| {
                hack(
                    "containerd.sh",
                    &[
                        std::ffi::OsStr::new("kill"),
                        dir.as_os_str(),
                        std::ffi::OsStr::new("TERM"),
                    ],
                    "containerd did not stop for the restart",
                );
                hack_start(
                    "cri/containerd.sh",
                    &version,
                    &dir,
                    &bin,
                    "containerd restart",
                );
            });
            let said = if result.is_ok() { "ok" } else { "failed" };
            if let Ok(mut f) = fs::OpenOptions::new().write(true).open(&answer) {
                let _ = writeln!(f, "{said}");
            }
            let (n, cv) = &*counter;
            *n.lock().unwrap() += 1;
            cv.notify_all();
        });
        let s = Supervisor {
            restarts,
            request,
            thread: Some(thread),
        };
        (s, script)
    }

    fn count(&self) -> usize {
        *self.restarts.0.lock().unwrap()
    }

    /// Waits until `n` restarts were done.
    fn wait_for(&self, n: usize, timeout: Duration, log: &dyn Fn() -> String) {
        let (count, cv) = &*self.restarts;
        let mut c = count.lock().unwrap();
        let deadline = Instant::now() + timeout;
        while *c < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} restart(s) of containerd, not {n}, after {timeout:?}; installer log:\n{}",
                *c,
                log()
            );
            c = cv.wait_timeout(c, left).unwrap().0;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Unblocks the thread's open() with a line that ends it.
        if let Ok(mut f) = fs::OpenOptions::new().write(true).open(&self.request) {
            let _ = writeln!(f, "quit");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `$(VAR)` in a command or argument, expanded from the container's env as
/// the kubelet does (`$$` escapes, unknown names stay as written).
fn expand(s: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&tail[..3 + end]),
            }
            rest = &tail[3 + end..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The pod and container config a kubelet would send for the DaemonSet's
/// pod: its namespaces, security context, hostPath mounts, command and args
/// with `env` (the manifest's, with `overrides` as a kustomize patch would
/// set them).
fn installer_pod_spec(
    cri: &Cri,
    overrides: &[(&str, String)],
) -> (PodSandboxConfig, ContainerConfig, String) {
    let ds = daemonset();
    let spec = &ds["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let mut pod = cri.pod_config("oomguard-installer");
    let host_pid = spec["hostPID"].as_bool().unwrap_or(false);
    let host_net = spec["hostNetwork"].as_bool().unwrap_or(false);
    let mode = |host: bool| {
        if host {
            NamespaceMode::Node as i32
        } else {
            NamespaceMode::Pod as i32
        }
    };
    let ns = NamespaceOption {
        network: mode(host_net),
        pid: if host_pid {
            NamespaceMode::Node as i32
        } else {
            NamespaceMode::Container as i32
        },
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    };
    pod.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: Some(ns.clone()),
        ..Default::default()
    });

    let mut env: Vec<(String, String)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (name, value) in overrides {
        let slot = env
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("deploy/daemonset.yaml has no env {name}"));
        slot.1 = value.clone();
    }
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let mut command: Vec<String> = strings(&c["command"]);
    command.extend(strings(&c["args"]));
    let command: Vec<String> = command.iter().map(|a| expand(a, &vars)).collect();

    let volumes = spec["volumes"].as_array().unwrap();
    let mounts = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let volume = volumes
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("no volume {name}"));
            k8s_cri::v1::Mount {
                container_path: m["mountPath"].as_str().unwrap().to_string(),
                host_path: volume["hostPath"]["path"]
                    .as_str()
                    .expect("the installer's volumes are hostPath")
                    .to_string(),
                readonly: m["readOnly"].as_bool().unwrap_or(false),
                propagation: MountPropagation::PropagationPrivate as i32,
                ..Default::default()
            }
        })
        .collect();
    let sc = &c["securityContext"];
    let caps = |key: &str| strings(&sc["capabilities"][key]);
    let add = caps("add");
    let privileged = sc["privileged"].as_bool().unwrap_or(false);
    // The kubelet's rule: escalation is allowed unless said otherwise, and
    // always with CAP_SYS_ADMIN or privileged.
    let escalate = sc["allowPrivilegeEscalation"].as_bool().unwrap_or(true)
        || privileged
        || add.iter().any(|c| c == "SYS_ADMIN");
    let seccomp = match sc["seccompProfile"]["type"].as_str() {
        Some("RuntimeDefault") => SecurityProfile {
            profile_type: security_profile::ProfileType::RuntimeDefault as i32,
            ..Default::default()
        },
        None | Some("Unconfined") => SecurityProfile {
            profile_type: security_profile::ProfileType::Unconfined as i32,
            ..Default::default()
        },
        Some(other) => panic!("seccompProfile {other} not emulated here"),
    };
    let memory = c["resources"]["limits"]["memory"].as_str().unwrap();
    let limit = memory
        .strip_suffix("Mi")
        .map(|n| n.parse::<i64>().unwrap() << 20)
        .expect("a memory limit in Mi");
    let image = c["image"].as_str().unwrap().to_string();
    let name = c["name"].as_str().unwrap().to_string();
    let container = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.clone(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
        command,
        envs: env
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect(),
        mounts,
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: limit,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: add,
                    drop_capabilities: caps("drop"),
                    ..Default::default()
                }),
                privileged,
                namespace_options: Some(ns),
                run_as_user: sc["runAsUser"].as_i64().map(|value| Int64Value { value }),
                readonly_rootfs: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
                no_new_privs: !escalate,
                seccomp: Some(seccomp),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    (pod, container, image)
}

/// `make image`'s archive, imported into the CRI namespace.
fn import_installer_image(cri: &Cri) {
    let printed = hack(
        "image.sh",
        &[cri.dir.join("image").as_os_str()],
        "hack/image.sh (make image)",
    );
    let archive = printed.lines().next().expect("image.sh prints the archive");
    let ctr = repo().join(format!(".cache/containerd/{}/bin/ctr", cri.version));
    let out = Command::new(ctr)
        .arg("--address")
        .arg(&cri.socket)
        .args(["-n", "k8s.io", "images", "import", archive])
        .output()
        .unwrap();
    assert_ok(&out, "ctr images import of the installer image");
}

/// The installer's container log, its text only.
fn log_text(cri: &Cri, pod: &Pod, name: &str) -> String {
    cri.container_log(pod, name)
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until the installer's log (its attempt `attempt`) says `what`.
fn wait_log(cri: &Cri, pod: &Pod, file: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = log_text(cri, pod, file);
        if log.contains(what) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "installer never said {what:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A call that may lose its connection to the containerd the installer is
/// restarting (the kubelet retries those).
fn tolerate<T>(what: &str, r: Result<T, tonic::Status>) {
    if let Err(e) = r {
        eprintln!("{what} during containerd's restart: {e:?} (a kubelet retries)");
    }
}

fn installer_rolls_out(version: &str) {
    let dir = Cri::prepare(version);
    let config = dir.join("config.toml");
    // An operator's comment: the restore must keep every byte.
    let mut operator = fs::read_to_string(&config).unwrap();
    operator.insert_str(0, "# node pool \"batch\": keep this comment\n");
    fs::write(&config, &operator).unwrap();
    let host = dir.join("host");
    let bin_dir = host.join("usr/local/bin");
    fs::create_dir_all(&bin_dir).unwrap();
    let config_dir = host.join("etc/oomguard");
    let placed = bin_dir.join(SHIM);

    let mut cri = Cri::start_in_with_shim_dir(version, dir.clone(), bin_dir.clone());
    let (supervisor, restart_script) = Supervisor::start(&cri, &host);
    import_installer_image(&cri);
    let docker_reloads = host.join("docker-reloads");
    let overrides = [
        ("CONTAINERD_CONFIG", config.display().to_string()),
        (
            "DOCKER_DAEMON_JSON",
            host.join("etc/docker/daemon.json").display().to_string(),
        ),
        ("OOMGUARD_CONFIG_DIR", config_dir.display().to_string()),
        ("OOMGUARD_BIN_DIR", bin_dir.display().to_string()),
        ("RESTART_CONTAINERD", restart_script.display().to_string()),
        (
            "RESTART_DOCKER",
            format!("echo reload >> {}", docker_reloads.display()),
        ),
        // This machine's PID 1 refuses ptrace access to its namespaces even
        // to root; the test's own are the host's namespaces here.
        ("HOST_INIT_PID", std::process::id().to_string()),
    ];
    let (pod_config, container, image) = installer_pod_spec(&cri, &overrides);
    assert!(image.ends_with(&format!(":{}", self::version())), "{image}");
    let pod = cri.run_pod_with(pod_config, "runc");
    let installer = cri.create_container_with(&pod, container.clone());
    tolerate(
        "StartContainer",
        cri.call(
            "StartContainer",
            cri.runtime_client().start_container(StartContainerRequest {
                container_id: installer.clone(),
            }),
        ),
    );
    supervisor.wait_for(1, Duration::from_secs(60), &|| {
        log_text(&cri, &pod, "installer")
    });
    cri.reconnect();
    let said = wait_log(&cri, &pod, "installer", "waiting for SIGTERM");
    eprintln!("--- the installer's log ---\n{said}");
    assert!(
        said.contains(&format!("placed {}", placed.display())),
        "{said}"
    );
    assert!(
        said.contains("added handlers oomguard, oomguard-runsc"),
        "{said}"
    );
    assert!(said.contains("no Docker on this node"), "{said}");
    assert_eq!(
        cri.container_status(&installer).state,
        ContainerState::ContainerRunning as i32,
        "the installer waits, running: {said}"
    );
    let out = Command::new(&placed).arg("-v").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{SHIM} {}", self::version()),
        "the image's binary at {}",
        placed.display()
    );
    let installed = fs::read_to_string(&config).unwrap();
    assert!(installed.starts_with("# node pool"), "{installed}");
    assert!(installed.contains(&config_dir.display().to_string()));

    // A pod under the handler the installer added: its OOM is reported,
    // by the binary the installer placed.
    let app = cri.run_pod("oom-app", HANDLER);
    let id = cri.run_container(
        &app,
        "hog",
        "dd if=/dev/zero of=/dev/null bs=64M",
        Some(16 << 20),
    );
    assert_eq!(cri.exit_of(&id), (137, "OOMKilled".to_string()));
    let shims: Vec<PathBuf> = cri
        .shim_pids()
        .iter()
        .filter_map(|p| fs::read_link(format!("/proc/{p}/exe")).ok())
        .collect();
    assert!(
        shims.contains(&placed),
        "{shims:?} run none of {}",
        placed.display()
    );
    cri.remove_pod(&app);

    // The installer dies without SIGTERM (a crash, the node rebooting); the
    // kubelet starts it again: nothing changes, no restart.
    let r = cri.call(
        "StopContainer",
        cri.runtime_client().stop_container(StopContainerRequest {
            container_id: installer.clone(),
            timeout: 0,
        }),
    );
    r.expect("StopContainer with no grace (SIGKILL)");
    let mut again = container;
    again.metadata.as_mut().unwrap().attempt = 1;
    again.log_path = "installer-1.log".into(); // read as "installer-1"
    let second = cri.create_container_with(&pod, again);
    cri.start_container(&second);
    let said = wait_log(&cri, &pod, "installer-1", "waiting for SIGTERM");
    assert!(said.contains("already this binary"), "{said}");
    assert!(said.contains("no config to change"), "{said}");
    assert_eq!(fs::read_to_string(&config).unwrap(), installed);
    assert_eq!(supervisor.count(), 1, "a second start restarted containerd");

    // The pod deleted: the kubelet stops the container with its grace
    // period (SIGTERM); the installer uninstalls and restarts containerd.
    let grace = daemonset()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap();
    tolerate(
        "StopContainer",
        cri.call(
            "StopContainer",
            cri.runtime_client().stop_container(StopContainerRequest {
                container_id: second.clone(),
                timeout: grace,
            }),
        ),
    );
    supervisor.wait_for(2, Duration::from_secs(60), &|| {
        log_text(&cri, &pod, "installer-1")
    });
    cri.reconnect();
    let status = cri.wait_exited(&second, Duration::from_secs(60));
    let said = log_text(&cri, &pod, "installer-1");
    eprintln!("--- the second installer's log ---\n{said}");
    assert_eq!(status.exit_code, 0, "{said}");
    assert!(
        said.contains("removed handlers oomguard, oomguard-runsc"),
        "{said}"
    );
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        operator,
        "config.toml restored byte for byte"
    );
    assert!(!placed.exists(), "the placed binary is removed");
    assert!(!config_dir.exists(), "its TOML files are removed");
    assert!(!docker_reloads.exists(), "Docker was not here to reload");
    cri.remove_pod(&pod);
    assert_eq!(supervisor.count(), 2);
    drop(supervisor);
    cri.assert_clean();
}

#[test]
fn installer_rolls_out_on_containerd_1_7() {
    assert_eq!(VERSIONS[0], "1.7");
    installer_rolls_out("1.7");
}

#[test]
fn installer_rolls_out_on_containerd_2() {
    installer_rolls_out("2");
}

/// A host config the installer cannot parse: a clear error naming the file
/// (the pod's log), and nothing written, the binary included; no restart.
#[test]
fn installer_refuses_a_config_it_cannot_parse() {
    let dir = oomguard_integration::harness::instance_dir("installer-bad");
    fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    let broken = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"\n";
    fs::write(&config, broken).unwrap();
    let restarted = dir.join("restarted");
    let out = Command::new(shim_dir().join(SHIM))
        .arg("install")
        .arg("--host-root=/")
        .arg(format!("--containerd={}", config.display()))
        .arg(format!("--docker={}", dir.join("daemon.json").display()))
        .arg(format!("--config-dir={}", dir.join("oomguard").display()))
        .arg(format!("--bin-dir={}", dir.join("bin").display()))
        .arg(format!(
            "--restart-containerd=touch {}",
            restarted.display()
        ))
        .arg(format!("--host-pid={}", std::process::id()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}: cannot parse", config.display()))
            && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), broken);
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("config.toml")],
        "written: {left:?}"
    );
    let _ = fs::remove_dir_all(&dir);
}
