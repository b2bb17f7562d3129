//! The installer image (`hack/image.sh`, `make image`): an OCI image archive
//! built with no base image, from a static release build of the shim. It must
//! come out byte for byte the same from the same binary, import into
//! containerd (`ctr images import`, twice: one image, one digest) and Docker
//! (`docker load`, twice: one image id), and its binary must run in the
//! image's otherwise empty root filesystem.

use std::path::{Path, PathBuf};

use oomguard_integration::docker::{ensure_deps, Dockerd};
use oomguard_integration::harness::{assert_ok, hack, instance_dir, Containerd};

const NAME: &str = "docker.io/oomguard/installer";
/// Where the image holds the binary (ctr run replaces the entrypoint too).
const SHIM: &str = "/usr/local/bin/containerd-shim-oomguard-v2";

struct Built {
    archive: PathBuf,
    digest: String,
}

fn build(out: &Path) -> Built {
    let printed = hack("image.sh", &[out.as_os_str()], "hack/image.sh (make image)");
    let mut lines = printed.lines();
    let archive = PathBuf::from(lines.next().expect("image.sh prints the archive"));
    let digest = lines
        .next()
        .expect("image.sh prints the digest")
        .to_string();
    assert!(digest.starts_with("sha256:"), "digest {digest:?}");
    Built { archive, digest }
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn installer_image_is_reproducible_and_imports() {
    let dir = instance_dir("image");
    let first = build(&dir.join("a"));
    let second = build(&dir.join("b"));
    assert_eq!(first.digest, second.digest, "two builds, two manifests");
    assert_eq!(
        sha256(&first.archive),
        sha256(&second.archive),
        "two builds of one binary differ: {} {}",
        first.archive.display(),
        second.archive.display()
    );
    let file = first.archive.file_name().unwrap().to_string_lossy();
    let version = file
        .strip_prefix("oomguard-installer_")
        .and_then(|v| v.strip_suffix(".oci.tar"))
        .unwrap_or_else(|| panic!("archive name {file}"))
        .to_string();
    let image = format!("{NAME}:{version}");
    let archive = first.archive.to_string_lossy().to_string();

    // containerd: imported twice, one image whose digest is the manifest's.
    let mut c = Containerd::start("1.7");
    for round in 1..=2 {
        let out = c.ctr(&["images", "import", &archive]);
        assert_ok(&out, &format!("ctr images import, round {round}"));
        let out = c.ctr(&["images", "ls"]);
        assert_ok(&out, "ctr images ls");
        let listed: Vec<String> = text(&out)
            .lines()
            .skip(1)
            .filter(|l| l.starts_with(NAME))
            .map(String::from)
            .collect();
        assert_eq!(listed.len(), 1, "round {round}: {listed:?}");
        assert!(
            listed[0].starts_with(&format!("{image} ")) && listed[0].contains(&first.digest),
            "round {round}: {} with {} in {listed:?}",
            image,
            first.digest
        );
    }
    // Its binary runs in the image's root filesystem (static: no libc there).
    let out = c.ctr(&["run", "--rm", &image, "image-run", SHIM, "-v"]);
    assert_ok(&out, "ctr run of the installer image");
    assert_eq!(text(&out), format!("containerd-shim-oomguard-v2 {version}"));
    let _ = c.ctr(&["images", "rm", &image]);
    c.stop();

    // Docker: loaded twice, one image id; `docker run` prints the version.
    ensure_deps(&[]);
    let mut d = Dockerd::start("28", "2");
    let mut ids = Vec::new();
    for round in 1..=2 {
        let out = d.docker(&["load", "-i", &archive]);
        assert_ok(&out, &format!("docker load, round {round}"));
        let out = d.docker(&["image", "inspect", "--format", "{{.Id}}", &image]);
        assert_ok(&out, "docker image inspect");
        ids.push(text(&out));
    }
    assert_eq!(ids[0], ids[1], "two loads, two images");
    let out = d.docker(&["run", "--rm", "--network", "none", &image, "-v"]);
    assert_ok(&out, "docker run of the installer image");
    assert_eq!(text(&out), format!("containerd-shim-oomguard-v2 {version}"));
    let _ = d.docker(&["image", "rm", &image]);
    d.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
