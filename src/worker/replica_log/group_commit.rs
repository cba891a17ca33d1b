//! Group commit: items handed in one by one are stored in batches, one batch at a time, and each
//! caller learns when (and whether) the batch holding its item was stored.
//!
//! The batch being stored is the only one in flight; what arrives meanwhile forms the next one. So an
//! idle worker's item leaves at once, and under load batches grow by themselves to what arrives
//! during one broker round trip. `min_interval` spaces batches further where fewer, larger records
//! matter more than latency (the done records). Used by the deadline, done and attempt records.
//!
//! Hand-written: what is wanted is a batch *per broker round trip* (the next batch forms while one
//! is stored), which the batching of channels or streams (`tokio-stream`'s `chunks_timeout`: a size or
//! a timer) does not give.

use crate::pulsar::PulsarIoError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Why an item's batch was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The broker refused the batch (every caller of the batch gets the same error).
    #[error(transparent)]
    Store(Arc<PulsarIoError>),
    /// The batching task is gone (the runtime is shutting down).
    #[error("the batching task has stopped")]
    Stopped,
}

type Waiter<R> = oneshot::Sender<Result<R, CommitError>>;

/// What a caller hands the task: an item, or a wish to know when everything before it is stored.
enum Entry<T, R> {
    Item(T, Waiter<R>),
    Flush(oneshot::Sender<()>),
}

/// Handle to a batching task; cheap to clone and to call from every handler.
pub struct GroupCommit<T, R = ()> {
    tx: mpsc::UnboundedSender<Entry<T, R>>,
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
        Fut: Future<Output = Result<R, PulsarIoError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(gather(rx, max_batch.max(1), min_interval, store));
        GroupCommit { tx }
    }

    /// Puts `item` in the next batch without waiting for it to be stored.
    pub fn push(&self, item: T) {
        let (tx, _) = oneshot::channel();
        let _ = self.tx.send(Entry::Item(item, tx));
    }

    /// Puts `item` in the next batch; returns once that batch was stored, or why not.
    pub async fn commit(&self, item: T) -> Result<R, CommitError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Entry::Item(item, tx))
            .map_err(|_| CommitError::Stopped)?;
        rx.await.map_err(|_| CommitError::Stopped)?
    }

    /// Returns once every item handed in before was stored or refused.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Entry::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn gather<T, R: Clone, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<Entry<T, R>>,
    max_batch: usize,
    min_interval: Duration,
    store: F,
) where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Result<R, PulsarIoError>>,
{
    let mut in_flight: Option<std::pin::Pin<Box<Fut>>> = None;
    let mut in_flight_waiters: Vec<Waiter<R>> = Vec::new();
    let mut in_flight_flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut next: Batch<T, R> = Batch::default();
    let mut open = true;
    let mut earliest_next = tokio::time::Instant::now();
    loop {
        if in_flight.is_none() && !next.is_empty() {
            // Whatever queued up meanwhile joins too.
            while open && next.items.len() < max_batch {
                match rx.try_recv() {
                    Ok(entry) => next.add(entry),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if min_interval > Duration::ZERO && !next.items.is_empty() {
                // Items arriving while we wait join this batch.
                let wait = tokio::time::sleep_until(earliest_next);
                tokio::pin!(wait);
                while next.items.len() < max_batch {
                    tokio::select! {
                        biased;
                        entry = rx.recv(), if open => match entry {
                            Some(entry) => next.add(entry),
                            None => open = false,
                        },
                        _ = &mut wait => break,
                    }
                }
            }
            let (items, waiters, flushes) = next.take(max_batch);
            if items.is_empty() {
                // Only flushes: everything before them is stored already.
                flushes.into_iter().for_each(|f| {
                    let _ = f.send(());
                });
                continue;
            }
            in_flight_waiters = waiters;
            in_flight_flushes = flushes;
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
                let outcome = outcome.map_err(|e| CommitError::Store(Arc::new(e)));
                for waiter in in_flight_waiters.drain(..) {
                    let _ = waiter.send(outcome.clone());
                }
                for flush in in_flight_flushes.drain(..) {
                    let _ = flush.send(());
                }
            }
            entry = rx.recv(), if open => match entry {
                Some(entry) => next.add(entry),
                None => open = false,
            },
        }
    }
}

/// The entries waiting for the next batch, in the order they came.
struct Batch<T, R> {
    items: Vec<(T, Waiter<R>)>,
    /// Flushes, each with the number of items before it.
    flushes: Vec<(usize, oneshot::Sender<()>)>,
}

impl<T, R> Default for Batch<T, R> {
    fn default() -> Self {
        Batch {
            items: Vec::new(),
            flushes: Vec::new(),
        }
    }
}

impl<T, R> Batch<T, R> {
    fn is_empty(&self) -> bool {
        self.items.is_empty() && self.flushes.is_empty()
    }

    fn add(&mut self, entry: Entry<T, R>) {
        match entry {
            Entry::Item(item, waiter) => self.items.push((item, waiter)),
            Entry::Flush(done) => self.flushes.push((self.items.len(), done)),
        }
    }

    /// The first `max` items, their waiters, and the flushes that came before the next item.
    #[allow(clippy::type_complexity)]
    fn take(&mut self, max: usize) -> (Vec<T>, Vec<Waiter<R>>, Vec<oneshot::Sender<()>>) {
        let take = self.items.len().min(max);
        let (items, waiters) = self.items.drain(..take).unzip();
        let split = self.flushes.partition_point(|(before, _)| *before <= take);
        let flushes = self.flushes.drain(..split).map(|(_, f)| f).collect();
        for (before, _) in &mut self.flushes {
            *before -= take;
        }
        (items, waiters, flushes)
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
                    Err(PulsarIoError::Publish {
                        topic: "t".into(),
                        message: "refused".into(),
                    })
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
        first.await.unwrap().unwrap();
        while batches.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        while batches.lock().unwrap().len() < 3 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        for waiter in later {
            waiter.await.unwrap().unwrap();
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
        let refused = commit.commit(7).await.unwrap_err();
        assert!(matches!(refused, CommitError::Store(_)), "{refused:?}");
        assert!(refused.to_string().contains("refused"), "{refused}");
    }

    #[tokio::test]
    async fn a_flush_waits_for_the_batch_in_flight_and_stores_nothing_itself() {
        let (commit, batches, release) = recorder(10, false);
        commit.push(1);
        while batches.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let mut flushed = Box::pin(commit.flush());
        for _ in 0..10 {
            assert!(futures::poll!(flushed.as_mut()).is_pending());
            tokio::task::yield_now().await;
        }
        release.notify_one();
        flushed.await;
        commit.flush().await;
        assert_eq!(*batches.lock().unwrap(), [vec![1]], "no empty batch");
    }
}
