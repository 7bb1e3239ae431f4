//! The pure parts: the model for each Service shape, the diff's sizes, the rendering, and
//! the sync's decisions against the recording fake.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::diff::{Op, diff, full};
use super::model::{self, *};
use super::nft::{NftApply, RecordingNft, document, marker_of, render};
use super::{LbSync, SyncKind, TABLE};

fn ep(last: u8, port: u16) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::new(10, 244, 0, last),
        port,
    }
}

fn port(name: &str, port: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol: Protocol::Tcp,
        port,
        node_port,
    }
}

fn svc(
    name: &str,
    kind: ServiceKind,
    ip: Option<[u8; 4]>,
    ports: Vec<ServicePort>,
) -> ServiceInput {
    ServiceInput {
        spec: ServiceSpec {
            namespace: "default".into(),
            name: name.into(),
            kind,
            cluster_ip: ip.map(Ipv4Addr::from),
            ports,
            affinity_timeout: None,
        },
        endpoints: BTreeMap::new(),
    }
}

fn with(mut s: ServiceInput, port: &str, eps: Vec<Endpoint>) -> ServiceInput {
    s.endpoints.insert(port.into(), eps);
    s
}

fn ip_key(ip: [u8; 4], port: u16) -> MapKey {
    MapKey::Ip(IpKey {
        ip: Ipv4Addr::from(ip),
        protocol: Protocol::Tcp,
        port,
    })
}

fn node_port_key(port: u16) -> MapKey {
    MapKey::Port(PortKey {
        protocol: Protocol::Tcp,
        port,
    })
}

fn count(prefix: &str, d: &Desired) -> usize {
    d.chains.keys().filter(|c| c.starts_with(prefix)).count()
}

#[test]
fn cluster_ip_service_gets_a_fixed_service_chain_and_its_endpoints_as_data() {
    let s = with(
        svc(
            "web",
            ServiceKind::ClusterIp,
            Some([10, 96, 0, 10]),
            vec![port("http", 80, Some(30080))],
        ),
        "http",
        vec![ep(3, 8080), ep(2, 8080), ep(2, 8080)],
    );
    let d = desired(std::slice::from_ref(&s), &NodeInput::default());
    let svc_chain = service_chain(&s.spec, &s.spec.ports[0]);
    assert_eq!(
        d.elements[&MapName::ServiceIps][&ip_key([10, 96, 0, 10], 80)],
        svc_chain
    );
    // ClusterIP type: its nodePort (if any) is ignored.
    assert!(d.elements[&MapName::ServiceNodePorts].is_empty());
    // No chain per endpoint: the endpoints are data of the service's sets.
    assert_eq!(count("sep-", &d), 0);
    assert_eq!(
        d.chains[&svc_chain],
        vec![
            Rule::HairpinSet {
                set: format!("{svc_chain}-ips")
            },
            Rule::DnatMap {
                protocol: Protocol::Tcp,
                map: format!("{svc_chain}-eps")
            },
        ]
    );
    // Duplicates go; endpoints are sorted.
    let set = &d.endpoint_sets[&svc_chain];
    assert_eq!(set.endpoints, vec![ep(2, 8080), ep(3, 8080)]);
    assert_eq!(
        set.intervals(),
        vec![((0, 32767), ep(2, 8080)), ((32768, 65535), ep(3, 8080))]
    );
    // Same input in another order: the same table.
    let again = with(
        svc(
            "web",
            ServiceKind::ClusterIp,
            Some([10, 96, 0, 10]),
            vec![port("http", 80, Some(30080))],
        ),
        "http",
        vec![ep(2, 8080), ep(3, 8080)],
    );
    let other = svc(
        "a",
        ServiceKind::ClusterIp,
        Some([10, 96, 0, 1]),
        vec![port("", 53, None)],
    );
    assert_eq!(
        desired(&[other.clone(), again], &NodeInput::default()).chains,
        desired(&[s, other], &NodeInput::default()).chains
    );
}

