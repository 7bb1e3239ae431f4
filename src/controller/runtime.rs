//! The controller loop, as in kube-runtime: watch events only enqueue keys; a worker takes a
//! key, reads the latest objects from the store and reconciles; errors requeue the key with
//! exponential back-off; a reconcile may ask to be run again after a delay.

use crate::api::{Kind, ObjectKey};
use crate::store::{Store, StoreError, WatchEvent, WatchEventType};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next change.
    Done,
    /// Run again after this long (progress deadlines, minReadySeconds, heartbeats).
    RequeueAfter(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A write lost a race (resourceVersion conflict): retried at once.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
    #[error("{0}")]
    Other(String),
}

impl From<StoreError> for ReconcileError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } | StoreError::AlreadyExists { .. } => {
                ReconcileError::Conflict(e.to_string())
            }
            e => ReconcileError::Store(e),
        }
    }
}

/// The time, behind a trait so that tests can move it.
pub trait Clock: Send + Sync {
    fn now(&self) -> jiff::Timestamp;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

/// A clock that moves only when told to.
pub struct FakeClock(Mutex<jiff::Timestamp>);

impl FakeClock {
    pub fn new(start: jiff::Timestamp) -> Self {
        FakeClock(Mutex::new(start))
    }
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t = t.checked_add(by).unwrap_or(*t);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> jiff::Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What every reconcile gets: the store, the clock, the event recorder, and the source writer
/// (for auto-revert), when the source can be written.
#[derive(Clone)]
pub struct Context {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub events: crate::controller::events::EventRecorder,
    pub source_writer: Option<Arc<dyn crate::source::write::SourceWriter>>,
}

impl Context {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Context {
        let events = crate::controller::events::EventRecorder::new(store.clone(), clock.clone());
        Context {
            store,
            clock,
            events,
            source_writer: None,
        }
    }
}

/// One controller: which keys a change concerns, and how to bring one key to its desired state.
pub trait Reconciler: Send + Sync + 'static {
    /// For logs: `deployment`, `replicaset`, `scheduler`, ...
    fn name(&self) -> &'static str;
    /// Keys to look at when the store changes (handlers only enqueue; no logic here).
    fn keys_for(&self, event: &WatchEvent) -> Vec<ObjectKey>;
    /// Whether `keys_for` looks at changes of this kind and type: the others are not parsed
    /// for this controller.
    fn wants(&self, _kind: Kind, _event_type: WatchEventType) -> bool {
        true
    }
    /// Keys to look at on start and after a relist.
    fn initial_keys(&self, ctx: &Context) -> Result<Vec<ObjectKey>, ReconcileError>;
    /// Reads the latest state of `key` from the store and acts on it.
    fn reconcile(&self, key: &ObjectKey, ctx: &Context) -> Result<Action, ReconcileError>;
}

/// A de-duplicating queue of keys: a key queued twice is reconciled once; a key is never
/// reconciled by two workers at once; failures back off per key.
#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<QueueState>,
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct QueueState {
    queue: VecDeque<ObjectKey>,
    queued: HashSet<ObjectKey>,
    processing: HashSet<ObjectKey>,
    /// Keys re-added while being processed: queued again when done.
    again: HashSet<ObjectKey>,
    failures: HashMap<ObjectKey, u32>,
    /// Keys to add later: when, and the task that will (see `add_after`).
    waiting: HashMap<ObjectKey, (tokio::time::Instant, tokio::task::AbortHandle)>,
}

/// Back-off after the n-th consecutive failure: 100 ms doubling up to 30 s.
pub fn backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << failures.min(20).saturating_sub(1));
    Duration::from_millis(ms.min(30_000))
}

