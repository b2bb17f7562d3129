//! The wire format of a gVisor sandbox's control server ("urpc"), pure.
//!
//! A stream socket; the client writes one JSON object `{"method":M,"arg":A}`,
//! the server answers with one JSON object `{"success":B,"err":S,"result":R}`;
//! no framing, the JSON value ends the message, and the next call may follow
//! on the same connection (the server serves one connection's calls in
//! order). The answer is untrusted (the sandbox runs the application):
//! [`parse_answer`] takes any bytes and never panics. The I/O is in
//! `control.rs`; facts and captures in `NOTES.md` §6 and §7.

use serde::{Deserialize, Serialize};

/// The longest answer taken; a longer one is refused, not buffered.
pub const MAX_ANSWER: usize = 64 * 1024;

/// `Cgroups.ReadControlFiles`: reads cgroup control files of the sentry's
/// cgroupfs, one after the other, in one call.
pub const READ_CONTROL_FILES: &str = "Cgroups.ReadControlFiles";
/// `containerManager.Pause`: stops every task of the sandbox (the kernel's
/// external stop, nested: each Pause needs its Resume).
pub const PAUSE: &str = "containerManager.Pause";
/// `containerManager.Resume`: ends one Pause.
pub const RESUME: &str = "containerManager.Resume";
/// `containerManager.Signal`: what `runsc kill [--all]` sends.
pub const SIGNAL: &str = "containerManager.Signal";

/// `SignalArgs.Mode` (runsc/boot/controller.go `SignalDeliveryMode`): every
/// process of the container (`runsc kill --all`).
pub const DELIVER_TO_ALL_PROCESSES: i32 = 1;

/// A cgroup control file of the sentry's cgroupfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlFile<'a> {
    pub controller: &'a str,
    pub path: &'a str,
    pub name: &'a str,
}

#[derive(Serialize)]
struct Call<'a, A: Serialize> {
    method: &'a str,
    arg: A,
}

#[derive(Serialize)]
struct ReadArg<'a> {
    file: ControlFile<'a>,
}

#[derive(Serialize)]
struct ReadArgs<'a> {
    args: Vec<ReadArg<'a>>,
}

/// runsc's `SignalArgs` (field names as Go encodes them).
#[derive(Serialize)]
#[allow(non_snake_case)]
struct SignalArgs<'a> {
    CID: &'a str,
    Signo: i32,
    PID: i32,
    Mode: i32,
}

fn encode<A: Serialize>(method: &str, arg: A) -> Vec<u8> {
    // Serialising strings and numbers cannot fail.
    serde_json::to_vec(&Call { method, arg }).unwrap_or_default()
}

/// The request reading `files`, as bytes.
pub fn read_request(files: &[ControlFile<'_>]) -> Vec<u8> {
    encode(
        READ_CONTROL_FILES,
        ReadArgs {
            args: files.iter().map(|f| ReadArg { file: f.clone() }).collect(),
        },
    )
}

/// A call whose argument Go declares as `*struct{}` (Pause, Resume).
pub fn bare_request(method: &str) -> Vec<u8> {
    encode(method, serde_json::Value::Null)
}

/// `signo` to every process of container `cid`.
pub fn signal_all_request(cid: &str, signo: i32) -> Vec<u8> {
    encode(
        SIGNAL,
        SignalArgs {
            CID: cid,
            Signo: signo,
            PID: 0,
            Mode: DELIVER_TO_ALL_PROCESSES,
        },
    )
}

#[derive(Deserialize)]
struct Answer {
    success: bool,
    #[serde(default)]
    err: String,
    #[serde(default)]
    result: serde_json::Value,
}

/// What an answer said.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `success: true` and the call's result (`null` when it has none).
    Done(serde_json::Value),
    /// `success: false` and the server's error text.
    Failed(String),
}

/// Decodes one answer from the start of `buf`. `Ok(None)`: the JSON value is
/// not complete yet (read more). Bytes after the value are refused: the
/// server answers once per call.
pub fn parse_answer(buf: &[u8]) -> Result<Option<Outcome>, String> {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Answer>();
    let answer = match it.next() {
        None => return Ok(None),
        Some(Err(e)) if e.is_eof() => return Ok(None),
        Some(Err(e)) => return Err(format!("malformed answer: {e}")),
        Some(Ok(a)) => a,
    };
    if buf[it.byte_offset()..]
        .iter()
        .any(|b| !b.is_ascii_whitespace())
    {
        return Err("bytes after the answer".into());
    }
    Ok(Some(if answer.success {
        Outcome::Done(answer.result)
    } else {
        Outcome::Failed(excerpt(&answer.err))
    }))
}

#[derive(Deserialize)]
struct Results {
    results: Vec<FileResult>,
}

#[derive(Deserialize)]
struct FileResult {
    #[serde(default)]
    value: String,
    #[serde(default)]
    is_error: bool,
}

