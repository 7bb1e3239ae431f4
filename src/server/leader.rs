//! Leader election among `tend serve` replicas that share an etcd store: only the leader runs
//! the source loop, the controllers and the scheduler; every replica serves the API.
//!
//! As Kubernetes' leader election (client-go `leaderelection`): a lease of 15 s, renewed every
//! 5 s, and a renew deadline of 10 s after which a leader that could not renew stops leading,
//! so that it has stopped before its lease can expire and another replica can win. Unlike
//! client-go, which keeps a timestamp in a Lease object and lets followers judge it on their own
//! clocks, etcd keeps the time: the key `/tend-leader` is created in a transaction only when
//! absent (`create_revision == 0`) with an etcd lease attached, so etcd itself deletes it when
//! the leader stops renewing, and followers watch the key and campaign when it goes.
//!
//! The decisions (when to campaign, renew, step down) are [`Elector`], pure and driven by the
//! clock it is given; the etcd calls are behind [`LeaseBackend`] ([`EtcdLease`] for real, a
//! fake in the tests); [`run`] drives one with the other.

use crate::api::{Kind, ObjectKey};
use crate::store::{Committed, Op, Store, StoreError};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The etcd key the leader holds; its value is the leader's identity. It lies outside
/// `/tend/`, where the store keeps objects (and watches), so elections make no store events.
pub const LEADER_KEY: &str = "/tend-leader";

/// The lease's timing. The renew deadline is below the TTL: a leader that has not renewed for
/// `renew_deadline` stops leading while its lease still has `ttl - renew_deadline` to run, so
/// two replicas never both believe they lead (as long as clocks advance at similar rates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The etcd lease's time to live: how long a dead leader keeps the key.
    pub ttl: Duration,
    /// How often the leader renews (keep-alive).
    pub renew_every: Duration,
    /// How long after its last successful renewal a leader stops leading.
    pub renew_deadline: Duration,
    /// How long a follower waits between campaigns (it also watches the key), and a leader
    /// between failed renewals.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            ttl: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Try to take the key.
    Campaign,
    /// Renew the lease (and check the key is still ours).
    Renew,
    /// Leadership is lost: stop leading now.
    StepDown,
    /// Nothing before this much time has passed (a follower also wakes when the key goes).
    Wait(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Follower {
        next_campaign: Instant,
    },
    /// `renewed` is when the last successful renewal (or the winning campaign) was SENT: the
    /// server restarted the lease's TTL no earlier, so the lease lives at least until
    /// `renewed + ttl`.
    Leader {
        renewed: Instant,
        next_renew: Instant,
    },
    /// Leadership was lost; a replica does not lead again without restarting.
    Lost,
}

/// The election's decisions, given the time and the results of the calls.
#[derive(Debug, Clone)]
pub struct Elector {
    timing: Timing,
    role: Role,
}

impl Elector {
    /// A follower that campaigns at once.
    pub fn new(timing: Timing, now: Instant) -> Elector {
        Elector {
            timing,
            role: Role::Follower { next_campaign: now },
        }
    }

    pub fn next(&self, now: Instant) -> Step {
        match self.role {
            Role::Follower { next_campaign } => {
                if now >= next_campaign {
                    Step::Campaign
                } else {
                    Step::Wait(next_campaign - now)
                }
            }
            Role::Leader {
                renewed,
                next_renew,
            } => {
                let deadline = renewed + self.timing.renew_deadline;
                if now >= deadline {
                    Step::StepDown
                } else if now >= next_renew {
                    Step::Renew
                } else {
                    Step::Wait(next_renew.min(deadline) - now)
                }
            }
            Role::Lost => Step::StepDown,
        }
    }

    /// The campaign sent at `sent` won the key.
    pub fn won(&mut self, sent: Instant) {
        if let Role::Follower { .. } = self.role {
            self.role = Role::Leader {
                renewed: sent,
                next_renew: sent + self.timing.renew_every,
            };
        }
    }

    /// Another replica holds the key (or the call failed): campaign again after `retry`, or
    /// earlier when the key goes ([`Elector::key_gone`]).
    pub fn lost_campaign(&mut self, now: Instant) {
        if let Role::Follower { .. } = self.role {
            self.role = Role::Follower {
                next_campaign: now + self.timing.retry,
            };
        }
    }

