//! When to re-read the OOM counter after a memcg notification whose kill
//! is not confirmed yet.
//!
//! The notification comes as the memcg enters OOM; the kernel's OOM killer
//! kills about half a millisecond later on an idle host (0.4-0.6 ms here
//! with the OOM report printed, less when the report is rate-limited), and
//! later when the OOMing task waits for a CPU or for the kernel's oom_lock
//! (an OOM storm). So the re-reads come 250 µs apart at first, then stretch
//! out. tokio's timer works in whole milliseconds, rounded up, so this runs
//! on a timerfd of its own (in the epoll set only while armed).

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// How long a notification is followed up when no kill comes (the OOM
/// killer serialises on one lock, so in an OOM storm a kill can come
/// seconds after its memcg entered OOM). The exit re-read catches anything
/// later.
pub const FOLLOW_UP: Duration = Duration::from_secs(10);

/// The wait before the next re-read, `elapsed` after the notification.
pub fn delay(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_millis(2) {
        Duration::from_micros(250)
    } else if elapsed < Duration::from_millis(8) {
        Duration::from_micros(500)
    } else {
        elapsed / 4
    }
}

/// The timerfd as the reactor wants it.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct Recheck {
    /// None if no timerfd could be made: tokio's timer then (1 ms steps).
    timer: Option<AsyncFd<Timer>>,
    since: Instant,
    next: Option<Instant>,
}

impl Recheck {
    pub fn new() -> Recheck {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)
        // SAFETY: the descriptor is owned by the Timer, registered once.
        .and_then(|t| unsafe { AsyncFd::register(Timer(t)) }.map_err(|e| e.into_parts().1));
        if let Err(e) = &timer {
            log::warn!("oom: no timerfd ({e}); re-reads after a memcg notification in 1 ms steps");
        }
        Recheck {
            timer: timer.ok(),
            since: Instant::now(),
            next: None,
        }
    }

    pub fn since(&self) -> Option<Instant> {
        self.next.map(|_| self.since)
    }

    /// Starts (or restarts) the schedule at `now`, the notification.
    pub fn start(&mut self, now: Instant) {
        self.since = now;
        self.schedule(now + delay(Duration::ZERO));
    }

    pub fn stop(&mut self) {
        self.next = None;
        if let Some(t) = &self.timer {
            let _ = t.get_ref().0.unset();
        }
    }

    /// After a re-read: schedules the next one, or ends the follow-up
    /// (false).
    pub fn advance(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed > FOLLOW_UP {
            self.stop();
            return false;
        }
        self.schedule(now + delay(elapsed));
        true
    }

    fn schedule(&mut self, at: Instant) {
        self.next = Some(at);
        if let Some(t) = &self.timer {
            let wait = at.saturating_duration_since(Instant::now());
            // A zero expiration would disarm the timer.
            let wait = wait.max(Duration::from_micros(1));
            if let Err(e) = t.get_ref().0.set(
                Expiration::OneShot(TimeSpec::from_duration(wait)),
                TimerSetTimeFlags::empty(),
            ) {
                log::warn!("oom: timerfd: {e}; re-reads in 1 ms steps");
                self.timer = None;
            }
        }
    }

    /// Resolves when the next re-read is due (never while none is).
    pub async fn due(&self) {
        let Some(next) = self.next else {
            return std::future::pending().await;
        };
        match &self.timer {
            Some(t) => loop {
                let Ok(mut guard) = t.readable().await else {
                    return tokio::time::sleep_until(next.into()).await;
                };
                let mut buf = [0u8; 8];
                match nix::unistd::read(&t.get_ref().0, &mut buf) {
                    Ok(_) => return,
                    Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                    Err(_) => return tokio::time::sleep_until(next.into()).await,
                }
            },
            None => tokio::time::sleep_until(next.into()).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_first_then_stretching() {
        let at = |ms: u64| delay(Duration::from_millis(ms));
        assert_eq!(at(0), Duration::from_micros(250));
        assert_eq!(at(1), Duration::from_micros(250));
        assert_eq!(at(3), Duration::from_micros(500));
        assert_eq!(at(40), Duration::from_millis(10));
        // Over the whole follow-up, a bounded number of re-reads.
        let mut t = Duration::ZERO;
        let mut n = 0;
        while t <= FOLLOW_UP {
            t += delay(t);
            n += 1;
        }
        assert!(n < 60, "{n} re-reads");
    }

    #[tokio::test]
    async fn fires_within_a_millisecond() {
        let mut r = Recheck::new();
        assert!(r.timer.is_some(), "timerfd");
        let t0 = Instant::now();
        r.start(t0);
        tokio::time::timeout(Duration::from_secs(1), r.due())
            .await
            .unwrap();
        let took = t0.elapsed();
        assert!(took >= Duration::from_micros(250), "{took:?}");
        assert!(r.advance(Instant::now()));
        r.stop();
        assert!(r.since().is_none());
        // Stopped: never due.
        assert!(tokio::time::timeout(Duration::from_millis(20), r.due())
            .await
            .is_err());
    }
}
