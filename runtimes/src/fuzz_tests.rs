//! Property tests with generated inputs for every parser of foreign bytes in
//! this crate: the gVisor monitoring stream (each message type, the
//! handshake, the listener's framing over a real socket), `/proc/PID/stat`,
//! and the CRI pod annotations. Generators start from real captures
//! (`gvisor/NOTES.md`) and real formats; see `fuzzing.rs`.

use proptest::prelude::*;
use protobuf::Message as _;

use crate::fuzzing::{mutated_bytes, mutated_text, named, run};
use crate::gvisor::peer::parent_pid;
use crate::gvisor::trace::{
    decode_handshake, message_type, parse_message_limited, wire, ContextData, Event, Header,
    ParseError, MAX_HANDSHAKE_SIZE, MAX_MESSAGE_SIZE,
};
use crate::spec::{pod_role, CONTAINER_TYPE, SANDBOX_ID};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Real packets captured from runsc 20221219 and 20240729 (NOTES.md §3).
fn captured(kind: u16) -> Vec<Vec<u8>> {
    let all = [
        "08000100000000000a16089adace84d7d993f51810012001320263314a027368120263311a012f22072f62696e2f736822022d63224464642069663d2f6465762f7a65726f206f663d2f6465762f6e756c6c2062733d314d20636f756e743d313b20736c65657020302e32202620776169743b20657869742033",
        "08000100000000000a1808f3e5d7a190e593f518100220023204706f64414a0273681204706f64411a012f22072f62696e2f736822022d632221736c65657020302e32202620776169743b206563686f2068693b20657869742035",
        "08000100000000001205706c61696e1a012f22072f62696e2f736822022d63225a64642069663d2f6465762f7a65726f206f663d2f6465762f6e756c6c2062733d314d20636f756e743d313b207368202d6320226b696c6c202d39205c245c24223b20736c65657020302e32202620776169743b20657869742033",
        "08000500000000000a1608ffe6d28bd7d993f51810022002320263314a026464",
        "08000500000000000a1608f1afb2f1d7d993f51810012001320263314a027368108006",
        "08000500000000000a1608bdeb9cbffdd993f51810032003320263324a0273681009",
        "08000500000000000a180886bb8f8891e593f518100220023204706f64414a02736810800a",
        "0800050000000000",
        "0800050000000000108006",
        "08000400000000000a1608e4a5e78bd7d993f51810022002320263314a026464",
        "08000400000000000a1608ee92abbffdd993f51810032003320263324a0273681009",
        "08000400000000000a1808ee81e28891e593f518100220023204706f64414a02736810800a",
        "08000400000000001009",
    ];
    all.iter()
        .map(|h| hex(h))
        .filter(|p| u16::from_le_bytes([p[2], p[3]]) == kind)
        .collect()
}

fn context() -> impl Strategy<Value = Option<wire::ContextData>> {
    prop::option::of(
        (
            any::<i64>(),
            any::<i32>(),
            any::<i32>(),
            "[a-zA-Z0-9_.-]{0,64}|.{0,8}",
            "[a-z]{0,15}|.{0,4}",
        )
            .prop_map(|(t, tid, tgid, cid, comm)| wire::ContextData {
                time_ns: t,
                thread_id: tid,
                thread_group_id: tgid,
                container_id: cid,
                process_name: comm,
                ..Default::default()
            }),
    )
}

/// Fields the shim does not read, as the sentry sends them (Start's cwd,
/// args, env, terminal; ContextData's credentials): appended raw.
fn unread_fields() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            "[ -~]{0,20}".prop_map(|s| {
                let mut v = vec![0x1a, s.len() as u8];
                v.extend_from_slice(s.as_bytes());
                v
            }),
            any::<bool>().prop_map(|b| vec![0x30, b as u8]),
            Just(vec![0x3a, 0x04, 0x08, 0x01, 0x10, 0x02]),
            any::<u32>().prop_map(|v| {
                let mut out = vec![0x2d];
                out.extend_from_slice(&v.to_le_bytes());
                out
            }),
        ],
        0..3,
    )
    .prop_map(|parts| parts.concat())
}

/// A header (possibly longer than 8 bytes, as a future sentry may send)
/// in front of `payload`.
fn packet(message_type: u16, payload: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    (0u16..24, any::<u32>()).prop_map(move |(extra, dropped)| {
        let mut p = Header {
            header_size: 8 + extra,
            message_type,
            dropped_count: dropped,
        }
        .encode()
        .to_vec();
        p.extend(vec![0xa5; usize::from(extra)]);
        p.extend_from_slice(&payload);
        p
    })
}

