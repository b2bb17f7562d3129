//! The OOM story where people look (issue 17), through CRI as a kubelet
//! calls it, on containerd 1.7 and 2.x: the kubelet's termination-message
//! file (mounted from a host file at /dev/termination-log, read into Last
//! State's Message) gets the story when it is empty and keeps what the
//! application wrote; with the pod annotation `io.oomguard.oom-report:
//! stderr` the container's log (`crictl logs`) gets it too; a malformed
//! annotation is named in the log and changes nothing.

use std::fs;
use std::path::{Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, Mount};
use oomguard_integration::cri::{ensure_runsc, Cri, Pod, HANDLER, RUNSC_HANDLER};
use oomguard_integration::harness::Events;

macro_rules! on_every_containerd {
    ($($scenario:ident),* $(,)?) => {
        mod containerd_1_7 { $( #[test] fn $scenario() { super::$scenario("1.7") } )* }
        mod containerd_2 { $( #[test] fn $scenario() { super::$scenario("2") } )* }
    };
}

on_every_containerd!(
    termination_message_tells_the_story,
    stderr_line_with_the_annotation,
    runsc_termination_message,
    memory_warning_once_per_episode,
    runsc_memory_warning,
);

const MIB32: i64 = 32 << 20;
const MIB64: i64 = 64 << 20;
const DD: &str = "dd if=/dev/zero of=/dev/null bs=100M";
const STORY: &str = "oomguard: OOM-killed: ";

/// The container config with the kubelet's termination-message mount: an
/// empty host file (the kubelet creates one per container) at
/// /dev/termination-log.
fn with_termination_log(
    c: &Cri,
    config: ContainerConfig,
    name: &str,
) -> (ContainerConfig, PathBuf) {
    let dir = c.dir.join("kubelet").join(name);
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("termination-log");
    fs::write(&file, "").unwrap();
    let mut config = config;
    config.mounts.push(Mount {
        container_path: "/dev/termination-log".into(),
        host_path: file.display().to_string(),
        ..Default::default()
    });
    (config, file)
}

fn run(c: &Cri, pod: &Pod, config: ContainerConfig) -> String {
    let id = c.create_container_with(pod, config);
    c.start_container(&id);
    id
}

/// Last State as `kubectl describe pod` shows it, from ContainerStatus and
/// the termination-message file (what the kubelet reads into Message).
fn last_state(c: &Cri, id: &str, file: &Path) -> String {
    let s = c.wait_exited(id, std::time::Duration::from_secs(30));
    format!(
        "    Last State:     Terminated\n      Reason:       {}\n      Message:      {}\n      Exit Code:    {}\n",
        s.reason,
        fs::read_to_string(file).unwrap(),
        s.exit_code
    )
}

fn termination_message_tells_the_story(version: &str) {
    let c = Cri::start(version);
    let pod = c.run_pod("termination", HANDLER);
    let (killed, killed_file) =
        with_termination_log(&c, c.container_config("killed", DD, Some(MIB32)), "killed");
    let (own, own_file) = with_termination_log(
        &c,
        c.container_config(
            "own-message",
            &format!("echo 'app: giving up' > /dev/termination-log; {DD}"),
            Some(MIB32),
        ),
        "own-message",
    );
    let (clean, clean_file) = with_termination_log(
        &c,
        c.container_config("clean", "exit 0", Some(MIB32)),
        "clean",
    );
    let killed = run(&c, &pod, killed);
    let own = run(&c, &pod, own);
    let clean = run(&c, &pod, clean);

    let state = last_state(&c, &killed, &killed_file);
    eprintln!("{state}");
    assert!(state.contains("Reason:       OOMKilled"), "{state}");
    assert!(state.contains("Exit Code:    137"), "{state}");
    let story = fs::read_to_string(&killed_file).unwrap();
    assert!(story.starts_with(STORY), "{story:?}");
    for says in [
        "the container reached its memory limit of 32.0 MiB",
        "killed dd (pid ",
        "MiB resident",
        "seen in the memory cgroup's OOM events",
    ] {
        assert!(story.contains(says), "{says:?} not in {story:?}");
    }
    assert!(!story.contains('\n') && story.len() <= 4096, "{story:?}");
    // The README shows this block as a test read it (pid and RSS vary).
    let readme =
        fs::read_to_string(oomguard_integration::harness::repo().join("README.md")).unwrap();
    let (head, _) = story.split_once("(pid ").unwrap();
    let (_, tail) = story.split_once(" resident").unwrap();
    for part in [
        format!("      Message:      {head}(pid "),
        format!(" resident{tail}\n      Exit Code:    137"),
    ] {
        assert!(readme.contains(&part), "README's Last State lacks {part:?}");
    }

    assert_eq!(c.exit_of(&own).0, 137);
    assert_eq!(
        fs::read_to_string(&own_file).unwrap(),
        "app: giving up\n",
        "the application's own message is kept"
    );
    assert_eq!(c.exit_of(&clean).0, 0);
    assert_eq!(
        fs::read_to_string(&clean_file).unwrap(),
        "",
        "no OOM, no story"
    );
    // The story is not in the log without the annotation.
    assert!(!c.container_log(&pod, "killed").contains(STORY));
    c.remove_pod(&pod);
    c.assert_clean();
}

fn stderr_line_with_the_annotation(version: &str) {
    let c = Cri::start(version);
    for (value, line) in [("stderr", true), ("none", false), ("150%", false)] {
        let mut config = c.pod_config(&format!("stderr-{}", value.replace('%', "pct")));
        config
            .annotations
            .insert("io.oomguard.oom-report".into(), value.into());
        let pod = c.run_pod_with(config, HANDLER);
        let id = run(&c, &pod, c.container_config("app", DD, Some(MIB32)));
        assert_eq!(c.exit_of(&id), (137, "OOMKilled".to_string()), "{value}");
        let log = c.container_log(&pod, "app");
        assert_eq!(
            log.contains(&format!(" stderr F {STORY}")),
            line,
            "{value}: {log:?}"
        );
        if line {
            eprintln!("crictl logs (with io.oomguard.oom-report: stderr):\n{log}");
        }
        c.remove_pod(&pod);
    }
    // The malformed value is named, with its key, in the shim's log.
    let log = c.log();
    assert!(
        log.contains(
            r#"annotation io.oomguard.oom-report: \"150%\" is not \"stderr\" or \"none\""#
        ) || log.contains(r#"annotation io.oomguard.oom-report: "150%" is not "stderr" or "none""#),
        "the shim's error about the annotation is not in containerd's log"
    );
    c.assert_clean();
}

/// gVisor: a container over its own limit in a pod (oomguard's kill) and a
/// sandbox whose host memcg ran out.
fn runsc_termination_message(version: &str) {
    ensure_runsc();
    let c = Cri::start(version);
    let pod = c.run_pod("gvisor-termination", RUNSC_HANDLER);
    let (config, file) = with_termination_log(
        &c,
        c.container_config(
            "over",
            "dd if=/dev/zero of=/dev/null bs=300M count=1",
            Some(MIB64),
        ),
        "gvisor-over",
    );
    let id = run(&c, &pod, config);
    let state = last_state(&c, &id, &file);
    eprintln!("{state}");
    assert!(state.contains("Reason:       OOMKilled"), "{state}");
    let story = fs::read_to_string(&file).unwrap();
    assert!(
        story.starts_with(STORY)
            && story.contains("went over its own memory limit of 64.0 MiB inside the gVisor pod"),
        "{story:?}"
    );
    c.remove_pod(&pod);

    let mut config = c.pod_config("gvisor-sandbox-oom");
    config.linux.as_mut().unwrap().cgroup_parent = c.pod_cgroup(2 * MIB32);
    let pod = c.run_pod_with(config, RUNSC_HANDLER);
    let (config, file) =
        with_termination_log(&c, c.container_config("oom", DD, Some(MIB32)), "gvisor-oom");
    let id = run(&c, &pod, config);
    let state = last_state(&c, &id, &file);
    eprintln!("{state}");
    assert!(state.contains("Reason:       OOMKilled"), "{state}");
    let story = fs::read_to_string(&file).unwrap();
    assert!(
        story.starts_with(STORY)
            && story.contains("the gVisor sandbox reached its memory limit of 64.0 MiB")
            && story.contains("seen in the sandbox's host memory cgroup"),
        "{story:?}"
    );
    c.remove_pod(&pod);
    c.assert_clean();
}

/// The warning before the kill (cgroup v1, runc): a container whose working
/// set climbs to ~93 % of its limit and holds is warned once; after it fell
/// and climbed again, once more; one at 50 % and an idle one never; `off`
/// and a malformed level (`150%`, named in the log, default kept).
fn memory_warning_once_per_episode(version: &str) {
    let c = Cri::start(version);
    let events = Events::oomguard_on(&c.socket, "k8s.io");
    let fill = "dd if=/dev/zero of=/dev/shm/fill bs=1M count=59 2>/dev/null";
    let climbs_twice = format!(
        "{fill}; sleep 2; rm /dev/shm/fill; sleep 1; {fill}; sleep 2; rm /dev/shm/fill; echo done"
    );
    let half = "dd if=/dev/zero of=/dev/shm/fill bs=1M count=32 2>/dev/null; sleep 3; echo done";
    for (level, script, warnings) in [
        (None, climbs_twice.as_str(), 2),
        (None, half, 0),
        (None, "sleep 3; echo done", 0),
        (Some("off"), climbs_twice.as_str(), 0),
        (Some("150%"), climbs_twice.as_str(), 2),
    ] {
        let mut config = c.pod_config("warning");
        config
            .annotations
            .insert("io.oomguard.oom-report".into(), "stderr".into());
        if let Some(l) = level {
            config
                .annotations
                .insert("io.oomguard.memory-warning".into(), l.into());
        }
        let pod = c.run_pod_with(config, HANDLER);
        let id = run(&c, &pod, c.container_config("app", script, Some(MIB64)));
        assert_eq!(
            c.exit_of(&id),
            (0, "Completed".to_string()),
            "{level:?} {script}"
        );
        let log = c.container_log(&pod, "app");
        let seen = log.matches(" stderr F oomguard: memory warning: ").count();
        assert_eq!(seen, warnings, "{level:?} {script}:\n{log}");
        // The typed event, once per warning, with its figures.
        let typed: Vec<_> = events
            .of(&id)
            .into_iter()
            .filter(|e| e.topic == "/oomguard/memory-pressure")
            .collect();
        assert_eq!(typed.len(), warnings, "{level:?}: {:?}", events.topics(&id));
        for e in &typed {
            assert_eq!(e.body["trigger"], "TRIGGER_USAGE_LEVEL", "{:?}", e.body);
            assert_eq!(e.body["limit_bytes"], MIB64, "{:?}", e.body);
            assert_eq!(e.body["level_percent"], 90, "{:?}", e.body);
        }
        if seen > 0 && level.is_none() {
            eprintln!("crictl logs (the warning):\n{log}");
            eprintln!("events --json: {} {}", typed[0].topic, typed[0].body);
        }
        c.remove_pod(&pod);
    }
    let log = c.log();
    assert!(
        log.contains(r#"annotation io.oomguard.memory-warning: \"150%\""#)
            || log.contains(r#"annotation io.oomguard.memory-warning: "150%""#),
        "the malformed level is not named in the shim's log"
    );
    c.assert_clean();
}

/// The warning in a gVisor pod: the container's own usage, as its sandbox's
/// watch reads it, climbs to ~93 % of its own limit twice (falling between):
/// two warnings; one at 50 %: none.
fn runsc_memory_warning(version: &str) {
    ensure_runsc();
    let c = Cri::start(version);
    let hold = "dd if=/dev/zero bs=59M count=1 2>/dev/null | sleep 6";
    let twice = format!("{hold}; sleep 6; {hold}; echo done");
    let half = "dd if=/dev/zero bs=32M count=1 2>/dev/null | sleep 6; echo done";
    for (script, warnings) in [(twice.as_str(), 2), (half, 0)] {
        let mut config = c.pod_config("gvisor-warning");
        config
            .annotations
            .insert("io.oomguard.oom-report".into(), "stderr".into());
        let pod = c.run_pod_with(config, RUNSC_HANDLER);
        let id = run(&c, &pod, c.container_config("app", script, Some(MIB64)));
        assert_eq!(c.exit_of(&id), (0, "Completed".to_string()), "{script}");
        let log = c.container_log(&pod, "app");
        let seen = log.matches(" stderr F oomguard: memory warning: ").count();
        assert_eq!(seen, warnings, "{script}:\n{log}");
        c.remove_pod(&pod);
    }
    c.assert_clean();
}
