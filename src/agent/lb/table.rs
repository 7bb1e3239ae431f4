//! The desired table kept per Service, so that a change costs what it touches (pure).
//!
//! Rebuilding the model of every Service on each change ([`super::model::desired`]) and
//! comparing it whole ([`super::diff::diff`]) took ~27 ms at 10,000 Services, five times the
//! goal of a whole endpoint change (issue 5). [`Table`] keeps each Service's [`fragment`]
//! and who claims each map key; [`Table::update`] replaces the fragments of the Services that
//! changed and returns a [`Delta`]: the table before and after, restricted to the names those
//! Services touched. `diff(delta.before, delta.after)` is then the same list of operations as
//! the diff of the whole tables, at the cost of the change alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::model::{
    Desired, EndpointSet, MapKey, MapName, NodeInput, Rule, ServiceInput, fragment,
};

/// A Service's namespace and name.
pub type ServiceKey = (String, String);

/// The part of the table that some Services' change touched: what it was and what it is.
/// Both hold the same node; chains, sets and endpoint sets are those of the changed
/// Services' old fragments (`before`) and new ones (`after`); map elements are every key
/// either claimed, each with the chain the whole table maps it to (its winner).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub before: Desired,
    pub after: Desired,
}

/// One Service's fragment of the table ([`fragment`]) packed in exact-size slices, in the
/// fragment's (sorted) order. Why: the table holds one per Service for the agent's whole
/// life, and a [`Desired`] of one Service is five `BTreeMap`s, each a node of 11 slots for
/// one or two entries (with the node settings copied in): ~2.6 KB a Service, 5.3 MB of the
/// agent's heap at 2,000 Services (docs/performance.md). Packed, a ClusterIP Service with
/// five endpoints takes ~0.5 KB.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packed {
    elements: Box<[(MapName, MapKey, Box<str>)]>,
    chains: Box<[PackedChain]>,
    affinity_sets: Box<[(Box<str>, u32)]>,
    endpoint_sets: Box<[(Box<str>, EndpointSet)]>,
}

impl Packed {
    fn new(fragment: Desired) -> Self {
        Packed {
            elements: fragment
                .elements
                .into_iter()
                .flat_map(|(map, elements)| {
                    elements
                        .into_iter()
                        .map(move |(k, chain)| (map, k, chain.into_boxed_str()))
                })
                .collect(),
            chains: fragment
                .chains
                .into_iter()
                .map(|(name, rules)| (name.into_boxed_str(), rules.into_boxed_slice()))
                .collect(),
            affinity_sets: fragment
                .affinity_sets
                .into_iter()
                .map(|(name, timeout)| (name.into_boxed_str(), timeout))
                .collect(),
            endpoint_sets: fragment
                .endpoint_sets
                .into_iter()
                .map(|(name, mut set)| {
                    set.endpoints.shrink_to_fit();
                    (name.into_boxed_str(), set)
                })
                .collect(),
        }
    }
}

/// A chain's name and rules.
type PackedChain = (Box<str>, Box<[Rule]>);

/// The Services that claim one map key and the chain each maps it to, sorted by Service
/// (almost always one: a `Vec`, not a map, whose smallest node would be 11 slots).
#[derive(Debug, Clone, Default)]
struct Claims(Vec<(ServiceKey, Box<str>)>);

impl Claims {
    fn insert(&mut self, key: &ServiceKey, chain: &str) {
        match self.0.binary_search_by(|(k, _)| k.cmp(key)) {
            Ok(i) => self.0[i].1 = chain.into(),
            Err(i) => self.0.insert(i, (key.clone(), chain.into())),
        }
    }

    fn remove(&mut self, key: &ServiceKey) {
        if let Ok(i) = self.0.binary_search_by(|(k, _)| k.cmp(key)) {
            self.0.remove(i);
        }
    }

    /// The chain of the last Service in namespace and name order: the whole table's.
    fn winner(&self) -> Option<&str> {
        self.0.last().map(|(_, chain)| &**chain)
    }
}

/// Every Service's fragment of the desired table, and which Services claim each map key.
#[derive(Debug, Clone, Default)]
pub struct Table {
    node: NodeInput,
    fragments: HashMap<ServiceKey, Packed>,
    /// Per map key, the Services that map it and to which chain. The whole table maps it to
    /// the last Service in namespace and name order, as [`super::model::desired`] does
    /// (validation keeps ClusterIPs and NodePorts apart, so a clash is a transient state).
    claims: HashMap<(MapName, MapKey), Claims>,
}

impl Table {
    pub fn new(node: NodeInput) -> Self {
        Table {
            node,
            ..Table::default()
        }
    }

