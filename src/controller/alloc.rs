//! Allocation at apply: Service ClusterIPs from the service CIDR and NodePorts from
//! 30000-32767. A given address or port is honoured when free; a clash is an error naming the
//! Service that holds it. Allocations live in the Services themselves, so a restart rebuilds
//! the allocator from the store and every Service keeps its IP and ports.

use crate::api::ObjectKey;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

pub const NODE_PORT_MIN: u16 = 30000;
pub const NODE_PORT_MAX: u16 = 32767;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocError {
    /// Field path in the Service, e.g. `spec.ports[0].nodePort`.
    pub path: String,
    pub message: String,
}

/// Which Service holds which ClusterIP and NodePort.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocator {
    network: u32,
    size: u32,
    ips: HashMap<Ipv4Addr, ObjectKey>,
    ports: HashMap<u16, ObjectKey>,
    held: HashMap<ObjectKey, (Vec<Ipv4Addr>, Vec<u16>)>,
    next_ip: u32,
    next_port: u16,
}

/// Parses `A.B.C.D/N` into (network address, number of addresses).
pub fn parse_cidr(cidr: &str) -> Result<(u32, u32), String> {
    let (addr, len) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not a CIDR (expected A.B.C.D/N)"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{cidr:?}: {e}"))?;
    let len: u32 = len
        .parse()
        .map_err(|_| format!("{cidr:?}: prefix length is not a number"))?;
    if !(8..=30).contains(&len) {
        return Err(format!("{cidr:?}: prefix length must be between 8 and 30"));
    }
    let size = 1u32 << (32 - len);
    Ok((u32::from(addr) & !(size - 1), size))
}

/// The addresses and NodePorts one Service holds.
type Held = (Vec<Ipv4Addr>, Vec<u16>);

/// Some Services' allocations and the search cursors, as [`Allocator::save`] found them.
#[derive(Debug)]
pub struct Saved {
    held: Vec<(ObjectKey, Option<Held>)>,
    next_ip: u32,
    next_port: u16,
}

