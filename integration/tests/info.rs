//! `containerd-shim-oomguard-v2 -info` as containerd 2.x asks for it:
//! introspection's PluginInfo for the runtime (what `ctr plugins
//! inspect-runtime` shows, and what CRI learns a handler's OCI features
//! from).

use std::process::Command;

use oomguard_integration::cri::Cri;
use oomguard_integration::harness::{repo, Containerd, RUNTIME};

fn inspect(c: &Containerd, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["plugins", "inspect-runtime", "--runtime", RUNTIME];
    args.extend_from_slice(extra);
    c.ctr(&args)
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "ctr: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[test]
fn containerd_2_inspect_runtime() {
    let c = Containerd::start("2");

    // Defaults: runc, whose `runc features` document is passed through.
    let info = json(&inspect(&c, &[]));
    assert_eq!(info["Name"], RUNTIME);
    assert_eq!(info["Version"]["Version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["Options"], serde_json::Value::Null);
    let runc = Command::new("runc")
        .arg("features")
        .output()
        .expect("runc features");
    let runc: serde_json::Value = serde_json::from_slice(&runc.stdout).expect("runc features JSON");
    assert_eq!(info["Features"], runc, "runc's own features document");

    // An oomguard TOML naming runsc (which has no `features` command).
    let runsc_toml = repo().join("hack/cri/oomguard/runsc.toml");
    let runsc_toml = runsc_toml.to_str().unwrap();
    let info = json(&inspect(&c, &["--runtime-config-path", runsc_toml]));
    assert_eq!(info["Options"]["config_path"], runsc_toml);
    assert_eq!(info["Features"], serde_json::Value::Null);

    // Bad input: the answer names the file.
    let out = inspect(&c, &["--runtime-config-path", "/nonexistent/oomguard.toml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config file /nonexistent/oomguard.toml"),
        "{err}"
    );
}

/// containerd 2.x's CRI introspects each handler at start-up; the documented
/// "oomguard" handler reports runc's features (recursive read-only mounts).
#[test]
fn containerd_2_cri_learns_the_handlers_features() {
    let c = Cri::start("2");
    let log = c.log();
    assert!(
        log.contains(r#"runtime \"oomguard\" supports recursive read-only mounts"#),
        "{}",
        log.lines()
            .filter(|l| l.contains("introspect") || l.contains("supports"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
