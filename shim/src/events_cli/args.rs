//! The command line of `events`.

use std::ffi::OsString;
use std::path::PathBuf;

pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub address: PathBuf,
    /// Only this namespace's events (all namespaces when `None`).
    pub namespace: Option<String>,
    pub json: bool,
}

#[derive(Debug)]
pub enum Parsed {
    Run(Options),
    Help,
}

pub fn usage() -> String {
    format!(
        "usage: containerd-shim-oomguard-v2 events [--address SOCK] [--namespace NS] [--json]\n\n\
         Prints containerd's task events (/tasks/*: oom, exit, create, start, ...) and oomguard's\n\
         own (/oomguard/*: an OOM kill's victim, memory and source) as they happen, one line each.\n\
         `ctr events` skips oomguard's events (it cannot decode their type).\n\n\
         \x20 --address SOCK    containerd's socket (default {DEFAULT_ADDRESS})\n\
         \x20 --namespace NS    only the events of namespace NS (default: every namespace)\n\
         \x20 --json            one JSON object a line: timestamp, namespace, topic, type, event\n\n\
         It keeps listening through a containerd restart and subscribes again once it is back\n\
         (oomguard's shims hold what happened meanwhile and replay it then).\n"
    )
}

pub fn parse(args: &[OsString]) -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut address = PathBuf::from(DEFAULT_ADDRESS);
    let mut namespace = None;
    let mut json = false;
    let mut parser = lexopt::Parser::from_args(args.iter().cloned());
    let err = |e: lexopt::Error| e.to_string();
    while let Some(arg) = parser.next().map_err(err)? {
        match arg {
            Short('a') | Long("address") => address = PathBuf::from(parser.value().map_err(err)?),
            Short('n') | Long("namespace") => {
                let ns = parser.value().map_err(err)?.to_string_lossy().into_owned();
                check_namespace(&ns)?;
                namespace = Some(ns);
            }
            Long("json") => json = true,
            Short('h') | Long("help") => return Ok(Parsed::Help),
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(Parsed::Run(Options {
        address,
        namespace,
        json,
    }))
}

/// containerd's namespace rule (`identifiers.Validate`): letters and digits,
/// with `.`, `_` or `-` between them, at most 76 characters. Checked here
/// because the namespace goes into a subscription filter.
fn check_namespace(ns: &str) -> Result<(), String> {
    let parts_ok = ns
        .split(['.', '_', '-'])
        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()));
    if ns.is_empty() || ns.len() > 76 || !parts_ok {
        return Err(format!(
            "--namespace {:?} is not a containerd namespace (letters and digits, joined by . _ -)",
            ns.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match parse(&args)? {
            Parsed::Run(o) => Ok(o),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn defaults_and_options() {
        let o = run(&[]).unwrap();
        assert_eq!(o.address, PathBuf::from(DEFAULT_ADDRESS));
        assert_eq!((o.namespace, o.json), (None, false));
        let o = run(&["--address", "/x/c.sock", "--namespace=k8s.io", "--json"]).unwrap();
        assert_eq!(o.address, PathBuf::from("/x/c.sock"));
        assert_eq!(o.namespace.as_deref(), Some("k8s.io"));
        assert!(o.json);
        let o = run(&["-a", "/y.sock", "-n", "moby"]).unwrap();
        assert_eq!(o.namespace.as_deref(), Some("moby"));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert!(run(&["--address"]).is_err());
        assert!(run(&["--bogus"]).is_err());
        assert!(run(&["stray"]).is_err());
        for ns in ["", "a,topic~=x", "-a", "a..b", "a\"", &"x".repeat(77)] {
            let err = run(&["--namespace", ns]).unwrap_err();
            assert!(
                err.contains("--namespace") || err.contains("missing"),
                "{ns}: {err}"
            );
        }
        assert_eq!(run(&["--help"]).unwrap_err(), "help");
    }
}