    /// The key is gone (deleted, or its lease expired): a follower campaigns now.
    pub fn key_gone(&mut self, now: Instant) {
        if let Role::Follower { .. } = self.role {
            self.role = Role::Follower { next_campaign: now };
        }
    }

    /// The renewal sent at `sent` succeeded: the lease and the key are still ours.
    pub fn renewed(&mut self, sent: Instant) {
        if let Role::Leader { renewed, .. } = self.role {
            self.role = Role::Leader {
                renewed: renewed.max(sent),
                next_renew: sent + self.timing.renew_every,
            };
        }
    }

    /// The renewal did not get an answer: try again after `retry` (the deadline still holds).
    pub fn renew_failed(&mut self, now: Instant) {
        if let Role::Leader { renewed, .. } = self.role {
            self.role = Role::Leader {
                renewed,
                next_renew: now + self.timing.retry,
            };
        }
    }

    /// etcd answered that the lease expired or the key is no longer ours: stop at once.
    pub fn lease_lost(&mut self) {
        if let Role::Leader { .. } = self.role {
            self.role = Role::Lost;
        }
    }

    /// Whether this replica may act as leader at `now`.
    pub fn leading(&self, now: Instant) -> bool {
        self.valid_until().is_some_and(|until| now < until)
    }

    /// Until when this replica may act as leader (its renew deadline), if it leads.
    pub fn valid_until(&self) -> Option<Instant> {
        match self.role {
            Role::Leader { renewed, .. } => Some(renewed + self.timing.renew_deadline),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("leader election on etcd {endpoints}: {reason}")]
    Etcd { endpoints: String, reason: String },
}

/// The result of a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    /// The key is ours, attached to this lease.
    Won(i64),
    /// Another replica holds it (its identity).
    Held(String),
}

/// The few etcd calls the election needs.
pub trait LeaseBackend: Send + Sync {
    /// Creates `key = value` attached to a new lease of `ttl` only when the key does not exist.
    fn campaign(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Campaign, ElectionError>> + Send;
    /// Renews `lease` once; `false` when it has expired or `key` is no longer attached to it.
    fn renew(
        &self,
        key: &str,
        lease: i64,
    ) -> impl Future<Output = Result<bool, ElectionError>> + Send;
    /// Returns when `key` does not exist, or after `max`.
    fn wait_absent(
        &self,
        key: &str,
        max: Duration,
    ) -> impl Future<Output = Result<(), ElectionError>> + Send;
    /// Gives the key up (revokes the lease), so that another replica need not wait for the TTL.
    fn resign(&self, lease: i64) -> impl Future<Output = Result<(), ElectionError>> + Send;
}

/// Who leads, as this replica last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderStatus {
    /// This replica's identity.
    pub identity: String,
    /// Whether this replica leads.
    pub leading: bool,
    /// The leader's identity, when known.
    pub leader: Option<String>,
}

impl LeaderStatus {
    /// The JSON of `GET /apis/tend.dev/v1/leader`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "tend.dev/v1",
            "kind": "Leader",
            "identity": self.identity,
            "leading": self.leading,
            "leader": self.leader,
        })
    }
}

/// Refuses the leader's store writes once its renew deadline has passed, even before the
/// election loop has noticed (a process resumed after SIGSTOP runs its other tasks too): the
/// check is against the clock, not etcd, so it costs nothing.
#[derive(Debug, Default)]
pub struct Fence {
    until: Mutex<Option<Instant>>,
}

impl Fence {
    /// A fence that lets writes through until `until` (`None`: never).
    pub fn set(&self, until: Option<Instant>) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    pub fn allows(&self, now: Instant) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| now < until)
    }
}

/// How an election ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was asked for (the key was given up if held).
    Stopped,
    /// This replica led and lost leadership.
    LostLeadership,
}

