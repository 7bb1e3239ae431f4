//! The periodic pass over a node's pods (every `--sync-period`), worked through by a few
//! blocking tasks instead of one per pod.
//!
//! One blocking task per pod and period kept a thread per pod alive: tokio's blocking pool
//! wakes its longest-idle thread first, so 50 pods synced every 2 s touched each of ~50
//! threads more often than the keep-alive, and none ever ended; each kept its stack and its
//! allocator cache (a third of the agent's memory). A few workers taking pods from one queue
//! start a few tasks per period, and the pool's spare threads end.
//!
//! A change to a pod must not wait behind the periodic pass: [`PeriodicSyncs::take_back`]
//! takes a pod that has not started its periodic sync out of the queue, so that the change is
//! synced at once instead.

use std::collections::VecDeque;
use std::sync::Mutex;

/// The queue of pods waiting for their periodic sync, and how many workers take from it.
pub struct PeriodicSyncs<T> {
    state: Mutex<State<T>>,
    max_workers: usize,
}

struct State<T> {
    queue: VecDeque<(String, T)>,
    workers: usize,
}

impl<T> PeriodicSyncs<T> {
    pub fn new(max_workers: usize) -> Self {
        PeriodicSyncs {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                workers: 0,
            }),
            max_workers: max_workers.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues pods (by uid) for their periodic sync; returns how many workers to start
    /// (counted as working from now on), at most one per queued pod in all.
    pub fn push(&self, pods: impl IntoIterator<Item = (String, T)>) -> usize {
        let mut s = self.lock();
        s.queue.extend(pods);
        let wanted = s.queue.len().min(self.max_workers);
        let start = wanted.saturating_sub(s.workers);
        s.workers += start;
        start
    }

    /// The next pod for a worker. `None` when the queue is empty, and the worker is counted
    /// out then (under the same lock as `push` counts, so none is missed).
    pub fn next(&self) -> Option<(String, T)> {
        let mut s = self.lock();
        let next = s.queue.pop_front();
        if next.is_none() {
            s.workers = s.workers.saturating_sub(1);
        }
        next
    }

    /// Takes `uid` out of the queue if its periodic sync has not started.
    pub fn take_back(&self, uid: &str) -> bool {
        let mut s = self.lock();
        match s.queue.iter().position(|(u, _)| u == uid) {
            Some(at) => {
                s.queue.remove(at);
                true
            }
            None => false,
        }
    }

    /// Pods waiting, and workers counted as working.
    #[cfg(test)]
    fn load(&self) -> (usize, usize) {
        let s = self.lock();
        (s.queue.len(), s.workers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(range: std::ops::Range<u32>) -> Vec<(String, u32)> {
        range.map(|n| (format!("uid-{n}"), n)).collect()
    }

    #[test]
    fn a_few_workers_take_every_pod_once() {
        let periodic = PeriodicSyncs::new(4);
        assert_eq!(periodic.push(pods(0..50)), 4);
        // Another period before the first is through: no more workers than the bound.
        assert_eq!(periodic.push(pods(50..60)), 0);
        let mut seen = Vec::new();
        while let Some((_, n)) = periodic.next() {
            seen.push(n);
        }
        assert_eq!(seen, (0..60).collect::<Vec<_>>());
        assert_eq!(periodic.load(), (0, 3), "one worker counted out");
        for _ in 0..3 {
            assert!(periodic.next().is_none());
        }
        assert_eq!(periodic.load(), (0, 0));
        assert_eq!(periodic.push(pods(0..2)), 2, "never more workers than pods");
        assert_eq!(periodic.push(pods(2..3)), 1);
    }

    #[test]
    fn a_changed_pod_is_taken_back_until_its_sync_starts() {
        let periodic = PeriodicSyncs::new(2);
        periodic.push(pods(0..3));
        assert!(periodic.take_back("uid-1"));
        assert!(!periodic.take_back("uid-1"));
        assert_eq!(periodic.next().map(|p| p.1), Some(0));
        assert!(
            !periodic.take_back("uid-0"),
            "started: the change waits for it"
        );
        assert_eq!(periodic.next().map(|p| p.1), Some(2));
        assert!(periodic.next().is_none());
    }
}
