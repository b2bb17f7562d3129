//! ctr as the benchmark drives it, and the `ctr events` stream with the
//! arrival time of every line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Ctr {
    pub bin: String,
    pub address: String,
    pub namespace: String,
}

impl Ctr {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["--address", &self.address, "--namespace", &self.namespace]);
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Result<Output, String> {
        self.command()
            .args(args)
            .output()
            .map_err(|e| format!("{}: {e}", self.bin))
    }

    /// Runs ctr; an unsuccessful exit is an error with what ctr printed.
    pub fn ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.run(args)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Removes a container and its task, whatever state they are in.
    pub fn remove(&self, id: &str) {
        let _ = self.run(&["task", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match self.run(&["task", "delete", id]) {
                Ok(o) if o.status.success() => break,
                Ok(o) if String::from_utf8_lossy(&o.stderr).contains("not found") => break,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let _ = self.run(&["container", "rm", id]);
    }

    /// The pid of every running task of the namespace.
    pub fn task_pids(&self) -> Result<Vec<(String, i32)>, String> {
        let out = self.ok(&["task", "ls"])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let id = w.next()?.to_string();
                let pid = w.next()?.parse().ok()?;
                Some((id, pid))
            })
            .collect())
    }
}

/// One task event as `ctr events` printed it, stamped on arrival.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: Instant,
    pub topic: String,
    pub container: String,
    /// For /tasks/exit: the process (the container id for the init).
    pub process: String,
    pub exit_status: u64,
}

fn parse(line: &str, namespace: &str, at: Instant) -> Option<Event> {
    // "2026-11-22 07:34:43.957679739 +0000 UTC NAMESPACE TOPIC {json}"
    let rest = line.split_once(" UTC ")?.1;
    let mut parts = rest.splitn(3, ' ');
    if parts.next()? != namespace {
        return None;
    }
    let topic = parts.next()?.to_string();
    if !topic.starts_with("/tasks/") {
        return None;
    }
    let body: serde_json::Value = serde_json::from_str(parts.next()?).ok()?;
    let s = |k: &str| body.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    Some(Event {
        at,
        container: s("container_id").to_string(),
        process: s("id").to_string(),
        exit_status: body
            .get("exit_status")
            .and_then(|v| v.as_u64())
            .unwrap_or(0),
        topic,
    })
}

/// A live `ctr events` subscription.
pub struct Events {
    child: Child,
    rx: Receiver<Event>,
    pub seen: Vec<Event>,
}

impl Events {
    pub fn subscribe(ctr: &Ctr) -> Result<Events, String> {
        let mut child = Command::new(&ctr.bin)
            .args(["--address", &ctr.address, "events"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("ctr events: {e}"))?;
        let stdout = child.stdout.take().ok_or("ctr events: no stdout")?;
        let (tx, rx) = channel();
        let ns = ctr.namespace.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let at = Instant::now();
                if let Some(ev) = parse(&line, &ns, at) {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        });
        // The subscription must be live before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Events {
            child,
            rx,
            seen: Vec::new(),
        })
    }

    /// Waits until `done` holds over what arrived, or the deadline.
    pub fn wait(&mut self, deadline: Instant, done: impl Fn(&[Event]) -> bool) -> bool {
        loop {
            if done(&self.seen) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.rx.recv_timeout(left) {
                Ok(ev) => self.seen.push(ev),
                Err(RecvTimeoutError::Timeout) => return done(&self.seen),
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    pub fn of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
        self.seen.iter().filter(move |e| e.container == id)
    }

    /// The init's exit (not an exec's).
    pub fn init_exit<'a>(&'a self, id: &'a str) -> Option<&'a Event> {
        self.of(id)
            .find(|e| e.topic == "/tasks/exit" && e.process == id)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a container's events say about its OOM: exactly one `/tasks/oom`
/// before the init's `/tasks/exit` is "ok".
pub fn story(events: &Events, id: &str) -> &'static str {
    let topics: Vec<&Event> = events.of(id).collect();
    let ooms = topics.iter().filter(|e| e.topic == "/tasks/oom").count();
    let oom_at = topics.iter().position(|e| e.topic == "/tasks/oom");
    let exit_at = topics
        .iter()
        .position(|e| e.topic == "/tasks/exit" && e.process == id);
    match (oom_at, exit_at) {
        (None, _) => "no-oom",
        (Some(_), None) => "no-exit",
        (Some(o), Some(x)) if o > x => "oom-after-exit",
        _ if ooms > 1 => "oom-twice",
        _ => "ok",
    }
}
