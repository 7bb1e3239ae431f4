//! The node's Service proxy (issue 5): what kube-proxy does, inside `tend agent`. On every
//! change of a Service or an Endpoints (the agent follows both with watches; the Services'
//! copy is the one that also gives containers their Service variables), and every sync
//! period anyway, it builds the desired `ip tend-lb` table
//! ([`super::lb::model`]) and sends only the difference ([`super::lb::LbSync`]); every
//! `DRIFT_CHECK` it checks that the table is still the one it programmed (a flush, a
//! deletion or another process's rebuild means a full sync). The Service CIDR is routed to
//! `lo` on the node so that the node's own connections to a ClusterIP have a route for the
//! output hook to rewrite (LAB.md: no dummy links here).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::client::backoff;
use super::informer::{Informer, Key};
use super::lb::model::{NodeInput, ServiceInput};
use super::lb::netlink::NetlinkNft;
use super::lb::nft::{NftApply, NftError};
use super::lb::table::Table;
use super::lb::{LbSync, SyncReport};
use super::network::ipam::Cidr;
use super::views::{EndpointsView as Endpoints, ServiceView as Service};

/// How often the table is checked for drift.
pub const DRIFT_CHECK: Duration = Duration::from_secs(10);

/// The changes of the load balancer's inputs since the last call: for every Service whose
/// Service or Endpoints object changed, its new input (`None`: gone, or unreadable, which
/// `warn` reports). A relist of either means every Service. `None` until both have been
/// listed once (there is nothing to program before). Reads only the changed objects: at
/// 10,000 Services, copying them all on every change cost more than the change.
pub fn changes(
    services: &Informer<Service>,
    endpoints: &Informer<Endpoints>,
    table: &Table,
    mut warn: impl FnMut(String),
) -> Option<Vec<(Key, Option<ServiceInput>)>> {
    if !services.listed() || !endpoints.listed() {
        return None;
    }
    let (s, e) = (services.take_changed(), endpoints.take_changed());
    let keys: BTreeSet<Key> = if s.all || e.all {
        services
            .keys()
            .into_iter()
            .chain(table.keys().cloned())
            .collect()
    } else {
        s.keys.into_iter().chain(e.keys).collect()
    };
    let out = keys
        .into_iter()
        .map(|key| {
            let input = services.with(&key, |service| {
                let service = service?;
                let read = endpoints.with(&key, |eps| ServiceInput::from_view(service, eps));
                match read {
                    Ok(input) => Some(input),
                    Err(e) => {
                        warn(e.to_string());
                        None
                    }
                }
            });
            (key, input)
        })
        .collect();
    Some(out)
}

/// The node's load balancer: the desired table per Service and what was programmed.
pub struct Proxy<A: NftApply> {
    pub lb: LbSync<A>,
    pub table: Table,
}

impl<A: NftApply> Proxy<A> {
    pub fn new(nft: A, instance: impl Into<String>, node: NodeInput) -> Self {
        Proxy {
            lb: LbSync::new(nft, instance),
            table: Table::new(node),
        }
    }

    /// Applies `changes` to the table and programs their difference (or the whole table
    /// when the kernel's is unknown: at start, after a failure, after drift, which `check`
    /// looks for first).
    pub fn sync(
        &mut self,
        changes: Vec<(Key, Option<ServiceInput>)>,
        check: bool,
    ) -> Result<SyncReport, NftError> {
        if check && self.lb.check()? {
            tracing::warn!("the tend-lb table drifted (flushed or edited): full sync");
        }
        let delta = self.table.update(changes);
        let table = &self.table;
        self.lb.sync_delta(&delta, || table.compose())
    }
}

