//! The runc command line, which runsc also speaks (with global flags of its own).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use async_trait::async_trait;
use log::debug;

use crate::command::{self, Output, Streams};
use crate::{ContainerState, CreateOptions, Error, ExecOptions, OciRuntime, ProcessStdio, Result};

/// One runc-compatible binary with its root and flags.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
    /// runc writes its errors here as JSON lines; a container's stdio is not
    /// runc's to use for them.
    log: PathBuf,
    systemd_cgroup: bool,
    global_args: Vec<String>,
}

impl Runc {
    pub fn new(binary: PathBuf, root: PathBuf, log: PathBuf, systemd_cgroup: bool) -> Self {
        Runc {
            binary,
            root,
            log,
            systemd_cgroup,
            global_args: Vec::new(),
        }
    }

    /// Extra global flags, placed before the action (`--platform=ptrace`).
    pub fn with_global_args(mut self, args: Vec<String>) -> Self {
        self.global_args = args;
        self
    }

    fn name(&self) -> String {
        self.binary.display().to_string()
    }

    fn command(&self, action: &str) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd.arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json");
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(&self.global_args);
        cmd.arg(action);
        cmd
    }

    async fn run(
        &self,
        action: &'static str,
        id: &str,
        cmd: Command,
        streams: Streams,
    ) -> Result<Output> {
        debug!(
            "runtime: {} {:?}",
            self.name(),
            cmd.get_args().collect::<Vec<_>>()
        );
        let out = command::run(cmd, streams)
            .await
            .map_err(|source| Error::Spawn {
                binary: self.name(),
                action,
                source,
            })?;
        if out.status != crate::WaitStatus::Exited(0) {
            return Err(Error::Failed {
                binary: self.name(),
                action,
                id: id.to_string(),
                status: out.status,
                message: self.failure_message(&out),
            });
        }
        Ok(out)
    }

    async fn simple(&self, action: &'static str, id: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command(action);
        cmd.args(args).arg(id);
        self.run(action, id, cmd, Streams::Capture).await
    }

    /// The last error the runtime logged, else what it printed.
    fn failure_message(&self, out: &Output) -> String {
        if let Some(msg) = std::fs::read_to_string(&self.log)
            .ok()
            .and_then(|log| last_logged_error(&log))
        {
            // Consumed: the next failure must not repeat this one.
            let _ = std::fs::write(&self.log, b"");
            return msg;
        }
        let text = if out.stderr.is_empty() {
            &out.stdout
        } else {
            &out.stderr
        };
        let text = String::from_utf8_lossy(text).trim().to_string();
        if text.is_empty() {
            "no error message".to_string()
        } else {
            text
        }
    }

    /// `start` with the process's stdio handed over (runsc gives a joining
    /// container the stdio of `runsc start`).
    pub async fn start_with_stdio(&self, id: &str, stdio: ProcessStdio) -> Result<()> {
        let mut cmd = self.command("start");
        cmd.arg(id);
        self.run("start", id, cmd, Self::stdio_streams(stdio))
            .await
            .map(drop)
    }

    fn stdio_streams(stdio: ProcessStdio) -> Streams {
        Streams::Inherit {
            stdin: stdio.stdin,
            stdout: stdio.stdout,
            stderr: stdio.stderr,
        }
    }
    /// `exec --detach` with flags of the runtime's own (`extra`).
    pub async fn exec_with(&self, id: &str, opts: ExecOptions<'_>, extra: &[&OsStr]) -> Result<()> {
        let mut cmd = self.command("exec");
        cmd.args(extra);
        cmd.arg("--detach")
            .arg("--process")
            .arg(opts.process_file)
            .arg("--pid-file")
            .arg(opts.pid_file);
        if let Some(sock) = opts.console_socket {
            cmd.arg("--console-socket").arg(sock);
        }
        cmd.arg(id);
        self.run("exec", id, cmd, Self::stdio_streams(opts.stdio))
            .await
            .map(drop)
    }

    /// `kill --pid PID ID SIGNAL`: one process of a container, by the pid
    /// the runtime knows it by (runsc: inside the sandbox).
    pub async fn kill_pid(&self, id: &str, pid: i32, signal: u32) -> Result<()> {
        let mut cmd = self.command("kill");
        cmd.arg("--pid")
            .arg(pid.to_string())
            .arg(id)
            .arg(signal.to_string());
        self.run("kill", id, cmd, Streams::Capture).await.map(drop)
    }
}

/// `ps --format json`: runc prints pids, runsc process objects with "PID".
pub fn parse_ps(out: &[u8]) -> std::result::Result<Vec<i32>, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_slice(out)?;
    Ok(v.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_i64().or_else(|| i.get("PID")?.as_i64()))
                .map(|p| p as i32)
                .collect()
        })
        .unwrap_or_default())
}

