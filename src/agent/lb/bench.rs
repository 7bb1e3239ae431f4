//! `tend bench services`: the load balancer's figures (issue 5), measured for real in a
//! network namespace the bench makes (removed in Drop, also on failure): for N Services × 10
//! endpoints, the agent's full sync; one endpoint change (added, then removed, alternately)
//! the way the agent takes it — the Endpoints watch event into the informer, the changed
//! Service read ([`changes`]), its fragment of the table rebuilt and diffed, and the netlink
//! transaction ([`Proxy`] over [`NetlinkNft`]) — its time, operations and bytes; the
//! transaction alone; the same change loaded as a hand-written `nft -f` script of just that
//! change; a drift check; and, for comparison, the model of all Services rebuilt, which is
//! what every change cost before the table was kept per Service.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use serde_json::{Value, json};

use super::diff::{self, Op};
use super::model::{
    self, Endpoint, NodeInput, Protocol, ServiceInput, ServiceKind, ServicePort, ServiceSpec,
};
use super::netlink::NetlinkNft;
use super::netlink::encode::encode;
use super::nft::{NftApply, NftCommand, document};
use crate::agent::client::WatchEvent;
use crate::agent::informer::Informer;
use crate::agent::proxy::{Proxy, changes};

/// The goal for one endpoint change at 10,000 Services (issue 5).
const GOAL: Duration = Duration::from_millis(5);

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `n` ClusterIP Services × 10 endpoints.
pub fn cluster(n: usize) -> Vec<ServiceInput> {
    (0..n)
        .map(|i| {
            let endpoints = (0..10u32)
                .map(|e| Endpoint {
                    // 10.128.0.0/9 holds 10 addresses for each of up to 800,000 Services.
                    ip: Ipv4Addr::from(
                        u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i as u32) * 10 + e,
                    ),
                    port: 8080,
                })
                .collect();
            ServiceInput {
                spec: ServiceSpec {
                    namespace: "bench".into(),
                    name: format!("svc-{i}"),
                    kind: ServiceKind::ClusterIp,
                    cluster_ip: Some(Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250) as u8 + 1)),
                    ports: vec![ServicePort {
                        name: "http".into(),
                        protocol: Protocol::Tcp,
                        port: 80,
                        node_port: None,
                    }],
                    affinity_timeout: None,
                },
                endpoints: BTreeMap::from([("http".to_string(), endpoints)]),
            }
        })
        .collect()
}

/// A Service and its Endpoints as the API serves them (what the agent's informers read).
pub fn to_k8s(input: &ServiceInput) -> (Value, Value) {
    let spec = &input.spec;
    let metadata = json!({"namespace": spec.namespace, "name": spec.name});
    let ports: Vec<Value> = spec
        .ports
        .iter()
        .map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol.as_str().to_uppercase()}))
        .collect();
    let service = json!({
        "metadata": metadata,
        "spec": {
            "clusterIP": spec.cluster_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "None".into()),
            "ports": ports,
        },
    });
    let subsets: Vec<Value> = input
        .endpoints
        .iter()
        .flat_map(|(port, endpoints)| {
            endpoints.iter().map(move |e| {
                json!({"addresses": [{"ip": e.ip.to_string()}], "ports": [{"name": port, "port": e.port}]})
            })
        })
        .collect();
    (service, json!({"metadata": metadata, "subsets": subsets}))
}