/// Routes the Service CIDR to `lo` (idempotent).
fn route_service_cidr(cidr: &Cidr) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(["route", "replace", &cidr.to_string(), "dev", "lo"])
        .output()
        .map_err(|e| format!("ip route replace {cidr} dev lo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip route replace {cidr} dev lo: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// How long the proxy waits after a change for the ones that come with it (a rollout changes
/// several Endpoints within milliseconds), so that they go in one transaction.
pub const DEBOUNCE: Duration = Duration::from_millis(5);

/// Runs the proxy until `shutdown`: a sync as soon as a Service or an Endpoints changes (after
/// [`DEBOUNCE`]), and every `period` anyway, which also retries a failed sync and checks for
/// drift every [`DRIFT_CHECK`].
pub async fn keep_load_balancing(
    services: Arc<Informer<Service>>,
    endpoints: Arc<Informer<Endpoints>>,
    service_cidr: Cidr,
    cluster_cidr: Cidr,
    period: Duration,
    localhost_node_ports: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = route_service_cidr(&service_cidr) {
        tracing::warn!("services: {e}");
    }
    let (network, prefix) = (cluster_cidr.network(), cluster_cidr.prefix());
    let node = NodeInput {
        cluster_cidr: Some((network, prefix)),
        localhost_node_ports,
    };
    let instance = format!("{}-{}", std::process::id(), super::now_millis());
    // Netlink, not the nft program: nft reads the whole ruleset before every change.
    let proxy = Arc::new(Mutex::new(Proxy::new(
        NetlinkNft::new(None),
        instance,
        node,
    )));
    let (mut services_changed, mut endpoints_changed) = (services.changes(), endpoints.changes());
    let mut failures = 0u32;
    let mut last_check = Instant::now();
    let mut warned: BTreeSet<String> = BTreeSet::new();
    loop {
        let pending = {
            let proxy = proxy.lock().unwrap_or_else(|p| p.into_inner());
            changes(&services, &endpoints, &proxy.table, |w| {
                if warned.insert(w.clone()) {
                    tracing::warn!("services: {w}");
                }
            })
        };
        let wait = match pending {
            Some(pending) => {
                let check = last_check.elapsed() >= DRIFT_CHECK;
                if check {
                    last_check = Instant::now();
                }
                let proxy = proxy.clone();
                let done = tokio::task::spawn_blocking(move || {
                    proxy
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .sync(pending, check)
                })
                .await;
                match done {
                    Ok(Ok(report)) => {
                        failures = 0;
                        if report.ops > 0 {
                            tracing::info!(kind = ?report.kind, ops = report.ops, "services programmed");
                        }
                        period
                    }
                    Ok(Err(e)) => {
                        failures += 1;
                        tracing::warn!("services: nftables: {e}");
                        backoff(failures).min(Duration::from_secs(30))
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!("services: {e}");
                        period
                    }
                }
            }
            None => period,
        };
        // A change wakes the proxy at once, unless the last sync failed (then the back-off
        // holds, so that a broken nft is not retried at the rate of changes).
        let retrying = failures > 0;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            Ok(()) = services_changed.changed(), if !retrying => tokio::time::sleep(DEBOUNCE).await,
            Ok(()) = endpoints_changed.changed(), if !retrying => tokio::time::sleep(DEBOUNCE).await,
            _ = super::stopped(&mut shutdown) => return,
        }
        // Whatever changed during the sync or the debounce is in the next snapshot.
        services_changed.mark_unchanged();
        endpoints_changed.mark_unchanged();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::client::WatchEvent;
    use crate::agent::lb::SyncKind;
    use crate::agent::lb::diff::Op;
    use crate::agent::lb::model::desired;
    use crate::agent::lb::nft::RecordingNft;
    use serde_json::{Value, json};

    fn service(name: &str, ip: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]},
        })
    }

    fn endpoints(name: &str, ips: &[&str]) -> Value {
        let addresses: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        json!({
            "metadata": {"name": name, "namespace": "default"},
            "subsets": [{"addresses": addresses, "ports": [{"port": 8080}]}],
        })
    }

    fn node() -> NodeInput {
        NodeInput {
            cluster_cidr: None,
            localhost_node_ports: false,
        }
    }

    /// The whole model of what the informers hold, as the proxy computed it before it
    /// became incremental: what the incremental table must always equal.
    fn whole(services: &Informer<Service>, endpoints: &Informer<Endpoints>) -> Vec<ServiceInput> {
        services
            .keys()
            .into_iter()
            .filter_map(|key| {
                services.with(&key, |s| {
                    endpoints.with(&key, |e| ServiceInput::from_view(s?, e).ok())
                })
            })
            .collect()
    }

    #[test]
    fn only_changed_services_are_read_and_programmed_and_bad_ones_are_reported() {
        let (services, eps) = (
            Informer::<Service>::default(),
            Informer::<Endpoints>::default(),
        );
        let mut proxy = Proxy::new(RecordingNft::default(), "test", node());
        let mut warnings = Vec::new();
        assert!(
            changes(&services, &eps, &proxy.table, |w| warnings.push(w)).is_none(),
            "nothing before both lists"
        );
        services.apply(WatchEvent::Listed(vec![
            service("web", "10.96.0.10"),
            service("api", "10.96.0.11"),
            service("bad", "not-an-ip"),
        ]));
        assert!(changes(&services, &eps, &proxy.table, |w| warnings.push(w)).is_none());
        eps.apply(WatchEvent::Listed(vec![
            endpoints("web", &["10.244.1.2"]),
            endpoints("api", &["10.244.1.3"]),
        ]));
        let first = changes(&services, &eps, &proxy.table, |w| warnings.push(w)).expect("listed");
        assert_eq!(first.len(), 3, "a list means every Service");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("default/bad"), "{warnings:?}");
        let report = proxy.sync(first, false).expect("full");
        assert_eq!(report.kind, SyncKind::Full);
        assert_eq!(
            proxy.table.compose(),
            desired(&whole(&services, &eps), &node())
        );

        // One endpoint more for web: only web is read, and the transaction is its sets.
        eps.apply(WatchEvent::Applied(endpoints(
            "web",
            &["10.244.1.2", "10.244.2.2"],
        )));
        let next = changes(&services, &eps, &proxy.table, |w| warnings.push(w)).expect("listed");
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].0.1, "web");
        let report = proxy.sync(next, false).expect("incremental");
        assert_eq!(report.kind, SyncKind::Incremental);
        let sent = proxy
            .lb
            .nft()
            .transactions
            .last()
            .cloned()
            .unwrap_or_default();
        assert_eq!(sent.len(), 4, "{sent:?}");
        assert!(matches!(sent[0], Op::FlushMap(_)), "{sent:?}");

        // api deleted: its chain goes; nothing else is touched.
        services.apply(WatchEvent::Deleted(service("api", "")));
        let next = changes(&services, &eps, &proxy.table, |w| warnings.push(w)).expect("listed");
        proxy.sync(next, false).expect("incremental");
        let sent = proxy
            .lb
            .nft()
            .transactions
            .last()
            .cloned()
            .unwrap_or_default();
        assert!(
            sent.iter().any(|op| matches!(op, Op::DeleteChain(_))),
            "{sent:?}"
        );
        assert_eq!(
            proxy.table.compose(),
            desired(&whole(&services, &eps), &node())
        );

        // Nothing changed: nothing sent.
        let before = proxy.lb.nft().transactions.len();
        let none = changes(&services, &eps, &proxy.table, |w| warnings.push(w)).expect("listed");
        assert!(none.is_empty());
        assert_eq!(
            proxy.sync(none, false).expect("nothing").kind,
            SyncKind::Nothing
        );
        assert_eq!(proxy.lb.nft().transactions.len(), before);
    }

    #[test]
    fn drift_or_a_failure_makes_the_next_sync_full_with_every_service() {
        let (services, eps) = (
            Informer::<Service>::default(),
            Informer::<Endpoints>::default(),
        );
        services.apply(WatchEvent::Listed(vec![
            service("web", "10.96.0.10"),
            service("api", "10.96.0.11"),
        ]));
        eps.apply(WatchEvent::Listed(vec![endpoints("web", &["10.244.1.2"])]));
        let mut proxy = Proxy::new(RecordingNft::default(), "test", node());
        let first = changes(&services, &eps, &proxy.table, |_| {}).expect("listed");
        proxy.sync(first, false).expect("full");

        proxy.lb.nft_mut().fail_next = true;
        eps.apply(WatchEvent::Applied(endpoints("api", &["10.244.1.3"])));
        let next = changes(&services, &eps, &proxy.table, |_| {}).expect("listed");
        assert!(proxy.sync(next, false).is_err());
        // Nothing new: the retry is a full sync of the whole table, api's endpoint included.
        let report = proxy.sync(Vec::new(), false).expect("full");
        assert_eq!(report.kind, SyncKind::Full);
        let sent = proxy
            .lb
            .nft()
            .transactions
            .last()
            .cloned()
            .unwrap_or_default();
        assert_eq!(sent[..2], [Op::AddTable, Op::DeleteTable]);
        assert_eq!(
            sent.iter()
                .filter(|op| matches!(op, Op::AddEndpointMap { .. }))
                .count(),
            2,
            "{sent:?}"
        );

        // A flushed table (the marker gone) is found by the check and rebuilt.
        proxy.lb.nft_mut().marker = None;
        let report = proxy.sync(Vec::new(), true).expect("full");
        assert_eq!(report.kind, SyncKind::Full);
    }
}
