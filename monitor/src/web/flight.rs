//! Single-flight collections: scrapes that arrive while a collection is running wait for it and
//! share its result instead of queueing a scan each. Without this, 100 concurrent scrapes meant 100
//! blocking threads each waiting on the agent's lock and then scanning in turn (issue 14: 103
//! threads, up to 168 MiB RSS, medians up to 635 ms). The collection runs on tokio's blocking pool,
//! whose size the runtime caps, and finishes even when every waiting scrape has gone away, so a
//! disconnecting scraper can neither cancel nor duplicate it.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use tokio::sync::watch;

type Slot<T> = Option<watch::Receiver<Option<Arc<T>>>>;

/// One collection at a time; callers during it share its result.
pub struct SingleFlight<T> {
    running: Arc<Mutex<Slot<T>>>,
    /// Collections started.
    pub started: AtomicU64,
    /// Calls that joined a collection already running instead of starting one.
    pub shared: AtomicU64,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self { running: Arc::new(Mutex::new(None)), started: AtomicU64::new(0), shared: AtomicU64::new(0) }
    }
}

impl<T: Send + Sync + 'static> SingleFlight<T> {
    /// The result of the collection running now, or of one `work` started for this call. `None`
    /// when the collection panicked (it is logged by tokio; the next call starts a new one).
    pub async fn run(&self, work: impl FnOnce() -> T + Send + 'static) -> Option<Arc<T>> {
        let mut rx = {
            let mut slot = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some(rx) => {
                    self.shared.fetch_add(1, Ordering::Relaxed);
                    rx.clone()
                }
                None => {
                    self.started.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = watch::channel(None);
                    *slot = Some(rx.clone());
                    let running = Arc::clone(&self.running);
                    // Detached: it completes (and frees the slot) whether or not anyone still waits.
                    tokio::task::spawn_blocking(move || {
                        let clear = ClearOnDrop(running);
                        let out = Arc::new(work());
                        // Free the slot before publishing: a call that arrives after this result
                        // was published must get a fresh collection, not this one.
                        drop(clear);
                        let _ = tx.send(Some(out));
                    });
                    rx
                }
            }
        };
        let out = rx.wait_for(Option::is_some).await.ok()?.clone();
        out
    }
}

/// Frees the slot even when the collection panics, so the next call starts a new one.
struct ClearOnDrop<T>(Arc<Mutex<Slot<T>>>);

impl<T> Drop for ClearOnDrop<T> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::AtomicUsize,
        time::{Duration, Instant},
    };

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_one_collection() {
        let flight = Arc::new(SingleFlight::<usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate_rx));
        let mut calls = Vec::new();
        for _ in 0..50 {
            let (f, r, g) = (Arc::clone(&flight), Arc::clone(&runs), Arc::clone(&gate));
            calls.push(tokio::spawn(async move {
                f.run(move || {
                    // Held until every caller has joined, so all 50 overlap this one collection.
                    g.lock().unwrap().recv().unwrap();
                    r.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while flight.started.load(Ordering::SeqCst) + flight.shared.load(Ordering::SeqCst) < 50 {
            assert!(Instant::now() < deadline, "callers did not all arrive");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gate_tx.send(()).unwrap();
        for c in calls {
            assert_eq!(*c.await.unwrap().unwrap(), 1, "every caller gets the one collection's result");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!((flight.started.load(Ordering::SeqCst), flight.shared.load(Ordering::SeqCst)), (1, 49));
        // Later calls start a fresh collection.
        gate_tx.send(()).unwrap();
        let r2 = Arc::clone(&runs);
        let g2 = Arc::clone(&gate);
        let next = flight
            .run(move || {
                g2.lock().unwrap().recv().unwrap();
                r2.fetch_add(1, Ordering::SeqCst) + 1
            })
            .await;
        assert_eq!(next.as_deref(), Some(&2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_collection_frees_the_slot() {
        let flight = SingleFlight::<u8>::default();
        assert!(flight.run(|| panic!("collection failed")).await.is_none());
        assert_eq!(flight.run(|| 7).await.as_deref(), Some(&7));
    }
}