/// One file's answer: its value, or the sentry's error text.
pub type FileAnswer = Result<String, String>;

/// The result of a `Cgroups.ReadControlFiles` call: one answer per file, in
/// order.
pub fn file_answers(result: serde_json::Value, files: usize) -> Result<Vec<FileAnswer>, String> {
    let results: Results =
        serde_json::from_value(result).map_err(|e| format!("malformed result: {e}"))?;
    if results.results.len() != files {
        return Err(format!(
            "{} answers for {files} files",
            results.results.len()
        ));
    }
    Ok(results
        .results
        .into_iter()
        .map(|r| {
            if r.is_error {
                Err(excerpt(&r.value))
            } else {
                Ok(r.value)
            }
        })
        .collect())
}

/// A byte count as `memory.usage_in_bytes` prints it.
pub fn parse_bytes(value: &str) -> Option<u64> {
    value.trim().parse().ok()
}

/// At most 200 characters of the sandbox's text, for log lines and errors.
fn excerpt(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bytes exchanged with runsc 20240729's sandbox on this machine (pod S
    // with containers A and B).
    const REQUEST: &str = r#"{"method":"Cgroups.ReadControlFiles","arg":{"args":[{"file":{"controller":"memory","path":"/B","name":"memory.usage_in_bytes"}},{"file":{"controller":"memory","path":"/","name":"memory.usage_in_bytes"}}]}}"#;
    const ANSWER: &str = r#"{"success":true,"err":"","result":{"results":[{"value":"2007040","is_error":false},{"value":"6021120","is_error":false}]}}"#;
    const ANSWER_ERRORS: &str = r#"{"success":true,"err":"","result":{"results":[{"value":"no such file or directory","is_error":true},{"value":"no such cgroup controller","is_error":true}]}}"#;
    const ANSWER_UNKNOWN_METHOD: &str = r#"{"success":false,"err":"unknown method","result":null}"#;
    const PAUSED: &str = r#"{"success":true,"err":"","result":{}}"#;
    const SIGNAL_REQUEST: &str =
        r#"{"method":"containerManager.Signal","arg":{"CID":"B","Signo":9,"PID":0,"Mode":1}}"#;

    #[test]
    fn requests_are_what_runsc_sends() {
        let files = [
            ControlFile {
                controller: "memory",
                path: "/B",
                name: "memory.usage_in_bytes",
            },
            ControlFile {
                controller: "memory",
                path: "/",
                name: "memory.usage_in_bytes",
            },
        ];
        assert_eq!(String::from_utf8(read_request(&files)).unwrap(), REQUEST);
        assert_eq!(
            String::from_utf8(bare_request(PAUSE)).unwrap(),
            r#"{"method":"containerManager.Pause","arg":null}"#
        );
        assert_eq!(
            String::from_utf8(signal_all_request("B", 9)).unwrap(),
            SIGNAL_REQUEST
        );
    }

    #[test]
    fn answers() {
        let Some(Outcome::Done(result)) = parse_answer(ANSWER.as_bytes()).unwrap() else {
            panic!("not done");
        };
        assert_eq!(
            file_answers(result, 2).unwrap(),
            vec![Ok("2007040".into()), Ok("6021120".into())]
        );
        let Some(Outcome::Done(result)) = parse_answer(ANSWER_ERRORS.as_bytes()).unwrap() else {
            panic!("not done");
        };
        let a = file_answers(result.clone(), 2).unwrap();
        assert_eq!(a[0], Err("no such file or directory".into()));
        assert!(file_answers(result, 3).is_err(), "count mismatch");
        assert_eq!(
            parse_answer(ANSWER_UNKNOWN_METHOD.as_bytes()).unwrap(),
            Some(Outcome::Failed("unknown method".into()))
        );
        assert_eq!(
            parse_answer(PAUSED.as_bytes()).unwrap(),
            Some(Outcome::Done(serde_json::json!({})))
        );
        // Incomplete: read more; never a partial result.
        for cut in [0, 1, 20, ANSWER.len() - 1] {
            assert_eq!(parse_answer(&ANSWER.as_bytes()[..cut]), Ok(None), "{cut}");
        }
        assert!(parse_answer(b"[1,2]").is_err());
        assert!(parse_answer(b"}{").is_err());
        assert!(parse_answer(format!("{PAUSED}{PAUSED}").as_bytes()).is_err());
        assert!(parse_answer(format!("{PAUSED}\n").as_bytes()).is_ok());
        assert!(file_answers(serde_json::json!({"results":[{"value":7}]}), 1).is_err());
        assert!(file_answers(serde_json::Value::Null, 1).is_err());
        assert_eq!(parse_bytes("6021120\n"), Some(6021120));
        assert_eq!(parse_bytes("-1"), None);
    }
}
