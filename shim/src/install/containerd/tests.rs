//! The containerd config edits on real files: `containerd config default` of
//! 1.7 and 2.1 (testdata/), an operator's hand-kept file, imports layouts.

use std::fs;

use super::*;
use crate::install::cli::Options;

const STOCK_17: &str = include_str!("../testdata/containerd-1.7-default.toml");
const STOCK_21: &str = include_str!("../testdata/containerd-2.1-default.toml");
const OPERATOR: &str = include_str!("../testdata/operator-1.7.toml");

struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("og-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }
    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.0.join(rel)).unwrap()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn opts(action: Action, config: &Path, default: bool) -> Options {
    Options {
        action,
        containerd: Some(config.to_path_buf()),
        docker: None,
        config_dir: PathBuf::from("/etc/oomguard"),
        config_dir_given: false,
        default,
        dry_run: false,
        node: None,
    }
}

/// Plans (and applies) one containerd run; returns the plan.
fn run(action: Action, config: &Path, default: bool) -> Result<Plan, String> {
    let mut p = Plan::default();
    plan(&opts(action, config, default), config, &mut p)?;
    p.apply()?;
    Ok(p)
}

/// Every line of `old` is in `new`, in order (install only adds lines).
fn only_added(old: &str, new: &str) -> bool {
    let diff = similar::TextDiff::from_lines(old, new);
    diff.iter_all_changes()
        .all(|c| c.tag() != similar::ChangeTag::Delete)
}

