//! Group commit: items handed in one by one are stored in batches, one batch at a time, and each
//! caller learns when (and whether) the batch holding its item was stored.
//!
//! The batch being stored is the only one in flight; what arrives meanwhile forms the next one. So an
//! idle worker's item leaves at once, and under load batches grow by themselves to what arrives
//! during one broker round trip. `min_interval` spaces batches further where fewer, larger records
//! matter more than latency (the done records). Used by the deadline, done and attempt records.

use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type Waiter<R> = oneshot::Sender<Result<R, String>>;

/// Handle to a batching task; cheap to clone and to call from every handler.
pub struct GroupCommit<T, R = ()> {
    tx: mpsc::UnboundedSender<(T, Waiter<R>)>,
}

impl<T, R> Clone for GroupCommit<T, R> {
    fn clone(&self) -> Self {
        GroupCommit {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static, R: Clone + Send + 'static> GroupCommit<T, R> {
    /// Starts the task: `store` gets each batch (at most `max_batch` items) and says whether the
    /// broker has it (and what every caller of the batch learns, e.g. the record's number).
    pub fn spawn<F, Fut>(max_batch: usize, min_interval: Duration, store: F) -> GroupCommit<T, R>
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, String>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(gather(rx, max_batch.max(1), min_interval, store));
        GroupCommit { tx }
    }

    /// Puts `item` in the next batch without waiting for it to be stored.
    pub fn push(&self, item: T) {
        let (tx, _) = oneshot::channel();
        let _ = self.tx.send((item, tx));
    }

    /// Puts `item` in the next batch; returns once that batch was stored, or why not.
    pub async fn commit(&self, item: T) -> Result<R, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((item, tx))
            .map_err(|_| "the batching task has stopped".to_string())?;
        rx.await
            .map_err(|_| "the batching task has stopped".to_string())?
    }
}

async fn gather<T, R: Clone, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<(T, Waiter<R>)>,
    max_batch: usize,
    min_interval: Duration,
    store: F,
) where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Result<R, String>>,
{
    let mut in_flight: Option<std::pin::Pin<Box<Fut>>> = None;
    let mut in_flight_waiters: Vec<Waiter<R>> = Vec::new();
    let mut next: Vec<(T, Waiter<R>)> = Vec::new();
    let mut open = true;
    let mut earliest_next = tokio::time::Instant::now();
    loop {
        if in_flight.is_none() && !next.is_empty() {
            // Whatever queued up meanwhile joins too.
            while open && next.len() < max_batch {
                match rx.try_recv() {
                    Ok(item) => next.push(item),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if min_interval > Duration::ZERO {
                // Items arriving while we wait join this batch.
                let wait = tokio::time::sleep_until(earliest_next);
                tokio::pin!(wait);
                while next.len() < max_batch {
                    tokio::select! {
                        biased;
                        item = rx.recv(), if open => match item {
                            Some(item) => next.push(item),
                            None => open = false,
                        },
                        _ = &mut wait => break,
                    }
                }
            }
            let take = next.len().min(max_batch);
            let (items, waiters): (Vec<T>, Vec<Waiter<R>>) = next.drain(..take).unzip();
            in_flight_waiters = waiters;
            earliest_next = tokio::time::Instant::now() + min_interval;
            in_flight = Some(Box::pin(store(items)));
        }
        if in_flight.is_none() && !open {
            return;
        }
        tokio::select! {
            biased;
            outcome = async { in_flight.as_mut().expect("checked").await }, if in_flight.is_some() => {
                in_flight = None;
                for waiter in in_flight_waiters.drain(..) {
                    let _ = waiter.send(outcome.clone());
                }
            }
            item = rx.recv(), if open => match item {
                Some(item) => next.push(item),
                None => open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::sync::Notify;

    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    fn recorder(max_batch: usize, fail: bool) -> (GroupCommit<u32>, Batches, Arc<Notify>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (b, r) = (batches.clone(), release.clone());
        let commit = GroupCommit::spawn(max_batch, Duration::ZERO, move |items: Vec<u32>| {
            let (b, r) = (b.clone(), r.clone());
            async move {
                b.lock().unwrap().push(items);
                r.notified().await;
                if fail {
                    Err("refused".into())
                } else {
                    Ok(())
                }
            }
        });
        (commit, batches, release)
    }

    #[tokio::test]
    async fn items_arriving_during_a_store_form_the_next_batch() {
        let (commit, batches, release) = recorder(2, false);
        let first = tokio::spawn({
            let c = commit.clone();
            async move { c.commit(1).await }
        });
        while batches.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let later: Vec<_> = (2..=4)
            .map(|i| {
                let c = commit.clone();
                tokio::spawn(async move { c.commit(i).await })
            })
            .collect();
        // Let the three queue up behind the batch in flight.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*batches.lock().unwrap(), [vec![1]], "one batch at a time");
        release.notify_one();
        assert_eq!(first.await.unwrap(), Ok(()));
        while batches.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        while batches.lock().unwrap().len() < 3 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        for waiter in later {
            assert_eq!(waiter.await.unwrap(), Ok(()));
        }
        assert_eq!(
            *batches.lock().unwrap(),
            [vec![1], vec![2, 3], vec![4]],
            "bounded by max_batch"
        );
    }

    #[tokio::test]
    async fn every_caller_of_a_refused_batch_hears_why() {
        let (commit, _batches, release) = recorder(10, true);
        release.notify_one();
        assert_eq!(commit.commit(7).await, Err("refused".into()));
    }
}
