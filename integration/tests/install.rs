//! `containerd-shim-oomguard-v2 install` / `uninstall` against the real
//! daemons: containerd 1.7 and 2.x started (CRI, `hack/cri/containerd.sh`) on
//! the config.toml `install` edited, with pods under both handlers; dockerd 26
//! and 28 on the daemon.json it edited; `containerd config dump` of the files it
//! writes (imports merged as containerd merges them); and
//! docs/configuration.md, the canonical snippets and what `install` writes
//! agreeing.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use oomguard_integration::cri::{ensure_runsc, Cri, HANDLER, RUNSC_HANDLER};
use oomguard_integration::docker::{exit_code, Dockerd, PAIRS};
use oomguard_integration::harness::{assert_ok, hack_stop, instance_dir, repo, shim_dir};

macro_rules! on_cri_containerd {
    ($($scenario:ident),* $(,)?) => {
        mod containerd_1_7 { $( #[test] fn $scenario() { super::$scenario("1.7") } )* }
        mod containerd_2 { $( #[test] fn $scenario() { super::$scenario("2") } )* }
    };
}

on_cri_containerd!(
    cri_on_the_installed_config,
    cri_with_an_imports_drop_in,
    config_dump_of_installed_files,
    file_without_version_is_refused,
);

const MIB32: i64 = 32 << 20;
const DD: &str = "dd if=/dev/zero of=/dev/null bs=100M count=1";

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = instance_dir(name);
        fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A directory `Cri::prepare` made: stopped and removed on drop (a no-op once
/// a `Cri` started in it has stopped), so a test failing before the start
/// leaves nothing either.
struct Prepared(PathBuf);

impl Prepared {
    fn new(version: &str) -> Prepared {
        Prepared(Cri::prepare(version))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        hack_stop("cri/containerd.sh", &self.0);
    }
}

fn bin_dir(version: &str) -> PathBuf {
    repo().join(format!(".cache/containerd/{version}/bin"))
}

/// Runs the shim binary under test with ARGS (PATH as given, else ours).
fn oomguard<S: AsRef<OsStr>>(args: &[S], path: Option<&str>) -> Output {
    let mut cmd = Command::new(shim_dir().join("containerd-shim-oomguard-v2"));
    cmd.args(args);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    cmd.output().expect("run containerd-shim-oomguard-v2")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `install ARGS` must succeed; returns what it printed.
fn install(args: &[&OsStr]) -> String {
    let mut all = vec![OsStr::new("install")];
    all.extend_from_slice(args);
    let out = oomguard(&all, None);
    assert_ok(&out, &format!("install {args:?}"));
    stdout(&out)
}

fn uninstall(args: &[&OsStr]) -> String {
    let mut all = vec![OsStr::new("uninstall")];
    all.extend_from_slice(args);
    let out = oomguard(&all, None);
    assert_ok(&out, &format!("uninstall {args:?}"));
    stdout(&out)
}

/// The CRI plugin holding runtimes in the schema containerd `version` writes.
fn cri_plugin(version: &str) -> &'static str {
    if version == "2" {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    }
}

/// `containerd --config FILE config dump`: the configuration containerd
/// `version` runs with (imports merged, older versions migrated).
fn dump(version: &str, file: &Path) -> toml::Table {
    let out = Command::new(bin_dir(version).join("containerd"))
        .arg("--config")
        .arg(file)
        .args(["config", "dump"])
        .output()
        .expect("containerd config dump");
    assert_ok(
        &out,
        &format!("containerd {version} config dump {}", file.display()),
    );
    toml::from_str(&stdout(&out)).expect("config dump is TOML")
}

/// The dumped CRI `containerd` table (runtimes, default_runtime_name).
fn cri_containerd(dumped: &toml::Table, version: &str) -> toml::Value {
    dumped["plugins"][cri_plugin(version)]["containerd"].clone()
}

/// The handlers as containerd `version` sees them in FILE, in handler order
/// (missing handlers left out): the ConfigPath of an oomguard-typed handler,
/// `runtime_path=PATH` of a runc-typed one (the 2.x snippet's `oomguard`).
fn handler_config_paths(version: &str, file: &Path) -> Vec<String> {
    let c = cri_containerd(&dump(version, file), version);
    [HANDLER, RUNSC_HANDLER]
        .iter()
        .filter_map(|h| c.get("runtimes")?.get(h))
        .map(|rt| match rt["runtime_type"].as_str() {
            Some("io.containerd.oomguard.v2") => rt["options"]["ConfigPath"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            Some("io.containerd.runc.v2") => format!(
                "runtime_path={}",
                rt.get("runtime_path")
                    .and_then(|p| p.as_str())
                    .unwrap_or("")
            ),
            other => panic!("unexpected runtime_type {other:?}"),
        })
        .collect()
}

/// What `handler_config_paths` shows after install wrote the snippet of
/// `schema` (2: containerd 1.x, 3: 2.x): the TOML files under CONFIG_DIR; on
/// 3, `oomguard` runs the binary that ran install.
fn expected_paths(config_dir: &Path, schema: u8) -> Vec<String> {
    let runsc = config_dir.join("runsc.toml").display().to_string();
    let first = if schema == 3 {
        let shim = shim_dir()
            .join("containerd-shim-oomguard-v2")
            .canonicalize()
            .expect("the shim binary");
        format!("runtime_path={}", shim.display())
    } else {
        config_dir.join("runc.toml").display().to_string()
    };
    vec![first, runsc]
}

/// The config schema install writes for containerd `version`.
fn schema(version: &str) -> u8 {
    if version == "2" {
        3
    } else {
        2
    }
}

/// Pods under both handlers on a CRI containerd: an OOM and a clean exit under
/// `oomguard` (runc), a clean exit that ran in gVisor under `oomguard-runsc`.
fn run_pods_under_both_handlers(c: &Cri) {
    let pod = c.run_pod("installed", HANDLER);
    let oom = c.run_container(&pod, "oom", DD, Some(MIB32));
    let clean = c.run_container(&pod, "clean", "echo installed", None);
    assert_eq!(c.exit_of(&oom), (137, "OOMKilled".to_string()));
    assert_eq!(c.exit_of(&clean), (0, "Completed".to_string()));
    c.remove_pod(&pod);

    let pod = c.run_pod("installed-gvisor", RUNSC_HANDLER);
    let id = c.run_container(&pod, "gvisor", "dmesg | grep -q gVisor", None);
    assert_eq!(
        c.exit_of(&id),
        (0, "Completed".to_string()),
        "not under gVisor?"
    );
    c.remove_pod(&pod);
    c.assert_clean();
}

/// An operator's containerd config (the private instance's, with comments of
/// the operator's own) gets the handlers from `install`; containerd runs pods
/// under both; a second install changes nothing; `uninstall` gives the file
/// back byte for byte.
fn cri_on_the_installed_config(version: &str) {
    ensure_runsc();
    let prepared = Prepared::new(version);
    let dir = prepared.0.clone();
    let config = dir.join("config.toml");
    let stock = fs::read_to_string(&config).unwrap();
    assert!(!stock.contains("io.containerd.oomguard.v2"), "{stock}");
    let operator = format!(
        "# Node pool \"batch\": edited by hand, keep the comments.\n{}\n\
         # [plugins.\"io.containerd.grpc.v1.cri\".registry] # mirrors: see certs.d\n",
        stock.replace(
            "[debug]\n",
            "# Debug logs stay on until the OOM ticket is closed.\n[debug]\n"
        )
    );
    fs::write(&config, &operator).unwrap();
    let config_dir = dir.join("oomguard");
    let args = [
        OsStr::new("--containerd"),
        config.as_os_str(),
        OsStr::new("--config-dir"),
        config_dir.as_os_str(),
    ];
    let said = install(&args);
    assert!(
        said.contains("added handlers oomguard, oomguard-runsc"),
        "{said}"
    );
    assert!(said.contains("systemctl restart containerd"), "{said}");
    let installed = fs::read_to_string(&config).unwrap();
    for line in operator.lines().filter(|l| l.starts_with('#')) {
        assert!(installed.contains(line), "lost {line:?}:\n{installed}");
    }
    assert_eq!(
        handler_config_paths(version, &config),
        expected_paths(&config_dir, schema(version))
    );
    assert!(config_dir.join("runsc.toml").is_file());
    let again = install(&args);
    assert!(again.contains("nothing to change"), "{again}");

    let c = Cri::start_in(version, dir);
    run_pods_under_both_handlers(&c);
    let said = uninstall(&args);
    assert!(
        said.contains("removed handlers oomguard, oomguard-runsc"),
        "{said}"
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), operator);
    assert!(
        !config_dir.exists(),
        "uninstall --config-dir removes its files"
    );
}

/// `imports` with a drop-in glob. containerd 2.x merges drop-ins key by key:
/// install writes conf.d/oomguard.toml and leaves the main file alone.
/// containerd 1.7 replaces a whole CRI section with a later file's: the
/// operator keeps CRI in conf.d/50-cri.toml, and install puts the handlers
/// there. Either way the operator's CRI settings (restrict_oom_score_adj,
/// which the pause container needs here) still hold: the pods run.
fn cri_with_an_imports_drop_in(version: &str) {
    ensure_runsc();
    let prepared = Prepared::new(version);
    let dir = prepared.0.clone();
    let config = dir.join("config.toml");
    let conf_d = dir.join("conf.d");
    fs::create_dir_all(&conf_d).unwrap();
    let mut main: toml_edit::DocumentMut = fs::read_to_string(&config).unwrap().parse().unwrap();
    main.insert(
        "imports",
        toml_edit::value(toml_edit::Array::from_iter([format!(
            "{}/*.toml",
            conf_d.display()
        )])),
    );
    let cri_file = conf_d.join("50-cri.toml");
    if version != "2" {
        // Move the CRI section into a drop-in of the operator's.
        let cri = main["plugins"]
            .as_table_mut()
            .unwrap()
            .remove("io.containerd.grpc.v1.cri")
            .expect("CRI section");
        let mut doc = toml_edit::DocumentMut::new();
        doc.insert("version", toml_edit::value(2));
        let mut plugins = toml_edit::Table::new();
        plugins.set_implicit(true);
        plugins.insert("io.containerd.grpc.v1.cri", cri);
        doc.insert("plugins", toml_edit::Item::Table(plugins));
        fs::write(&cri_file, doc.to_string()).unwrap();
    }
    let main = main.to_string();
    fs::write(&config, &main).unwrap();
    let cri_before = fs::read_to_string(&cri_file).ok();
    let config_dir = dir.join("oomguard");
    let args = [
        OsStr::new("--containerd"),
        config.as_os_str(),
        OsStr::new("--config-dir"),
        config_dir.as_os_str(),
    ];
    let said = install(&args);
    let drop_in = conf_d.join("oomguard.toml");
    if version == "2" {
        assert!(
            said.contains(&format!("created {}", drop_in.display())),
            "{said}"
        );
        assert_eq!(
            fs::read_to_string(&config).unwrap(),
            main,
            "main file untouched"
        );
    } else {
        assert!(
            said.contains(&format!("changed {}", cri_file.display())),
            "{said}"
        );
        assert!(!drop_in.exists());
    }
    assert_eq!(
        handler_config_paths(version, &config),
        expected_paths(&config_dir, schema(version))
    );
    let dumped = dump(version, &config);
    let restrict = if version == "2" {
        &dumped["plugins"]["io.containerd.cri.v1.runtime"]["restrict_oom_score_adj"]
    } else {
        &dumped["plugins"]["io.containerd.grpc.v1.cri"]["restrict_oom_score_adj"]
    };
    assert_eq!(
        restrict.as_bool(),
        Some(true),
        "operator's CRI setting lost"
    );

    let c = Cri::start_in(version, dir);
    run_pods_under_both_handlers(&c);
    uninstall(&args);
    assert!(!drop_in.exists());
    assert_eq!(fs::read_to_string(&config).unwrap(), main);
    assert_eq!(fs::read_to_string(&cri_file).ok(), cri_before);
}

/// What containerd makes of the files install writes, without a daemon:
/// the stock `containerd config default` (generated here by that binary),
/// `--default`, and a missing file (the schema of the containerd on PATH).
fn config_dump_of_installed_files(version: &str) {
    let s = Scratch::new(&format!("install-dump{version}"));
    let config = s.0.join("config.toml");
    let out = Command::new(bin_dir(version).join("containerd"))
        .args(["config", "default"])
        .output()
        .unwrap();
    assert_ok(&out, "containerd config default");
    let stock = stdout(&out);
    fs::write(&config, &stock).unwrap();
    let config_dir = s.0.join("etc");
    let args = [
        OsStr::new("--containerd"),
        config.as_os_str(),
        OsStr::new("--config-dir"),
        config_dir.as_os_str(),
        OsStr::new("--default"),
    ];
    install(&args);
    assert_eq!(
        handler_config_paths(version, &config),
        expected_paths(&config_dir, schema(version))
    );
    let c = cri_containerd(&dump(version, &config), version);
    assert_eq!(c["default_runtime_name"].as_str(), Some(HANDLER));
    uninstall(&args[..4]);
    assert_eq!(fs::read_to_string(&config).unwrap(), stock);
    let c = cri_containerd(&dump(version, &config), version);
    assert_eq!(c["default_runtime_name"].as_str(), Some("runc"));

    if version == "2" {
        // A version 2 file (1.7's stock config) on containerd 2.x: install
        // writes the file's own schema, and 2.x migrates it.
        let out = Command::new(bin_dir("1.7").join("containerd"))
            .args(["config", "default"])
            .output()
            .unwrap();
        assert_ok(&out, "containerd 1.7 config default");
        fs::write(&config, stdout(&out)).unwrap();
        install(&args[..4]);
        assert!(fs::read_to_string(&config)
            .unwrap()
            .contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.oomguard]"));
        assert_eq!(
            handler_config_paths("2", &config),
            expected_paths(&config_dir, 2)
        );
    }

    // No file: the schema of the containerd on PATH.
    let missing = s.0.join("new/config.toml");
    let path = format!(
        "{}:/usr/sbin:/usr/bin:/sbin:/bin",
        bin_dir(version).display()
    );
    let out = oomguard(
        &[
            OsStr::new("install"),
            OsStr::new("--containerd"),
            missing.as_os_str(),
            OsStr::new("--config-dir"),
            config_dir.as_os_str(),
        ],
        Some(&path),
    );
    assert_ok(&out, "install into a missing file");
    let text = fs::read_to_string(&missing).unwrap();
    let want = if version == "2" {
        "version = 3\n"
    } else {
        "version = 2\n"
    };
    assert!(text.starts_with(want), "{text}");
    assert_eq!(
        handler_config_paths(version, &missing),
        expected_paths(&config_dir, schema(version))
    );
    // And without containerd on PATH: a clear error, nothing written.
    fs::remove_file(&missing).unwrap();
    let out = oomguard(
        &[
            OsStr::new("install"),
            OsStr::new("--containerd"),
            missing.as_os_str(),
            OsStr::new("--config-dir"),
            s.0.join("etc2").as_os_str(),
        ],
        Some("/nonexistent"),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no containerd on PATH"), "{err}");
    assert!(!missing.exists() && !s.0.join("etc2").exists());
}

/// A config without a version line is version 1 to containerd: 1.7 and 2.x
/// both ignore CRI runtimes written with full plugin names there (the reason
/// install refuses such a file), and install says how to fix it.
fn file_without_version_is_refused(version: &str) {
    let s = Scratch::new(&format!("install-nover{version}"));
    let config = s.0.join("config.toml");
    let snippet = fs::read_to_string(repo().join("hack/cri/containerd-1.x.toml")).unwrap();
    let versionless = format!("oom_score = 0\n{}", snippet.replace("version = 2\n", ""));
    fs::write(&config, &versionless).unwrap();
    assert_eq!(handler_config_paths(version, &config), Vec::<String>::new());
    // With the version line, the same tables are applied.
    fs::write(&config, format!("version = 2\n{versionless}")).unwrap();
    assert_eq!(handler_config_paths(version, &config).len(), 2);

    fs::write(&config, &versionless).unwrap();
    let config_dir = s.0.join("etc");
    let out = oomguard(
        &[
            OsStr::new("install"),
            OsStr::new("--containerd"),
            config.as_os_str(),
            OsStr::new("--config-dir"),
            config_dir.as_os_str(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no version line") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), versionless);
    assert!(!config_dir.exists());
}

#[test]
fn docker_26_on_the_installed_daemon_json() {
    docker_on_the_installed_daemon_json(PAIRS[0]);
}

#[test]
fn docker_28_on_the_installed_daemon_json() {
    docker_on_the_installed_daemon_json(PAIRS[1]);
}

/// dockerd (26 on containerd 1.7, 28 on 2.x) on an operator's daemon.json
/// that install edited: `docker run --runtime oomguard` works, an OOM is
/// OOMKilled/137, `oomguard-runsc` runs in gVisor; uninstall gives the file
/// back.
fn docker_on_the_installed_daemon_json((docker, containerd): (&str, &str)) {
    oomguard_integration::docker::ensure_deps(&["runsc"]);
    let s = Scratch::new(&format!("install-docker{docker}"));
    let daemon_json = s.0.join("daemon.json");
    let operator = "{\n  \"log-driver\": \"json-file\",\n  \"log-opts\": {\n    \"max-size\": \"10m\",\n    \"max-file\": \"3\"\n  }\n}\n";
    fs::write(&daemon_json, operator).unwrap();
    let config_dir = s.0.join("oomguard");
    let args = [
        OsStr::new("--docker"),
        daemon_json.as_os_str(),
        OsStr::new("--config-dir"),
        config_dir.as_os_str(),
    ];
    let said = install(&args);
    assert!(said.contains("systemctl restart docker"), "{said}");
    let installed: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&daemon_json).unwrap()).unwrap();
    assert_eq!(installed["log-opts"]["max-size"], "10m");

    let d = Dockerd::start_with(docker, containerd, Some(&daemon_json));
    let out = d.run("oomguard", "hello", &[], &["echo", "hello"]);
    assert_eq!(
        (exit_code(&out), stdout(&out)),
        (0, "hello\n".to_string()),
        "{out:?}"
    );
    let out = d.run("oomguard", "oom", &["-m", "32m"], &["sh", "-c", DD]);
    assert_eq!(exit_code(&out), 137, "{out:?}");
    let state = d.wait_exited("oom", std::time::Duration::from_secs(30));
    assert_eq!(state["OOMKilled"].as_bool(), Some(true), "{state}");
    let out = d.run("oomguard-runsc", "gvisor", &[], &["dmesg"]);
    assert_eq!(exit_code(&out), 0, "{out:?}");
    assert!(stdout(&out).contains("gVisor"), "{}", stdout(&out));
    d.assert_clean();

    uninstall(&args);
    assert_eq!(fs::read_to_string(&daemon_json).unwrap(), operator);
    assert!(
        !config_dir.exists(),
        "uninstall --config-dir removes its files"
    );
}

/// What `install` checks, asked the same way from outside: the first runsc
/// on `path` is older than release-20240807 (it tests
/// /proc/sys/net/core/rmem_default for "the host's namespace") and a fresh
/// network namespace shows that file (util-linux unshare).
fn sandbox_network_misfires(path: &str) -> bool {
    let Some(runsc) = path
        .split(':')
        .map(|d| std::path::Path::new(d).join("runsc"))
        .find(|p| p.is_file())
    else {
        return false;
    };
    let version = std::process::Command::new(&runsc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let release: u32 = version
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 8)
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    release < 20240807
        && std::process::Command::new("unshare")
            .args(["--net", "test", "-e", "/proc/sys/net/core/rmem_default"])
            .status()
            .is_ok_and(|s| s.success())
}

/// docs/configuration.md shows the canonical snippets verbatim, and install
/// writes exactly them (with the config directory it was given).
#[test]
fn configuration_snippets_and_install_agree() {
    let doc = "docs/configuration.md";
    let shown = fs::read_to_string(repo().join(doc)).unwrap();
    let canonical = [
        ("containerd 1.x", "hack/cri/containerd-1.x.toml"),
        ("containerd 2.x", "hack/cri/containerd-2.x.toml"),
        ("daemon.json", "hack/docker/daemon.json"),
        ("runc.toml", "hack/cri/oomguard/runc.toml"),
        ("runsc.toml", "hack/cri/oomguard/runsc.toml"),
        (
            "network = host",
            "hack/cri/oomguard/runsc-network-host.toml",
        ),
    ];
    for (_, file) in canonical {
        let text = fs::read_to_string(repo().join(file)).unwrap();
        assert!(shown.contains(&text), "{doc} does not show {file} as it is");
    }

    let s = Scratch::new("install-docs");
    let config_dir = s.0.join("etc");
    let dir = format!("{}/", config_dir.display());
    for version in ["1.7", "2"] {
        let config = s.0.join(format!("{version}/config.toml"));
        let daemon_json = s.0.join(format!("{version}/daemon.json"));
        let path = format!(
            "{}:/usr/sbin:/usr/bin:/sbin:/bin",
            bin_dir(version).display()
        );
        let path_var = path.clone();
        let out = oomguard(
            &[
                OsStr::new("install"),
                OsStr::new("--containerd"),
                config.as_os_str(),
                OsStr::new("--docker"),
                daemon_json.as_os_str(),
                OsStr::new("--config-dir"),
                config_dir.as_os_str(),
            ],
            Some(&path),
        );
        assert_ok(&out, "install into an empty node");
        let snippet = if version == "2" {
            canonical[1].1
        } else {
            canonical[0].1
        };
        let written = [
            (config, snippet),
            (daemon_json, canonical[2].1),
            (config_dir.join("runc.toml"), canonical[3].1),
            (config_dir.join("runsc.toml"), canonical[4].1),
        ];
        for (path, file) in written {
            // runtime_path names the binary that ran install.
            let shim = shim_dir()
                .join("containerd-shim-oomguard-v2")
                .canonicalize()
                .expect("the shim binary");
            let mut want = fs::read_to_string(repo().join(file))
                .unwrap()
                .replace("/etc/oomguard/", &dir)
                .replace(
                    "/usr/bin/containerd-shim-oomguard-v2",
                    &shim.display().to_string(),
                );
            // Where the runsc on that PATH cannot run gVisor's own network
            // stack on this kernel, install adds the canonical lines.
            if file.ends_with("runsc.toml") && sandbox_network_misfires(&path_var) {
                let fragment = fs::read_to_string(repo().join(canonical[5].1)).unwrap();
                want = want.replacen(
                    "[runsc_config]\n",
                    &format!("[runsc_config]\n{fragment}"),
                    1,
                );
            }
            assert_eq!(
                fs::read_to_string(&path).unwrap(),
                want,
                "{}",
                path.display()
            );
        }
    }
}
