//! Times the sample the shim takes of a container's own memory usage in a
//! gVisor sandbox (one batched call to the sandbox's control server), for
//! hack/bench.sh.
//!
//! usage: gvisor_usage SOCKET CONTAINER_ID N
//! prints: "samples N wall_us W cpu_us C usage U sandbox S" (W and C per
//! sample, C = this process's user+system time).

use std::time::Instant;

use oomguard_runtimes::gvisor::usage::GvisorSandbox;

fn cpu_us() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(socket), Some(id), Some(n)) = (
        args.get(1),
        args.get(2),
        args.get(3)
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n > 0),
    ) else {
        eprintln!("usage: gvisor_usage SOCKET CONTAINER_ID N");
        std::process::exit(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gvisor_usage: tokio: {e}");
            std::process::exit(1);
        }
    };
    let sandbox = GvisorSandbox::new(socket.into());
    let result = rt.block_on(async {
        // One untimed sample: the kept connection is made.
        sandbox.read(&[id]).await?;
        let (t0, c0) = (Instant::now(), cpu_us());
        let mut last = None;
        for _ in 0..n {
            last = Some(sandbox.read(&[id]).await?);
        }
        Ok::<_, oomguard_runtimes::gvisor::control::ControlError>((
            t0.elapsed(),
            cpu_us() - c0,
            last,
        ))
    });
    match result {
        Ok((wall, cpu, Some(u))) => println!(
            "samples {n} wall_us {:.1} cpu_us {:.1} usage {} sandbox {}",
            wall.as_micros() as f64 / f64::from(n),
            cpu as f64 / f64::from(n),
            u.containers
                .first()
                .and_then(|c| c.as_ref().ok())
                .copied()
                .unwrap_or(0),
            u.sandbox
        ),
        Ok((_, _, None)) => unreachable!("n > 0"),
        Err(e) => {
            eprintln!("gvisor_usage: {e}");
            std::process::exit(1);
        }
    }
}
