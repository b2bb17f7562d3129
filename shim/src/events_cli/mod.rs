//! `containerd-shim-oomguard-v2 events`: an operator's view of a node's OOM
//! kills. Subscribes to containerd's Events service (gRPC, through
//! containerd-client) and prints the task events and oomguard's own as they
//! come. `ctr events` cannot show oomguard's typed events: it skips any
//! type it has not compiled in.
//!
//! Only this command starts the gRPC client; the serving shim never does.

mod args;
pub(crate) mod decode;
pub(crate) mod format;

use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use containerd_client::services::v1::SubscribeRequest;
use containerd_client::tonic;
use containerd_client::types::Envelope;

use args::{Options, Parsed};
use format::Received;

const NAME: &str = "containerd-shim-oomguard-v2 events";

/// The longest pause between two attempts while containerd is away.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Runs `events` when that is the first argument and returns the exit code;
/// `None` for every other command line.
pub fn dispatch(args: &[OsString]) -> Option<i32> {
    if args.get(1).and_then(|a| a.to_str()) != Some("events") {
        return None;
    }
    let opts = match args::parse(args.get(2..).unwrap_or_default()) {
        Ok(Parsed::Run(opts)) => opts,
        Ok(Parsed::Help) => {
            print!("{}", args::usage());
            return Some(0);
        }
        Err(e) => {
            eprintln!("{NAME}: {e}\n\n{}", args::usage());
            return Some(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{NAME}: cannot start: {e}");
            return Some(1);
        }
    };
    Some(match runtime.block_on(run(&opts)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            1
        }
    })
}

/// The subscription's filters (any one matches): task and oomguard topics,
/// of one namespace when asked.
fn filters(namespace: Option<&str>) -> Vec<String> {
    ["^/tasks/", "^/oomguard/"]
        .iter()
        .map(|topic| match namespace {
            Some(ns) => format!("namespace=={ns},topic~=\"{topic}\""),
            None => format!("topic~=\"{topic}\""),
        })
        .collect()
}

/// Why the stream stopped.
enum Stopped {
    /// containerd could not be reached, or went away.
    Away(String),
    /// Nobody reads what this prints any more.
    OutputClosed,
    /// containerd refused the subscription: asking again cannot help.
    Refused(String),
}

/// Listens until the output is closed. The first connection must work (a
/// wrong socket is an error at once); after that, containerd going away
/// (restart, upgrade) is waited out and the subscription made again.
async fn run(opts: &Options) -> Result<(), String> {
    let mut connected_once = false;
    let mut backoff = FIRST_BACKOFF;
    let mut away_since: Option<std::time::Instant> = None;
    loop {
        let stopped = match containerd_client::connect(&opts.address).await {
            Ok(channel) => {
                if let Some(since) = away_since.take() {
                    eprintln!(
                        "{NAME}: containerd at {} is back after {:.1}s; subscribing again (events published meanwhile reached no subscriber)",
                        opts.address.display(),
                        since.elapsed().as_secs_f64()
                    );
                }
                connected_once = true;
                backoff = FIRST_BACKOFF;
                follow(channel, opts).await
            }
            Err(e) if !connected_once => {
                return Err(format!(
                    "cannot connect to containerd at {}: {}",
                    opts.address.display(),
                    error_chain(&e)
                ))
            }
            Err(e) => Stopped::Away(error_chain(&e)),
        };
        match stopped {
            Stopped::OutputClosed => return Ok(()),
            Stopped::Refused(why) => {
                return Err(format!(
                    "containerd at {} refused the subscription: {why}",
                    opts.address.display()
                ))
            }
            Stopped::Away(why) => {
                if away_since.is_none() {
                    eprintln!(
                        "{NAME}: containerd at {} went away ({why}); waiting for it",
                        opts.address.display()
                    );
                    away_since = Some(std::time::Instant::now());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Subscribes on `channel` and prints every event until the stream ends.
async fn follow(channel: tonic::transport::Channel, opts: &Options) -> Stopped {
    let mut client = containerd_client::services::v1::events_client::EventsClient::new(channel);
    let request = SubscribeRequest {
        filters: filters(opts.namespace.as_deref()),
    };
    // containerd answers the call only with its first event: this waits
    // for that.
    let mut stream = match client.subscribe(request).await {
        Ok(r) => r.into_inner(),
        Err(status) if refusal(status.code()) => return Stopped::Refused(status_text(&status)),
        Err(status) => return Stopped::Away(format!("subscribe: {}", status_text(&status))),
    };
    let mut out = std::io::stdout().lock();
    loop {
        let envelope = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => return Stopped::Away("the event stream ended".into()),
            Err(status) => return Stopped::Away(format!("event stream: {}", status_text(&status))),
        };
        let ev = received(envelope);
        let line = if opts.json {
            format::json_line(&ev)
        } else {
            format::text_line(&ev)
        };
        // Line by line, so a pipe (grep, jq) sees each event as it comes.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Stopped::OutputClosed;
        }
    }
}

fn received(e: Envelope) -> Received {
    Received {
        timestamp: e.timestamp.map(|t| (t.seconds, t.nanos)),
        namespace: e.namespace,
        topic: e.topic,
        body: e.event.map(|a| (a.type_url, a.value)),
    }
}

/// Answers that mean "not this request, not from you": a bad filter, no
/// Events service, no permission. Anything else is containerd going away.
fn refusal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument
            | tonic::Code::Unimplemented
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
    )
}

/// A gRPC status as one short phrase (its Display is a debug dump).
fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// An error with its causes (tonic's transport errors say little at the top).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Some errors repeat their cause in their own text.
        let cause = s.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_task_and_oomguard_topics() {
        assert_eq!(
            filters(None),
            [r#"topic~="^/tasks/""#, r#"topic~="^/oomguard/""#]
        );
        assert_eq!(
            filters(Some("k8s.io")),
            [
                r#"namespace==k8s.io,topic~="^/tasks/""#,
                r#"namespace==k8s.io,topic~="^/oomguard/""#
            ]
        );
    }
}