#[test]
fn node_port_and_load_balancer_get_an_external_chain_that_marks_for_masquerade() {
    for kind in [ServiceKind::NodePort, ServiceKind::LoadBalancer] {
        let s = with(
            svc(
                "web",
                kind,
                Some([10, 96, 0, 10]),
                vec![port("http", 80, Some(30080))],
            ),
            "http",
            vec![ep(2, 8080)],
        );
        let d = desired(std::slice::from_ref(&s), &NodeInput::default());
        let ext = &d.elements[&MapName::ServiceNodePorts][&node_port_key(30080)];
        assert!(ext.starts_with("ext-"));
        assert_eq!(
            d.chains[ext],
            vec![
                Rule::Jump(MARK_CHAIN.into()),
                Rule::Goto(service_chain(&s.spec, &s.spec.ports[0]))
            ]
        );
        assert_eq!(d.elements[&MapName::ServiceIps].len(), 1);
    }
}

#[test]
fn external_name_gets_nothing_and_headless_gets_no_vip() {
    let ext = with(
        svc(
            "ext",
            ServiceKind::ExternalName,
            None,
            vec![port("", 80, None)],
        ),
        "",
        vec![ep(2, 80)],
    );
    let headless = with(
        svc(
            "db",
            ServiceKind::ClusterIp,
            None,
            vec![port("", 5432, None)],
        ),
        "",
        vec![ep(2, 5432)],
    );
    let d = desired(&[ext, headless], &NodeInput::default());
    assert!(
        d.elements.values().all(BTreeMap::is_empty),
        "{:?}",
        d.elements
    );
    assert!(d.chains.is_empty(), "{:?}", d.chains);
}

#[test]
fn no_endpoints_rejects_on_the_cluster_ip_and_the_node_port() {
    let s = svc(
        "web",
        ServiceKind::NodePort,
        Some([10, 96, 0, 10]),
        vec![port("http", 80, Some(30080))],
    );
    let d = desired(&[s], &NodeInput::default());
    assert_eq!(
        d.elements[&MapName::NoEndpointServices][&ip_key([10, 96, 0, 10], 80)],
        REJECT_CHAIN
    );
    assert_eq!(
        d.elements[&MapName::NoEndpointNodePorts][&node_port_key(30080)],
        REJECT_CHAIN
    );
    assert!(d.elements[&MapName::ServiceIps].is_empty());
    assert!(d.chains.is_empty());
}

#[test]
fn multi_port_services_match_endpoints_by_port_name() {
    let s = svc(
        "web",
        ServiceKind::ClusterIp,
        Some([10, 96, 0, 10]),
        vec![port("http", 80, None), port("metrics", 9090, None)],
    );
    let s = with(
        with(s, "http", vec![ep(2, 8080), ep(3, 8080)]),
        "metrics",
        vec![ep(2, 9100)],
    );
    let d = desired(std::slice::from_ref(&s), &NodeInput::default());
    let ips = &d.elements[&MapName::ServiceIps];
    assert_eq!(ips.len(), 2);
    assert_ne!(
        ips[&ip_key([10, 96, 0, 10], 80)],
        ips[&ip_key([10, 96, 0, 10], 9090)]
    );
    let metrics = &d.endpoint_sets[&ips[&ip_key([10, 96, 0, 10], 9090)]];
    assert_eq!(metrics.endpoints, vec![ep(2, 9100)]);
    let http = &d.endpoint_sets[&ips[&ip_key([10, 96, 0, 10], 80)]];
    assert_eq!(http.endpoints, vec![ep(2, 8080), ep(3, 8080)]);
    assert_eq!(count("sep-", &d), 0);
}

