//! Shared by the property ("fuzz") tests of both crates: how many inputs to
//! generate, structure-aware mutations of real samples, and a tally that
//! says how many inputs each parser saw and what it rejected.
//!
//! proptest (stable Rust, runs inside `cargo test`) rather than
//! cargo-fuzz/libFuzzer (nightly, a separate harness): strategies compose
//! into generators that know the formats (records, lines, tokens, protobuf
//! messages), and a failure is shrunk to a minimal input before it is
//! reported. `OOMGUARD_FUZZ_CASES` sets the inputs per parser (`make fuzz`:
//! 100000; `make test`: the default below).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};

/// Inputs per parser in `make test` (a few seconds each in a debug build).
pub const DEFAULT_CASES: u32 = 3000;

pub fn cases() -> u32 {
    std::env::var("OOMGUARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Runs `check` on `cases()` inputs from `strategy`. `check` returns the
/// parser's verdict: `Ok(())` accepted, `Err(reason)` rejected with a
/// reason (counted by kind); a property violated inside it is a panic or
/// `prop_assert!`, which proptest shrinks and this reports.
pub fn run<S>(
    name: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<Result<(), String>, TestCaseError>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let tally = Tally::new(name);
    let config = Config {
        cases: cases(),
        // Failures are turned into named unit tests, not files in src/.
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |input| {
        let verdict = check(input)?;
        tally.count(verdict);
        Ok(())
    });
    match result {
        Ok(()) => tally.report(),
        Err(TestError::Fail(why, input)) => {
            panic!("fuzz {name}: {why}\nminimal failing input: {input:#?}")
        }
        Err(TestError::Abort(why)) => panic!("fuzz {name}: aborted: {why}"),
    }
}

/// Inputs seen and rejections by kind.
struct Tally {
    name: String,
    start: Instant,
    counts: Mutex<(u64, u64, BTreeMap<String, u64>)>,
}

impl Tally {
    fn new(name: &str) -> Self {
        Tally {
            name: name.to_string(),
            start: Instant::now(),
            counts: Mutex::new((0, 0, BTreeMap::new())),
        }
    }

    fn count(&self, verdict: Result<(), String>) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match verdict {
            Ok(()) => c.0 += 1,
            Err(reason) => {
                c.1 += 1;
                *c.2.entry(kind(&reason)).or_default() += 1;
            }
        }
    }

    fn report(&self) {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (accepted, rejected, kinds) = &*c;
        let mut top: Vec<(&String, &u64)> = kinds.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = top
            .iter()
            .take(4)
            .map(|(k, n)| format!("{n}× {k}"))
            .collect();
        eprintln!(
            "fuzz {}: {} inputs in {:.1} s: {accepted} accepted, {rejected} rejected, 0 panics [{}]",
            self.name,
            accepted + rejected,
            self.start.elapsed().as_secs_f64(),
            top.join("; ")
        );
        assert!(
            accepted + rejected >= u64::from(cases()),
            "fuzz {}: only {} inputs",
            self.name,
            accepted + rejected
        );
    }
}

/// A rejection's kind: its words without numbers and quoted parts.
fn kind(reason: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in reason.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '0'..='9' => {
                if !out.ends_with('N') {
                    out.push('N')
                }
            }
            _ => out.push(c),
        }
        if out.len() >= 60 {
            break;
        }
    }
    out
}

/// Asserts that an error message says what was wrong: not empty, and it
/// holds one of `names` (the field, line or file words its parser uses).
pub fn named(reason: String, names: &[&str]) -> Result<Result<(), String>, TestCaseError> {
    prop_assert!(
        names.iter().any(|n| reason.contains(n)),
        "error {reason:?} names none of {names:?}"
    );
    Ok(Err(reason))
}

// ---------------------------------------------------------------------------
// Byte mutations

