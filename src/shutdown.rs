//! How daemons (`serve`, `sim-node`, later `agent` and `up`) learn to stop: SIGINT or SIGTERM.

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what systemd and `kill` send).
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