/// Campaigns, leads and renews until `stop` or until leadership is lost; `status` follows
/// who leads; `fence` lets the leader's writes through only before its renew deadline.
pub async fn run<B: LeaseBackend>(
    backend: &B,
    timing: Timing,
    status: &watch::Sender<LeaderStatus>,
    fence: &Fence,
    mut stop: watch::Receiver<bool>,
) -> Ended {
    let identity = status.borrow().identity.clone();
    let now = || tokio::time::Instant::now().into_std();
    let mut elector = Elector::new(timing, now());
    let mut lease: Option<i64> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let step = elector.next(now());
        match step {
            Step::Campaign => {
                let sent = now();
                let outcome = tokio::select! {
                    outcome = tokio::time::timeout(timing.renew_deadline, backend.campaign(LEADER_KEY, &identity, timing.ttl)) => outcome,
                    _ = stopped(&mut stop) => break,
                };
                match outcome {
                    Ok(Ok(Campaign::Won(id))) => {
                        elector.won(sent);
                        lease = Some(id);
                        fence.set(elector.valid_until());
                        tracing::info!(%identity, "elected leader");
                        status.send_modify(|s| {
                            s.leading = true;
                            s.leader = Some(identity.clone());
                        });
                    }
                    Ok(Ok(Campaign::Held(holder))) => {
                        elector.lost_campaign(now());
                        status.send_if_modified(|s| {
                            let changed = s.leader.as_deref() != Some(holder.as_str());
                            s.leader = Some(holder.clone());
                            changed
                        });
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("campaigning: {e}");
                        elector.lost_campaign(now());
                    }
                    Err(_) => {
                        tracing::warn!("campaigning: no answer from etcd");
                        elector.lost_campaign(now());
                    }
                }
            }
            Step::Renew => {
                let Some(id) = lease else {
                    elector.lease_lost();
                    continue;
                };
                let sent = now();
                let left = elector.valid_until().map_or(Duration::ZERO, |until| {
                    until.saturating_duration_since(sent)
                });
                let outcome = tokio::select! {
                    outcome = tokio::time::timeout(left, backend.renew(LEADER_KEY, id)) => outcome,
                    _ = stopped(&mut stop) => break,
                };
                match outcome {
                    Ok(Ok(true)) => {
                        elector.renewed(sent);
                        fence.set(elector.valid_until());
                    }
                    Ok(Ok(false)) => {
                        tracing::warn!("the leader lease expired or the key was taken");
                        elector.lease_lost();
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("renewing the leader lease: {e}");
                        elector.renew_failed(now());
                    }
                    Err(_) => {
                        tracing::warn!("renewing the leader lease: no answer from etcd");
                        elector.renew_failed(now());
                    }
                }
            }
            Step::StepDown => {
                fence.set(None);
                status.send_modify(|s| {
                    s.leading = false;
                    s.leader = None;
                });
                tracing::error!(%identity, "lost leadership");
                return Ended::LostLeadership;
            }
            Step::Wait(wait) => {
                if elector.valid_until().is_some() {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stopped(&mut stop) => break,
                    }
                } else {
                    tokio::select! {
                        gone = backend.wait_absent(LEADER_KEY, wait) => match gone {
                            Ok(()) => elector.key_gone(now()),
                            Err(e) => {
                                // etcd is unreachable: wait out the retry period.
                                tracing::debug!("watching the leader key: {e}");
                                tokio::time::sleep(wait.min(timing.retry)).await;
                            }
                        },
                        _ = stopped(&mut stop) => break,
                    }
                }
            }
        }
    }
    fence.set(None);
    if let Some(id) = lease {
        // Give the key up so that another replica takes over at once, not after the TTL.
        if let Err(e) = tokio::time::timeout(timing.retry, backend.resign(id))
            .await
            .unwrap_or(Ok(()))
        {
            tracing::warn!("giving up leadership: {e}");
        }
    }
    status.send_modify(|s| s.leading = false);
    Ended::Stopped
}

/// Returns when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// This replica's identity: host name, listen address and process id.
pub fn identity(listen: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "localhost".into()
    } else {
        host
    };
    format!("{host}/{listen}/pid-{}", std::process::id())
}

/// The election's etcd calls on a real etcd.
pub struct EtcdLease {
    client: etcd_client::Client,
    endpoints: String,
}