/// One edit of a byte string; positions wrap around its length.
#[derive(Debug, Clone)]
pub enum Edit {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Interesting { at: usize, value: Vec<u8> },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
    Duplicate { at: usize, len: usize, to: usize },
    Truncate { at: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    let interesting = prop::sample::select(vec![
        vec![0x00],
        vec![0xff],
        vec![0x7f],
        vec![0x80],
        vec![0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![0xff; 10],
        vec![0x80; 11],
        vec![0xff, 0xff],
        vec![0x00, 0x00, 0x00, 0x80],
        vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    ]);
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set { at, byte }),
        (any::<usize>(), interesting).prop_map(|(at, value)| Edit::Interesting { at, value }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Edit::Remove { at, len }),
        (any::<usize>(), 1usize..32, any::<usize>()).prop_map(|(at, len, to)| Edit::Duplicate {
            at,
            len,
            to
        }),
        any::<usize>().prop_map(|at| Edit::Truncate { at }),
    ]
}

/// Applies `edits` to `data`.
pub fn apply(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = data.len();
        let pos = |at: usize| if n == 0 { 0 } else { at % n };
        match e {
            Edit::Flip { at, bit } if n > 0 => data[pos(*at)] ^= 1 << bit,
            Edit::Set { at, byte } if n > 0 => data[pos(*at)] = *byte,
            Edit::Interesting { at, value } => {
                let at = pos(*at);
                for (i, b) in value.iter().enumerate() {
                    match data.get_mut(at + i) {
                        Some(slot) => *slot = *b,
                        None => data.push(*b),
                    }
                }
            }
            Edit::Insert { at, bytes } => {
                let at = if n == 0 { 0 } else { at % (n + 1) };
                data.splice(at..at, bytes.iter().copied());
            }
            Edit::Remove { at, len } if n > 0 => {
                let at = pos(*at);
                data.drain(at..(at + len).min(n));
            }
            Edit::Duplicate { at, len, to } if n > 0 => {
                let at = pos(*at);
                let part: Vec<u8> = data[at..(at + len).min(n)].to_vec();
                let to = to % (n + 1);
                data.splice(to..to, part);
            }
            Edit::Truncate { at } => data.truncate(if n == 0 { 0 } else { at % (n + 1) }),
            _ => {}
        }
    }
    data
}

/// A real sample with up to 8 byte edits.
pub fn mutated_bytes(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(edit(), 0..8),
    )
        .prop_map(|(seed, edits)| apply(seed, &edits))
}

// ---------------------------------------------------------------------------
// Text mutations: tokens (runs of letters/digits, and single separators)

/// One edit of a text's tokens; indexes wrap around the token count.
#[derive(Debug, Clone)]
pub enum TextEdit {
    /// Replace a token with an odd value (numbers at their limits, empty,
    /// separators, non-ASCII, control characters).
    Replace {
        at: usize,
        with: String,
    },
    Remove {
        at: usize,
    },
    Duplicate {
        at: usize,
    },
    Swap {
        a: usize,
        b: usize,
    },
    /// Lines: drop one, repeat one, or cut the text after one.
    DropLine {
        at: usize,
    },
    RepeatLine {
        at: usize,
    },
    CutAfterLine {
        at: usize,
    },
    /// Byte-level edits, then read back lossily as UTF-8.
    Bytes(Vec<Edit>),
}

