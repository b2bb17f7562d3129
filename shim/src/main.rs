//! containerd-shim-oomguard-v2: a containerd shim (task API v2) that runs
//! containers through runc or runsc and reports every OOM kill truthfully.

mod config;
mod events;
mod events_cli;
#[cfg(test)]
mod fuzz_tests;
mod inflight;
mod install;
mod lifecycle;
mod logger;
mod metrics;
mod oom;
mod proto;
mod rootfs;
mod rpc;
mod stdio;
mod story;
mod task;
mod warning;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The operator's commands, before containerd's flag parsing sees them.
    if let Some(code) = install::dispatch(&args) {
        std::process::exit(code);
    }
    if let Some(code) = events_cli::dispatch(&args) {
        std::process::exit(code);
    }
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-oomguard-v2: {e}");
            std::process::exit(2);
        }
    };
    if flags.version {
        println!("containerd-shim-oomguard-v2 {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let result = match flags.action.as_str() {
        _ if flags.info => lifecycle::info::run(),
        "start" => lifecycle::start::run(&flags),
        "delete" => lifecycle::delete::run(&flags),
        "" => lifecycle::serve::run(&flags),
        other => Err(format!(
            "unknown action {other:?} (start, delete, or none to serve)"
        )),
    };
    // The serving shim's log lines still queued go out before it exits.
    log::logger().flush();
    if let Err(e) = result {
        eprintln!("containerd-shim-oomguard-v2: {e}");
        std::process::exit(1);
    }
}
