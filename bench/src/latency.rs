//! OOM kill → TaskOOM: per run, each kind in turn (ABBA), one container that
//! sleeps 1 s (time to register on its memcg) and then allocates past its
//! limit.

use std::time::{Duration, Instant};

use crate::ctr::{story, Events};
use crate::{memcg, ms, Common};

pub fn run(c: &Common, runs: u64) -> Result<(), String> {
    let mut events = Events::subscribe(&c.ctr)?;
    let stamp = std::process::id();
    for round in 0..runs {
        let mut order: Vec<_> = c.kinds.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for kind in order {
            let id = format!("lat{stamp}-{}-{round}", kind.name);
            let line = one(c, &mut events, kind, &id);
            c.ctr.remove(&id);
            c.drop_rootfs(&id);
            match line {
                Ok(l) => println!("latency\t{}\t{round}\t{l}", kind.name),
                Err(e) => {
                    eprintln!("latency {} run {round}: {e}", kind.name);
                    println!("latency\t{}\t{round}\t-\t-\t-\tfailed\t-", kind.name);
                }
            }
        }
    }
    Ok(())
}

fn one(c: &Common, events: &mut Events, kind: &crate::Kind, id: &str) -> Result<String, String> {
    let cgroup = format!("{}/{id}", c.cgroup_parent);
    let limit = c.limit.to_string();
    let cmd = format!("sleep 1; exec {}", c.alloc());
    let rootfs = c.rootfs_for(id)?;
    let mut args = vec!["run", "-d", "--null-io", "--runtime", &kind.runtime];
    args.extend(kind.args.iter().map(String::as_str));
    args.extend([
        "--memory-limit",
        &limit,
        "--cgroup",
        &cgroup,
        "--rootfs",
        &rootfs,
        id,
        "/bin/sh",
        "-c",
        &cmd,
    ]);
    c.ctr.ok(&args)?;
    let times = memcg::watch_oom(&memcg::dir(&cgroup), Duration::from_secs(20))?
        .recv()
        .map_err(|_| "no OOM notification on the memcg within 20 s".to_string())?;
    let t0 = times.notified;
    let done = |seen: &[crate::ctr::Event]| {
        seen.iter()
            .any(|e| e.container == id && e.topic == "/tasks/exit" && e.process == id)
    };
    if !events.wait(Instant::now() + Duration::from_secs(30), done) {
        return Err("no /tasks/exit within 30 s".into());
    }
    // What arrives after the exit is late, but still shows in the story.
    events.wait(Instant::now() + Duration::from_millis(50), |_| false);
    let oom = events
        .of(id)
        .find(|e| e.topic == "/tasks/oom")
        .map(|e| format!("{:.2}", ms(t0, e.at)))
        .unwrap_or_else(|| "-".into());
    let exit = events.init_exit(id).ok_or("no init exit")?;
    let killed = times
        .killed
        .map(|t| format!("{:.3}", ms(t0, t)))
        .unwrap_or_else(|| "-".into());
    Ok(format!(
        "{oom}\t{:.2}\t{}\t{}\t{killed}",
        ms(t0, exit.at),
        exit.exit_status,
        story(events, id)
    ))
}