fn expect_context(ctx: &Option<wire::ContextData>) -> Option<ContextData> {
    ctx.as_ref().map(|c| ContextData {
        time_ns: c.time_ns,
        thread_id: c.thread_id,
        thread_group_id: c.thread_group_id,
        container_id: c.container_id.clone(),
        process_name: c.process_name.clone(),
    })
}

/// What a rejected packet's error must name.
const PACKET_WORDS: &[&str] = &["packet", "header size", "message type"];

/// The generator every message type shares: a generated well-formed
/// message (checked to decode to what was encoded), a mutated real
/// capture, any cut of either, or one past the size limit.
#[derive(Debug, Clone)]
enum Input {
    WellFormed(Vec<u8>, Event),
    Mutated(Vec<u8>),
    Cut(Vec<u8>, usize),
    Oversized(Vec<u8>, usize),
}

fn inputs(kind: u16, well_formed: BoxedStrategy<(Vec<u8>, Event)>) -> impl Strategy<Value = Input> {
    let seeds = captured(kind);
    let seeds = if seeds.is_empty() {
        captured(message_type::SENTRY_TASK_EXIT)
    } else {
        seeds
    };
    let seeds: Vec<Vec<u8>> = seeds
        .into_iter()
        .map(|mut p| {
            p[2..4].copy_from_slice(&kind.to_le_bytes());
            p
        })
        .collect();
    prop_oneof![
        3 => well_formed.clone().prop_map(|(p, e)| Input::WellFormed(p, e)),
        4 => mutated_bytes(seeds).prop_map(Input::Mutated),
        2 => (well_formed.clone(), any::<usize>()).prop_map(|((p, _), at)| {
            let at = at % (p.len() + 1);
            Input::Cut(p, at)
        }),
        1 => (well_formed, 0usize..64).prop_map(|((p, _), max)| Input::Oversized(p, max)),
    ]
}

fn check(input: Input) -> Result<Result<(), String>, TestCaseError> {
    match input {
        Input::WellFormed(p, want) => {
            let got = parse_message_limited(&p, MAX_MESSAGE_SIZE);
            prop_assert!(got.is_ok(), "well-formed packet rejected: {got:?}");
            if let Ok(m) = got {
                prop_assert_eq!(m.event, want);
            }
            Ok(Ok(()))
        }
        Input::Mutated(p) => match parse_message_limited(&p, MAX_MESSAGE_SIZE) {
            Ok(_) => Ok(Ok(())),
            Err(e) => named(e.to_string(), PACKET_WORDS),
        },
        Input::Cut(p, at) => match parse_message_limited(&p[..at], MAX_MESSAGE_SIZE) {
            Ok(_) => Ok(Ok(())),
            Err(e) => {
                if at < 8 {
                    prop_assert_eq!(&e, &ParseError::ShortHeader { len: at });
                }
                named(e.to_string(), PACKET_WORDS)
            }
        },
        Input::Oversized(p, max) => {
            let r = parse_message_limited(&p, max);
            if p.len() > max {
                prop_assert_eq!(&r, &Err(ParseError::Oversized { len: p.len(), max }));
            }
            match r {
                Ok(_) => Ok(Ok(())),
                Err(e) => named(e.to_string(), PACKET_WORDS),
            }
        }
    }
}

fn starts() -> BoxedStrategy<(Vec<u8>, Event)> {
    (context(), "[a-zA-Z0-9_.-]{0,64}", unread_fields())
        .prop_flat_map(|(ctx, id, extra)| {
            let m = wire::Start {
                context_data: ctx.clone().into(),
                id: id.clone(),
                ..Default::default()
            };
            let mut payload = m.write_to_bytes().unwrap();
            payload.extend(extra);
            let want = Event::ContainerStart(crate::gvisor::ContainerStart {
                context: expect_context(&ctx),
                id,
            });
            packet(message_type::CONTAINER_START, payload).prop_map(move |p| (p, want.clone()))
        })
        .boxed()
}

