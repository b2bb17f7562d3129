//! The Debian package (`hack/deb.sh`, `make deb`) installed on this machine
//! with `dpkg -i`, run from /usr/bin, and removed without a trace.
//!
//! The package database is the machine's, shared with every other test run:
//! one run at a time holds a machine-wide lock, and the package is purged
//! when the test ends, however it ends. `OOMGUARD_DEB` names a .deb to test
//! (`make test-deb`: the release package); otherwise one is built from the
//! binary under test (a debug build, gzip: seconds, not a release build).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use oomguard_integration::harness::{assert_ok, hack, instance_dir, repo, shim_dir};

const PACKAGE: &str = "oomguard";
const BINARY: &str = "/usr/bin/containerd-shim-oomguard-v2";
const DOC: &str = "/usr/share/doc/oomguard";

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// dpkg's word on the package: "installed", "not-installed", "config-files"...
fn status() -> String {
    let out = run("dpkg-query", &["-W", "-f=${db:Status-Status}", PACKAGE]);
    if out.status.success() {
        text(&out)
    } else {
        "not-installed".into()
    }
}

/// Runs dpkg, waiting while another dpkg/apt holds dpkg's own lock.
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = run("dpkg", args);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("lock") || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A machine-wide lock for the test's dpkg work (another run's test waits).
fn lock() -> File {
    let path = "/run/lock/oomguard-deb-test.lock";
    let f = File::create(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {path}");
    f
}

/// Purges the package when dropped (a failing test included); made only once
/// the test knows the package was not there before.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        if status() != "not-installed" {
            let out = dpkg(&["--purge", PACKAGE]);
            if !out.status.success() {
                eprintln!("dpkg --purge {PACKAGE} failed: {out:?}");
            }
        }
    }
}

/// The directory a built package lives in, removed on drop.
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn build() -> (PathBuf, Scratch) {
    if let Ok(deb) = std::env::var("OOMGUARD_DEB") {
        return (PathBuf::from(deb), Scratch(None));
    }
    hack("deps.sh", &["deb"], "hack/deps.sh deb");
    let out_dir = instance_dir("deb");
    let bin = shim_dir().join("containerd-shim-oomguard-v2");
    let mut cmd = Command::new(oomguard_integration::harness::repo().join("hack/deb.sh"));
    cmd.arg("--bin")
        .arg(&bin)
        .arg(&out_dir)
        .env("OOMGUARD_DEB_COMPRESSION", "gzip");
    let out = cmd.output().expect("hack/deb.sh");
    let scratch = Scratch(Some(out_dir));
    assert_ok(&out, "hack/deb.sh");
    (PathBuf::from(text(&out).trim()), scratch)
}

#[test]
fn package_installs_runs_and_removes_cleanly() {
    let (deb, scratch) = build();
    let deb_s = deb.to_str().unwrap();
    assert!(
        deb.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("_amd64.deb"),
        "{deb_s}"
    );

    // What it declares and holds: no maintainer scripts, the examples, the
    // README with the docs/ pages it links.
    let field = |f: &str| text(&run("dpkg-deb", &["-f", deb_s, f])).trim().to_string();
    assert_eq!(field("Package"), PACKAGE);
    let depends = field("Depends");
    assert!(
        depends.starts_with("runc, ") && depends.contains("libc6 (>= "),
        "{depends}"
    );
    assert_eq!(field("Suggests"), "runsc");
    let control = text(&run(
        "sh",
        &["-c", &format!("dpkg-deb --ctrl-tarfile {deb_s} | tar -t")],
    ));
    let mut members: Vec<&str> = control.lines().filter(|l| *l != "./").collect();
    members.sort();
    assert_eq!(members, ["./control", "./md5sums"], "maintainer scripts?");
    let contents = text(&run("dpkg-deb", &["-c", deb_s]));
    let docs = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| {
            e.expect("docs/ entry")
                .file_name()
                .to_string_lossy()
                .to_string()
        })
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!(".{DOC}/docs/{name}"));
    for f in [
        format!(".{BINARY}"),
        format!(".{DOC}/examples/containerd-1.x.toml"),
        format!(".{DOC}/examples/containerd-2.x.toml"),
        format!(".{DOC}/examples/daemon.json"),
        format!(".{DOC}/examples/runc.toml"),
        format!(".{DOC}/examples/runsc.toml"),
        format!(".{DOC}/copyright"),
        format!(".{DOC}/README.md"),
    ]
    .into_iter()
    .chain(docs)
    {
        assert!(contents.contains(&f), "{f} not in the package:\n{contents}");
    }

    let lock = lock();
    match status().as_str() {
        "not-installed" => {}
        other => panic!(
            "{PACKAGE} is already {other} on this machine: this test does not touch a package \
             it did not install (dpkg --purge {PACKAGE} to let it run)"
        ),
    }
    // Declared after the lock, so dropped (purging) before it is released.
    let purge = PurgeOnDrop;
    let out = dpkg(&["-i", deb_s]);
    assert_ok(&out, "dpkg -i");
    assert_eq!(status(), "installed");
    let out = run(BINARY, &["-v"]);
    assert_ok(&out, "containerd-shim-oomguard-v2 -v");
    assert!(
        text(&out).starts_with("containerd-shim-oomguard-v2 "),
        "{}",
        text(&out)
    );
    let out = run(BINARY, &["install", "--help"]);
    assert_ok(&out, "containerd-shim-oomguard-v2 install --help");
    assert!(Path::new(DOC).join("examples/daemon.json").is_file());

    let out = dpkg(&["-r", PACKAGE]);
    assert_ok(&out, "dpkg -r");
    assert!(!Path::new(BINARY).exists(), "{BINARY} left after dpkg -r");
    assert!(!Path::new(DOC).exists(), "{DOC} left after dpkg -r");
    let out = dpkg(&["--purge", PACKAGE]);
    assert_ok(&out, "dpkg --purge");
    assert_eq!(status(), "not-installed");
    drop(purge);
    drop(lock);
    drop(scratch);
}
