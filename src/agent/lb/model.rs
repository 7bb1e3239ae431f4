//! The desired content of the `tend-lb` table, computed from Services, their ready endpoints
//! and the node (pure). The shape follows kube-proxy's nftables mode:
//!
//! - `service-ips`, a verdict map `ipv4_addr . inet_proto . inet_service` from a ClusterIP
//!   port to `goto svc-<hash>`;
//! - `service-nodeports`, a verdict map `inet_proto . inet_service` from a NodePort to
//!   `goto ext-<hash>` (marks the packet for masquerade, then the service chain), consulted
//!   only for packets to a local address (`fib daddr type local`);
//! - `svc-<hash>` per service port, whose rules are fixed when it is created: hairpin mark
//!   for a source in the set `svc-<hash>-ips` (the endpoint addresses), then `dnat ip to
//!   numgen random mod 65536 map @svc-<hash>-eps`, an interval map from a share of the
//!   random numbers to each endpoint ([`EndpointSet`]). An endpoint change is a change of
//!   these two sets' elements only, which the kernel commits without re-validating the
//!   table (issue 5: 220 ms at 10,000 Services when it was chains);
//! - with ClientIP affinity (or more than 65,536 endpoints), kube-proxy's shape instead:
//!   `svc-<hash>` checks each endpoint's affinity set, then `numgen random mod N vmap` over
//!   `sep-<hash>` chains, one per endpoint (hairpin mark, affinity update, DNAT). Their
//!   endpoint changes add rules, so each costs one validation of the whole table;
//! - `no-endpoint-services` / `no-endpoint-nodeports`: what has no endpoint is rejected at
//!   once in filter chains (nat chains cannot reject);
//! - a fixed skeleton (base chains, masquerade on the mark) written by a full sync.
//!
//! Every name is a hash of what it stands for, so the same input gives the same table and a
//! change to one Service changes only that Service's chains.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Endpoints, Service};

use crate::agent::views::{EndpointsView, ServiceView};
use sha2::{Digest, Sha256};

