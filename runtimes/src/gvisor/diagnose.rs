//! What runsc's refusals to create a sandbox mean, and which key of the
//! oomguard TOML (`[runsc_config]`, each key a runsc flag) changes it. Pure:
//! runsc's own messages in, an explanation out (`None` for anything else).
//! The messages are runsc 20221219's and 20240729's (seen on this machine).

/// The first runsc release that tells a pod's network namespace from the
/// host's on kernels that show `/proc/sys/net/core/rmem_default` in every
/// namespace (gVisor commit 19f6b0c07, 2024-07-31: it tests `dev_weight`).
pub const NETNS_CHECK_FIXED_IN: u32 = 20240807;

/// An explanation: the `[runsc_config]` key to change and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub key: String,
    pub advice: String,
}

/// The message runsc gives when it takes a pod's network namespace for the
/// host's.
pub const ROOT_NETNS: &str = "cannot run with network enabled in root network namespace";

pub fn explain(message: &str) -> Option<Explanation> {
    let ex = |key: &str, advice: String| {
        Some(Explanation {
            key: key.to_string(),
            advice,
        })
    };
    if message.contains(ROOT_NETNS) {
        return ex(
            "network",
            format!(
                "runsc releases before {NETNS_CHECK_FIXED_IN} take every pod's network namespace for the host's \
                 on kernels that show /proc/sys/net/core/rmem_default in every namespace (this one does), so \
                 gVisor's own network stack (network = \"sandbox\", the default) cannot start: set network = \
                 \"host\" (the host kernel's stack, in the pod's own namespace) or upgrade runsc to \
                 release-{NETNS_CHECK_FIXED_IN} or later"
            ),
        );
    }
    if let Some(platform) = after(message, "unknown platform: ") {
        return ex(
            "platform",
            format!(
                "this runsc has no platform {platform:?} (`runsc help platforms` lists its own; systrap \
                 is gVisor's default since 2023, runsc 20221219 has ptrace and kvm only): set platform \
                 to one of them, or leave it out for runsc's default"
            ),
        );
    }
    // Go's flag package: `invalid value "V" for flag -NAME: REASON`.
    if let Some(at) = message.find("invalid value ") {
        if let Some(i) = message[at..].find(" for flag -") {
            let line = message[at + i + " for flag -".len()..]
                .lines()
                .next()
                .unwrap_or_default();
            let (name, reason) = line.split_once(": ").unwrap_or((line, ""));
            let allowed = match name {
                "network" => " (sandbox, host or none)",
                "platform" => " (`runsc help platforms`)",
                _ => "",
            };
            if !name.is_empty() {
                return ex(
                    name,
                    format!("runsc refuses its value ({reason}): give one it takes{allowed}"),
                );
            }
        }
    }
    if let Some(name) = after(message, "flag provided but not defined: -") {
        return ex(
            name,
            "this runsc has no such flag (`runsc flags` lists them): remove or rename the key"
                .into(),
        );
    }
    None
}