fn exits(kind: u16) -> BoxedStrategy<(Vec<u8>, Event)> {
    (context(), any::<i32>())
        .prop_flat_map(move |(ctx, status)| {
            let m = wire::Exit {
                context_data: ctx.clone().into(),
                exit_status: status,
                ..Default::default()
            };
            let payload = m.write_to_bytes().unwrap();
            let context = expect_context(&ctx);
            let want = if kind == message_type::SENTRY_TASK_EXIT {
                Event::TaskExit(crate::gvisor::TaskExit {
                    context,
                    exit_status: status,
                })
            } else {
                Event::ExitNotifyParent(crate::gvisor::ExitNotifyParent {
                    context,
                    exit_status: status,
                })
            };
            packet(kind, payload).prop_map(move |p| (p, want.clone()))
        })
        .boxed()
}

fn others() -> BoxedStrategy<(Vec<u8>, Event)> {
    (
        any::<u16>().prop_filter("decoded types", |t| ![1, 4, 5].contains(t)),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_flat_map(|(t, payload)| {
            let want = Event::Unknown {
                message_type: t,
                payload_len: payload.len(),
            };
            packet(t, payload).prop_map(move |p| (p, want.clone()))
        })
        .boxed()
}

#[test]
fn fuzz_trace_container_start() {
    run(
        "gvisor container/start (type 1)",
        inputs(message_type::CONTAINER_START, starts()),
        check,
    );
}

#[test]
fn fuzz_trace_task_exit() {
    run(
        "gvisor sentry/task_exit (type 5)",
        inputs(
            message_type::SENTRY_TASK_EXIT,
            exits(message_type::SENTRY_TASK_EXIT),
        ),
        check,
    );
}

#[test]
fn fuzz_trace_exit_notify_parent() {
    let kind = message_type::SENTRY_EXIT_NOTIFY_PARENT;
    run(
        "gvisor sentry/exit_notify_parent (type 4)",
        inputs(kind, exits(kind)),
        check,
    );
}

#[test]
fn fuzz_trace_other_types_and_headers() {
    run("gvisor other message types", inputs(2, others()), check);
}

#[test]
fn fuzz_trace_handshake() {
    let seeds = vec![
        hex("0801"),
        hex("0802"),
        hex("08ac02"),
        vec![],
        hex("10051a01780802"),
    ];
    let strategy = prop_oneof![
        3 => mutated_bytes(seeds),
        1 => any::<u32>().prop_map(crate::gvisor::trace::encode_handshake),
        1 => (MAX_HANDSHAKE_SIZE - 2..MAX_HANDSHAKE_SIZE + 4).prop_map(|n| vec![0x20; n]),
    ];
    run("gvisor handshake", strategy, |p| {
        let r = decode_handshake(&p);
        if p.len() > MAX_HANDSHAKE_SIZE {
            prop_assert!(matches!(r, Err(ParseError::Oversized { .. })), "{r:?}");
        }
        match r {
            Ok(_) => Ok(Ok(())),
            Err(e) => named(e.to_string(), &["handshake", "exceeds"]),
        }
    });
}

/// The listener's framing over a real `SOCK_SEQPACKET` socket pair: a
/// handshake, then packets of any size (some past the stream's limit). Each
/// packet yields exactly one result, equal to what the pure parser says,
/// and the stream stays in step until EOF.
#[test]
fn fuzz_listener_framing() {
    use std::os::fd::AsRawFd;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let packet = prop_oneof![
        3 => starts().prop_map(|(p, _)| p),
        3 => exits(message_type::SENTRY_TASK_EXIT).prop_map(|(p, _)| p),
        2 => mutated_bytes(captured(message_type::SENTRY_EXIT_NOTIFY_PARENT)),
        1 => prop::collection::vec(any::<u8>(), 0..600),
    ];
    let handshake = prop_oneof![
        4 => Just(vec![0x08, 0x01]),
        1 => mutated_bytes(vec![vec![0x08, 0x01]]),
    ];
    let strategy = (handshake, prop::collection::vec(packet, 0..6), 16usize..512);
    run("gvisor listener framing", strategy, |(hs, packets, max)| {
        use nix::sys::socket::{socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let send = |p: &[u8]| {
            nix::sys::socket::send(theirs.as_raw_fd(), p, MsgFlags::MSG_NOSIGNAL).unwrap()
        };
        send(&hs);
        for p in &packets {
            send(p);
        }
        // EOF after the packets; our handshake answer can still arrive.
        nix::sys::socket::shutdown(theirs.as_raw_fd(), nix::sys::socket::Shutdown::Write).unwrap();
        runtime
            .block_on(async {
                let mut stream = crate::gvisor::TraceStream::from_fd(ours).unwrap();
                stream.set_max_message(max);
                let max = max.max(8);
                let version = decode_handshake(&hs);
                let accepted = matches!(version, Ok(v) if v >= 1) && !hs.is_empty();
                if !accepted {
                    let r = stream.recv().await;
                    prop_assert!(matches!(&r, Err(e) if e.is_fatal()), "{hs:?}: {r:?}");
                    return named(
                        r.unwrap_err().to_string(),
                        &["handshake", "version", "closed"],
                    );
                }
                let mut verdict = Ok(());
                for p in &packets {
                    if p.is_empty() {
                        // A zero-length packet reads as EOF (SOCK_SEQPACKET cannot
                        // tell them apart; the sentry never sends one).
                        break;
                    }
                    let got = stream.recv().await;
                    let want = parse_message_limited(p, max);
                    match (&got, &want) {
                        (Ok(Some(g)), Ok(w)) => prop_assert_eq!(g, w),
                        (Err(e), Err(w)) => {
                            prop_assert!(!e.is_fatal(), "{e}");
                            prop_assert_eq!(e.to_string(), format!("bad trace packet: {w}"));
                            verdict = Err(e.to_string());
                        }
                        _ => prop_assert!(false, "stream {got:?} vs parser {want:?} for {p:?}"),
                    }
                }
                let end = stream.recv().await;
                prop_assert!(matches!(end, Ok(None)), "{end:?}");
                Ok(verdict)
            })
            .inspect(|_| drop(theirs))
    });
}

#[test]
fn fuzz_proc_stat_parent() {
    let real = std::fs::read_to_string("/proc/self/stat").unwrap();
    let seeds = vec![
        real,
        "2077 (runsc) S 2074 2069 1949 0 -1 4194560 1010 0 0 0 3 2 0 0 20 0 9 0 283110".into(),
        "7 (a) b) (c) R 1 7 7 0".into(),
    ];
    let generated = ("[ -~]{0,16}", "[RSDZTtXxKWPI]", 0i32..i32::MAX)
        .prop_map(|(comm, st, ppid)| (format!("42 ({comm}) {st} {ppid} 42 42 0 -1"), ppid));
    let strategy = prop_oneof![
        1 => generated.prop_map(|(l, p)| (l, Some(p))),
        3 => mutated_text(seeds).prop_map(|l| (l, None)),
    ];
    run("/proc/PID/stat parent pid", strategy, |(line, want)| {
        let r = parent_pid(&line);
        if let Some(want) = want {
            prop_assert_eq!(&r, &Ok(want));
        }
        match r {
            Ok(p) => {
                prop_assert!(p >= 0);
                Ok(Ok(()))
            }
            Err(e) => named(e, &["')'", "state", "parent pid"]),
        }
    });
}

/// Spec JSON: real shapes (a CRI sandbox and app container, a plain ctr
/// container) mutated as text, and generated annotation maps whose
/// values are of any JSON type.
#[test]
fn fuzz_pod_annotations() {
    let seeds: Vec<String> = vec![
        r#"{"ociVersion":"1.1.0","process":{"args":["/pause"]},"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"3c46ac3436faeb13f5d81f1f1943b1b38357b5b6d27b3cbd11068e3be6167b0d","io.kubernetes.cri.sandbox-name":"p"}}"#.into(),
        r#"{"ociVersion":"1.1.0","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"gpod","io.kubernetes.cri.container-name":"app"}}"#.into(),
        r#"{"ociVersion":"1.0.2-dev","process":{"terminal":false,"args":["/bin/sh"]},"root":{"path":"rootfs"},"linux":{"resources":{"memory":{"limit":33554432}}}}"#.into(),
    ];
    let value = prop_oneof![
        4 => prop::sample::select(vec!["sandbox", "container", "", "pod", "gpod", "../x", "a\nb"]).prop_map(|s| serde_json::Value::String(s.into())),
        1 => "[a-z0-9]{1,70}".prop_map(serde_json::Value::String),
        1 => any::<i64>().prop_map(|n| serde_json::json!(n)),
        1 => Just(serde_json::Value::Null),
        1 => Just(serde_json::json!({"a": []})),
    ];
    let key = prop::sample::select(vec![
        CONTAINER_TYPE,
        SANDBOX_ID,
        "io.kubernetes.cri.sandbox-name",
        "x",
    ]);
    let generated = prop::collection::btree_map(key, value, 0..4)
        .prop_map(|m| serde_json::json!({"ociVersion": "1.1.0", "annotations": m}).to_string());
    let strategy = prop_oneof![1 => generated, 2 => mutated_text(seeds)];
    run(
        "OCI spec CRI annotations",
        strategy,
        |spec| match pod_role(spec.as_bytes()) {
            Ok(role) => {
                let v: serde_json::Value = serde_json::from_str(&spec).unwrap();
                let ann = |k: &str| v.pointer("/annotations").and_then(|a| a.get(k)).cloned();
                prop_assert_eq!(
                    role.joins,
                    ann(CONTAINER_TYPE) == Some(serde_json::json!("container"))
                );
                prop_assert_eq!(role.sandbox.map(serde_json::Value::String), ann(SANDBOX_ID));
                Ok(Ok(()))
            }
            Err(e) => named(e, &["config.json", "annotation"]),
        },
    );
}

/// Answers of the sandbox's control server (untrusted: the sandbox runs the
/// application): real answers of runsc 20240729 mutated as text, and
/// generated `Cgroups.ReadControlFiles` results whose values are of any
/// shape. An answer is a reading, "read more", or an error naming the
/// answer, the result or the file; never a panic, never a container's
/// figure taken from another file.
#[test]
fn fuzz_control_answers() {
    use crate::gvisor::urpc::{file_answers, parse_answer, Outcome};
    use crate::gvisor::usage::usage_from_answers;
    let seeds: Vec<String> = vec![
        r#"{"success":true,"err":"","result":{"results":[{"value":"6021120","is_error":false},{"value":"2007040","is_error":false}]}}"#.into(),
        r#"{"success":true,"err":"","result":{"results":[{"value":"6021120","is_error":false},{"value":"no such file or directory","is_error":true}]}}"#.into(),
        r#"{"success":false,"err":"unknown method","result":null}"#.into(),
        r#"{"success":true,"err":"","result":{}}"#.into(),
    ];
    let value = prop_oneof![
        3 => (0u64..1 << 40).prop_map(|n| n.to_string()),
        1 => "[ -~]{0,12}",
        1 => Just("-1".to_string()),
        1 => Just("18446744073709551616".to_string()),
    ];
    let generated = prop::collection::vec((value, any::<bool>()), 0..4).prop_map(|rs| {
        let results: Vec<serde_json::Value> = rs
            .into_iter()
            .map(|(v, e)| serde_json::json!({"value": v, "is_error": e}))
            .collect();
        serde_json::json!({"success": true, "err": "", "result": {"results": results}}).to_string()
    });
    let strategy = prop_oneof![1 => generated, 2 => mutated_text(seeds)];
    let cgroups = vec!["/a".to_string()];
    run("sandbox control server answers", strategy, |text| {
        let outcome = match parse_answer(text.as_bytes()) {
            Ok(None) => return Ok(Ok(())),
            Ok(Some(o)) => o,
            Err(e) => return named(e, &["answer"]),
        };
        let result = match outcome {
            Outcome::Failed(e) => {
                prop_assert!(e.chars().count() <= 200);
                return Ok(Ok(()));
            }
            Outcome::Done(r) => r,
        };
        let answers = match file_answers(result, 2) {
            Ok(a) => a,
            Err(e) => return named(e, &["result", "answers"]),
        };
        prop_assert_eq!(answers.len(), 2);
        match usage_from_answers(&cgroups, answers.clone()) {
            Ok(u) => {
                prop_assert_eq!(u.containers.len(), 1);
                let root: u64 = answers[0].as_ref().unwrap().trim().parse().unwrap();
                prop_assert!(u.sandbox >= root);
                match (&answers[1], &u.containers[0]) {
                    (Ok(v), Ok(n)) => prop_assert_eq!(v.trim().parse::<u64>().ok(), Some(*n)),
                    (_, Err(e)) => prop_assert!(e.starts_with("/a/memory.usage_in_bytes: ")),
                    (Err(_), Ok(_)) => prop_assert!(false, "an error read as a figure"),
                }
                Ok(Ok(()))
            }
            Err(e) => named(e, &["/memory.usage_in_bytes"]),
        }
    });
}
