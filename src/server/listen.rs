//! The accept loop: HTTP/1.1 connections served by hyper with the connection-level bounds
//! axum's own `serve` cannot set: a deadline on each request's head (a client sending its
//! headers byte by byte, or nothing, is cut off), a cap on open connections, and TCP_NODELAY
//! (small answers and watch events go out without waiting for Nagle's algorithm).
//!
//! On shutdown the listener closes, every connection finishes the request in progress (open
//! watches end through [`ShutdownSignal`]), and `serve` returns once all are gone.

use super::limits::Limits;
use super::watch::ShutdownSignal;
use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// The bounds of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
}

impl From<&Limits> for ConnectionLimits {
    fn from(limits: &Limits) -> Self {
        ConnectionLimits {
            header_read_timeout: limits.header_read_timeout,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_maybe_tls(listener, router, limits, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given: the handshake happens in the connection's own
/// task (bounded by the time a client has to send its request head), then the connection
/// gets the same bounds as plain HTTP.
pub async fn serve_maybe_tls(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (down_tx, down_rx) = tokio::sync::watch::channel(false);
    let app = router.layer(Extension(ShutdownSignal(down_rx.clone())));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let conn_limits = ConnectionLimits::from(limits);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap the finished connections' tasks, so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "setting TCP_NODELAY: {e}");
        }
        let app = app.clone();
        let down = down_rx.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, peer, app, conn_limits, down).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(conn_limits.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, app, conn_limits, down).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    let _ = down_tx.send(true);
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Errors of `accept` that concern one connection are skipped; others (too many open files)
/// get a short pause, so the loop does not spin, as axum's `serve` does.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::warn!("accepting a connection: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one connection (any byte stream: TCP, or TLS over it) until the client closes it,
/// it breaks a bound, or the server shuts down.
pub async fn serve_connection<S>(
    io: S,
    peer: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    mut down: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = app.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            return;
        }
        _ = down.wait_for(|d| *d) => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, "connection ended at shutdown: {e}");
    }
}