impl EtcdLease {
    /// Connects to `endpoints` (`HOST:PORT` or `http://HOST:PORT`).
    pub async fn connect(endpoints: &[String]) -> Result<EtcdLease, ElectionError> {
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(3));
        let client = etcd_client::Client::connect(&urls, Some(options))
            .await
            .map_err(|e| ElectionError::Etcd {
                endpoints: urls.join(","),
                reason: e.to_string(),
            })?;
        Ok(EtcdLease {
            client,
            endpoints: urls.join(","),
        })
    }

    /// The connection, for the other replicas' shared state (node credentials).
    pub fn client(&self) -> etcd_client::Client {
        self.client.clone()
    }

    fn error(&self, what: &str, e: etcd_client::Error) -> ElectionError {
        ElectionError::Etcd {
            endpoints: self.endpoints.clone(),
            reason: format!("{what}: {e}"),
        }
    }
}

impl LeaseBackend for EtcdLease {
    async fn campaign(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Campaign, ElectionError> {
        use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
        let mut client = self.client.clone();
        let current = client
            .get(key, None)
            .await
            .map_err(|e| self.error("reading the leader key", e))?;
        if let Some(kv) = current.kvs().first() {
            return Ok(Campaign::Held(String::from_utf8_lossy(kv.value()).into()));
        }
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(15).max(1);
        let lease = client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| self.error("granting a lease", e))?
            .id();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let answer = match client.txn(txn).await {
            Ok(answer) => answer,
            Err(e) => {
                let _ = client.lease_revoke(lease).await;
                return Err(self.error("creating the leader key", e));
            }
        };
        if answer.succeeded() {
            return Ok(Campaign::Won(lease));
        }
        let _ = client.lease_revoke(lease).await;
        let holder = answer
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Campaign::Held(holder))
    }

    async fn renew(&self, key: &str, lease: i64) -> Result<bool, ElectionError> {
        let mut client = self.client.clone();
        // Opening the keep-alive stream sends one renewal and reads its answer (an error
        // "lease not found" when the lease has expired).
        match client.lease_keep_alive(lease).await {
            Ok(_) => {}
            Err(etcd_client::Error::LeaseKeepAliveError(reason))
                if reason.contains("not found") =>
            {
                return Ok(false);
            }
            Err(e) => return Err(self.error("renewing the lease", e)),
        }
        let current = client
            .get(key, None)
            .await
            .map_err(|e| self.error("reading the leader key", e))?;
        Ok(current.kvs().first().is_some_and(|kv| kv.lease() == lease))
    }

    async fn wait_absent(&self, key: &str, max: Duration) -> Result<(), ElectionError> {
        let mut client = self.client.clone();
        let wait = async {
            let current = client
                .get(key, None)
                .await
                .map_err(|e| self.error("reading the leader key", e))?;
            let Some(kv) = current.kvs().first() else {
                return Ok(());
            };
            let from = kv.mod_revision() + 1;
            let mut stream = client
                .watch(
                    key,
                    Some(etcd_client::WatchOptions::new().with_start_revision(from)),
                )
                .await
                .map_err(|e| self.error("watching the leader key", e))?;
            while let Some(answer) = stream
                .message()
                .await
                .map_err(|e| self.error("watching the leader key", e))?
            {
                if answer.canceled() {
                    break;
                }
                if answer
                    .events()
                    .iter()
                    .any(|e| e.event_type() == etcd_client::EventType::Delete)
                {
                    return Ok(());
                }
            }
            Err(ElectionError::Etcd {
                endpoints: self.endpoints.clone(),
                reason: "the watch of the leader key ended".into(),
            })
        };
        match tokio::time::timeout(max, wait).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    async fn resign(&self, lease: i64) -> Result<(), ElectionError> {
        let mut client = self.client.clone();
        client
            .lease_revoke(lease)
            .await
            .map_err(|e| self.error("revoking the lease", e))?;
        Ok(())
    }
}

/// The path of the leader endpoint: who leads, as the answering replica sees it.
pub const LEADER_PATH: &str = "/apis/tend.dev/v1/leader";