#[test]
fn client_ip_affinity_checks_each_endpoints_set_before_choosing_at_random() {
    let mut s = with(
        svc(
            "web",
            ServiceKind::ClusterIp,
            Some([10, 96, 0, 10]),
            vec![port("http", 80, None)],
        ),
        "http",
        vec![ep(2, 8080), ep(3, 8080)],
    );
    s.spec.affinity_timeout = Some(600);
    let d = desired(std::slice::from_ref(&s), &NodeInput::default());
    assert_eq!(d.affinity_sets.len(), 2);
    assert!(d.affinity_sets.values().all(|t| *t == 600));
    let rules = &d.chains[&service_chain(&s.spec, &s.spec.ports[0])];
    assert_eq!(rules.len(), 3);
    let Rule::AffinityGoto { set, chain } = &rules[0] else {
        panic!("{rules:?}")
    };
    assert!(d.chains[chain].contains(&Rule::AffinityUpdate { set: set.clone() }));
    assert!(matches!(rules[2], Rule::Random(_)));
    // A new timeout is a new set (the old one goes in the same transaction).
    s.spec.affinity_timeout = Some(60);
    let d2 = desired(&[s], &NodeInput::default());
    assert!(
        d2.affinity_sets
            .keys()
            .all(|k| !d.affinity_sets.contains_key(k))
    );
    let ops = diff(&d, &d2);
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::AddSet { .. }))
            .count(),
        2
    );
    assert_eq!(
        ops.iter().filter(|o| matches!(o, Op::DeleteSet(_))).count(),
        2
    );
    let last_add = ops
        .iter()
        .rposition(|o| matches!(o, Op::AddSet { .. } | Op::AddRule { .. }));
    let first_delete = ops.iter().position(|o| matches!(o, Op::DeleteSet(_)));
    assert!(last_add < first_delete, "{ops:?}");
}

#[test]
fn a_cluster_cidr_masquerades_cluster_ip_traffic_from_outside_it() {
    let s = with(
        svc(
            "web",
            ServiceKind::ClusterIp,
            Some([10, 96, 0, 10]),
            vec![port("http", 80, None)],
        ),
        "http",
        vec![ep(2, 8080)],
    );
    let node = NodeInput {
        cluster_cidr: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
        localhost_node_ports: false,
    };
    let d = desired(std::slice::from_ref(&s), &node);
    assert_eq!(
        d.chains[&service_chain(&s.spec, &s.spec.ports[0])][0],
        Rule::MarkOutside {
            cidr: (Ipv4Addr::new(10, 244, 0, 0), 16)
        }
    );
}

/// `n` Services × 10 endpoints, Service `i` at 10.96.x.y.
fn cluster(n: usize) -> Vec<ServiceInput> {
    (0..n)
        .map(|i| {
            let ip = [10, 96, (i / 250) as u8, (i % 250) as u8 + 1];
            let eps = (0..10).map(|e| Endpoint {
                ip: Ipv4Addr::new(10, 244, (i % 200) as u8, e + 2),
                port: 8080,
            });
            with(
                svc(
                    &format!("s{i}"),
                    ServiceKind::NodePort,
                    Some(ip),
                    vec![port("http", 80, Some(30000 + (i % 2000) as u16))],
                ),
                "http",
                eps.collect(),
            )
        })
        .collect()
}

