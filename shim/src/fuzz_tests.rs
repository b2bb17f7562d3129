//! Property tests with generated inputs for every parser of foreign bytes in
//! the shim: kernel log records and their assembly, cgroup files
//! (`memory.oom_control`, `memory.events`, Stats files), mountinfo,
//! `/proc/PID/cgroup`, the options `Any`, the TOML file, the OCI spec's
//! annotations, the memcg figure files of the OOM report, and the event
//! bodies the `events` command receives from containerd. Generators mutate real samples (`shim/testdata/`, read off
//! this kind of machine) and build well-formed inputs whose parse is
//! checked; see `oomguard_runtimes::fuzzing`.

use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use oomguard_runtimes::fuzzing::{mutated_bytes, mutated_text, named, run};
use proptest::prelude::*;

use crate::config::{RuntimeConfig, RuntimeOptions, RUNC_OPTIONS, RUNTIME_OPTIONS};
use crate::metrics::{parse_numbers, parse_single};
use crate::oom::kmsg::{parse_record, Assembler, Record};
use crate::oom::memcg::{
    key_values, memcg_rel, parse_memory_events, parse_mountinfo, parse_oom_control, v1_dir, Memcg,
};

const EPISODE: &str = include_str!("../testdata/kmsg-oom-episode.txt");
const MOUNTINFO: &str = include_str!("../testdata/mountinfo");
const PROC_CGROUP: &str = include_str!("../testdata/proc-cgroup");
const OOM_CONTROL: &str = include_str!("../testdata/memory.oom_control");
const MEMORY_STAT: &str = include_str!("../testdata/memory.stat");
const CPU_STAT: &str = include_str!("../testdata/cpu.stat");
const CPUACCT_STAT: &str = include_str!("../testdata/cpuacct.stat");
const PERCPU: &str = include_str!("../testdata/cpuacct.usage_percpu");

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

// ---------------------------------------------------------------------------
// Kernel log

/// Every record of a real memcg OOM episode (122 records: the stack, the
/// memcg's stats, the task list, oom-kill, Killed process), plus the global
/// and gVisor sandbox forms.
fn kmsg_seeds() -> Vec<String> {
    let mut seeds = lines(EPISODE);
    seeds.extend([
        "6,900,1,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/default/big,task=python3,pid=4242,uid=0".to_string(),
        "3,901,2,-;Out of memory: Killed process 4242 (python3) total-vm:9999kB, anon-rss:8000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:40kB oom_score_adj:0".to_string(),
        "3,902,3,-;Memory cgroup out of memory: Killed process 22709 (exe) total-vm:1790520kB, anon-rss:5376kB, file-rss:18892kB, shmem-rss:37248kB, UID:65534 pgtables:364kB oom_score_adj:0".to_string(),
        "6,903,4,-;oom_reaper: reaped process 22709 (exe), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB".to_string(),
    ]);
    seeds
}

#[derive(Debug, Clone)]
struct WellFormed {
    text: String,
    record: Record,
}

/// Records as the kernel prints them, with generated pids, commands, memcg
/// paths and sizes.
fn oom_records() -> impl Strategy<Value = WellFormed> {
    let memcg = "(/[a-zA-Z0-9_.:@-]{1,20}){1,4}";
    let comm = "[ -~]{1,15}".prop_filter("the kernel log form", |c| !c.contains(','));
    let oom_kill = (1i32..i32::MAX, comm.clone(), memcg, prop::option::of(memcg), 0u8..8).prop_map(
        |(pid, comm, task_memcg, oom_memcg, level)| {
            let scope = match &oom_memcg {
                Some(m) => format!("oom_memcg={m}"),
                None => "global_oom".to_string(),
            };
            WellFormed {
                text: format!(
                    "{level},62975,7155538163,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=x,mems_allowed=0,{scope},task_memcg={task_memcg},task={comm},pid={pid},uid=0"
                ),
                record: Record::OomKill(crate::oom::kmsg::Victim {
                    pid,
                    comm,
                    task_memcg,
                    oom_memcg,
                    anon_rss_kb: None,
                    constraint: "CONSTRAINT_MEMCG".to_string(),
                }),
            }
        },
    );
    let comm = "[ -~]{0,15}";
    let killed = (1i32..i32::MAX, comm, prop::option::of(any::<u64>()), any::<bool>()).prop_map(
        |(pid, comm, rss, memcg)| {
            let rss_text = rss.map(|r| format!(", anon-rss:{r}kB")).unwrap_or_default();
            let who = if memcg { "Memory cgroup out of memory" } else { "Out of memory" };
            WellFormed {
                text: format!("3,62976,7155538179,-;{who}: Killed process {pid} ({comm}) total-vm:207068kB{rss_text}, file-rss:1604kB, shmem-rss:0kB, UID:0 pgtables:100kB oom_score_adj:0"),
                record: Record::Killed {
                    pid,
                    comm,
                    anon_rss_kb: rss,
                },
            }
        },
    );
    prop_oneof![oom_kill, killed]
}