fn odd_token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "0",
            "1",
            "-1",
            "-0",
            "+1",
            "2147483647",
            "2147483648",
            "-2147483649",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999",
            "1e3",
            "0x10",
            "max",
            " ",
            "  ",
            "\t",
            "\n",
            "\r\n",
            ",",
            ";",
            ":",
            "=",
            "(",
            ")",
            ") ",
            "/",
            "//",
            "\\",
            "\\040",
            "\"",
            "'",
            "kB",
            "\u{0}",
            "\u{7f}",
            "é",
            "\u{202e}",
            "\u{fffd}",
            "💥",
            "null",
            "true",
            "[",
            "]",
            "{",
            "}",
            " - ",
        ])
        .prop_map(str::to_string),
        "[a-zA-Z0-9_/.:,=() -]{1,12}",
        ".{0,6}",
    ]
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    prop_oneof![
        4 => (any::<usize>(), odd_token()).prop_map(|(at, with)| TextEdit::Replace { at, with }),
        1 => any::<usize>().prop_map(|at| TextEdit::Remove { at }),
        1 => any::<usize>().prop_map(|at| TextEdit::Duplicate { at }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| TextEdit::Swap { a, b }),
        1 => any::<usize>().prop_map(|at| TextEdit::DropLine { at }),
        1 => any::<usize>().prop_map(|at| TextEdit::RepeatLine { at }),
        1 => any::<usize>().prop_map(|at| TextEdit::CutAfterLine { at }),
        1 => prop::collection::vec(edit(), 1..4).prop_map(TextEdit::Bytes),
    ]
}

fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Applies `edits` to `text`.
pub fn apply_text(text: &str, edits: &[TextEdit]) -> String {
    let mut toks = tokens(text);
    for e in edits {
        let n = toks.len();
        let at = |i: usize| i % n.max(1);
        match e {
            TextEdit::Replace { at: i, with } if n > 0 => toks[at(*i)] = with.clone(),
            TextEdit::Remove { at: i } if n > 0 => {
                toks.remove(at(*i));
            }
            TextEdit::Duplicate { at: i } if n > 0 => {
                let t = toks[at(*i)].clone();
                toks.insert(at(*i), t);
            }
            TextEdit::Swap { a, b } if n > 0 => toks.swap(at(*a), at(*b)),
            TextEdit::DropLine { at: i }
            | TextEdit::RepeatLine { at: i }
            | TextEdit::CutAfterLine { at: i } => {
                let joined = toks.concat();
                let mut lines: Vec<&str> = joined.split_inclusive('\n').collect();
                if lines.is_empty() {
                    continue;
                }
                let l = i % lines.len();
                match e {
                    TextEdit::DropLine { .. } => {
                        lines.remove(l);
                    }
                    TextEdit::RepeatLine { .. } => lines.insert(l, lines[l]),
                    _ => lines.truncate(l + 1),
                }
                toks = tokens(&lines.concat());
            }
            TextEdit::Bytes(edits) => {
                let bytes = apply(toks.concat().into_bytes(), edits);
                toks = tokens(&String::from_utf8_lossy(&bytes));
            }
            _ => {}
        }
    }
    toks.concat()
}

/// A real sample with up to 6 token/line edits.
pub fn mutated_text(seeds: Vec<String>) -> impl Strategy<Value = String> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(text_edit(), 0..6),
    )
        .prop_map(|(seed, edits)| apply_text(&seed, &edits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_stay_in_bounds() {
        assert_eq!(
            apply(vec![], &[Edit::Remove { at: 3, len: 9 }]),
            Vec::<u8>::new()
        );
        assert_eq!(
            apply(
                vec![1, 2, 3],
                &[Edit::Duplicate {
                    at: 1,
                    len: 9,
                    to: 9
                }]
            ),
            vec![1, 2, 3, 2, 3]
        );
        assert_eq!(apply(vec![1, 2, 3], &[Edit::Truncate { at: 5 }]), vec![1]);
        assert_eq!(
            apply_text("a b\nc d\n", &[TextEdit::DropLine { at: 0 }]),
            "c d\n"
        );
        assert_eq!(
            apply_text(
                "oom_kill 2\n",
                &[TextEdit::Replace {
                    at: 2,
                    with: "-1".into()
                }]
            ),
            "oom_kill -1\n"
        );
        assert_eq!(
            kind("line 3: \"x\" is not KEY VALUE"),
            "line N:  is not KEY VALUE"
        );
    }
}