#[test]
fn one_endpoint_change_costs_the_same_at_1000_and_10000_services() {
    let mut sizes = Vec::new();
    for n in [1_000, 10_000] {
        let mut services = cluster(n);
        let node = NodeInput::default();
        let before = desired(&services, &node);
        let (elements, chains, _) = before.size();
        assert_eq!(chains, n * 2); // svc + ext: the endpoints are set elements
        assert_eq!(before.endpoint_sets.len(), n);
        assert!(elements >= n);
        // One endpoint more in Service 7.
        if let Some(list) = services[7].endpoints.get_mut("http") {
            list.push(Endpoint {
                ip: Ipv4Addr::new(10, 250, 0, 9),
                port: 8080,
            });
        }
        let added = desired(&services, &node);
        let ops = diff(&before, &added);
        // The service's two sets flushed and refilled; no rule, chain or verdict element,
        // which is what spares the kernel a validation of the whole table.
        assert!(
            matches!(
                &ops[..],
                [
                    Op::FlushMap(_),
                    Op::AddEndpointElements { endpoints, .. },
                    Op::FlushSet(_),
                    Op::AddIpElements { ips, .. },
                ] if endpoints.len() == 11 && ips.len() == 11
            ),
            "{ops:?}"
        );
        // And back: the same four.
        let removed = diff(&added, &before);
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert!(
            removed.iter().all(|o| matches!(
                o,
                Op::FlushMap(_)
                    | Op::FlushSet(_)
                    | Op::AddEndpointElements { .. }
                    | Op::AddIpElements { .. }
            )),
            "{removed:?}"
        );
        // The same endpoints on another port: only the map changes.
        let mut moved = services.clone();
        if let Some(list) = moved[7].endpoints.get_mut("http") {
            for e in list.iter_mut() {
                e.port = 9090;
            }
        }
        let port_only = diff(&added, &desired(&moved, &node));
        assert_eq!(port_only.len(), 2, "{port_only:?}");
        sizes.push((ops.len(), document(&ops).len(), removed.len()));
        assert!(diff(&before, &before).is_empty());
    }
    assert_eq!(sizes[0], sizes[1]);
}

#[test]
fn diff_orders_adds_before_uses_and_deletes_after() {
    let a = with(
        svc(
            "a",
            ServiceKind::NodePort,
            Some([10, 96, 0, 1]),
            vec![port("", 80, Some(30001))],
        ),
        "",
        vec![ep(2, 80)],
    );
    let b = with(
        svc(
            "b",
            ServiceKind::ClusterIp,
            Some([10, 96, 0, 2]),
            vec![port("", 80, None)],
        ),
        "",
        vec![ep(3, 80)],
    );
    let node = NodeInput::default();
    let old = desired(std::slice::from_ref(&a), &node);
    let new = desired(&[b], &node);
    let ops = diff(&old, &new);
    let pos = |f: &dyn Fn(&Op) -> bool| ops.iter().position(f).expect("present");
    let rpos = |f: &dyn Fn(&Op) -> bool| ops.iter().rposition(f).expect("present");
    // b's chains exist before its element points at them.
    assert!(
        rpos(&|o| matches!(o, Op::AddChain(_) | Op::AddRule { .. }))
            < pos(&|o| matches!(o, Op::AddElements { .. }))
    );
    // a's elements go before a's chains; every removed chain is flushed before any delete.
    assert!(
        rpos(&|o| matches!(o, Op::DeleteElements { .. }))
            < pos(&|o| matches!(o, Op::DeleteChain(_)))
    );
    assert!(rpos(&|o| matches!(o, Op::FlushChain(_))) < pos(&|o| matches!(o, Op::DeleteChain(_))));
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::DeleteChain(_)))
            .count(),
        2
    );
    // b's sets exist before its rules name them; a's go after its rules are gone.
    assert!(
        pos(&|o| matches!(o, Op::AddEndpointMap { .. }))
            < pos(&|o| matches!(o, Op::AddRule { .. }))
    );
    assert!(pos(&|o| matches!(o, Op::AddIpSet(_))) < pos(&|o| matches!(o, Op::AddRule { .. })));
    assert!(rpos(&|o| matches!(o, Op::DeleteChain(_))) < pos(&|o| matches!(o, Op::DeleteMap(_))));
    assert!(rpos(&|o| matches!(o, Op::DeleteChain(_))) < pos(&|o| matches!(o, Op::DeleteSet(_))));
    // a had endpoints; with none it moves to the reject maps, and its chains go.
    let empty = svc(
        "a",
        ServiceKind::NodePort,
        Some([10, 96, 0, 1]),
        vec![port("", 80, Some(30001))],
    );
    let ops = diff(&old, &desired(&[empty], &node));
    let adds: Vec<MapName> = ops
        .iter()
        .filter_map(|o| match o {
            Op::AddElements { map, .. } => Some(*map),
            _ => None,
        })
        .collect();
    assert_eq!(
        adds,
        vec![MapName::NoEndpointServices, MapName::NoEndpointNodePorts]
    );
}