    /// The Services the table holds.
    pub fn keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.fragments.keys()
    }

    pub fn len(&self) -> usize {
        self.fragments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fragments.is_empty()
    }

    fn winner(&self, key: &(MapName, MapKey)) -> Option<String> {
        self.claims
            .get(key)
            .and_then(Claims::winner)
            .map(str::to_string)
    }

    fn empty(&self) -> Desired {
        Desired {
            node: self.node.clone(),
            ..Desired::default()
        }
    }

    /// Sets each Service in `changes` to its input (`None`: it is gone, or cannot be read)
    /// and returns the table before and after, restricted to what they touch. A Service
    /// whose fragment did not change touches nothing.
    pub fn update(
        &mut self,
        changes: impl IntoIterator<Item = (ServiceKey, Option<ServiceInput>)>,
    ) -> Delta {
        let mut changed: Vec<(ServiceKey, Option<Packed>)> = Vec::new();
        for (key, input) in changes {
            let new = input.map(|i| Packed::new(fragment(&i, &self.node)));
            if self.fragments.get(&key) != new.as_ref() {
                changed.push((key, new));
            }
        }
        let (mut before, mut after) = (self.empty(), self.empty());
        let mut keys: BTreeSet<(MapName, MapKey)> = BTreeSet::new();
        for (key, new) in &changed {
            if let Some(old) = self.fragments.get(key) {
                merge(&mut before, old, &mut keys);
            }
            if let Some(new) = new {
                merge(&mut after, new, &mut keys);
            }
        }
        for k in &keys {
            if let Some(chain) = self.winner(k) {
                before.elements.entry(k.0).or_default().insert(k.1, chain);
            }
        }
        for (key, new) in changed {
            if let Some(old) = self.fragments.remove(&key) {
                for (map, k, _) in old.elements.iter() {
                    let slot = (*map, *k);
                    if let Some(claims) = self.claims.get_mut(&slot) {
                        claims.remove(&key);
                        if claims.0.is_empty() {
                            self.claims.remove(&slot);
                        }
                    }
                }
            }
            if let Some(new) = new {
                for (map, k, chain) in new.elements.iter() {
                    self.claims
                        .entry((*map, *k))
                        .or_default()
                        .insert(&key, chain);
                }
                self.fragments.insert(key, new);
            }
        }
        for k in &keys {
            if let Some(chain) = self.winner(k) {
                after.elements.entry(k.0).or_default().insert(k.1, chain);
            }
        }
        Delta { before, after }
    }

    /// The whole desired table: what [`super::model::desired`] gives for every Service held
    /// (for a full sync).
    pub fn compose(&self) -> Desired {
        let mut out = self.empty();
        for map in MapName::ALL {
            out.elements.insert(map, BTreeMap::new());
        }
        for fragment in self.fragments.values() {
            merge_names(&mut out, fragment);
        }
        for (slot, claims) in &self.claims {
            if let Some(chain) = claims.winner() {
                out.elements
                    .entry(slot.0)
                    .or_default()
                    .insert(slot.1, chain.to_string());
            }
        }
        out
    }
}

/// Adds `fragment`'s chains and sets to `into` and its map keys to `keys`.
fn merge(into: &mut Desired, fragment: &Packed, keys: &mut BTreeSet<(MapName, MapKey)>) {
    merge_names(into, fragment);
    keys.extend(fragment.elements.iter().map(|(map, k, _)| (*map, *k)));
}

/// Adds `fragment`'s chains, affinity sets and endpoint sets to `into` (names never clash
/// between Services: they are hashes of the Service).
fn merge_names(into: &mut Desired, fragment: &Packed) {
    into.chains.extend(
        fragment
            .chains
            .iter()
            .map(|(name, rules)| (name.to_string(), rules.to_vec())),
    );
    into.affinity_sets.extend(
        fragment
            .affinity_sets
            .iter()
            .map(|(name, timeout)| (name.to_string(), *timeout)),
    );
    into.endpoint_sets.extend(
        fragment
            .endpoint_sets
            .iter()
            .map(|(name, set)| (name.to_string(), set.clone())),
    );
}

#[cfg(test)]
mod tests {
    use super::super::bench::cluster;
    use super::super::diff::diff;
    use super::super::model::{Endpoint, desired};
    use super::*;
    use std::net::Ipv4Addr;

    fn key(s: &ServiceInput) -> ServiceKey {
        (s.spec.namespace.clone(), s.spec.name.clone())
    }

    fn node() -> NodeInput {
        NodeInput {
            cluster_cidr: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
            localhost_node_ports: false,
        }
    }