impl Allocator {
    /// Remembers the allocations of `keys` (the Services an apply may assign or release), so
    /// that [`Allocator::restore`] can undo a rejected or failed apply. At 10,000 Services
    /// this is what a one-file commit can afford; cloning the whole allocator is not.
    pub fn save<'a>(&self, keys: impl IntoIterator<Item = &'a ObjectKey>) -> Saved {
        Saved {
            held: keys
                .into_iter()
                .map(|k| (k.clone(), self.held.get(k).cloned()))
                .collect(),
            next_ip: self.next_ip,
            next_port: self.next_port,
        }
    }

    /// Puts back what `save` remembered; the other Services' allocations were not touched.
    pub fn restore(&mut self, saved: Saved) {
        // Every saved key is released first: one may hold now what another held before.
        for (key, _) in &saved.held {
            self.release(key);
        }
        for (key, held) in saved.held {
            if let Some((ips, ports)) = held {
                for ip in &ips {
                    self.ips.insert(*ip, key.clone());
                }
                for port in &ports {
                    self.ports.insert(*port, key.clone());
                }
                self.held.insert(key, (ips, ports));
            }
        }
        self.next_ip = saved.next_ip;
        self.next_port = saved.next_port;
    }

    pub fn new(service_cidr: &str) -> Result<Allocator, String> {
        let (network, size) = parse_cidr(service_cidr)?;
        Ok(Allocator {
            network,
            size,
            ips: HashMap::new(),
            ports: HashMap::new(),
            held: HashMap::new(),
            next_ip: 1,
            next_port: NODE_PORT_MIN,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(self.network) < self.size
    }

    /// Records the allocations of a stored Service (at start, and after each apply).
    pub fn record(&mut self, key: &ObjectKey, service: &Value) {
        self.release(key);
        let (ips, ports) = allocations(service);
        for ip in &ips {
            self.ips.insert(*ip, key.clone());
        }
        for port in &ports {
            self.ports.insert(*port, key.clone());
        }
        if !ips.is_empty() || !ports.is_empty() {
            self.held.insert(key.clone(), (ips, ports));
        }
    }

    /// Frees what a Service held (it was pruned, or is being re-assigned).
    pub fn release(&mut self, key: &ObjectKey) {
        if let Some((ips, ports)) = self.held.remove(key) {
            for ip in ips {
                self.ips.remove(&ip);
            }
            for port in ports {
                self.ports.remove(&port);
            }
        }
    }

    /// Checks the addresses and ports a desired Service asks for and fills in the missing
    /// ones. Errors leave the allocator unchanged for this Service.
    pub fn assign(&mut self, key: &ObjectKey, service: &mut Value) -> Vec<AllocError> {
        let mut errors = Vec::new();
        let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) else {
            return errors;
        };
        let kind = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let mut ips = Vec::new();
        let mut ports = Vec::new();
        if kind != "ExternalName" {
            match spec.get("clusterIP").and_then(Value::as_str) {
                Some("None") => {}
                Some(given) if !given.is_empty() => match given.parse::<Ipv4Addr>() {
                    Err(_) => errors.push(err(
                        "spec.clusterIP",
                        format!("{given:?} is not an IPv4 address"),
                    )),
                    Ok(ip) if !self.contains(ip) => errors.push(err(
                        "spec.clusterIP",
                        format!("{ip} is outside the service CIDR {}", self.cidr()),
                    )),
                    Ok(ip) => match self.ips.get(&ip) {
                        Some(holder) if holder != key => errors.push(err(
                            "spec.clusterIP",
                            format!("{ip} is already allocated to {holder}"),
                        )),
                        _ => ips.push(ip),
                    },
                },
                _ => match self.free_ip() {
                    Some(ip) => {
                        spec.insert("clusterIP".into(), ip.to_string().into());
                        spec.insert("clusterIPs".into(), json!([ip.to_string()]));
                        ips.push(ip);
                    }
                    None => errors.push(err(
                        "spec.clusterIP",
                        format!("the service CIDR {} is full", self.cidr()),
                    )),
                },
            }
        }
        if matches!(kind.as_str(), "NodePort" | "LoadBalancer")
            && let Some(Value::Array(list)) = spec.get_mut("ports")
        {
            for (i, port) in list.iter_mut().enumerate() {
                let path = format!("spec.ports[{i}].nodePort");
                match port.get("nodePort").and_then(Value::as_u64) {
                    Some(p) => {
                        let Ok(p) = u16::try_from(p) else {
                            errors.push(err(&path, format!("{p} is not a port")));
                            continue;
                        };
                        if !(NODE_PORT_MIN..=NODE_PORT_MAX).contains(&p) {
                            errors.push(err(
                                &path,
                                format!("{p} is outside {NODE_PORT_MIN}-{NODE_PORT_MAX}"),
                            ));
                        } else if let Some(holder) = self.ports.get(&p).filter(|h| *h != key) {
                            errors.push(err(
                                &path,
                                format!("port {p} is already allocated to {holder}"),
                            ));
                        } else if ports.contains(&p) {
                            errors.push(err(
                                &path,
                                format!("port {p} is given twice in this Service"),
                            ));
                        } else {
                            ports.push(p);
                        }
                    }
                    None => match self.free_port(&ports) {
                        Some(p) => {
                            if let Some(o) = port.as_object_mut() {
                                o.insert("nodePort".into(), p.into());
                            }
                            ports.push(p);
                        }
                        None => {
                            errors.push(err(&path, "no NodePort is free in 30000-32767".into()))
                        }
                    },
                }
            }
        }
        if errors.is_empty() {
            self.release(key);
            for ip in &ips {
                self.ips.insert(*ip, key.clone());
            }
            for p in &ports {
                self.ports.insert(*p, key.clone());
            }
            self.held.insert(key.clone(), (ips, ports));
        }
        errors
    }

    fn cidr(&self) -> String {
        format!(
            "{}/{}",
            Ipv4Addr::from(self.network),
            32 - self.size.trailing_zeros()
        )
    }

    /// The next free address after the last one given, skipping the network and broadcast
    /// addresses (as Kubernetes does, the first usable one is reserved as well).
    fn free_ip(&mut self) -> Option<Ipv4Addr> {
        for _ in 0..self.size {
            let offset = self.next_ip;
            self.next_ip = (self.next_ip + 1) % self.size;
            if offset < 2 || offset == self.size - 1 {
                continue;
            }
            let ip = Ipv4Addr::from(self.network + offset);
            if !self.ips.contains_key(&ip) {
                return Some(ip);
            }
        }
        None
    }

    fn free_port(&mut self, taken_here: &[u16]) -> Option<u16> {
        for _ in NODE_PORT_MIN..=NODE_PORT_MAX {
            let p = self.next_port;
            self.next_port = if p >= NODE_PORT_MAX {
                NODE_PORT_MIN
            } else {
                p + 1
            };
            if !self.ports.contains_key(&p) && !taken_here.contains(&p) {
                return Some(p);
            }
        }
        None
    }

    /// Keys holding allocations (for tests and diagnostics).
    pub fn holders(&self) -> BTreeSet<&ObjectKey> {
        self.held.keys().collect()
    }
}

fn err(path: &str, message: String) -> AllocError {
    AllocError {
        path: path.to_string(),
        message,
    }
}