/// Adds `GET /apis/tend.dev/v1/leader` to the API: any valid token may read it.
pub fn route(
    router: axum::Router,
    tokens: crate::server::Tokens,
    status: watch::Receiver<LeaderStatus>,
) -> axum::Router {
    use axum::response::IntoResponse;
    router.route(
        LEADER_PATH,
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let answer = match crate::server::auth::authenticate(&tokens, &headers) {
                Some(_) => axum::Json(status.borrow().to_json()).into_response(),
                None => crate::server::ApiError::unauthorized().into_response(),
            };
            std::future::ready(answer)
        }),
    )
}

/// The endpoints of `--store etcd://HOST:PORT[,HOST:PORT..]`; `None` for another store.
pub fn etcd_endpoints(store: &str) -> Option<Vec<String>> {
    let rest = store.strip_prefix("etcd://")?;
    let endpoints: Vec<String> = rest
        .split(',')
        .map(|e| e.trim().trim_start_matches("etcd://").trim_end_matches('/'))
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    Some(endpoints)
}

/// The store as the leader's source loop and controllers see it: reads go through, writes
/// only while the [`Fence`] allows them, so a replica that lost leadership (paused, cut off
/// from etcd) cannot write between its renew deadline and the moment it exits.
pub struct FencedStore {
    inner: std::sync::Arc<dyn Store>,
    fence: std::sync::Arc<Fence>,
}

impl FencedStore {
    pub fn new(inner: std::sync::Arc<dyn Store>, fence: std::sync::Arc<Fence>) -> FencedStore {
        FencedStore { inner, fence }
    }
}