/// The transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The protocol's name in nft (`inet_proto` values, `meta l4proto`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Kubernetes' spelling (`TCP`, `UDP`, `SCTP`); absent means TCP.
    pub fn parse(kubernetes: Option<&str>) -> Option<Protocol> {
        match kubernetes.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// `type` of a Service. LoadBalancer is treated as NodePort (no cloud balancer here);
/// ExternalName is a DNS alias and gets no rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name; endpoints are matched to it by name ("" for a single unnamed port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// What the load balancer needs of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    /// `None` for headless Services (`clusterIP: None`), which get no VIP.
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`: the affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

/// A ready endpoint of one service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// A Service and its ready endpoints, by service port name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInput {
    pub spec: ServiceSpec,
    pub endpoints: BTreeMap<String, Vec<Endpoint>>,
}

/// What the table needs of the node itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInput {
    /// The cluster's pod CIDR: traffic to a ClusterIP from outside it is masqueraded (as
    /// kube-proxy does with `--cluster-cidr`), so that replies come back through this node.
    /// `None`: only hairpin and NodePort traffic is masqueraded.
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
    /// NodePorts also answer on 127.0.0.1 (needs `route_localnet`, which the caller sets).
    pub localhost_node_ports: bool,
}

/// The default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// The mark that sends a packet to masquerade in postrouting (kube-proxy's bit).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// Why a Service could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("service {namespace}/{name}: {why}")]
    Service {
        namespace: String,
        name: String,
        why: String,
    },
}

impl ServiceInput {
    /// A Service and its v1 Endpoints (`subsets[].addresses` × `ports`, matched to the
    /// service ports by name; `notReadyAddresses` are left out). IPv6 addresses are skipped:
    /// the table is family `ip`.
    pub fn from_k8s(service: &Service, endpoints: Option<&Endpoints>) -> Result<Self, ModelError> {
        let fail = |why: String| ModelError::Service {
            namespace: service
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: service.metadata.name.clone().unwrap_or_default(),
            why,
        };
        let service = ServiceView::from_k8s(service).map_err(|e| fail(e.to_string()))?;
        let endpoints = match endpoints {
            Some(e) => Some(EndpointsView::from_k8s(e).map_err(|e| fail(e.to_string()))?),
            None => None,
        };
        Self::from_view(&service, endpoints.as_ref())
    }

    /// The same from the views the agent's informers keep ([`crate::agent::views`]).
    pub fn from_view(
        service: &ServiceView,
        endpoints: Option<&EndpointsView>,
    ) -> Result<Self, ModelError> {
        let namespace = service
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = service.metadata.name.clone().unwrap_or_default();
        let fail = |why: String| ModelError::Service {
            namespace: namespace.clone(),
            name: name.clone(),
            why,
        };
        let spec = service.spec.clone().unwrap_or_default();
        let kind = match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => ServiceKind::ClusterIp,
            "NodePort" => ServiceKind::NodePort,
            "LoadBalancer" => ServiceKind::LoadBalancer,
            "ExternalName" => ServiceKind::ExternalName,
            other => return Err(fail(format!("unknown type {other:?}"))),
        };
        let cluster_ip = match spec.cluster_ip.as_deref() {
            None | Some("") | Some("None") => None,
            Some(ip) => match ip.parse::<Ipv4Addr>() {
                Ok(ip) => Some(ip),
                // An IPv6 ClusterIP: not this table's family.
                Err(_) if ip.contains(':') => None,
                Err(_) => return Err(fail(format!("clusterIP {ip:?} is not an address"))),
            },
        };
        let mut ports = Vec::new();
        for p in spec.ports.unwrap_or_default() {
            let protocol = Protocol::parse(p.protocol.as_deref())
                .ok_or_else(|| fail(format!("port {}: unknown protocol", p.port)))?;
            let port = u16::try_from(p.port)
                .map_err(|_| fail(format!("port {} is out of range", p.port)))?;
            let node_port = match p.node_port {
                Some(n) => Some(
                    u16::try_from(n).map_err(|_| fail(format!("nodePort {n} is out of range")))?,
                ),
                None => None,
            };
            ports.push(ServicePort {
                name: p.name.unwrap_or_default(),
                protocol,
                port,
                node_port,
            });
        }
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .and_then(|c| c.client_ip)
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        });
        let mut by_port: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
        for subset in endpoints
            .and_then(|e| e.subsets.as_ref())
            .into_iter()
            .flatten()
        {
            for ep_port in subset.ports.iter().flatten() {
                let Ok(port) = u16::try_from(ep_port.port) else {
                    continue;
                };
                let list = by_port
                    .entry(ep_port.name.clone().unwrap_or_default())
                    .or_default();
                for address in subset.addresses.iter().flatten() {
                    if let Ok(ip) = address.ip.parse::<Ipv4Addr>() {
                        list.push(Endpoint { ip, port });
                    }
                }
            }
        }
        Ok(ServiceInput {
            spec: ServiceSpec {
                namespace,
                name,
                kind,
                cluster_ip,
                ports,
                affinity_timeout,
            },
            endpoints: by_port,
        })
    }
}

/// A key of `service-ips` and `no-endpoint-services`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpKey {
    pub ip: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
}

/// A key of `service-nodeports` and `no-endpoint-nodeports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub protocol: Protocol,
    pub port: u16,
}

/// The table's maps. Each maps its keys to a `goto` to a chain (the reject maps to
/// [`REJECT_CHAIN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapName {
    ServiceIps,
    ServiceNodePorts,
    NoEndpointServices,
    NoEndpointNodePorts,
}

impl MapName {
    pub const ALL: [MapName; 4] = [
        MapName::ServiceIps,
        MapName::ServiceNodePorts,
        MapName::NoEndpointServices,
        MapName::NoEndpointNodePorts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MapName::ServiceIps => "service-ips",
            MapName::ServiceNodePorts => "service-nodeports",
            MapName::NoEndpointServices => "no-endpoint-services",
            MapName::NoEndpointNodePorts => "no-endpoint-nodeports",
        }
    }

    /// Whether its keys are `ipv4_addr . inet_proto . inet_service` (else
    /// `inet_proto . inet_service`).
    pub fn keyed_by_ip(self) -> bool {
        matches!(self, MapName::ServiceIps | MapName::NoEndpointServices)
    }
}