/// The `msg` of the last `"level":"error"` line of a runc JSON log.
pub fn last_logged_error(log: &str) -> Option<String> {
    log.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v.get("level")?.as_str()? != "error" {
            return None;
        }
        Some(v.get("msg")?.as_str()?.to_string())
    })
}

#[async_trait]
impl OciRuntime for Runc {
    fn binary(&self) -> &Path {
        &self.binary
    }

    fn root(&self) -> &Path {
        &self.root
    }

    async fn create(&self, id: &str, opts: CreateOptions<'_>) -> Result<()> {
        let mut cmd = self.command("create");
        cmd.arg("--bundle")
            .arg(opts.bundle)
            .arg("--pid-file")
            .arg(opts.pid_file);
        if let Some(sock) = opts.console_socket {
            cmd.arg("--console-socket").arg(sock);
        }
        if opts.no_pivot_root {
            cmd.arg("--no-pivot");
        }
        if opts.no_new_keyring {
            cmd.arg("--no-new-keyring");
        }
        cmd.arg(id);
        self.run("create", id, cmd, Self::stdio_streams(opts.stdio))
            .await
            .map(drop)
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.simple("start", id, &[]).await.map(drop)
    }

    async fn exec(&self, id: &str, opts: ExecOptions<'_>) -> Result<()> {
        self.exec_with(id, opts, &[]).await
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let mut cmd = self.command("kill");
        if all {
            cmd.arg("--all");
        }
        cmd.arg(id).arg(signal.to_string());
        self.run("kill", id, cmd, Streams::Capture).await.map(drop)
    }

    async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let args: &[&str] = if force { &["--force"] } else { &[] };
        self.simple("delete", id, args).await.map(drop)
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.simple("pause", id, &[]).await.map(drop)
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.simple("resume", id, &[]).await.map(drop)
    }

    async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let out = self.simple("ps", id, &["--format", "json"]).await?;
        parse_ps(&out.stdout).map_err(|e| Error::BadOutput {
            binary: self.name(),
            action: "ps",
            id: id.to_string(),
            message: e.to_string(),
        })
    }

    async fn update(&self, id: &str, resources: &[u8]) -> Result<()> {
        let file = self.log.with_file_name(format!("update-{id}.json"));
        std::fs::write(&file, resources).map_err(|source| Error::Io {
            what: format!("write {}", file.display()),
            source,
        })?;
        let file_arg = file.display().to_string();
        let res = self.simple("update", id, &["--resources", &file_arg]).await;
        let _ = std::fs::remove_file(&file);
        res.map(drop)
    }

    async fn state(&self, id: &str) -> Result<ContainerState> {
        let out = self.simple("state", id, &[]).await?;
        serde_json::from_slice(&out.stdout).map_err(|e| Error::BadOutput {
            binary: self.name(),
            action: "state",
            id: id.to_string(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_of_a_runc_log() {
        // Lines as runc 1.1 writes them with --log-format json.
        let log = concat!(
            r#"{"level":"warning","msg":"a warning","time":"2026-11-22T07:40:01Z"}"#,
            "\n",
            r#"{"level":"error","msg":"container \"x\" does not exist","time":"2026-11-22T07:40:02Z"}"#,
            "\n",
            "not json at all\n",
        );
        assert_eq!(
            last_logged_error(log).as_deref(),
            Some("container \"x\" does not exist")
        );
        assert_eq!(last_logged_error("garbage\n"), None);
    }

    #[test]
    fn ps_of_runc_and_runsc() {
        assert_eq!(parse_ps(b"[12,13]").unwrap(), vec![12, 13]);
        assert_eq!(parse_ps(b"null").unwrap(), Vec::<i32>::new());
        let runsc =
            br#"[{"UID":0,"PID":1,"PPID":0,"C":0,"STime":"07:51","Time":"0s","Cmd":"sleep"}]"#;
        assert_eq!(parse_ps(runsc).unwrap(), vec![1]);
        assert!(parse_ps(b"not json").is_err());
    }

    #[test]
    fn error_classes() {
        let failed = |m: &str| Error::Failed {
            binary: "runc".into(),
            action: "kill",
            id: "c".into(),
            status: crate::WaitStatus::Exited(1),
            message: m.into(),
        };
        assert!(failed("container \"c\" does not exist").is_not_found());
        assert!(failed("sandbox is not running").is_not_running());
        assert!(failed("container not running").is_not_running());
        assert!(!failed("permission denied").is_not_running());
    }
}