/// The ClusterIP and NodePorts a stored Service holds.
fn allocations(service: &Value) -> (Vec<Ipv4Addr>, Vec<u16>) {
    let spec = service.get("spec");
    let ips = spec
        .and_then(|s| s.get("clusterIP"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .into_iter()
        .collect();
    let ports = spec
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p.get("nodePort")?.as_u64())
                .filter_map(|p| u16::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default();
    (ips, ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;

    fn key(n: &str) -> ObjectKey {
        ObjectKey::new(Kind::Service, "default", n)
    }

    /// Assignments and releases between `save` and `restore` are undone exactly, also when
    /// one Service took what another released.
    #[test]
    fn restore_undoes_everything_since_save() {
        let mut a = Allocator::new("10.96.0.0/24").unwrap();
        let svc = |ip: &str, port: u16| json!({"spec": {"type": "NodePort", "clusterIP": ip, "ports": [{"port": 80, "nodePort": port}]}});
        let mut s1 = svc("10.96.0.10", 30001);
        let plain = || json!({"spec": {"ports": [{"port": 80}]}});
        let mut s2 = plain();
        assert!(a.assign(&key("s1"), &mut s1).is_empty());
        assert!(a.assign(&key("s2"), &mut s2).is_empty());
        let before = a.clone();
        let saved = a.save([&key("s1"), &key("s2"), &key("s3")]);
        a.release(&key("s1"));
        let mut s3 = svc("10.96.0.10", 30001);
        assert!(
            a.assign(&key("s3"), &mut s3).is_empty(),
            "s3 takes what s1 freed"
        );
        let mut s2_new = plain();
        a.release(&key("s2"));
        assert!(a.assign(&key("s2"), &mut s2_new).is_empty());
        assert_ne!(a, before);
        a.restore(saved);
        assert_eq!(a, before);
    }

    #[test]
    fn allocates_and_honours_given_values() {
        let mut a = Allocator::new("10.96.0.0/12").unwrap();
        let mut s1 = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        assert!(a.assign(&key("a"), &mut s1).is_empty());
        assert_eq!(s1["spec"]["clusterIP"], "10.96.0.2");
        assert_eq!(s1["spec"]["ports"][0]["nodePort"], 30000);
        let mut s2 = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.50", "ports": [{"port": 80, "nodePort": 30123}]}});
        assert!(a.assign(&key("b"), &mut s2).is_empty());
        assert_eq!(s2["spec"]["ports"][0]["nodePort"], 30123);
        // Re-assigning the same Service to the same values is not a clash.
        assert!(a.assign(&key("b"), &mut s2.clone()).is_empty());
    }

    #[test]
    fn clashes_name_the_holder() {
        let mut a = Allocator::new("10.96.0.0/12").unwrap();
        let mut s1 = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.50", "ports": [{"port": 80, "nodePort": 30123}]}});
        assert!(a.assign(&key("a"), &mut s1).is_empty());
        let mut s2 = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.50", "ports": [{"port": 80, "nodePort": 30123}]}});
        let errors = a.assign(&key("b"), &mut s2);
        assert_eq!(errors.len(), 2);
        assert_eq!(
            errors[0].message,
            "10.96.0.50 is already allocated to service/a"
        );
        assert_eq!(errors[1].path, "spec.ports[0].nodePort");
        let mut s3 = json!({"spec": {"clusterIP": "192.168.1.1"}});
        assert_eq!(
            a.assign(&key("c"), &mut s3)[0].message,
            "192.168.1.1 is outside the service CIDR 10.96.0.0/12"
        );
    }

    #[test]
    fn release_frees_and_record_rebuilds() {
        let mut a = Allocator::new("10.96.0.0/24").unwrap();
        let mut s1 = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.9", "ports": [{"port": 80, "nodePort": 30100}]}});
        assert!(a.assign(&key("a"), &mut s1).is_empty());
        let mut b = Allocator::new("10.96.0.0/24").unwrap();
        b.record(&key("a"), &s1);
        let mut clash = s1.clone();
        assert_eq!(b.assign(&key("b"), &mut clash).len(), 2);
        b.release(&key("a"));
        assert!(b.assign(&key("b"), &mut clash).is_empty());
    }

    #[test]
    fn headless_and_external_name_get_no_address() {
        let mut a = Allocator::new("10.96.0.0/12").unwrap();
        let mut h = json!({"spec": {"clusterIP": "None", "ports": [{"port": 80}]}});
        assert!(a.assign(&key("h"), &mut h).is_empty());
        assert_eq!(h["spec"]["clusterIP"], "None");
        let mut e = json!({"spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        assert!(a.assign(&key("e"), &mut e).is_empty());
        assert!(e["spec"].get("clusterIP").is_none());
    }

    #[test]
    fn small_cidr_fills_up() {
        let mut a = Allocator::new("10.0.0.0/30").unwrap();
        let mut s = json!({"spec": {}});
        assert!(a.assign(&key("a"), &mut s).is_empty());
        let mut s = json!({"spec": {}});
        assert_eq!(
            a.assign(&key("b"), &mut s)[0].message,
            "the service CIDR 10.0.0.0/30 is full"
        );
    }
}