/// A key of one of the maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapKey {
    Ip(IpKey),
    Port(PortKey),
}

/// The fixed chains of the skeleton.
pub const SERVICES_CHAIN: &str = "services";
pub const MARK_CHAIN: &str = "mark-for-masquerade";
pub const MASQUERADE_CHAIN: &str = "masquerading";
pub const REJECT_CHAIN: &str = "reject-no-endpoints";
pub const ENDPOINTS_CHECK_CHAIN: &str = "endpoints-check";
pub const NODEPORT_CHECK_CHAIN: &str = "nodeport-endpoints-check";
/// Holds one rule whose comment is the generation of the last full sync: a flushed or
/// replaced table loses it, which is how drift is found without listing the whole table.
pub const MARKER_CHAIN: &str = "marker";

/// A rule of the table, as data; `nft.rs` renders it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// `jump <chain>`.
    Jump(String),
    /// `goto <chain>`.
    Goto(String),
    /// `ct state new jump <chain>` (filter chains check only the first packet).
    NewJump(String),
    /// `ip saddr != <cidr> jump mark-for-masquerade`.
    MarkOutside { cidr: (Ipv4Addr, u8) },
    /// `ip saddr <ip> jump mark-for-masquerade`: a pod reaching itself through its Service.
    Hairpin { ip: Ipv4Addr },
    /// `ip saddr @<set> goto <chain>`: a client seen within the affinity timeout.
    AffinityGoto { set: String, chain: String },
    /// `update @<set> { ip saddr }`.
    AffinityUpdate { set: String },
    /// `numgen random mod N vmap { 0 : goto <c0>, ... }`.
    Random(Vec<String>),
    /// `ip saddr @<set> jump mark-for-masquerade`: hairpin for every endpoint of a service
    /// whose endpoints are in data sets ([`EndpointSet`]).
    HairpinSet { set: String },
    /// `meta l4proto <p> dnat ip to numgen random mod 65536 map @<map>`: the endpoint is
    /// looked up in an interval map of the random number ([`EndpointSet`]).
    DnatMap { protocol: Protocol, map: String },
    /// `meta l4proto <p> dnat ip to <ip>:<port>`.
    Dnat {
        protocol: Protocol,
        ip: Ipv4Addr,
        port: u16,
    },
    /// `ip daddr . meta l4proto . th dport vmap @<map>` (maps keyed by IP).
    DispatchIp(MapName),
    /// `fib daddr type local [ip daddr != 127.0.0.0/8] meta l4proto . th dport vmap @<map>`.
    DispatchLocalPort { map: MapName, localhost: bool },
    /// `meta mark set meta mark | 0x4000`.
    SetMark,
    /// `meta mark & 0x4000 == 0 return`.
    ReturnUnmarked,
    /// `meta mark set meta mark ^ 0x4000` (so that a packet is masqueraded once).
    ClearMark,
    /// `masquerade fully-random`.
    Masquerade,
    /// `meta l4proto tcp reject with tcp reset`.
    RejectTcp,
    /// `reject` (ICMP port unreachable, for UDP and SCTP).
    Reject,
    /// `return comment "<marker>"`.
    Marker(String),
}

/// The hook a base chain is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// A base chain of the skeleton.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    pub name: &'static str,
    pub nat: bool,
    pub hook: Hook,
    pub priority: i32,
    pub rules: Vec<Rule>,
}