/// The flag names `runsc flags` lists (its lines `  -NAME [type]`).
pub fn flag_names(runsc_flags: &str) -> std::collections::BTreeSet<String> {
    runsc_flags
        .lines()
        .filter_map(|l| l.strip_prefix("  -"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// The platforms `runsc help platforms` lists, one a line.
pub fn platform_names(help_platforms: &str) -> Vec<String> {
    help_platforms
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_string)
        .collect()
}

/// The network modes runsc takes.
pub const NETWORKS: [&str; 3] = ["sandbox", "host", "none"];

/// Checks global flags (`--key=value`, from `[runsc_config]`) against what
/// this runsc has: its flags and platforms. runsc reports a bad flag only on
/// its stderr, which a sandbox's create hands to the container, so the shim
/// would have no message to show; checked first, the error names the key.
pub fn check_flags(
    args: &[String],
    flags: &std::collections::BTreeSet<String>,
    platforms: &[String],
) -> Result<(), Explanation> {
    for arg in args {
        let Some((key, value)) = arg.strip_prefix("--").and_then(|a| a.split_once('=')) else {
            continue;
        };
        if !flags.contains(key) {
            return Err(Explanation {
                key: key.to_string(),
                advice: "this runsc has no such flag (`runsc flags` lists them): remove or rename the key"
                    .into(),
            });
        }
        if key == "platform" && !platforms.is_empty() && !platforms.iter().any(|p| p == value) {
            return Err(Explanation {
                key: key.to_string(),
                advice: format!(
                    "this runsc has no platform {value:?} (its platforms: {}; systrap is gVisor's \
                     default since 2023): set one of them, or leave platform out",
                    platforms.join(", ")
                ),
            });
        }
        if key == "network" && !NETWORKS.contains(&value) {
            return Err(Explanation {
                key: key.to_string(),
                advice: format!(
                    "runsc takes no network {value:?}: give one it takes (sandbox, host or none)"
                ),
            });
        }
    }
    Ok(())
}

/// The word after `marker` in `message` (up to a space or quote).
fn after<'a>(message: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &message[message.find(marker)? + marker.len()..];
    let word = rest
        .split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .next()
        .unwrap_or_default();
    (!word.is_empty()).then_some(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_this_machine() {
        // runsc 20240729 in a CRI pod (DESIGN.md §4), as containerd shows it.
        let e = explain("runsc create 0a1b: exited 128: creating container: cannot create sandbox: cannot setup network: creating interfaces from net namespace \"/proc/55/ns/net\": cannot run with network enabled in root network namespace").unwrap();
        assert_eq!(e.key, "network");
        assert!(e.advice.contains("network = \"host\""), "{}", e.advice);
        assert!(e.advice.contains("release-20240807"), "{}", e.advice);

        // runsc 20221219 asked for systrap.
        let e = explain("W1204 17:38:16.570749 32568 util.go:64] FATAL ERROR: unknown platform: systrap\nunknown platform: systrap").unwrap();
        assert_eq!(e.key, "platform");
        assert!(e.advice.contains("\"systrap\""), "{}", e.advice);

        let e = explain("invalid value \"bogus\" for flag -network: invalid network type \"bogus\"\nUsage: runsc <flags> <subcommand> <subcommand args>").unwrap();
        assert_eq!(e.key, "network");
        assert!(
            e.advice.contains("(invalid network type \"bogus\")"),
            "{}",
            e.advice
        );
        assert!(e.advice.contains("sandbox, host or none"), "{}", e.advice);

        let e = explain("flag provided but not defined: -bogusflag\nUsage: runsc <flags>").unwrap();
        assert_eq!(e.key, "bogusflag");

        assert_eq!(
            explain("creating container: no such file or directory"),
            None
        );
        assert_eq!(explain("unknown platform: "), None);
    }

    /// `runsc flags` and `runsc help platforms` of runsc 20221219 and
    /// 20240729 (excerpts, as printed).
    #[test]
    fn flags_against_this_runsc() {
        let flags = flag_names(
            "  -EXPERIMENTAL-xdp value\n    \twhether and how to use XDP.\n  -network value\n    \tspecifies which network to use: sandbox (default), host, none.\n  -platform string\n    \tspecifies which platform to use: ptrace (default), kvm. (default \"ptrace\")\n  -debug\n    \tenable debug logging.\n",
        );
        assert_eq!(
            flags.iter().map(String::as_str).collect::<Vec<_>>(),
            ["EXPERIMENTAL-xdp", "debug", "network", "platform"]
        );
        let old = platform_names("ptrace\nkvm\n");
        let new = platform_names("ptrace\nkvm\nsystrap\n");
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_flags(
                &args(&["--network=host", "--platform=systrap"]),
                &flags,
                &new
            ),
            Ok(())
        );
        let e = check_flags(&args(&["--platform=systrap"]), &flags, &old).unwrap_err();
        assert_eq!(e.key, "platform");
        assert!(e.advice.contains("ptrace, kvm"), "{}", e.advice);
        let e = check_flags(&args(&["--no_such_flag=1"]), &flags, &new).unwrap_err();
        assert_eq!(e.key, "no_such_flag");
        let e = check_flags(&args(&["--network=bogus"]), &flags, &new).unwrap_err();
        assert!(e.advice.contains("sandbox, host or none"), "{}", e.advice);
        // Not a `--key=value` flag: not this check's business.
        assert_eq!(check_flags(&args(&["--debug"]), &flags, &new), Ok(()));
    }
}
