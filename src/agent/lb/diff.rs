//! From the table tend programmed last to the one it wants: the list of nft operations,
//! applied as one transaction (pure). An incremental diff touches only what changed: one
//! endpoint more in a Service is a flush and refill of that Service's endpoint map and
//! address set (with ClientIP affinity: a new endpoint chain and the Service's chain
//! rewritten), however many other Services there are. A full sync rebuilds the table in one transaction.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::model::{
    self, BaseChain, Desired, Endpoint, EndpointSet, Hook, MARKER_CHAIN, MapKey, MapName,
    NODEPORT_CHECK_CHAIN, Protocol, Rule, SERVICES_CHAIN,
};

/// One nft command on the `tend-lb` table (`nft.rs` renders each as one JSON command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddTable,
    DeleteTable,
    AddMap(MapName),
    AddBaseChain {
        name: String,
        nat: bool,
        hook: Hook,
        priority: i32,
    },
    AddChain(String),
    FlushChain(String),
    DeleteChain(String),
    AddRule {
        chain: String,
        rule: Rule,
    },
    AddSet {
        name: String,
        timeout: u32,
    },
    DeleteSet(String),
    /// Elements of `map`, each key with the chain its `goto` names.
    AddElements {
        map: MapName,
        elements: Vec<(MapKey, String)>,
    },
    DeleteElements {
        map: MapName,
        keys: Vec<MapKey>,
    },
    /// The interval map of a service port's endpoints ([`EndpointSet`]), `typeof numgen
    /// random mod 65536 : ip daddr . <protocol> dport; flags interval`.
    AddEndpointMap {
        name: String,
        protocol: Protocol,
    },
    /// A plain `ipv4_addr` set (the endpoint addresses, for hairpin).
    AddIpSet(String),
    /// Removes every element of a set (a data set: no validation of the table).
    FlushSet(String),
    /// Removes every element of an endpoint map (data, not verdicts: no validation).
    FlushMap(String),
    /// Deletes an endpoint map (nft's syntax tells maps from sets; netlink does not).
    DeleteMap(String),
    /// The endpoints of an endpoint map, each with its share of 0..65535
    /// ([`model::buckets`]); the map must be empty (new or flushed in this transaction).
    AddEndpointElements {
        map: String,
        endpoints: Vec<Endpoint>,
    },
    /// Addresses of an `ipv4_addr` set.
    AddIpElements {
        set: String,
        ips: Vec<Ipv4Addr>,
    },
}

/// A new endpoint set: its map and address set, filled.
fn add_endpoint_set(chain: &str, set: &EndpointSet, ops: &mut Vec<Op>) {
    let (map, ips) = (EndpointSet::map_name(chain), EndpointSet::ips_name(chain));
    ops.push(Op::AddEndpointMap {
        name: map.clone(),
        protocol: set.protocol,
    });
    ops.push(Op::AddIpSet(ips.clone()));
    ops.push(Op::AddEndpointElements {
        map,
        endpoints: set.endpoints.clone(),
    });
    ops.push(Op::AddIpElements {
        set: ips,
        ips: set.ips(),
    });
}

/// An endpoint set whose endpoints changed: each of its two sets that differs is flushed
/// and refilled. No rule and no verdict-map element is touched.
fn change_endpoint_set(chain: &str, old: &EndpointSet, new: &EndpointSet, ops: &mut Vec<Op>) {
    if old.endpoints != new.endpoints {
        let map = EndpointSet::map_name(chain);
        ops.push(Op::FlushMap(map.clone()));
        ops.push(Op::AddEndpointElements {
            map,
            endpoints: new.endpoints.clone(),
        });
    }
    let ips = new.ips();
    if old.ips() != ips {
        let set = EndpointSet::ips_name(chain);
        ops.push(Op::FlushSet(set.clone()));
        ops.push(Op::AddIpElements { set, ips });
    }
}

fn rules(chain: &str, rules: &[Rule], ops: &mut Vec<Op>) {
    ops.extend(rules.iter().map(|rule| Op::AddRule {
        chain: chain.to_string(),
        rule: rule.clone(),
    }));
}