/// The base chains: DNAT at prerouting and output (priority -100: nft 1.0.6 refuses
/// `dstnat` on output), masquerade at postrouting (100), and the no-endpoint rejects in
/// filter chains at -110, before DNAT would have happened (kube-proxy's layout).
pub fn base_chains() -> Vec<BaseChain> {
    let jump = |c: &str| vec![Rule::Jump(c.to_string())];
    let check = |c: &[&str]| c.iter().map(|c| Rule::NewJump(c.to_string())).collect();
    vec![
        BaseChain {
            name: "nat-prerouting",
            nat: true,
            hook: Hook::Prerouting,
            priority: -100,
            rules: jump(SERVICES_CHAIN),
        },
        BaseChain {
            name: "nat-output",
            nat: true,
            hook: Hook::Output,
            priority: -100,
            rules: jump(SERVICES_CHAIN),
        },
        BaseChain {
            name: "nat-postrouting",
            nat: true,
            hook: Hook::Postrouting,
            priority: 100,
            rules: jump(MASQUERADE_CHAIN),
        },
        BaseChain {
            name: "filter-input",
            nat: false,
            hook: Hook::Input,
            priority: -110,
            rules: check(&[NODEPORT_CHECK_CHAIN, ENDPOINTS_CHECK_CHAIN]),
        },
        BaseChain {
            name: "filter-forward",
            nat: false,
            hook: Hook::Forward,
            priority: -110,
            rules: check(&[ENDPOINTS_CHECK_CHAIN]),
        },
        BaseChain {
            name: "filter-output",
            nat: false,
            hook: Hook::Output,
            priority: -110,
            rules: check(&[ENDPOINTS_CHECK_CHAIN]),
        },
    ]
}

/// The regular chains of the skeleton and their rules.
pub fn skeleton_chains(node: &NodeInput) -> Vec<(&'static str, Vec<Rule>)> {
    vec![
        (
            SERVICES_CHAIN,
            vec![
                Rule::DispatchIp(MapName::ServiceIps),
                Rule::DispatchLocalPort {
                    map: MapName::ServiceNodePorts,
                    localhost: node.localhost_node_ports,
                },
            ],
        ),
        (MARK_CHAIN, vec![Rule::SetMark]),
        (
            MASQUERADE_CHAIN,
            vec![Rule::ReturnUnmarked, Rule::ClearMark, Rule::Masquerade],
        ),
        (REJECT_CHAIN, vec![Rule::RejectTcp, Rule::Reject]),
        (
            ENDPOINTS_CHECK_CHAIN,
            vec![Rule::DispatchIp(MapName::NoEndpointServices)],
        ),
        (
            NODEPORT_CHECK_CHAIN,
            vec![Rule::DispatchLocalPort {
                map: MapName::NoEndpointNodePorts,
                localhost: node.localhost_node_ports,
            }],
        ),
        (MARKER_CHAIN, Vec::new()),
    ]
}

/// The per-Service content of the table: what changes with Services and endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Map elements: key -> the chain its `goto` names.
    pub elements: BTreeMap<MapName, BTreeMap<MapKey, String>>,
    /// `svc-`, `ext-` and `sep-` chains with their rules.
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// Affinity sets (`aff-<hash>`, `ipv4_addr`, dynamic, with this timeout in seconds).
    pub affinity_sets: BTreeMap<String, u32>,
    /// The endpoints of service ports kept in data sets, by service chain (`svc-<hash>`):
    /// their rules never change, so an endpoint change touches set elements only.
    pub endpoint_sets: BTreeMap<String, EndpointSet>,
    /// The skeleton's settings: a change of them needs a full sync.
    pub node: NodeInput,
}

impl Desired {
    /// How many map elements, chains and sets: the size of a full sync.
    pub fn size(&self) -> (usize, usize, usize) {
        (
            self.elements.values().map(BTreeMap::len).sum(),
            self.chains.len(),
            self.affinity_sets.len(),
        )
    }
}