impl Store for FencedStore {
    fn get(&self, key: &ObjectKey) -> Result<Option<serde_json::Value>, StoreError> {
        self.inner.get(key)
    }
    fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<serde_json::Value>, u64), StoreError> {
        self.inner.list(kind, namespace)
    }
    fn visit(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        each: &mut dyn FnMut(serde_json::Value),
    ) -> Result<u64, StoreError> {
        self.inner.visit(kind, namespace, each)
    }
    fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        if !self.fence.allows(Instant::now()) {
            return Err(StoreError::Backend {
                path: LEADER_KEY.into(),
                reason: "this replica is no longer the leader; the write was refused".into(),
            });
        }
        self.inner.commit(ops)
    }
    fn watch(&self, from_rv: u64) -> Result<crate::store::Watch, StoreError> {
        self.inner.watch(from_rv)
    }
    fn current_rv(&self) -> u64 {
        self.inner.current_rv()
    }
    fn list_owned(
        &self,
        kind: Kind,
        namespace: &str,
        owner_uid: &str,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        self.inner.list_owned(kind, namespace, owner_uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_new_replica_campaigns_at_once() {
        let t0 = Instant::now();
        let e = Elector::new(Timing::default(), t0);
        assert_eq!(e.next(t0), Step::Campaign);
        assert!(!e.leading(t0));
    }

    #[test]
    fn a_loser_waits_the_retry_period_or_until_the_key_goes() {
        let t0 = Instant::now();
        let mut e = Elector::new(Timing::default(), t0);
        e.lost_campaign(t0);
        assert_eq!(e.next(t0 + secs(1)), Step::Wait(secs(1)));
        assert_eq!(e.next(t0 + secs(2)), Step::Campaign);
        e.key_gone(t0 + secs(1));
        assert_eq!(e.next(t0 + secs(1)), Step::Campaign);
        assert!(!e.leading(t0 + secs(1)));
    }

    #[test]
    fn a_leader_renews_every_five_seconds_counted_from_the_send() {
        let t0 = Instant::now();
        let mut e = Elector::new(Timing::default(), t0);
        e.won(t0);
        assert!(e.leading(t0));
        assert_eq!(e.next(t0 + secs(1)), Step::Wait(secs(4)));
        assert_eq!(e.next(t0 + secs(5)), Step::Renew);
        // The renewal sent at 5 s answered at 6 s: the next one is due at 10 s, and the
        // deadline moves to 15 s (10 s after the send, not the answer).
        e.renewed(t0 + secs(5));
        assert_eq!(e.next(t0 + secs(6)), Step::Wait(secs(4)));
        assert_eq!(e.valid_until(), Some(t0 + secs(15)));
        assert!(e.leading(t0 + secs(14)));
    }

    #[test]
    fn a_leader_that_cannot_renew_steps_down_before_the_lease_can_expire() {
        let timing = Timing::default();
        let t0 = Instant::now();
        let mut e = Elector::new(timing, t0);
        e.won(t0);
        let mut now = t0 + secs(5);
        let mut steps = Vec::new();
        loop {
            let step = e.next(now);
            steps.push(step);
            match step {
                Step::Renew => e.renew_failed(now),
                Step::Wait(d) => now += d,
                Step::StepDown => break,
                Step::Campaign => panic!("a leader does not campaign"),
            }
            assert!(steps.len() < 100, "no step down: {steps:?}");
        }
        // It stepped down at the renew deadline, 5 s before etcd could expire the lease
        // (granted no earlier than t0, the send).
        assert_eq!(now, t0 + timing.renew_deadline);
        assert!(now < t0 + timing.ttl);
        assert!(!e.leading(now));
        let renewals = steps.iter().filter(|s| **s == Step::Renew).count();
        assert!(renewals >= 3, "it retried: {steps:?}");
    }

    #[test]
    fn a_paused_leader_steps_down_when_it_resumes() {
        let t0 = Instant::now();
        let mut e = Elector::new(Timing::default(), t0);
        e.won(t0);
        // SIGSTOP for 30 s: the first thing it decides after SIGCONT is to step down.
        assert_eq!(e.next(t0 + secs(30)), Step::StepDown);
        assert!(!e.leading(t0 + secs(30)));
        // A late answer to a renewal sent before the pause does not bring it back.
        e.renewed(t0 + secs(4));
        assert_eq!(e.next(t0 + secs(30)), Step::StepDown);
    }

    #[test]
    fn a_lost_lease_is_final() {
        let t0 = Instant::now();
        let mut e = Elector::new(Timing::default(), t0);
        e.won(t0);
        e.lease_lost();
        assert_eq!(e.next(t0), Step::StepDown);
        e.renewed(t0);
        e.won(t0);
        assert_eq!(e.next(t0), Step::StepDown, "no way back without a restart");
        assert!(!e.leading(t0));
    }

    #[test]
    fn followers_ignore_leader_events_and_leaders_ignore_follower_events() {
        let t0 = Instant::now();
        let mut e = Elector::new(Timing::default(), t0);
        e.lost_campaign(t0);
        e.renewed(t0);
        e.renew_failed(t0);
        e.lease_lost();
        assert_eq!(e.next(t0), Step::Wait(secs(2)));
        e.won(t0);
        e.key_gone(t0);
        e.lost_campaign(t0);
        assert_eq!(e.next(t0), Step::Wait(secs(5)));
    }

    #[test]
    fn etcd_endpoints_are_parsed_from_the_store_flag() {
        assert_eq!(etcd_endpoints("redb"), None);
        assert_eq!(
            etcd_endpoints("etcd://10.0.0.1:2379,10.0.0.2:2379/"),
            Some(vec![
                "10.0.0.1:2379".to_string(),
                "10.0.0.2:2379".to_string()
            ])
        );
        assert_eq!(
            etcd_endpoints("etcd://a:1,etcd://b:2"),
            Some(vec!["a:1".to_string(), "b:2".to_string()])
        );
    }

    #[test]
    fn a_fenced_store_refuses_writes_once_the_fence_closes() {
        let inner: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(crate::store::memory::MemoryStore::new());
        let fence = std::sync::Arc::new(Fence::default());
        let store = FencedStore::new(inner.clone(), fence.clone());
        let node =
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}});
        fence.set(Some(Instant::now() + secs(60)));
        store
            .commit(vec![Op::Create(node.clone())])
            .expect("leader writes");
        fence.set(None);
        let refused = store.commit(vec![Op::Delete {
            key: ObjectKey::new(Kind::Node, "", "n1"),
            expect_rv: None,
        }]);
        assert!(
            matches!(refused, Err(StoreError::Backend { .. })),
            "{refused:?}"
        );
        assert!(
            store
                .get(&ObjectKey::new(Kind::Node, "", "n1"))
                .expect("get")
                .is_some()
        );
    }

    #[test]
    fn the_fence_closes_at_the_deadline() {
        let t0 = Instant::now();
        let fence = Fence::default();
        assert!(!fence.allows(t0));
        fence.set(Some(t0 + secs(10)));
        assert!(fence.allows(t0 + secs(9)));
        assert!(!fence.allows(t0 + secs(10)));
        fence.set(None);
        assert!(!fence.allows(t0));
    }

    /// An in-memory etcd: one key, leases that expire on tokio's (paused) clock, and a switch
    /// that makes every call fail (etcd unreachable). Records the calls.
    #[derive(Default)]
    struct FakeEtcd {
        state: Mutex<FakeState>,
    }

    #[derive(Default)]
    struct FakeState {
        /// (value, lease) of the key.
        key: Option<(String, i64)>,
        /// lease id -> expiry.
        leases: std::collections::BTreeMap<i64, tokio::time::Instant>,
        next_lease: i64,
        down: bool,
        calls: Vec<String>,
    }

    impl FakeState {
        fn expire(&mut self) {
            let now = tokio::time::Instant::now();
            self.leases.retain(|_, until| *until > now);
            if let Some((_, lease)) = &self.key
                && !self.leases.contains_key(lease)
            {
                self.key = None;
            }
        }
    }

    impl FakeEtcd {
        fn with<T>(
            &self,
            call: &str,
            f: impl FnOnce(&mut FakeState) -> T,
        ) -> Result<T, ElectionError> {
            let mut s = self.state.lock().expect("lock");
            s.calls.push(call.to_string());
            s.expire();
            if s.down {
                return Err(ElectionError::Etcd {
                    endpoints: "fake".into(),
                    reason: "down".into(),
                });
            }
            Ok(f(&mut s))
        }
        fn holder(&self) -> Option<String> {
            let mut s = self.state.lock().expect("lock");
            s.expire();
            s.key.as_ref().map(|(v, _)| v.clone())
        }
        fn set_down(&self, down: bool) {
            self.state.lock().expect("lock").down = down;
        }
    }

    impl LeaseBackend for FakeEtcd {
        async fn campaign(
            &self,
            _: &str,
            value: &str,
            ttl: Duration,
        ) -> Result<Campaign, ElectionError> {
            self.with("campaign", |s| {
                if let Some((holder, _)) = &s.key {
                    return Campaign::Held(holder.clone());
                }
                s.next_lease += 1;
                let id = s.next_lease;
                s.leases.insert(id, tokio::time::Instant::now() + ttl);
                s.key = Some((value.to_string(), id));
                Campaign::Won(id)
            })
        }
        async fn renew(&self, _: &str, lease: i64) -> Result<bool, ElectionError> {
            self.with("renew", |s| {
                let Some(until) = s.leases.get_mut(&lease) else {
                    return false;
                };
                *until = tokio::time::Instant::now() + Timing::default().ttl;
                s.key.as_ref().is_some_and(|(_, l)| *l == lease)
            })
        }
        async fn wait_absent(&self, _: &str, max: Duration) -> Result<(), ElectionError> {
            // Polls: the fake has no watch.
            let until = tokio::time::Instant::now() + max;
            while tokio::time::Instant::now() < until {
                if self.with("wait", |s| s.key.is_none())? {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        }
        async fn resign(&self, lease: i64) -> Result<(), ElectionError> {
            self.with("resign", |s| {
                s.leases.remove(&lease);
                if s.key.as_ref().is_some_and(|(_, l)| *l == lease) {
                    s.key = None;
                }
            })
        }
    }

    fn status(identity: &str) -> watch::Sender<LeaderStatus> {
        watch::channel(LeaderStatus {
            identity: identity.into(),
            ..LeaderStatus::default()
        })
        .0
    }

    #[tokio::test(start_paused = true)]
    async fn two_replicas_one_leader_and_the_other_takes_over_after_a_resignation() {
        let etcd = std::sync::Arc::new(FakeEtcd::default());
        let (stop_a, stop_a_rx) = watch::channel(false);
        let (stop_b, stop_b_rx) = watch::channel(false);
        let (a, b) = (status("a"), status("b"));
        let (fence_a, fence_b) = (Fence::default(), Fence::default());
        let run_a = run(&*etcd, Timing::default(), &a, &fence_a, stop_a_rx);
        let run_b = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            run(&*etcd, Timing::default(), &b, &fence_b, stop_b_rx).await
        };
        let check = async {
            tokio::time::sleep(secs(30)).await;
            assert!(a.borrow().leading);
            assert!(!b.borrow().leading);
            assert_eq!(b.borrow().leader.as_deref(), Some("a"));
            assert_eq!(etcd.holder().as_deref(), Some("a"));
            // a shuts down: it gives the key up and b takes over well before the TTL.
            let _ = stop_a.send(true);
            tokio::time::sleep(secs(3)).await;
            assert!(b.borrow().leading, "b leads");
            assert!(!a.borrow().leading);
            assert_eq!(etcd.holder().as_deref(), Some("b"));
            let _ = stop_b.send(true);
        };
        let (ended_a, ended_b, ()) = tokio::join!(run_a, run_b, check);
        assert_eq!(ended_a, Ended::Stopped);
        assert_eq!(ended_b, Ended::Stopped);
        let calls = etcd.state.lock().expect("lock").calls.clone();
        let renewals = calls.iter().filter(|c| *c == "renew").count();
        // 30 s of leading at one renewal per 5 s.
        assert!(
            (5..=8).contains(&renewals),
            "{renewals} renewals: {calls:?}"
        );
        assert_eq!(etcd.holder(), None, "b gave the key up too");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_cut_off_from_etcd_stops_leading_before_the_other_can_win() {
        let etcd = std::sync::Arc::new(FakeEtcd::default());
        let (stop, stop_rx) = watch::channel(false);
        let a = status("a");
        let fence = Fence::default();
        let run_a = run(&*etcd, Timing::default(), &a, &fence, stop_rx.clone());
        let check = async {
            tokio::time::sleep(secs(1)).await;
            assert!(a.borrow().leading);
            assert!(fence.allows(tokio::time::Instant::now().into_std()));
            let cut = tokio::time::Instant::now();
            etcd.set_down(true);
            let mut changed = a.subscribe();
            let _ = changed.wait_for(|s| !s.leading).await;
            let stepped_down = cut.elapsed();
            assert!(!fence.allows(tokio::time::Instant::now().into_std()));
            // The key is still there (its lease runs until 15 s after the last renewal):
            // a stepped down before anyone else could take it.
            etcd.set_down(false);
            assert_eq!(etcd.holder().as_deref(), Some("a"));
            assert!(
                stepped_down <= secs(10),
                "stepped down after {stepped_down:?}"
            );
            let _ = stop.send(true);
        };
        let (ended, ()) = tokio::join!(run_a, check);
        assert_eq!(ended, Ended::LostLeadership);
        // Then the lease expires and another replica wins.
        tokio::time::sleep(secs(15)).await;
        let b = status("b");
        let (stop_b, stop_b_rx) = watch::channel(false);
        let fence_b = Fence::default();
        let check_b = async {
            tokio::time::sleep(secs(1)).await;
            assert!(b.borrow().leading);
            let _ = stop_b.send(true);
        };
        let (ended_b, ()) = tokio::join!(
            run(&*etcd, Timing::default(), &b, &fence_b, stop_b_rx),
            check_b
        );
        assert_eq!(ended_b, Ended::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_takes_over_when_the_leaders_lease_expires() {
        let etcd = std::sync::Arc::new(FakeEtcd::default());
        // A leader that died: its key with a lease nobody renews.
        let won = etcd
            .campaign(LEADER_KEY, "dead", Timing::default().ttl)
            .await
            .expect("campaign");
        assert_eq!(won, Campaign::Won(1));
        let (stop, stop_rx) = watch::channel(false);
        let b = status("b");
        let fence = Fence::default();
        let check = async {
            tokio::time::sleep(secs(14)).await;
            assert!(!b.borrow().leading, "not before the TTL");
            assert_eq!(b.borrow().leader.as_deref(), Some("dead"));
            tokio::time::sleep(secs(2)).await;
            assert!(b.borrow().leading, "within the TTL and a poll");
            let _ = stop.send(true);
        };
        let (ended, ()) = tokio::join!(run(&*etcd, Timing::default(), &b, &fence, stop_rx), check);
        assert_eq!(ended, Ended::Stopped);
    }
}