#[test]
fn endpoints_split_the_random_range_evenly() {
    assert!(model::buckets(0).is_empty());
    assert!(model::buckets(model::MAX_BUCKETS + 1).is_empty());
    assert_eq!(model::buckets(1), vec![(0, 65535)]);
    for n in [2, 3, 7, 10, 1000, 65_535, 65_536] {
        let b = model::buckets(n);
        assert_eq!(b.len(), n);
        assert_eq!(b[0].0, 0);
        assert_eq!(b[n - 1].1, 65535);
        // Consecutive, and sizes differ by at most one.
        assert!(b.windows(2).all(|w| w[1].0 == w[0].1 + 1));
        let sizes: Vec<u32> = b.iter().map(|(a, z)| z - a + 1).collect();
        let (min, max) = (sizes.iter().min(), sizes.iter().max());
        assert!(max.zip(min).is_some_and(|(x, m)| x - m <= 1), "{n}");
    }
}

#[test]
fn affinity_and_huge_services_keep_endpoint_chains() {
    let mut s = with(
        svc(
            "sticky",
            ServiceKind::ClusterIp,
            Some([10, 96, 0, 9]),
            vec![port("", 80, None)],
        ),
        "",
        vec![ep(2, 80), ep(3, 80)],
    );
    s.spec.affinity_timeout = Some(60);
    let d = desired(&[s], &NodeInput::default());
    assert!(d.endpoint_sets.is_empty());
    assert_eq!(count("sep-", &d), 2);
    let many: Vec<Endpoint> = (0..=model::MAX_BUCKETS as u32)
        .map(|i| Endpoint {
            ip: Ipv4Addr::from(0x0a00_0000 + i),
            port: 80,
        })
        .collect();
    let huge = with(
        svc(
            "huge",
            ServiceKind::ClusterIp,
            Some([10, 96, 0, 8]),
            vec![port("", 80, None)],
        ),
        "",
        many,
    );
    let d = desired(&[huge], &NodeInput::default());
    assert!(d.endpoint_sets.is_empty());
    assert_eq!(count("sep-", &d), model::MAX_BUCKETS + 1);
}

#[test]
fn a_full_sync_deletes_and_rebuilds_the_table_in_one_transaction() {
    let s = with(
        svc(
            "a",
            ServiceKind::NodePort,
            Some([10, 96, 0, 1]),
            vec![port("", 80, Some(30001))],
        ),
        "",
        vec![ep(2, 80)],
    );
    let d = desired(&[s], &NodeInput::default());
    let ops = full(&d, "m1");
    assert_eq!(&ops[..3], &[Op::AddTable, Op::DeleteTable, Op::AddTable]);
    assert!(ops.contains(&Op::AddRule {
        chain: MARKER_CHAIN.into(),
        rule: Rule::Marker("m1".into())
    }));
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::AddBaseChain { .. }))
            .count(),
        6
    );
    // nft 1.0.6 refuses `dstnat` on output: the number is used.
    assert!(ops.contains(&Op::AddBaseChain {
        name: "nat-output".into(),
        nat: true,
        hook: Hook::Output,
        priority: -100
    }));
}