/// The endpoints of one service port, kept as data rather than chains: the interval map
/// `<svc>-eps` (`typeof numgen random mod 65536 : ip daddr . <proto> dport`) splits the
/// random numbers 0..65535 among the endpoints, and the set `<svc>-ips` holds their
/// addresses for the hairpin rule. Why: adding a rule or a verdict-map element makes the
/// kernel's commit validate every chain of the table (`nft_table_validate`, 220 ms at
/// 10,000 Services), while elements of data sets and maps do not; so an endpoint change of
/// such a service is a flush and refill of its two sets, whatever the table's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSet {
    pub protocol: Protocol,
    /// Sorted, deduplicated, at least one and at most [`MAX_BUCKETS`].
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSet {
    /// The interval map's name for the service chain `chain`.
    pub fn map_name(chain: &str) -> String {
        format!("{chain}-eps")
    }

    /// The address set's name for the service chain `chain`.
    pub fn ips_name(chain: &str) -> String {
        format!("{chain}-ips")
    }

    /// The distinct endpoint addresses, sorted.
    pub fn ips(&self) -> Vec<Ipv4Addr> {
        let mut ips: Vec<Ipv4Addr> = self.endpoints.iter().map(|e| e.ip).collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// Each endpoint with its interval of random numbers ([`buckets`]).
    pub fn intervals(&self) -> Vec<((u32, u32), Endpoint)> {
        buckets(self.endpoints.len())
            .into_iter()
            .zip(self.endpoints.iter().copied())
            .collect()
    }
}

/// The random numbers an endpoint map is keyed by: `numgen random mod 65536`.
pub const RANDOM_RANGE: u32 = 65_536;

/// At most this many endpoints fit in an endpoint map (one random number each); a service
/// port with more keeps per-endpoint chains.
pub const MAX_BUCKETS: usize = RANDOM_RANGE as usize;

/// 0..65535 split into `n` consecutive inclusive intervals whose sizes differ by at most
/// one, so that each endpoint gets an even share of the traffic. Empty for 0 and for more
/// than [`MAX_BUCKETS`].
pub fn buckets(n: usize) -> Vec<(u32, u32)> {
    if n == 0 || n > MAX_BUCKETS {
        return Vec::new();
    }
    let n64 = n as u64;
    let range = u64::from(RANDOM_RANGE);
    (0..n64)
        .map(|i| {
            let start = i * range / n64;
            let end = (i + 1) * range / n64 - 1;
            (start as u32, end as u32)
        })
        .collect()
}

/// 16 hex digits of SHA-256 over the parts: short, stable, and collision-free in practice.
fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// The name of the service chain of `namespace/name` port `port` (its name, or number).
pub fn service_chain(spec: &ServiceSpec, port: &ServicePort) -> String {
    format!("svc-{}", service_hash(spec, port))
}

fn service_hash(spec: &ServiceSpec, port: &ServicePort) -> String {
    hash(&[
        &spec.namespace,
        &spec.name,
        &port.name,
        port.protocol.as_str(),
        &port.port.to_string(),
    ])
}

fn endpoint_hash(spec: &ServiceSpec, port: &ServicePort, ep: Endpoint) -> String {
    hash(&[
        &spec.namespace,
        &spec.name,
        &port.name,
        port.protocol.as_str(),
        &port.port.to_string(),
        &ep.ip.to_string(),
        &ep.port.to_string(),
    ])
}

/// The table for these Services on this node. Services are taken in name order and
/// endpoints sorted and deduplicated, so the result does not depend on input order.
pub fn desired(services: &[ServiceInput], node: &NodeInput) -> Desired {
    let mut out = Desired {
        node: node.clone(),
        ..Desired::default()
    };
    for map in MapName::ALL {
        out.elements.insert(map, BTreeMap::new());
    }
    let mut sorted: Vec<&ServiceInput> = services.iter().collect();
    sorted
        .sort_by(|a, b| (&a.spec.namespace, &a.spec.name).cmp(&(&b.spec.namespace, &b.spec.name)));
    for service in sorted {
        add_service(&mut out, service);
    }
    out
}

/// What one Service contributes to the table on this node (its share of [`desired`]):
/// its chains, sets and map elements, and no empty maps. Chain and set names are hashes of
/// the Service's namespace and name, so two Services' fragments never share one; only map
/// keys can clash (two Services claiming one ClusterIP port), which
/// [`super::table::Table`] resolves as [`desired`] does.
pub fn fragment(service: &ServiceInput, node: &NodeInput) -> Desired {
    let mut out = Desired {
        node: node.clone(),
        ..Desired::default()
    };
    for map in MapName::ALL {
        out.elements.insert(map, BTreeMap::new());
    }
    add_service(&mut out, service);
    out.elements.retain(|_, elements| !elements.is_empty());
    out
}

fn add_service(out: &mut Desired, service: &ServiceInput) {
    let spec = &service.spec;
    if spec.kind == ServiceKind::ExternalName {
        return;
    }
    let node_ports = matches!(spec.kind, ServiceKind::NodePort | ServiceKind::LoadBalancer);
    for port in &spec.ports {
        let mut endpoints: Vec<Endpoint> = service
            .endpoints
            .get(&port.name)
            .cloned()
            .unwrap_or_default();
        endpoints.sort();
        endpoints.dedup();
        let ip_key = spec.cluster_ip.map(|ip| {
            MapKey::Ip(IpKey {
                ip,
                protocol: port.protocol,
                port: port.port,
            })
        });
        let port_key = port.node_port.filter(|_| node_ports).map(|n| {
            MapKey::Port(PortKey {
                protocol: port.protocol,
                port: n,
            })
        });
        if ip_key.is_none() && port_key.is_none() {
            // Headless without a NodePort: nothing reaches it through the table.
            continue;
        }
        if endpoints.is_empty() {
            let mut reject = |map: MapName, key: MapKey| {
                if let Some(m) = out.elements.get_mut(&map) {
                    m.insert(key, REJECT_CHAIN.to_string());
                }
            };
            if let Some(k) = ip_key {
                reject(MapName::NoEndpointServices, k);
            }
            if let Some(k) = port_key {
                reject(MapName::NoEndpointNodePorts, k);
            }
            continue;
        }
        let svc_hash = service_hash(spec, port);
        let svc_chain = format!("svc-{svc_hash}");
        let mut svc_rules = Vec::new();
        if let (Some(cidr), Some(_)) = (out.node.cluster_cidr, ip_key) {
            svc_rules.push(Rule::MarkOutside { cidr });
        }
        if spec.affinity_timeout.is_none() && endpoints.len() <= MAX_BUCKETS {
            svc_rules.push(Rule::HairpinSet {
                set: EndpointSet::ips_name(&svc_chain),
            });
            svc_rules.push(Rule::DnatMap {
                protocol: port.protocol,
                map: EndpointSet::map_name(&svc_chain),
            });
            out.endpoint_sets.insert(
                svc_chain.clone(),
                EndpointSet {
                    protocol: port.protocol,
                    endpoints: endpoints.clone(),
                },
            );
        } else {
            add_endpoint_chains(out, spec, port, &endpoints, &mut svc_rules);
        }
        out.chains.insert(svc_chain.clone(), svc_rules);
        if let Some(k) = ip_key
            && let Some(m) = out.elements.get_mut(&MapName::ServiceIps)
        {
            m.insert(k, svc_chain.clone());
        }
        if let Some(k) = port_key {
            let ext = format!("ext-{svc_hash}");
            out.chains.insert(
                ext.clone(),
                vec![Rule::Jump(MARK_CHAIN.into()), Rule::Goto(svc_chain)],
            );
            if let Some(m) = out.elements.get_mut(&MapName::ServiceNodePorts) {
                m.insert(k, ext);
            }
        }
    }
}

/// One `sep-<hash>` chain per endpoint and the service chain's `numgen ... vmap` over them:
/// for ClientIP affinity (each endpoint needs its own affinity set and rule) and for more
/// endpoints than an endpoint map holds. An endpoint change of such a service rewrites its
/// chain, which costs a validation of the whole table in the kernel's commit.
fn add_endpoint_chains(
    out: &mut Desired,
    spec: &ServiceSpec,
    port: &ServicePort,
    endpoints: &[Endpoint],
    svc_rules: &mut Vec<Rule>,
) {
    let mut targets = Vec::new();
    for ep in endpoints {
        let ep_hash = endpoint_hash(spec, port, *ep);
        let sep = format!("sep-{ep_hash}");
        let mut sep_rules = vec![Rule::Hairpin { ip: ep.ip }];
        if let Some(timeout) = spec.affinity_timeout {
            // The timeout is part of the set's name: a new timeout is a new set, which
            // the diff adds before the rules that use it and deletes after.
            let set = format!("aff-{}", hash(&[&ep_hash, &timeout.to_string()]));
            out.affinity_sets.insert(set.clone(), timeout);
            svc_rules.push(Rule::AffinityGoto {
                set: set.clone(),
                chain: sep.clone(),
            });
            sep_rules.push(Rule::AffinityUpdate { set });
        }
        sep_rules.push(Rule::Dnat {
            protocol: port.protocol,
            ip: ep.ip,
            port: ep.port,
        });
        out.chains.insert(sep.clone(), sep_rules);
        targets.push(sep);
    }
    svc_rules.push(Rule::Random(targets));
}