    #[test]
    fn the_composed_table_is_the_whole_model_and_a_delta_diffs_like_the_whole() {
        let node = node();
        let mut services = cluster(20);
        let mut table = Table::new(node.clone());
        let first = table.update(services.iter().map(|s| (key(s), Some(s.clone()))));
        assert_eq!(table.compose(), desired(&services, &node));
        assert_eq!(
            diff(&first.before, &first.after),
            diff(
                &Desired {
                    node: node.clone(),
                    ..Desired::default()
                },
                &desired(&services, &node)
            ),
            "from empty, the delta is the whole table"
        );

        // One endpoint more in one Service: the delta's diff is the whole diff.
        let old = desired(&services, &node);
        if let Some(list) = services[7].endpoints.get_mut("http") {
            list.push(Endpoint {
                ip: Ipv4Addr::new(10, 250, 0, 9),
                port: 8080,
            });
        }
        let delta = table.update([(key(&services[7]), Some(services[7].clone()))]);
        let new = desired(&services, &node);
        assert_eq!(table.compose(), new);
        assert_eq!(diff(&delta.before, &delta.after), diff(&old, &new));
        assert_eq!(
            delta.before.chains.len(),
            1,
            "only the changed Service's chain"
        );

        // No endpoints left (reject elements), then the Service gone.
        let old = new;
        services[3].endpoints.clear();
        let delta = table.update([(key(&services[3]), Some(services[3].clone()))]);
        let new = desired(&services, &node);
        assert_eq!(diff(&delta.before, &delta.after), diff(&old, &new));
        let gone = services.remove(3);
        let delta = table.update([(key(&gone), None)]);
        assert_eq!(
            diff(&delta.before, &delta.after),
            diff(&new, &desired(&services, &node))
        );
        assert_eq!(table.compose(), desired(&services, &node));
        assert_eq!(table.len(), 19);

        // Unchanged input: nothing touched.
        let same = table.update([(key(&services[0]), Some(services[0].clone()))]);
        assert_eq!(same.before, same.after);
        assert!(diff(&same.before, &same.after).is_empty());
    }

    #[test]
    fn a_clashing_map_key_goes_to_the_last_service_as_in_the_whole_model() {
        let node = node();
        let mut services = cluster(3);
        // b and c claim a's ClusterIP port.
        let ip = services[0].spec.cluster_ip;
        services[1].spec.cluster_ip = ip;
        services[2].spec.cluster_ip = ip;
        let mut table = Table::new(node.clone());
        table.update(services.iter().map(|s| (key(s), Some(s.clone()))));
        assert_eq!(table.compose(), desired(&services, &node));

        // The winner (the last by name) goes: the key moves to the next one.
        let old = desired(&services, &node);
        let last = services.pop().expect("three");
        let delta = table.update([(key(&last), None)]);
        let new = desired(&services, &node);
        assert_eq!(table.compose(), new);
        assert_eq!(diff(&delta.before, &delta.after), diff(&old, &new));

        // A loser changes: the key stays where it is.
        let old = new;
        services[0].endpoints.clear();
        let delta = table.update([(key(&services[0]), Some(services[0].clone()))]);
        let new = desired(&services, &node);
        assert_eq!(table.compose(), new);
        assert_eq!(diff(&delta.before, &delta.after), diff(&old, &new));
    }

    #[test]
    fn many_random_changes_keep_the_table_equal_to_the_whole_model() {
        let node = node();
        let mut services = cluster(30);
        let mut table = Table::new(node.clone());
        table.update(services.iter().map(|s| (key(s), Some(s.clone()))));
        let mut applied = table.compose();
        // A small deterministic generator: no randomness in tests, but many shapes.
        let mut state = 0x2545_f491_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut present: Vec<bool> = vec![true; services.len()];
        for _ in 0..300 {
            let i = next(services.len() as u64) as usize;
            match next(4) {
                0 => present[i] = !present[i],
                1 => {
                    if let Some(list) = services[i].endpoints.get_mut("http") {
                        list.truncate(next(10) as usize);
                    }
                }
                2 => services[i].spec.cluster_ip = Some(Ipv4Addr::new(10, 96, 9, next(4) as u8)),
                _ => {
                    services[i].spec.affinity_timeout = match next(2) {
                        0 => None,
                        _ => Some(60),
                    }
                }
            }
            let input = present[i].then(|| services[i].clone());
            let delta = table.update([(key(&services[i]), input)]);
            let live: Vec<ServiceInput> = services
                .iter()
                .zip(&present)
                .filter(|(_, p)| **p)
                .map(|(s, _)| s.clone())
                .collect();
            let wanted = desired(&live, &node);
            assert_eq!(diff(&delta.before, &delta.after), diff(&applied, &wanted));
            applied = wanted;
        }
        assert_eq!(table.compose(), applied);
    }
}
