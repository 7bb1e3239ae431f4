//! Handing the memory the agent freed back to the system.
//!
//! Why: glibc keeps freed memory in its arenas for reuse, so the agent's resident memory
//! would stay at the peak of its busiest moment (the first list of every Service and
//! Endpoints, the first full sync of the Service proxy, 50 containers starting at once)
//! for as long as it runs. `malloc_trim` releases the free pages inside the arenas, not
//! only at their tops; measured with 50 pods and 2,000 Services it is worth several MiB
//! (docs/performance.md). It walks only the free chunks of two arenas (the agent caps
//! them), well under a millisecond at the agent's heap size, so once per [`TRIM_PERIOD`]
//! costs nothing measurable.

use std::time::Duration;

use tokio::sync::watch;

/// How often freed memory is handed back.
pub const TRIM_PERIOD: Duration = Duration::from_secs(10);

/// Releases the free pages of every malloc arena; whether any were released.
pub fn release_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it has no
        // preconditions and is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Releases freed memory every [`TRIM_PERIOD`] until `shutdown`.
pub async fn keep_releasing(mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(TRIM_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {
                release_freed_memory();
            }
            _ = super::stopped(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn free_pages_between_live_blocks_are_released() {
        // Blocks of 64 KiB (below the mmap threshold: they come from an arena), each
        // followed by a small one that stays: freeing the large ones leaves free pages
        // between live memory, which glibc keeps (they are not at the arena's top).
        let pinned = std::thread::spawn(|| {
            let mut large = Vec::new();
            let mut small = Vec::new();
            for i in 0..64u8 {
                large.push(vec![i; 64 * 1024]);
                small.push(vec![i; 16]);
            }
            drop(large);
            let released = release_freed_memory();
            (released, small.len())
        })
        .join();
        assert!(
            matches!(pinned, Ok((true, 64))),
            "malloc_trim released the free pages"
        );
    }

    #[tokio::test]
    async fn the_release_loop_stops_at_shutdown() {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(keep_releasing(rx));
        assert!(tx.send(true).is_ok());
        let stopped = tokio::time::timeout(Duration::from_secs(30), task).await;
        assert!(stopped.is_ok_and(|r| r.is_ok()), "the loop ended");
    }
}