/// Every command of a transaction names family ip, table tend-lb: no other table can be
/// touched, whatever the ops.
#[test]
fn every_rendered_command_names_only_the_tend_table() {
    let mut s = with(
        svc(
            "a",
            ServiceKind::NodePort,
            Some([10, 96, 0, 1]),
            vec![port("", 80, Some(30001))],
        ),
        "",
        vec![ep(2, 80)],
    );
    s.spec.affinity_timeout = Some(10);
    let d = desired(&[s], &NodeInput::default());
    let mut ops = full(&d, "m");
    ops.extend(diff(&d, &Desired::default()));
    for op in &ops {
        let cmd = render(op);
        let (verb, body) = cmd
            .as_object()
            .and_then(|o| o.iter().next())
            .expect("one verb");
        let (kind, obj) = body
            .as_object()
            .and_then(|o| o.iter().next())
            .expect("one object");
        assert_eq!(obj["family"], "ip", "{verb} {kind}: {cmd}");
        let table = if kind == "table" {
            &obj["name"]
        } else {
            &obj["table"]
        };
        assert_eq!(table, TABLE, "{verb} {kind}: {cmd}");
    }
}

#[test]
fn rules_render_to_nft_json() {
    let op = Op::AddRule {
        chain: "svc-x".into(),
        rule: Rule::Random(vec!["sep-a".into(), "sep-b".into()]),
    };
    assert_eq!(
        render(&op)["add"]["rule"]["expr"],
        json!([{"vmap": {
            "key": {"numgen": {"mode": "random", "mod": 2}},
            "data": {"set": [[0, {"goto": {"target": "sep-a"}}], [1, {"goto": {"target": "sep-b"}}]]}
        }}])
    );
    let op = Op::AddElements {
        map: MapName::ServiceIps,
        elements: vec![(ip_key([10, 96, 0, 10], 80), "svc-x".into())],
    };
    assert_eq!(
        render(&op)["add"]["element"]["elem"],
        json!([[{"concat": ["10.96.0.10", "tcp", 80]}, {"goto": {"target": "svc-x"}}]])
    );
    let op = Op::AddRule {
        chain: "sep-a".into(),
        rule: Rule::Dnat {
            protocol: Protocol::Udp,
            ip: Ipv4Addr::new(10, 244, 0, 2),
            port: 53,
        },
    };
    let expr = &render(&op)["add"]["rule"]["expr"];
    assert_eq!(expr[0]["match"]["right"], "udp");
    assert_eq!(expr[1]["dnat"], json!({"addr": "10.244.0.2", "port": 53}));
    assert_eq!(
        render(&Op::AddMap(MapName::ServiceNodePorts))["add"]["map"]["map"],
        "verdict"
    );
}

#[test]
fn the_marker_is_read_from_a_chain_listing() {
    let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
        {"chain": {"family": "ip", "table": "tend-lb", "name": "marker", "handle": 20}},
        {"rule": {"family": "ip", "table": "tend-lb", "chain": "marker", "handle": 21,
                  "comment": "tend-lb 77 3", "expr": [{"return": null}]}}]}"#;
    assert_eq!(marker_of(listing), Ok(Some("tend-lb 77 3".into())));
    let flushed = r#"{"nftables": [{"metainfo": {}}, {"chain": {"family": "ip", "table": "tend-lb", "name": "marker"}}]}"#;
    assert_eq!(marker_of(flushed), Ok(None));
    assert!(marker_of("not json").is_err());
    assert!(marker_of("{}").is_err());
}