#[test]
fn fuzz_kmsg_records() {
    let oom_lines: Vec<String> = kmsg_seeds()
        .into_iter()
        .filter(|l| l.contains("oom-kill:") || l.contains("Killed process"))
        .collect();
    let strategy = prop_oneof![
        1 => oom_records().prop_map(|w| (w.text, Some(w.record))),
        1 => mutated_text(kmsg_seeds()).prop_map(|t| (t, None)),
        2 => mutated_text(oom_lines).prop_map(|t| (t, None)),
    ];
    run("kmsg record", strategy, |(text, want)| {
        let got = parse_record(&text);
        if let Some(want) = want {
            prop_assert_eq!(&got, &Ok(Some(want)));
        }
        match got {
            Ok(_) => Ok(Ok(())),
            Err(e) => {
                // Only records about an OOM kill may be called malformed:
                // an unrelated line is never reported.
                let message = text.split_once(';').map_or(text.as_str(), |(_, m)| m);
                let first = message.lines().next().unwrap_or_default();
                prop_assert!(
                    first.starts_with("oom-kill:") || first.contains("Killed process "),
                    "an unrelated record was reported: {text:?}: {e}"
                );
                named(
                    e.to_string(),
                    &[
                        "oom-kill:",
                        "Killed process",
                        "record priority",
                        "record prefix",
                        "PRI,SEQ",
                    ],
                )
            }
        }
    });
}

#[test]
fn fuzz_kmsg_assembler() {
    // Records about a few pids, in any order: a victim comes out only for
    // a Killed record whose oom-kill came first, and the pending map stays
    // bounded.
    let record = prop_oneof![
        (1i32..6, "/[a-z]{1,3}").prop_map(|(pid, m)| Record::OomKill(crate::oom::kmsg::Victim {
            pid,
            task_memcg: m,
            ..Default::default()
        })),
        (1i32..6, prop::option::of(0u64..100)).prop_map(|(pid, rss)| Record::Killed {
            pid,
            comm: "dd".into(),
            anon_rss_kb: rss,
        }),
        (1000i32..i32::MAX).prop_map(|pid| Record::OomKill(crate::oom::kmsg::Victim {
            pid,
            task_memcg: "/x".into(),
            ..Default::default()
        })),
    ];
    run(
        "kmsg assembler (record sequences)",
        prop::collection::vec(record, 0..80),
        |records| {
            let mut asm = Assembler::default();
            let mut last_memcg = std::collections::HashMap::new();
            let mut victims = 0;
            for r in records {
                let killed_pid = match &r {
                    Record::OomKill(v) => {
                        last_memcg.insert(v.pid, v.task_memcg.clone());
                        None
                    }
                    Record::Killed { pid, .. } => Some(*pid),
                };
                if let Some(v) = asm.push(r) {
                    victims += 1;
                    prop_assert_eq!(Some(v.pid), killed_pid);
                    prop_assert_eq!(Some(&v.task_memcg), last_memcg.get(&v.pid));
                }
                prop_assert!(asm.pending() <= 65, "{} pending", asm.pending());
            }
            Ok(if victims > 0 {
                Ok(())
            } else {
                Err("no victim".to_string())
            })
        },
    );
}

// ---------------------------------------------------------------------------
// cgroup files

