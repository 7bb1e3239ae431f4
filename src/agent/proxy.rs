//! The node's Service proxy (issue 5): what kube-proxy does, inside `tend agent`. On every
//! change of a Service or an Endpoints (the agent follows both with watches; the Services'
//! copy is the one that also gives containers their Service variables), and every sync
//! period anyway, it builds the desired `ip tend-lb` table
//! ([`super::lb::model`]) and sends only the difference ([`super::lb::LbSync`]); every
//! `DRIFT_CHECK` it checks that the table is still the one it programmed (a flush, a
//! deletion or another process's rebuild means a full sync). The Service CIDR is routed to
//! `lo` on the node so that the node's own connections to a ClusterIP have a route for the
//! output hook to rewrite (LAB.md: no dummy links here).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use tokio::sync::watch;

use super::client::backoff;
use super::informer::Informer;
use super::lb::LbSync;
use super::lb::model::{NodeInput, ServiceInput, desired};
use super::lb::netlink::NetlinkNft;
use super::network::ipam::Cidr;

/// How often the table is checked for drift.
pub const DRIFT_CHECK: Duration = Duration::from_secs(10);

/// The load balancer's inputs from the API objects: one [`ServiceInput`] per Service with
/// its Endpoints (same namespace and name); Services that cannot be read are reported once
/// each, by `warn`, and left out (the others are still programmed).
pub fn inputs(
    services: &[Service],
    endpoints: &[Endpoints],
    mut warn: impl FnMut(String),
) -> Vec<ServiceInput> {
    let by_key: BTreeMap<(String, String), &Endpoints> = endpoints
        .iter()
        .map(|e| {
            (
                (
                    e.metadata.namespace.clone().unwrap_or_default(),
                    e.metadata.name.clone().unwrap_or_default(),
                ),
                e,
            )
        })
        .collect();
    services
        .iter()
        .filter_map(|s| {
            let key = (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            );
            match ServiceInput::from_k8s(s, by_key.get(&key).copied()) {
                Ok(input) => Some(input),
                Err(e) => {
                    warn(e.to_string());
                    None
                }
            }
        })
        .collect()
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
    let lb = Arc::new(Mutex::new(LbSync::new(NetlinkNft::new(None), instance)));
    let (mut services_changed, mut endpoints_changed) = (services.changes(), endpoints.changes());
    let mut failures = 0u32;
    let mut last_check = Instant::now();
    let mut warned: BTreeSet<String> = BTreeSet::new();
    loop {
        // Until both have been read once, there is nothing to program yet.
        let wait = match (services.snapshot(), endpoints.snapshot()) {
            (Some(services), Some(endpoints)) => {
                let inputs = inputs(&services, &endpoints, |w| {
                    if warned.insert(w.clone()) {
                        tracing::warn!("services: {w}");
                    }
                });
                let wanted = desired(&inputs, &node);
                let check = last_check.elapsed() >= DRIFT_CHECK;
                if check {
                    last_check = Instant::now();
                }
                let lb = lb.clone();
                let done = tokio::task::spawn_blocking(move || {
                    let mut lb = lb.lock().unwrap_or_else(|p| p.into_inner());
                    if check && lb.check()? {
                        tracing::warn!("the tend-lb table drifted (flushed or edited): full sync");
                    }
                    lb.sync(wanted)
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
            _ => period,
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

    #[test]
    fn services_meet_their_endpoints_and_bad_ones_are_reported() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}]},
        }))
        .expect("service");
        let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "10.244.1.2"}], "ports": [{"port": 8080}]}],
        }))
        .expect("endpoints");
        let bad: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"clusterIP": "not-an-ip", "ports": [{"port": 80}]},
        }))
        .expect("service");
        let mut warnings = Vec::new();
        let got = inputs(&[service, bad], &[endpoints], |w| warnings.push(w));
        assert_eq!(got.len(), 1);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("default/bad"), "{warnings:?}");
        let table = desired(
            &got,
            &NodeInput {
                cluster_cidr: None,
                localhost_node_ports: false,
            },
        );
        assert!(table.size().0 > 0);
    }
}