fn block(schema: Schema) -> String {
    // The canonical snippet minus its version line: what lands in a file.
    schema
        .snippet()
        .lines()
        .skip_while(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn backups(t: &Tmp) -> usize {
    fs::read_dir(&t.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("oomguard-backup"))
        .count()
}

fn stock_default_config(name: &str, stock: &str, schema: Schema, next_table: &str) {
    let t = Tmp::new(name);
    let config = t.write("config.toml", stock);
    let p = run(Action::Install, &config, false).unwrap();
    assert_eq!(p.changes.len(), 1);
    let after = t.read("config.toml");
    assert!(only_added(stock, &after), "{after}");
    // The canonical block, right after the runc runtime's tables; its
    // headers name the plugin as the file already does (2.x writes 'literal'
    // keys).
    let plugin = schema.cri_plugin();
    let literal = block(schema).replace(&format!("\"{plugin}\""), &format!("'{plugin}'"));
    assert!(
        after.contains(&block(schema)) || after.contains(&literal),
        "{after}"
    );
    let ours = after.find(".containerd.runtimes.oomguard]").unwrap();
    let runc = after.find(".containerd.runtimes.runc.options]").unwrap();
    let next = after.find(next_table).unwrap();
    assert!(runc < ours && ours < next, "{after}");
    assert_eq!(backups(&t), 1);
    // A second run changes nothing.
    let p = run(Action::Install, &config, false).unwrap();
    assert!(p.changes.is_empty(), "{:?}", p.changes);
    assert!(
        p.notes.iter().any(|n| n.contains("already there")),
        "{:?}",
        p.notes
    );
    // Uninstall gives back the stock file, byte for byte.
    let p = run(Action::Uninstall, &config, false).unwrap();
    assert_eq!(p.changes.len(), 1);
    assert_eq!(t.read("config.toml"), stock);
    let p = run(Action::Uninstall, &config, false).unwrap();
    assert!(p.changes.is_empty());
}

#[test]
fn stock_1_7_config() {
    stock_default_config(
        "stock17",
        STOCK_17,
        Schema::V2,
        "[plugins.\"io.containerd.grpc.v1.cri\".image_decryption]",
    );
}

#[test]
fn stock_2_1_config() {
    stock_default_config(
        "stock21",
        STOCK_21,
        Schema::V3,
        "[plugins.'io.containerd.cri.v1.runtime'.cni]",
    );
}

#[test]
fn operator_comments_survive_and_default_is_undone() {
    let t = Tmp::new("operator");
    let config = t.write("config.toml", OPERATOR);
    let p = run(Action::Install, &config, true).unwrap();
    assert!(p.changes[0]
        .what
        .contains("default runtime oomguard (was \"runc\")"));
    let after = t.read("config.toml");
    let default_line = "      default_runtime_name = \"runc\"   # stock runc unless a RuntimeClass says otherwise\n";
    assert!(
        only_added(&OPERATOR.replace(default_line, ""), &after),
        "{after}"
    );
    for comment in OPERATOR.lines().filter(|l| l.trim_start().starts_with('#')) {
        assert!(after.contains(comment), "lost {comment:?}");
    }
    assert!(after.contains(
        "default_runtime_name = \"oomguard\" # set by containerd-shim-oomguard-v2 install; \
         was \"runc\"   # stock runc unless a RuntimeClass says otherwise\n"
    ));
    // The handlers sit with the runc runtime, before the registry table.
    let ours = after.find("runtimes.oomguard-runsc.options]").unwrap();
    assert!(ours < after.find("# Registry mirrors").unwrap(), "{after}");
    let parsed: toml::Table = toml::from_str(&after).unwrap();
    assert_eq!(
        parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["default_runtime_name"]
            .as_str(),
        Some("oomguard")
    );
    assert!(run(Action::Install, &config, true)
        .unwrap()
        .changes
        .is_empty());
    run(Action::Uninstall, &config, false).unwrap();
    assert_eq!(t.read("config.toml"), OPERATOR);
}

#[test]
fn default_where_none_was_set() {
    let t = Tmp::new("default-unset");
    let text =
        "version = 3\n\n[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"overlayfs\"\n";
    let config = t.write("config.toml", text);
    run(Action::Install, &config, true).unwrap();
    let after = t.read("config.toml");
    assert!(after.contains(
        "[plugins.\"io.containerd.cri.v1.runtime\".containerd]\ndefault_runtime_name = \"oomguard\" \
         # set by containerd-shim-oomguard-v2 install; was unset\n"
    ), "{after}");
    let pos = |s| after.find(s).unwrap();
    assert!(pos(".runtime\".containerd]") < pos(".runtime\".containerd.runtimes.oomguard]"));
    run(Action::Uninstall, &config, false).unwrap();
    assert_eq!(t.read("config.toml"), text);
}

#[test]
fn v3_drop_in_under_the_imports_glob() {
    let t = Tmp::new("dropin3");
    let conf_d = t.0.join("conf.d");
    let main = STOCK_21.replace(
        "imports = []",
        &format!("imports = ['{}/*.toml']", conf_d.display()),
    );
    let config = t.write("config.toml", &main);
    t.write("conf.d/10-mirrors.toml", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'\n");
    let p = run(Action::Install, &config, true).unwrap();
    assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
    assert_eq!(t.read("config.toml"), main, "the main file is left alone");
    let drop_in = t.read("conf.d/oomguard.toml");
    assert!(drop_in.starts_with("version = 3\n"), "{drop_in}");
    assert!(drop_in.contains(&block(Schema::V3)), "{drop_in}");
    assert!(
        drop_in.contains("default_runtime_name = \"oomguard\""),
        "{drop_in}"
    );
    assert!(run(Action::Install, &config, true)
        .unwrap()
        .changes
        .is_empty());
    let p = run(Action::Uninstall, &config, false).unwrap();
    assert_eq!(p.changes.len(), 1);
    assert!(!t.0.join("conf.d/oomguard.toml").exists());
    assert_eq!(backups(&t), 0);
    assert_eq!(t.read("config.toml"), main);
}

#[test]
fn v3_handler_in_another_file_counts() {
    let t = Tmp::new("elsewhere3");
    let conf_d = t.0.join("conf.d");
    // The operator copied the documented snippet into the main file by hand.
    let main = format!(
        "version = 3\nimports = [\"{}/*.toml\"]\n\n{}",
        conf_d.display(),
        block(Schema::V3)
    );
    let config = t.write("config.toml", &main);
    fs::create_dir_all(&conf_d).unwrap();
    let p = run(Action::Install, &config, false).unwrap();
    assert!(p.changes.is_empty(), "{:?}", p.changes);
    // The same names with other content: refused.
    let theirs = main.replace("/etc/oomguard/runsc.toml", "/srv/runsc.toml");
    t.write("config.toml", &theirs);
    let e = run(Action::Install, &config, false).unwrap_err();
    assert!(
        e.contains("handler oomguard-runsc already exists and differs"),
        "{e}"
    );
    assert!(!conf_d.join("oomguard.toml").exists());
}

#[test]
fn v2_imports_follow_containerd_1x_merging() {
    let t = Tmp::new("imports2");
    let conf_d = t.0.join("conf.d");
    let glob = format!("imports = [\"{}/*.toml\"]", conf_d.display());
    fs::create_dir_all(&conf_d).unwrap();

    // The main file configures CRI: a drop-in would replace that whole
    // section in containerd 1.x, so the main file is edited.
    let main = STOCK_17.replace("imports = []", &glob);
    let config = t.write("config.toml", &main);
    let p = run(Action::Install, &config, false).unwrap();
    assert_eq!(p.changes[0].path, config);
    assert!(
        p.notes.iter().any(|n| n.contains("replaces, not merges")),
        "{:?}",
        p.notes
    );
    assert!(!conf_d.join("oomguard.toml").exists());
    run(Action::Uninstall, &config, false).unwrap();
    assert_eq!(t.read("config.toml"), main);

    // CRI lives in a drop-in: that file is the one containerd uses.
    let main =
        format!("version = 2\n{glob}\n\n[grpc]\n  address = \"/run/containerd/containerd.sock\"\n");
    let config = t.write("config.toml", &main);
    let cri =
        "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n";
    let cri_file = t.write("conf.d/50-cri.toml", cri);
    let p = run(Action::Install, &config, false).unwrap();
    assert_eq!(p.changes.len(), 1);
    assert_eq!(p.changes[0].path, cri_file);
    assert!(t.read("conf.d/50-cri.toml").contains(&block(Schema::V2)));
    assert_eq!(t.read("config.toml"), main);
    run(Action::Uninstall, &config, false).unwrap();
    assert_eq!(t.read("conf.d/50-cri.toml"), cri);
    fs::remove_file(&cri_file).unwrap();

    // No file configures CRI: a drop-in of its own is safe.
    let p = run(Action::Install, &config, false).unwrap();
    assert_eq!(p.changes[0].path, conf_d.join("oomguard.toml"));
    assert_eq!(
        t.read("conf.d/oomguard.toml"),
        for_config_dir(CONTAINERD_V2, Path::new("/etc/oomguard"))
    );
    assert!(run(Action::Install, &config, false)
        .unwrap()
        .changes
        .is_empty());
    run(Action::Uninstall, &config, false).unwrap();
    assert!(!conf_d.join("oomguard.toml").exists());
}

#[test]
fn drop_in_names_follow_the_glob() {
    let mut plan = Plan::default();
    let mut name = |imports: &str, schema| {
        let text = format!("version = 3\nimports = {imports}\n");
        let main = Loaded {
            path: PathBuf::from("/etc/containerd/config.toml"),
            doc: tables::parse(Path::new("x"), &text).unwrap(),
            text,
        };
        imports::drop_in_path(&main, schema, &mut plan)
    };
    let p = |s: &str| Some(PathBuf::from(s));
    assert_eq!(
        name(r#"["/etc/containerd/conf.d/*.toml"]"#, Schema::V3),
        p("/etc/containerd/conf.d/oomguard.toml")
    );
    assert_eq!(
        name(r#"["conf.d/99-*.conf"]"#, Schema::V3),
        p("/etc/containerd/conf.d/99-oomguard.conf")
    );
    assert_eq!(
        name(r#"["/a/b.toml", "/etc/c/*"]"#, Schema::V3),
        p("/etc/c/oomguard")
    );
    assert_eq!(name(r#"["conf.d/*.toml"]"#, Schema::V2), None);
    assert_eq!(name(r#"["/etc/*/x.toml"]"#, Schema::V3), None);
    assert_eq!(name(r#"["/etc/c/*-*.toml"]"#, Schema::V3), None);
    assert_eq!(name(r#"["/etc/c/a.toml"]"#, Schema::V3), None);
}

#[test]
fn file_without_version_is_refused() {
    let t = Tmp::new("noversion");
    // Docker's containerd.io package ships this.
    let text = "#   Copyright 2018-2022 Docker Inc.\n\ndisabled_plugins = [\"cri\"]\n";
    let config = t.write("config.toml", text);
    let e = run(Action::Install, &config, false).unwrap_err();
    assert!(
        e.contains("has no version line") && e.contains("containerd config migrate"),
        "{e}"
    );
    assert_eq!(t.read("config.toml"), text);
    t.write("config.toml", "version = 1\n");
    assert!(run(Action::Install, &config, false)
        .unwrap_err()
        .contains("config version 1"));
    t.write("config.toml", "version = 4\n");
    assert!(run(Action::Install, &config, false)
        .unwrap_err()
        .contains("version 4"));
}

#[test]
fn cri_disabled_is_said() {
    let t = Tmp::new("nocri");
    let config = t.write(
        "config.toml",
        "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
    );
    let p = run(Action::Install, &config, false).unwrap();
    assert!(
        p.notes.iter().any(|n| n.contains("disables CRI")),
        "{:?}",
        p.notes
    );
}

#[test]
fn bad_files_are_errors_naming_file_and_line() {
    let t = Tmp::new("bad");
    let text = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"\n  x = 1\n";
    let config = t.write("config.toml", text);
    let e = run(Action::Install, &config, false).unwrap_err();
    assert!(
        e.starts_with(&format!("{}: cannot parse", config.display())),
        "{e}"
    );
    assert!(e.contains("line 3"), "{e}");
    assert_eq!(t.read("config.toml"), text);

    // A broken drop-in is as bad as a broken main file.
    let conf_d = t.0.join("conf.d");
    let main = format!("version = 3\nimports = [\"{}/*.toml\"]\n", conf_d.display());
    t.write("config.toml", &main);
    let broken = t.write("conf.d/10-x.toml", "version = 3\nx = \n");
    let e = run(Action::Install, &config, false).unwrap_err();
    assert!(
        e.contains(&format!("{}: cannot parse", broken.display())),
        "{e}"
    );
    assert!(!conf_d.join("oomguard.toml").exists());

    let inline = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  containerd = { snapshotter = \"overlayfs\" }\n";
    t.write("config.toml", inline);
    let e = run(Action::Install, &config, false).unwrap_err();
    assert!(e.contains("is not a [table]"), "{e}");
    assert_eq!(t.read("config.toml"), inline);
}

#[test]
fn a_different_handler_of_the_same_name_is_left_alone() {
    let t = Tmp::new("conflict");
    let theirs = format!(
        "version = 2\n\n{}",
        block(Schema::V2).replace("/etc/oomguard/runc.toml", "/srv/og.toml")
    );
    let config = t.write("config.toml", &theirs);
    let e = run(Action::Install, &config, false).unwrap_err();
    assert!(
        e.contains("runtimes.oomguard] already exists and differs"),
        "{e}"
    );
    // Uninstall takes only the unchanged one.
    let p = run(Action::Uninstall, &config, false).unwrap();
    assert!(
        p.notes.iter().any(|n| n.contains("kept handler oomguard:")),
        "{:?}",
        p.notes
    );
    let after = t.read("config.toml");
    assert!(
        after.contains("runtimes.oomguard]") && !after.contains("runtimes.oomguard-runsc]"),
        "{after}"
    );
}

#[test]
fn containerd_versions() {
    let v = |s| schema_of_containerd(s).map(|(schema, _)| schema);
    assert_eq!(
        v("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n"),
        Ok(Schema::V2)
    );
    assert_eq!(
        v("containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1\n"),
        Ok(Schema::V2)
    );
    assert_eq!(
        v("containerd github.com/containerd/containerd/v2 2.1.9+unknown \n"),
        Ok(Schema::V3)
    );
    assert_eq!(
        v("containerd containerd.io 1.7.22 7f7fdf5fed64eb6a7caf99b3e12efcf9d60e311c\n"),
        Ok(Schema::V2)
    );
    assert_eq!(
        v("containerd github.com/containerd/containerd v2.0.0 207ad711\n"),
        Ok(Schema::V3)
    );
    assert!(v("containerd github.com/containerd/containerd v3.0.0 x\n").is_err());
    assert!(v("").is_err());
}

#[test]
fn dry_run_shows_a_diff_and_writes_nothing() {
    let t = Tmp::new("dry");
    let config = t.write("config.toml", OPERATOR);
    let mut p = Plan::default();
    let mut o = opts(Action::Install, &config, true);
    o.dry_run = true;
    plan(&o, &config, &mut p).unwrap();
    let diff = p.diff();
    assert!(
        diff.starts_with(&format!(
            "--- {}\n+++ {}\n",
            config.display(),
            config.display()
        )),
        "{diff}"
    );
    assert!(
        diff.contains("+[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.oomguard]\n"),
        "{diff}"
    );
    assert!(
        diff.contains("-      default_runtime_name = \"runc\""),
        "{diff}"
    );
    assert_eq!(t.read("config.toml"), OPERATOR);
}

#[test]
fn dotted_keys_get_header_tables_beside_them() {
    let t = Tmp::new("dotted");
    let text = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  containerd.snapshotter = \"overlayfs\"\n  containerd.default_runtime_name = \"runc\"\n  containerd.runtimes.runc.runtime_type = \"io.containerd.runc.v2\"\n\n[metrics]\n  address = \"127.0.0.1:1338\"\n";
    let config = t.write("config.toml", text);
    run(Action::Install, &config, true).unwrap();
    let after = t.read("config.toml");
    assert!(
        after.contains("  containerd.default_runtime_name = \"oomguard\" # set by"),
        "{after}"
    );
    assert!(after.contains(&block(Schema::V2)), "{after}");
    let pos = |s| after.find(s).unwrap();
    assert!(
        pos("runtimes.oomguard-runsc.options]") < pos("[metrics]"),
        "{after}"
    );
    let parsed: toml::Table = toml::from_str(&after).unwrap();
    let c = &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"];
    assert_eq!(
        c["runtimes"]["runc"]["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    assert_eq!(
        c["runtimes"]["oomguard"]["runtime_type"].as_str(),
        Some("io.containerd.oomguard.v2")
    );
    run(Action::Uninstall, &config, false).unwrap();
    assert_eq!(t.read("config.toml"), text);
}