/// A flat-keyed file of generated keys (known and new) and values.
fn flat_keyed(
    known: &'static [&'static str],
) -> impl Strategy<Value = (String, Vec<(String, u64)>)> {
    let key = prop_oneof![
        3 => prop::sample::select(known).prop_map(str::to_string),
        1 => "[a-z_]{1,20}",
    ];
    prop::collection::vec((key, any::<u64>()), 0..10).prop_map(|kv| {
        let text: String = kv.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        (text, kv)
    })
}

const MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
const COUNTER_WORDS: &[&str] = &["line ", "oom_kill"];

#[test]
fn fuzz_memory_oom_control() {
    let known: &[&str] = &["oom_kill_disable", "under_oom", "oom_kill"];
    let strategy = prop_oneof![
        1 => flat_keyed(known).prop_map(|(t, kv)| (t, Some(kv))),
        2 => mutated_text(vec![OOM_CONTROL.to_string(), "oom_kill_disable 0\nunder_oom 1\noom_kill 18446744073709551615\n".into()]).prop_map(|t| (t, None)),
    ];
    run("memory.oom_control", strategy, |(text, kv)| {
        let got = parse_oom_control(&text);
        if let Some(kv) = kv {
            // The last value of a key wins; no oom_kill is an error.
            let last = kv
                .iter()
                .rev()
                .find(|(k, _)| k == "oom_kill")
                .map(|(_, v)| *v);
            prop_assert_eq!(got.as_ref().ok().map(|c| c.oom_kill), last);
        }
        match got {
            Ok(_) => Ok(Ok(())),
            Err(e) => named(e, COUNTER_WORDS),
        }
    });
}

#[test]
fn fuzz_memory_events() {
    let known: &[&str] = &["low", "high", "max", "oom", "oom_kill", "oom_group_kill"];
    let strategy = prop_oneof![
        1 => flat_keyed(known).prop_map(|(t, kv)| (t, Some(kv))),
        2 => mutated_text(vec![MEMORY_EVENTS.to_string()]).prop_map(|t| (t, None)),
    ];
    run("memory.events", strategy, |(text, kv)| {
        let got = parse_memory_events(&text);
        if let Some(kv) = kv {
            let last = |key: &str| kv.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v);
            match (&got, last("oom_kill")) {
                (Ok(e), Some(kills)) => {
                    prop_assert_eq!(e.oom_kill, kills);
                    prop_assert_eq!(e.oom_group_kill, last("oom_group_kill").unwrap_or(0));
                }
                (Err(_), None) => {}
                (got, want) => prop_assert!(false, "{got:?} for oom_kill {want:?}"),
            }
        }
        match got {
            Ok(_) => Ok(Ok(())),
            Err(e) => named(e, COUNTER_WORDS),
        }
    });
}

#[test]
fn fuzz_cgroup_stat_files() {
    let seeds = vec![
        MEMORY_STAT.to_string(),
        CPU_STAT.to_string(),
        CPUACCT_STAT.to_string(),
    ];
    let strategy = prop_oneof![
        1 => flat_keyed(&["cache", "rss", "total_rss", "nr_periods", "user", "system"]).prop_map(|(t, kv)| (t, Some(kv))),
        3 => mutated_text(seeds).prop_map(|t| (t, None)),
    ];
    run(
        "memory.stat, cpu.stat, cpuacct.stat",
        strategy,
        |(text, kv)| {
            let got = key_values(&text);
            if let Some(kv) = kv {
                let got: Vec<(String, u64)> = got
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                prop_assert_eq!(got, kv);
            }
            match got {
                Ok(_) => Ok(Ok(())),
                Err(e) => named(e, &["line "]),
            }
        },
    );
}

#[test]
fn fuzz_cgroup_single_values() {
    let seeds = vec![
        PERCPU.to_string(),
        "33554432\n".into(),
        "max\n".into(),
        "9223372036854771712\n".into(),
    ];
    let strategy = prop_oneof![
        1 => prop::collection::vec(any::<u64>(), 0..8).prop_map(|v| {
            let text = v.iter().map(|n| format!("{n} ")).collect::<String>() + "\n";
            (text, Some(v))
        }),
        3 => mutated_text(seeds).prop_map(|t| (t, None)),
    ];
    run(
        "cpuacct.usage_percpu, single-value files",
        strategy,
        |(text, want)| {
            let list = parse_numbers(&text);
            if let Some(want) = want {
                prop_assert_eq!(list.as_ref().ok(), Some(&want));
            }
            let single = parse_single(&text, u64::MAX);
            match (list, single) {
                (Ok(_), Ok(_)) => Ok(Ok(())),
                (Err(e), _) => named(e, &["value "]),
                (_, Err(e)) => named(e, &["is not a number"]),
            }
        },
    );
}