/// The whole table in one transaction: `add table` (so that the delete cannot fail), `delete
/// table`, then everything again. The kernel applies a transaction atomically, so packets
/// see the old table or the new one, never an empty one. Deleting rather than flushing also
/// removes chains and sets the record does not know about (a table edited by hand), which
/// `flush table` would leave behind. `marker` is written into the marker chain.
pub fn full(desired: &Desired, marker: &str) -> Vec<Op> {
    let mut ops = vec![Op::AddTable, Op::DeleteTable, Op::AddTable];
    ops.extend(MapName::ALL.into_iter().map(Op::AddMap));
    let base = model::base_chains();
    let skeleton = model::skeleton_chains(&desired.node);
    for BaseChain {
        name,
        nat,
        hook,
        priority,
        ..
    } in &base
    {
        ops.push(Op::AddBaseChain {
            name: name.to_string(),
            nat: *nat,
            hook: *hook,
            priority: *priority,
        });
    }
    for (name, _) in &skeleton {
        ops.push(Op::AddChain(name.to_string()));
    }
    for (name, timeout) in &desired.affinity_sets {
        ops.push(Op::AddSet {
            name: name.clone(),
            timeout: *timeout,
        });
    }
    for (chain, set) in &desired.endpoint_sets {
        add_endpoint_set(chain, set, &mut ops);
    }
    for name in desired.chains.keys() {
        ops.push(Op::AddChain(name.clone()));
    }
    for (name, chain_rules) in &desired.chains {
        rules(name, chain_rules, &mut ops);
    }
    for (name, chain_rules) in &skeleton {
        rules(name, chain_rules, &mut ops);
    }
    rules(MARKER_CHAIN, &[Rule::Marker(marker.to_string())], &mut ops);
    for elements_op in add_elements(desired.elements.iter().map(|(m, e)| {
        (
            *m,
            e.iter().map(|(k, c)| (*k, c.clone())).collect::<Vec<_>>(),
        )
    })) {
        ops.push(elements_op);
    }
    // Base chains last: traffic enters the new table only once everything it can reach
    // exists (within the transaction this is about readability, not safety).
    for chain in &base {
        rules(chain.name, &chain.rules, &mut ops);
    }
    ops
}

fn add_elements(
    by_map: impl Iterator<Item = (MapName, Vec<(MapKey, String)>)>,
) -> impl Iterator<Item = Op> {
    by_map
        .filter(|(_, e)| !e.is_empty())
        .map(|(map, elements)| Op::AddElements { map, elements })
}

/// The operations that turn `applied` into `desired`, in an order the kernel accepts within
/// one transaction: new sets and chains before the rules that name them; map elements
/// before the chains they point to are removed; chains flushed before they are deleted
/// (a chain must be empty and unreferenced to go); sets deleted last. Empty when nothing
/// changed.
pub fn diff(applied: &Desired, desired: &Desired) -> Vec<Op> {
    let mut ops = Vec::new();
    for (name, timeout) in &desired.affinity_sets {
        if !applied.affinity_sets.contains_key(name) {
            ops.push(Op::AddSet {
                name: name.clone(),
                timeout: *timeout,
            });
        }
    }
    for (chain, set) in &desired.endpoint_sets {
        match applied.endpoint_sets.get(chain) {
            None => add_endpoint_set(chain, set, &mut ops),
            // The protocol is part of the chain's name, so only the endpoints can differ.
            Some(old) => change_endpoint_set(chain, old, set, &mut ops),
        }
    }
    for name in desired.chains.keys() {
        if !applied.chains.contains_key(name) {
            ops.push(Op::AddChain(name.clone()));
        }
    }
    for (name, chain_rules) in &desired.chains {
        match applied.chains.get(name) {
            None => rules(name, chain_rules, &mut ops),
            Some(old) if old != chain_rules => {
                ops.push(Op::FlushChain(name.clone()));
                rules(name, chain_rules, &mut ops);
            }
            Some(_) => {}
        }
    }
    if applied.node.localhost_node_ports != desired.node.localhost_node_ports {
        for (name, chain_rules) in model::skeleton_chains(&desired.node) {
            if name == SERVICES_CHAIN || name == NODEPORT_CHECK_CHAIN {
                ops.push(Op::FlushChain(name.to_string()));
                rules(name, &chain_rules, &mut ops);
            }
        }
    }
    let empty = BTreeMap::new();
    for map in MapName::ALL {
        let old = applied.elements.get(&map).unwrap_or(&empty);
        let new = desired.elements.get(&map).unwrap_or(&empty);
        let gone: Vec<MapKey> = old
            .iter()
            .filter(|(k, c)| new.get(k) != Some(c))
            .map(|(k, _)| *k)
            .collect();
        if !gone.is_empty() {
            ops.push(Op::DeleteElements { map, keys: gone });
        }
    }
    for map in MapName::ALL {
        let old = applied.elements.get(&map).unwrap_or(&empty);
        let new = desired.elements.get(&map).unwrap_or(&empty);
        let added: Vec<(MapKey, String)> = new
            .iter()
            .filter(|(k, c)| old.get(k) != Some(c))
            .map(|(k, c)| (*k, c.clone()))
            .collect();
        ops.extend(add_elements(std::iter::once((map, added))));
    }
    let removed: Vec<&String> = applied
        .chains
        .keys()
        .filter(|name| !desired.chains.contains_key(*name))
        .collect();
    ops.extend(removed.iter().map(|name| Op::FlushChain((*name).clone())));
    ops.extend(removed.iter().map(|name| Op::DeleteChain((*name).clone())));
    for name in applied.affinity_sets.keys() {
        if !desired.affinity_sets.contains_key(name) {
            ops.push(Op::DeleteSet(name.clone()));
        }
    }
    for chain in applied.endpoint_sets.keys() {
        if !desired.endpoint_sets.contains_key(chain) {
            ops.push(Op::DeleteMap(EndpointSet::map_name(chain)));
            ops.push(Op::DeleteSet(EndpointSet::ips_name(chain)));
        }
    }
    ops
}
