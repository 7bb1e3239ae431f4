//! The guard returned by `Source::watch`: it owns the file watcher and the helper threads, and
//! stops them when dropped.

use std::sync::mpsc;
use std::thread::JoinHandle;

/// A message to a watch thread: a file event to consider, or the order to stop.
pub(crate) enum Signal {
    Event,
    Stop,
}

/// Keeps a watch alive; dropping it stops the watcher and joins the threads.
pub(crate) struct WatchGuard {
    pub(crate) watcher: Option<notify::RecommendedWatcher>,
    pub(crate) threads: Vec<(mpsc::Sender<Signal>, JoinHandle<()>)>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        // The watcher goes first, so no event arrives at a thread that is stopping.
        drop(self.watcher.take());
        for (stop, thread) in self.threads.drain(..) {
            // A send error means the thread has already ended; joining is still right.
            let _ = stop.send(Signal::Stop);
            if thread.join().is_err() {
                tracing::warn!("a source watch thread panicked");
            }
        }
    }
}

/// Sends one notification without waiting: a full channel already holds a pending notification,
/// which covers this change too.
pub(crate) fn poke(notify: &tokio::sync::mpsc::Sender<()>) {
    let _ = notify.try_send(());
}