#[test]
fn fuzz_mountinfo() {
    let v2 = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    // The machine's mounts without its cgroups, plus one generated cgroup
    // mount whose point has characters mountinfo escapes.
    let others: String = MOUNTINFO
        .lines()
        .filter(|l| !l.contains(" - cgroup"))
        .map(|l| format!("{l}\n"))
        .collect();
    let generated =
        ("(/[a-zA-Z0-9 \\t\\\\]{1,8}){1,3}", any::<bool>()).prop_map(move |(mp, v1)| {
            let escaped = mp
                .replace('\\', "\\134")
                .replace(' ', "\\040")
                .replace('\t', "\\011");
            let line = if v1 {
                format!("35 31 0:32 / {escaped} rw,relatime shared:9 - cgroup cgroup rw,memory\n")
            } else {
                format!("41 31 0:38 / {escaped} rw,relatime - cgroup2 cgroup2 rw\n")
            };
            (format!("{others}{line}"), Some((PathBuf::from(mp), v1)))
        });
    let strategy = prop_oneof![
        1 => generated,
        3 => mutated_text(vec![MOUNTINFO.to_string(), v2.to_string()]).prop_map(|t| (t, None)),
    ];
    run("mountinfo", strategy, |(text, want)| {
        let got = parse_mountinfo(&text);
        if let Some((mp, v1)) = want {
            let m = got.clone().unwrap();
            if v1 {
                prop_assert_eq!(m.v1_memory, Some(mp.clone()));
                prop_assert_eq!(m.v1.get("memory"), Some(&mp));
            } else {
                prop_assert_eq!(m.v2, Some(mp));
            }
        }
        match got {
            Ok(_) => Ok(Ok(())),
            Err(e) => named(e, &["mountinfo line "]),
        }
    });
}

