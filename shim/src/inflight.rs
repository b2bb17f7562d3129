//! RPCs in progress. The ttrpc server drops the handlers still running when
//! it shuts down, so an answer containerd is waiting for (a Kill racing the
//! exit it caused, then Delete and Shutdown) would be lost: serve waits for
//! them to finish first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
pub struct InFlight {
    running: AtomicUsize,
    idle: Notify,
}

/// Held for the duration of one RPC.
pub struct Call<'a>(&'a InFlight);

impl InFlight {
    pub fn enter(&self) -> Call<'_> {
        self.running.fetch_add(1, Ordering::SeqCst);
        Call(self)
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Waits until no RPC is running, or `limit` passed; returns how many
    /// are still running.
    pub async fn settle(&self, limit: Duration) -> usize {
        let wait = async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.running() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
        self.running()
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settle_waits_for_running_calls() {
        let calls = std::sync::Arc::new(InFlight::default());
        assert_eq!(calls.settle(Duration::from_millis(10)).await, 0);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let c = calls.clone();
        let rpc = tokio::spawn(async move {
            let _call = c.enter();
            let _ = rx.await;
        });
        tokio::task::yield_now().await;
        assert_eq!(calls.settle(Duration::from_millis(20)).await, 1);
        let waiter = {
            let c = calls.clone();
            tokio::spawn(async move { c.settle(Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        let _ = tx.send(());
        rpc.await.unwrap();
        assert_eq!(waiter.await.unwrap(), 0);
    }
}