/// The change in nft's own syntax, as a person would write it for `nft -f`: the baseline.
pub fn hand_written(ops: &[Op]) -> String {
    super::text::document(ops)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `tend bench services`: one block of figures per size in `sizes`; `changes_per_size` endpoint
/// changes are timed per size (the median is reported).
pub fn run(sizes: &[usize], changes_per_size: usize) -> anyhow::Result<ExitCode> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (it makes a network namespace)".to_string());
    }
    for (tool, arg, hint) in [
        ("ip", "-V", "apt-get install iproute2"),
        ("nft", "--version", "apt-get install nftables"),
    ] {
        if !crate::agent::node::succeeds(tool, &[arg]) {
            missing.push(format!("{tool} ({hint})"));
        }
    }
    if !missing.is_empty() {
        eprintln!("tend bench services: missing {}", missing.join(", "));
        return Ok(ExitCode::from(2));
    }
    let ns = Netns(format!("tend-bench-lb-{}", std::process::id()));
    let status = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .context("ip netns add")?;
    if !status.success() {
        bail!("ip netns add {}: failed", ns.0);
    }
    let nft = NftCommand {
        netns: Some(ns.0.clone()),
    };
    println!(
        "tend bench services: {changes_per_size} endpoint changes per size, in network namespace {} (goal: one change ≤ {} at 10,000 Services, independent of the count)",
        ns.0,
        ms(GOAL)
    );
    let mut met = true;
    for &n in sizes {
        let node = NodeInput::default();
        let mut services = cluster(n);
        let started = Instant::now();
        let before = model::desired(&services, &node);
        let model_time = started.elapsed();
        let target = n / 2;
        let (_, unchanged_endpoints) = to_k8s(&services[target]);
        if let Some(list) = services[target].endpoints.get_mut("http") {
            list.push(Endpoint {
                ip: Ipv4Addr::new(10, 250, 0, 9),
                port: 8080,
            });
        }
        let (_, changed_endpoints) = to_k8s(&services[target]);
        let after = model::desired(&services, &node);

        // The agent's informers, as after their first list.
        let (service_informer, endpoints_informer) = (
            Informer::<crate::agent::views::ServiceView>::default(),
            Informer::<crate::agent::views::EndpointsView>::default(),
        );
        let (mut service_objects, mut endpoints_objects) = (Vec::new(), Vec::new());
        for s in cluster(n).iter().map(to_k8s) {
            service_objects.push(s.0);
            endpoints_objects.push(s.1);
        }
        service_informer.apply(WatchEvent::Listed(service_objects));
        endpoints_informer.apply(WatchEvent::Listed(endpoints_objects));

        let full_ops = diff::full(&before, "bench");
        let full_bytes = encode(&full_ops, 0).bytes.len();
        let full_json = document(&full_ops).len();
        let mut proxy = Proxy::new(NetlinkNft::new(Some(ns.0.clone())), "bench", node.clone());
        let started = Instant::now();
        let all = changes(&service_informer, &endpoints_informer, &proxy.table, |_| {})
            .context("informers listed")?;
        proxy
            .sync(all, false)
            .with_context(|| format!("full sync of {n} Services"))?;
        let full_time = started.elapsed();

        let add = diff::diff(&before, &after);
        let remove = diff::diff(&after, &before);
        let change_bytes = (encode(&add, 0).bytes.len() + encode(&remove, 0).bytes.len()) / 2;
        let change_json = (document(&add).len() + document(&remove).len()) / 2;
        let change_ops = (add.len() + remove.len()) as f64 / 2.0;
        // The whole sync, from the watch event to the kernel...
        let mut tend_times = Vec::new();
        let mut sent_ops = Vec::new();
        for i in 0..changes_per_size.max(2).next_multiple_of(2) {
            let event = if i % 2 == 0 {
                &changed_endpoints
            } else {
                &unchanged_endpoints
            }
            .clone();
            let started = Instant::now();
            endpoints_informer.apply(WatchEvent::Applied(event));
            let pending = changes(&service_informer, &endpoints_informer, &proxy.table, |_| {})
                .context("informers listed")?;
            let report = proxy.sync(pending, false).context("endpoint change")?;
            tend_times.push(started.elapsed());
            sent_ops.push(report.ops);
        }
        if sent_ops.iter().any(|ops| *ops as f64 > change_ops.ceil()) {
            bail!(
                "an endpoint change sent {sent_ops:?} operations, more than the change ({change_ops})"
            );
        }
        // ...and the transaction alone, what the hand-written `nft -f` below also does.
        let mut transaction_times = Vec::new();
        for i in 0..changes_per_size.max(2).next_multiple_of(2) {
            let ops = if i % 2 == 0 { &add } else { &remove };
            let started = Instant::now();
            proxy
                .lb
                .nft_mut()
                .apply(ops)
                .context("endpoint change over netlink")?;
            transaction_times.push(started.elapsed());
        }
        let (add_text, remove_text) = (hand_written(&add), hand_written(&remove));
        let mut hand_times = Vec::new();
        for i in 0..changes_per_size {
            let (text, ops) = if i % 2 == 0 {
                (&add_text, add.len())
            } else {
                (&remove_text, remove.len())
            };
            let started = Instant::now();
            nft.load(text, false, ops).context("hand-written nft -f")?;
            hand_times.push(started.elapsed());
        }
        let started = Instant::now();
        let drift = proxy.lb.check().context("drift check")?;
        let check_time = started.elapsed();

        let (tend_median, hand_median) = (median(tend_times), median(hand_times));
        let transaction_median = median(transaction_times);
        let ratio = tend_median.as_secs_f64() / hand_median.as_secs_f64().max(1e-9);
        if n >= 10_000 && tend_median > GOAL {
            met = false;
        }
        println!(
            "{n} Services × 10 endpoints: full sync {} ({} ops, {:.1} MB netlink, {:.1} MB as JSON); one endpoint change, watch event to kernel, {} median ({change_ops} ops, {change_bytes} bytes netlink, {change_json} bytes as JSON), of which the netlink transaction {}; hand-written nft -f of the same change {} (ratio tend / nft -f {ratio:.3}); drift check {} (drift: {drift}); for comparison, the model of all Services rebuilt {}",
            ms(full_time),
            full_ops.len(),
            full_bytes as f64 / 1e6,
            full_json as f64 / 1e6,
            ms(tend_median),
            ms(transaction_median),
            ms(hand_median),
            ms(check_time),
            ms(model_time),
        );
    }
    println!(
        "goal (one change ≤ {} at 10,000 Services): {}",
        ms(GOAL),
        if met { "met" } else { "missed" }
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Endpoints, Service};

    #[test]
    fn the_api_objects_read_back_as_the_same_inputs() {
        for input in cluster(3) {
            let (service, endpoints) = to_k8s(&input);
            let service: Service = serde_json::from_value(service).expect("service");
            let endpoints: Endpoints = serde_json::from_value(endpoints).expect("endpoints");
            let mut read = ServiceInput::from_k8s(&service, Some(&endpoints)).expect("input");
            for list in read.endpoints.values_mut() {
                list.sort();
            }
            assert_eq!(read, input);
        }
    }

    #[test]
    fn the_hand_written_change_is_the_same_commands_in_nft_syntax() {
        let before = model::desired(&cluster(3), &NodeInput::default());
        let mut services = cluster(3);
        if let Some(list) = services[1].endpoints.get_mut("http") {
            list.pop();
        }
        let after = model::desired(&services, &NodeInput::default());
        let ops = diff::diff(&before, &after);
        let text = hand_written(&ops);
        assert_eq!(text.lines().count(), ops.len());
        let first = text.lines().next().unwrap_or_default();
        assert!(first.starts_with("flush map ip tend-lb svc-"), "{text}");
        assert!(
            text.contains("0-7280 : 10.128.0.10 . 8080, 7281-14562 : "),
            "{text}"
        );
        assert!(text.contains("flush set ip tend-lb svc-"), "{text}");
    }
}