#[test]
fn fuzz_proc_pid_cgroup() {
    let mounts = parse_mountinfo(MOUNTINFO).unwrap();
    let seeds = vec![
        PROC_CGROUP.to_string(),
        "12:pids:/default/t1\n4:memory:/default/t1\n0::/default/t1\n".into(),
        "0::/kubepods/burstable/pod1/3c46ac3436faeb13\n".into(),
    ];
    let generated = "(/[a-zA-Z0-9:._-]{1,12}){1,4}"
        .prop_map(|path| (format!("8:pids:/\n4:memory:{path}\n0::/\n"), Some(path)));
    let strategy = prop_oneof![
        1 => generated,
        3 => mutated_text(seeds).prop_map(|t| (t, None)),
    ];
    run("/proc/PID/cgroup", strategy, |(text, want)| {
        let rel = memcg_rel(&text);
        let memcg = Memcg::from_proc_cgroup(&text, &mounts);
        let pids = v1_dir(&text, &mounts, "pids");
        if let Some(path) = want {
            prop_assert_eq!(rel.as_ref(), Ok(&path));
            let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
            prop_assert_eq!(&memcg, &Ok(Memcg::V1(dir)));
        }
        if let Ok(m) = &memcg {
            prop_assert!(m.path().starts_with("/sys/fs/cgroup/"), "{m:?}");
        }
        match (rel, memcg, pids) {
            (Ok(_), Ok(_), Ok(_)) => Ok(Ok(())),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                named(e, &["line ", "memory", "unified", "cgroup2"])
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Options, TOML, spec

fn runc_options() -> impl Strategy<Value = RuncOptions> {
    (
        "(/[a-z]{1,8}){0,3}",
        "(/[a-z]{1,8}){0,3}",
        any::<bool>(),
        any::<bool>(),
        any::<u32>(),
        "[a-z/.:]{0,12}",
    )
        .prop_map(|(binary, root, systemd, pivot, uid, cg)| {
            let mut o = RuncOptions::new();
            o.binary_name = binary;
            o.root = root;
            o.systemd_cgroup = systemd;
            o.no_pivot_root = pivot;
            o.io_uid = uid;
            o.shim_cgroup = cg;
            o.criu_image_path = "/var/lib/criu".into();
            o
        })
}

fn toml_seeds() -> Vec<String> {
    vec![
        include_str!("../../hack/cri/oomguard/runc.toml").to_string(),
        include_str!("../../hack/cri/oomguard/runsc.toml").to_string(),
        "binary_name = \"/usr/bin/runsc\"\nroot = \"/run/containerd/runsc\"\nlog_level = \"debug\"\nsystemd_cgroup = false\nno_pivot_root = true\nno_new_keyring = false\noom_group = false\n[runsc_config]\nplatform = \"ptrace\"\nnetwork = \"none\"\ndebug = true\nwatchdog-action = 1\nfloat = 1.5\n".to_string(),
    ]
}

fn any_of(type_url: String, value: Vec<u8>) -> Any {
    let mut a = Any::new();
    a.type_url = type_url;
    a.value = value;
    a
}

#[test]
fn fuzz_options_any_runc() {
    let real = {
        let mut o = RuncOptions::new();
        o.binary_name = "/usr/bin/runc".into();
        o.root = "/run/containerd/runc".into();
        o.systemd_cgroup = true;
        o.write_to_bytes().unwrap()
    };
    let urls = prop::sample::select(vec![
        RUNC_OPTIONS.to_string(),
        format!("type.googleapis.com/{RUNC_OPTIONS}"),
        "containerd.runc.v1.Option".to_string(),
        String::new(),
    ]);
    let strategy = prop_oneof![
        1 => runc_options().prop_map(|o| (RUNC_OPTIONS.to_string(), o.write_to_bytes().unwrap(), Some(o))),
        3 => (urls, mutated_bytes(vec![real, vec![]])).prop_map(|(u, v)| (u, v, None)),
    ];
    run(
        "options Any: containerd.runc.v1.Options",
        strategy,
        |(url, value, want)| {
            let got = RuntimeConfig::from_any(Some(&any_of(url, value)));
            if let Some(o) = want {
                let c = got.as_ref().unwrap();
                let binary = if o.binary_name.is_empty() {
                    "runc".to_string()
                } else {
                    o.binary_name
                };
                prop_assert_eq!(&c.binary_name, &binary);
                prop_assert_eq!(c.systemd_cgroup, o.systemd_cgroup);
                prop_assert_eq!(c.io_uid, o.io_uid);
            }
            match got {
                Ok(_) => Ok(Ok(())),
                Err(e) => named(e.to_string(), &["options: "]),
            }
        },
    );
}

#[test]
fn fuzz_options_any_runtimeoptions() {
    // What CRI and Docker send: TypeUrl and ConfigBody (a ConfigPath would
    // read the file system; it is decoded here, not followed).
    let seeds: Vec<Vec<u8>> = toml_seeds()
        .into_iter()
        .map(|body| {
            RuntimeOptions {
                type_url: "io.containerd.oomguard.v1.options".into(),
                config_path: String::new(),
                config_body: body,
            }
            .encode()
        })
        .collect();
    let generated = ("[a-z./]{0,30}", "[ -~\n]{0,60}").prop_map(|(t, b)| {
        let o = RuntimeOptions {
            type_url: t,
            config_path: String::new(),
            config_body: b,
        };
        (o.encode(), Some(o))
    });
    let strategy = prop_oneof![1 => generated, 3 => mutated_bytes(seeds).prop_map(|v| (v, None))];
    run(
        "options Any: runtimeoptions.v1.Options",
        strategy,
        |(value, want)| {
            let decoded = RuntimeOptions::decode(&value);
            if let Some(o) = want {
                prop_assert_eq!(decoded.as_ref(), Ok(&o));
            }
            let o = match decoded {
                Ok(o) => o,
                Err(e) => return named(e, &["field "]),
            };
            if !o.config_path.is_empty() {
                return Ok(Ok(()));
            }
            match RuntimeConfig::from_any(Some(&any_of(RUNTIME_OPTIONS.to_string(), value))) {
                Ok(_) => Ok(Ok(())),
                Err(e) => named(e.to_string(), &["ConfigBody"]),
            }
        },
    );
}

#[test]
fn fuzz_toml_file() {
    let key = prop::sample::select(vec![
        "binary_name",
        "root",
        "log_level",
        "systemd_cgroup",
        "no_pivot_root",
        "no_new_keyring",
        "oom_group",
        "runsc_config",
        "binary_nmae",
    ]);
    let value = prop_oneof![
        "\"[ -!#-~]{0,12}\"",
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("[1, 2]".to_string()),
        Just("{ platform = \"ptrace\" }".to_string()),
    ];
    let generated = prop::collection::vec((key, value), 0..6).prop_map(|kv| {
        kv.iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect::<String>()
    });
    let strategy = prop_oneof![1 => generated, 3 => mutated_text(toml_seeds())];
    run(
        "oomguard TOML file",
        strategy,
        |body| match RuntimeConfig::from_toml("/etc/oomguard/fuzz.toml", &body) {
            Ok(_) => Ok(Ok(())),
            Err(e) => named(e.to_string(), &["config file /etc/oomguard/fuzz.toml"]),
        },
    );
}

fn spec_seeds() -> Vec<String> {
    vec![
        r#"{"ociVersion":"1.1.0","annotations":{"io.oomguard.oom-group":"false","io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"3c46ac3436faeb13f5d81f1f1943b1b38357b5b6d27b3cbd11068e3be6167b0d"},"linux":{"resources":{"memory":{"limit":33554432},"unified":{"memory.oom.group":"1"}}}}"#.into(),
        r#"{"ociVersion":"1.0.2-dev","process":{"args":["/bin/sh"]},"linux":{"resources":{"memory":{"limit":67108864}}}}"#.into(),
    ]
}

#[test]
fn fuzz_spec_oom_group() {
    let value = prop_oneof![
        4 => prop::sample::select(vec!["true", "false", "1", "0", " 1 ", "yes", "", "TRUE"]).prop_map(|s| serde_json::json!(s)),
        1 => any::<i64>().prop_map(|n| serde_json::json!(n)),
        1 => Just(serde_json::Value::Null),
        1 => Just(serde_json::json!([true])),
    ];
    let generated = (prop::option::of(value.clone()), prop::option::of(value)).prop_map(|(unified, ann)| {
        let mut spec = serde_json::json!({"ociVersion": "1.1.0", "annotations": {}, "linux": {"resources": {"unified": {}}}});
        if let Some(u) = unified {
            spec["linux"]["resources"]["unified"]["memory.oom.group"] = u;
        }
        if let Some(a) = ann {
            spec["annotations"]["io.oomguard.oom-group"] = a;
        }
        spec.to_string()
    });
    let strategy = prop_oneof![1 => generated, 2 => mutated_text(spec_seeds())];
    run("OCI spec oom_group", strategy, |text| {
        let spec: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let got = crate::oom::oom_group_for(&spec, true);
        let unified = spec.pointer("/linux/resources/unified/memory.oom.group");
        if let Some(u) = unified {
            let want = match u.as_str().map(str::trim) {
                Some("1") => Some(true),
                Some("0") => Some(false),
                _ => None,
            };
            prop_assert_eq!(got.as_ref().ok().copied(), want);
        }
        match got {
            Ok(_) => Ok(Ok(())),
            Err(e) => named(e, &["memory.oom.group", "io.oomguard.oom-group"]),
        }
    });
}

#[test]
fn fuzz_spec_grouping_id() {
    run("OCI spec grouping id", mutated_text(spec_seeds()), |spec| {
        match crate::lifecycle::start::grouping_id(spec.as_bytes(), "c1") {
            Ok(id) => {
                prop_assert!(!id.is_empty());
                Ok(Ok(()))
            }
            Err(e) => named(e, &["config.json", "annotation"]),
        }
    });
}

// ---------------------------------------------------------------------------
// The OOM report's memcg figures, and event bodies from containerd (`events`)

#[test]
fn fuzz_memcg_figures() {
    let seeds = vec![
        "33554432\n".to_string(),
        "max\n".into(),
        "9223372036854771712\n".into(),
    ];
    let strategy = prop_oneof![
        1 => any::<u64>().prop_map(|n| (format!("{n}\n"), Some(n))),
        3 => mutated_text(seeds).prop_map(|t| (t, None)),
    ];
    run("memory.current/max/peak", strategy, |(text, want)| {
        let usage = crate::oom::figures::parse_figure(&text, false);
        let limit = crate::oom::figures::parse_figure(&text, true);
        if let Some(n) = want {
            prop_assert_eq!(usage.clone(), Ok(Some(n)));
            // A limit that high is "no limit".
            prop_assert_eq!(limit.clone(), Ok((n < 1 << 62).then_some(n)));
        }
        match (usage, limit) {
            (Ok(_), Ok(_)) | (Err(_), Ok(None)) => Ok(Ok(())),
            (Err(e), _) | (_, Err(e)) => named(e, &["not a byte count"]),
        }
    });
}

/// An OOMKill with generated fields, as a newer or older oomguard (or a
/// stranger) could publish it.
fn oom_kills() -> impl Strategy<Value = crate::proto::OOMKill> {
    (
        "[ -~]{0,40}",
        prop::option::of(any::<i32>()),
        "[ -~]{0,16}",
        prop::collection::vec(prop::option::of(any::<u64>()), 4),
        prop::option::of(any::<u32>()),
        any::<bool>(),
        prop::option::of(any::<bool>()),
        any::<i32>(),
        any::<u32>(),
    )
        .prop_map(
            |(id, pid, comm, sizes, killed, group, host, source, episodes)| crate::proto::OOMKill {
                container_id: id,
                victim_pid: pid,
                victim_comm: comm,
                victim_rss_kib: sizes[0],
                memcg_usage_bytes: sizes[1],
                memcg_limit_bytes: sizes[2],
                memcg_peak_bytes: sizes[3],
                processes_killed: killed,
                group_kill: group,
                host_oom: host,
                source: protobuf::EnumOrUnknown::from_i32(source),
                episodes,
                ..Default::default()
            },
        )
}

#[test]
fn fuzz_event_bodies() {
    use crate::events_cli::decode::decode;
    use crate::events_cli::format::{json_line, text_line, Received};
    use crate::proto::OOM_KILL_TYPE_URL;
    let exit = {
        let mut e = containerd_shim_protos::events::task::TaskExit::new();
        e.container_id = "c1".into();
        e.id = "c1".into();
        e.pid = 4242;
        e.exit_status = 137;
        e.write_to_bytes().unwrap_or_default()
    };
    let seeds = vec![
        crate::proto::OOMKill {
            container_id: "c1".into(),
            victim_pid: Some(4242),
            victim_comm: "dd".into(),
            memcg_limit_bytes: Some(33554432),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap_or_default(),
        exit,
    ];
    let type_urls = prop::sample::select(vec![
        OOM_KILL_TYPE_URL,
        "containerd.events.TaskExit",
        "containerd.events.TaskOOM",
        "containerd.events.TaskCreate",
        "containerd.events.Unknown",
    ]);
    let strategy = prop_oneof![
        1 => oom_kills().prop_map(|k| (OOM_KILL_TYPE_URL, k.write_to_bytes().unwrap_or_default(), Some(k))),
        3 => (type_urls, mutated_bytes(seeds)).prop_map(|(t, b)| (t, b, None)),
    ];
    run(
        "event bodies (events)",
        strategy,
        |(type_url, bytes, sent)| {
            let got = decode(type_url, &bytes);
            if let Some(k) = sent {
                let fields = got.clone().ok().flatten().map(|d| d.fields);
                prop_assert_eq!(
                    fields.as_ref().and_then(|f| f.get("container_id")).cloned(),
                    Some(serde_json::json!(k.container_id))
                );
            }
            // Whatever came, one line each, and the JSON one parses.
            let r = Received {
                timestamp: Some((i64::MAX, -1)),
                namespace: "ns".into(),
                topic: "/t".into(),
                body: Some((type_url.to_string(), bytes)),
            };
            prop_assert!(!text_line(&r).contains('\n'));
            let json = json_line(&r);
            prop_assert!(!json.contains('\n'));
            prop_assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
            match got {
                Ok(_) => Ok(Ok(())),
                Err(e) => named(e, &["OOMKill", "TaskExit", "TaskOOM", "TaskCreate"]),
            }
        },
    );
}