#[test]
fn the_sync_goes_full_then_incremental_and_full_again_after_failure_or_drift() {
    let node = NodeInput::default();
    let mut services = cluster(3);
    let mut lb = LbSync::new(RecordingNft::default(), "i1");
    let first = lb.sync(desired(&services, &node)).expect("full");
    assert_eq!(first.kind, SyncKind::Full);
    assert_eq!(lb.nft().transactions.len(), 1);
    assert!(!lb.check().expect("check"));
    assert_eq!(
        lb.sync(desired(&services, &node)).expect("same").kind,
        SyncKind::Nothing
    );
    assert_eq!(
        lb.nft().transactions.len(),
        1,
        "nothing sent when nothing changed"
    );

    services.truncate(2);
    let r = lb.sync(desired(&services, &node)).expect("incremental");
    assert_eq!(r.kind, SyncKind::Incremental);
    assert_eq!(r.ops, lb.nft().transactions[1].len());

    // A failed transaction: the next sync is full.
    lb.nft_mut().fail_next = true;
    services.truncate(1);
    assert!(lb.sync(desired(&services, &node)).is_err());
    assert!(!lb.programmed());
    assert_eq!(
        lb.sync(desired(&services, &node)).expect("full").kind,
        SyncKind::Full
    );

    // Drift: the marker is gone (flushed) or another process's.
    lb.nft_mut().marker = None;
    assert!(lb.check().expect("check"));
    assert_eq!(
        lb.sync(desired(&services, &node)).expect("full").kind,
        SyncKind::Full
    );
    lb.nft_mut().marker = Some("tend-lb other 1".into());
    assert!(lb.check().expect("check"));
    let last = lb.nft().transactions.len();
    lb.sync(desired(&services, &node)).expect("full");
    assert_eq!(
        lb.nft().transactions[last][..2],
        [Op::AddTable, Op::DeleteTable]
    );
    assert!(!lb.check().expect("check"));
}

#[test]
fn services_and_endpoints_are_read_from_kubernetes_objects() {
    let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "type": "NodePort", "clusterIP": "10.96.0.10",
            "sessionAffinity": "ClientIP",
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}
            ]
        }
    }))
    .expect("service");
    let endpoints: k8s_openapi::api::core::v1::Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "subsets": [{
            "addresses": [{"ip": "10.244.1.2"}, {"ip": "10.244.2.2"}, {"ip": "fd00::1"}],
            "notReadyAddresses": [{"ip": "10.244.3.2"}],
            "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]
        }]
    }))
    .expect("endpoints");
    let input = ServiceInput::from_k8s(&service, Some(&endpoints)).expect("input");
    assert_eq!(input.spec.namespace, "shop");
    assert_eq!(input.spec.kind, ServiceKind::NodePort);
    assert_eq!(input.spec.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
    assert_eq!(input.spec.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
    assert_eq!(input.spec.ports[1].protocol, Protocol::Udp);
    assert_eq!(input.spec.ports[1].node_port, Some(30053));
    assert_eq!(
        input.endpoints["http"].len(),
        2,
        "not-ready and IPv6 addresses left out"
    );
    assert_eq!(input.endpoints["dns"][0].port, 5353);
    // Headless and no Endpoints object yet.
    let mut headless = service.clone();
    if let Some(spec) = headless.spec.as_mut() {
        spec.cluster_ip = Some("None".into());
    }
    let input = ServiceInput::from_k8s(&headless, None).expect("input");
    assert_eq!(input.spec.cluster_ip, None);
    assert!(input.endpoints.is_empty());
    // Bad input is an error naming the Service, not a panic.
    let mut bad = service;
    if let Some(spec) = bad.spec.as_mut() {
        spec.type_ = Some("Weird".into());
    }
    let err = ServiceInput::from_k8s(&bad, None).expect_err("bad type");
    assert!(err.to_string().starts_with("service shop/web:"), "{err}");
}

#[test]
fn the_recording_fake_reports_the_marker_it_was_given() {
    let mut nft = RecordingNft::default();
    nft.apply(&[Op::AddRule {
        chain: MARKER_CHAIN.into(),
        rule: Rule::Marker("x".into()),
    }])
    .expect("apply");
    assert_eq!(nft.observe().expect("observe"), Some("x".into()));
    let v: Value = serde_json::from_str(&document(&[Op::AddTable])).expect("json");
    assert_eq!(
        v["nftables"][0],
        json!({"add": {"table": {"family": "ip", "name": "tend-lb"}}})
    );
}