impl WorkQueue {
    pub fn new() -> Arc<WorkQueue> {
        Arc::new(WorkQueue::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, key: ObjectKey) {
        let mut s = self.lock();
        if s.processing.contains(&key) {
            s.again.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.queue.push_back(key);
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Adds `key` after `delay` (needs a tokio runtime). A key waits once, for the earliest
    /// time asked, as Kubernetes' delaying queue does: a later time asked meanwhile is
    /// dropped (the reconcile at the earlier time asks again), and an earlier one replaces
    /// the later. Every node's heartbeat asks for its grace period and every Deployment's
    /// reconcile for its progress deadline: one sleeping task each time grew serve's memory
    /// for as long as the longest delay (10 minutes), thousands of tasks.
    pub fn add_after(self: &Arc<Self>, key: ObjectKey, delay: Duration) {
        let at = tokio::time::Instant::now() + delay;
        let mut s = self.lock();
        if s.waiting.get(&key).is_some_and(|(due, _)| *due <= at) {
            return;
        }
        let (q, k) = (Arc::clone(self), key.clone());
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let due = {
                let mut s = q.lock();
                let due = s.waiting.get(&k).is_some_and(|(due, _)| *due == at);
                if due {
                    s.waiting.remove(&k);
                }
                due
            };
            if due {
                q.add(k);
            }
        });
        if let Some((_, later)) = s.waiting.insert(key, (at, task.abort_handle())) {
            later.abort();
        }
    }

    /// How many keys wait to be added later.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// The next key, if any, marked as being processed.
    pub fn try_pop(&self) -> Option<ObjectKey> {
        let mut s = self.lock();
        let key = s.queue.pop_front()?;
        s.queued.remove(&key);
        s.processing.insert(key.clone());
        Some(key)
    }

    pub async fn pop(&self) -> ObjectKey {
        loop {
            let notified = self.ready.notified();
            if let Some(k) = self.try_pop() {
                return k;
            }
            notified.await;
        }
    }

    /// Marks `key` done; returns the back-off to wait when it failed.
    pub fn done(&self, key: &ObjectKey, failed: bool) -> Option<Duration> {
        let mut s = self.lock();
        s.processing.remove(key);
        let wait = if failed {
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            Some(backoff(*n))
        } else {
            s.failures.remove(key);
            None
        };
        if s.again.remove(key) && wait.is_none() && s.queued.insert(key.clone()) {
            s.queue.push_back(key.clone());
            drop(s);
            self.ready.notify_one();
        }
        wait
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs one reconcile of `key` and handles its result: requeue after the asked delay, or
/// after back-off on failure. Returns the result for callers that log or test it.
fn handle(
    rec: &dyn Reconciler,
    ctx: &Context,
    key: &ObjectKey,
) -> (Result<Action, ReconcileError>, Option<Duration>) {
    let result = rec.reconcile(key, ctx);
    let next = match &result {
        Ok(Action::Done) => None,
        Ok(Action::RequeueAfter(d)) => Some(*d),
        Err(ReconcileError::Conflict(_)) => Some(Duration::ZERO),
        Err(_) => None,
    };
    (result, next)
}

/// Reconciles queued keys until the queue is empty, synchronously, ignoring delays: for tests
/// that feed the store by hand. Returns how many reconciles ran.
pub fn drain(rec: &dyn Reconciler, ctx: &Context, queue: &WorkQueue, limit: usize) -> usize {
    let mut n = 0;
    while n < limit {
        let Some(key) = queue.try_pop() else { break };
        let (result, _) = handle(rec, ctx, &key);
        queue.done(&key, result.is_err());
        if let Err(ReconcileError::Conflict(_)) = result {
            queue.add(key);
        }
        n += 1;
    }
    n
}

/// Runs a controller until `stop` turns true: list, then watch and reconcile.
pub async fn run(
    rec: Arc<dyn Reconciler>,
    ctx: Context,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let queue = WorkQueue::new();
    let watcher = {
        let (rec, ctx, queue, mut stop) = (rec.clone(), ctx.clone(), queue.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let rv = ctx.store.current_rv();
                match rec.initial_keys(&ctx) {
                    Ok(keys) => keys.into_iter().for_each(|k| queue.add(k)),
                    Err(e) => tracing::warn!(controller = rec.name(), "listing failed: {e}"),
                }
                let mut watch = match ctx.store.watch(rv) {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(controller = rec.name(), "watch failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                loop {
                    tokio::select! {
                        event = watch.next_of(|kind, t| rec.wants(kind, t)) => match event {
                            Ok(event) => rec.keys_for(&event).into_iter().for_each(|k| queue.add(k)),
                            Err(e) => {
                                tracing::info!(controller = rec.name(), "watch ended ({e}); listing again");
                                break;
                            }
                        },
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        })
    };
    loop {
        let key = tokio::select! {
            key = queue.pop() => key,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (rec2, ctx2, key2) = (rec.clone(), ctx.clone(), key.clone());
        let joined = tokio::task::spawn_blocking(move || handle(rec2.as_ref(), &ctx2, &key2)).await;
        let (result, next) = match joined {
            Ok(r) => r,
            Err(e) => (
                Err(ReconcileError::Other(format!("reconcile panicked: {e}"))),
                None,
            ),
        };
        let failed = matches!(
            result,
            Err(ReconcileError::Store(_)) | Err(ReconcileError::Other(_))
        );
        if let Err(e) = &result {
            tracing::warn!(controller = rec.name(), key = %key, "reconcile failed: {e}");
        }
        if let Some(wait) = queue.done(&key, failed) {
            queue.add_after(key.clone(), wait);
        }
        if let Some(delay) = next {
            if delay.is_zero() {
                queue.add(key);
            } else {
                queue.add_after(key, delay);
            }
        }
    }
    watcher.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> ObjectKey {
        ObjectKey::new(Kind::Deployment, "default", n)
    }

    #[test]
    fn queue_deduplicates_and_defers_keys_in_progress() {
        let q = WorkQueue::default();
        q.add(key("a"));
        q.add(key("a"));
        q.add(key("b"));
        assert_eq!(q.len(), 2);
        let a = q.try_pop().unwrap();
        q.add(key("a")); // changed while being processed: not handed to a second worker
        assert_eq!(q.try_pop(), Some(key("b")));
        assert_eq!(q.try_pop(), None);
        assert_eq!(q.done(&a, false), None);
        assert_eq!(q.try_pop(), Some(key("a")), "queued again once done");
    }

    #[test]
    fn a_key_waits_once_for_the_earliest_time_asked() {
        // Paused time: sleeps end exactly when due, however loaded the machine.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let q = WorkQueue::new();
            // A node's heartbeat every second asking for its grace period, many times over.
            for n in 0..1000u64 {
                q.add_after(key("a"), Duration::from_millis(300 + n));
            }
            q.add_after(key("b"), Duration::from_secs(600));
            assert_eq!(q.waiting(), 2);
            // An earlier time replaces the later one.
            q.add_after(key("b"), Duration::from_millis(100));
            assert_eq!(q.waiting(), 2);
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(q.try_pop(), Some(key("b")));
            assert_eq!(q.try_pop(), None, "a waits for its earliest time, 300 ms");
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(q.try_pop(), Some(key("a")));
            assert_eq!(q.waiting(), 0);
            tokio::time::sleep(Duration::from_millis(1200)).await;
            assert_eq!(q.try_pop(), None, "added once, not once per ask");
        });
    }

    #[test]
    fn failures_back_off_exponentially_and_reset() {
        let q = WorkQueue::default();
        q.add(key("a"));
        let k = q.try_pop().unwrap();
        assert_eq!(q.done(&k, true), Some(Duration::from_millis(100)));
        q.add(key("a"));
        let k = q.try_pop().unwrap();
        assert_eq!(q.done(&k, true), Some(Duration::from_millis(200)));
        q.add(key("a"));
        let k = q.try_pop().unwrap();
        assert_eq!(q.done(&k, false), None);
        assert_eq!(backoff(30), Duration::from_secs(30));
    }
}
