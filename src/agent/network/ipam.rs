//! Pod IPs from the node's pod CIDR: `.1` is the bridge (the pods' gateway), pods get the
//! lowest free address from `.2` on, one per pod uid, released when the pod is deleted. The
//! allocations are a small JSON record on disk, written atomically (temp file, fsync, rename)
//! so that an agent restarted after kill -9 gives each pod back the IP it had.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{input:?} is not an IPv4 CIDR such as 10.244.1.0/24: {reason}")]
    BadCidr { input: String, reason: String },
    #[error("pod CIDR {cidr} has no free address left for pod {uid} ({used} pods hold one)")]
    Exhausted {
        cidr: Cidr,
        uid: String,
        used: usize,
    },
    #[error("IP allocations {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("IP allocations {path} are not valid JSON: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "IP allocations {path} are for pod CIDR {recorded} but the node now has {wanted}; \
         remove the file once no pod uses the old addresses"
    )]
    CidrChanged {
        path: PathBuf,
        recorded: Cidr,
        wanted: Cidr,
    },
}

/// An IPv4 network: its first address (host bits zero) and its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    /// A network from its address and prefix; host bits must be zero.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, IpamError> {
        let bad = |reason: String| IpamError::BadCidr {
            input: format!("{network}/{prefix}"),
            reason,
        };
        if prefix > 32 {
            return Err(bad("the prefix length is more than 32".into()));
        }
        let cidr = Self { network, prefix };
        if u32::from(network) & !cidr.mask() != 0 {
            let base = Ipv4Addr::from(u32::from(network) & cidr.mask());
            return Err(bad(format!(
                "host bits are set (did you mean {base}/{prefix}?)"
            )));
        }
        Ok(cidr)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// Whether `other` lies wholly inside this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network)
    }

    /// The `n`th address of the network (0 is the network address), if it is inside.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }

    /// The bridge's address and the pods' default gateway: the network's `.1`.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.host(1)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = IpamError;

    fn from_str(input: &str) -> Result<Self, IpamError> {
        let bad = |reason: &str| IpamError::BadCidr {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (addr, prefix) = input.split_once('/').ok_or_else(|| bad("no /prefix"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| bad("the prefix length is not a number"))?;
        Cidr::new(addr, prefix).map_err(|e| match e {
            IpamError::BadCidr { reason, .. } => IpamError::BadCidr {
                input: input.to_string(),
                reason,
            },
            other => other,
        })
    }
}

impl TryFrom<String> for Cidr {
    type Error = IpamError;
    fn try_from(s: String) -> Result<Self, IpamError> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

/// Which pod (by uid) holds which address of the node's pod CIDR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    pub cidr: Cidr,
    pub pods: BTreeMap<String, Ipv4Addr>,
}

impl Allocations {
    pub fn new(cidr: Cidr) -> Self {
        Self {
            cidr,
            pods: BTreeMap::new(),
        }
    }

    /// The pod's address: the one it already holds, else the lowest free one from `.2` up to
    /// the last before the broadcast address.
    ///
    /// Example, 10.244.77.0/24 with `.2` and `.4` taken: the next pod gets 10.244.77.3;
    /// `.255` is never given, so a /24 holds 253 pods.
    pub fn allocate(&mut self, uid: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.pods.get(uid) {
            return Ok(*ip);
        }
        let size = 1u64 << (32 - u32::from(self.cidr.prefix()));
        let used: std::collections::BTreeSet<Ipv4Addr> = self.pods.values().copied().collect();
        let free = (2..size.saturating_sub(1))
            .filter_map(|n| u32::try_from(n).ok())
            .filter_map(|n| self.cidr.host(n))
            .find(|ip| !used.contains(ip));
        let ip = free.ok_or_else(|| IpamError::Exhausted {
            cidr: self.cidr,
            uid: uid.to_string(),
            used: self.pods.len(),
        })?;
        self.pods.insert(uid.to_string(), ip);
        Ok(ip)
    }

    /// Frees the pod's address; `None` when it held none.
    pub fn release(&mut self, uid: &str) -> Option<Ipv4Addr> {
        self.pods.remove(uid)
    }

    pub fn get(&self, uid: &str) -> Option<Ipv4Addr> {
        self.pods.get(uid).copied()
    }
}

/// Where the allocations live on disk.
#[derive(Clone, Debug)]
pub struct IpamStore {
    path: PathBuf,
}

impl IpamStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded allocations, or none yet when the file does not exist. A record for
    /// another CIDR is an error rather than silently forgotten: pods may still use those IPs.
    pub fn load(&self, cidr: Cidr) -> Result<Allocations, IpamError> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Allocations::new(cidr));
            }
            Err(source) => return Err(self.io(source)),
        };
        let allocations: Allocations =
            serde_json::from_slice(&text).map_err(|source| IpamError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        if allocations.cidr != cidr {
            return Err(IpamError::CidrChanged {
                path: self.path.clone(),
                recorded: allocations.cidr,
                wanted: cidr,
            });
        }
        Ok(allocations)
    }

    /// Writes the record atomically: a crash leaves the old file or the new one, never half.
    pub fn save(&self, allocations: &Allocations) -> Result<(), IpamError> {
        let json = serde_json::to_vec_pretty(allocations).map_err(|source| IpamError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| self.io(e))?;
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let mut file = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
        file.write_all(&json).map_err(|e| self.io(e))?;
        file.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn io(&self, source: std::io::Error) -> IpamError {
        IpamError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    #[test]
    fn cidrs_parse_and_reject_host_bits() {
        let c = cidr("10.244.77.0/24");
        assert_eq!(c.gateway(), Some(Ipv4Addr::new(10, 244, 77, 1)));
        assert!(c.contains(Ipv4Addr::new(10, 244, 77, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 78, 1)));
        assert!(cidr("10.244.0.0/16").covers(&c));
        assert!(!c.covers(&cidr("10.244.0.0/16")));
        let err = "10.244.77.5/24".parse::<Cidr>().expect_err("host bits");
        assert!(err.to_string().contains("10.244.77.0/24"), "{err}");
        assert!("10.244.77.0".parse::<Cidr>().is_err());
        assert!("10.244.77.0/33".parse::<Cidr>().is_err());
        assert!("x/24".parse::<Cidr>().is_err());
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn pods_get_addresses_from_dot_two_and_keep_them() {
        let mut a = Allocations::new(cidr("10.244.77.0/24"));
        assert_eq!(a.allocate("a").expect("a"), Ipv4Addr::new(10, 244, 77, 2));
        assert_eq!(a.allocate("b").expect("b"), Ipv4Addr::new(10, 244, 77, 3));
        assert_eq!(
            a.allocate("a").expect("a again"),
            Ipv4Addr::new(10, 244, 77, 2)
        );
        assert_eq!(a.release("a"), Some(Ipv4Addr::new(10, 244, 77, 2)));
        assert_eq!(a.release("a"), None);
        assert_eq!(a.allocate("c").expect("c"), Ipv4Addr::new(10, 244, 77, 2));
    }

    #[test]
    fn a_full_cidr_says_so() {
        // /30: .0 network, .1 gateway, .2 the only pod address, .3 broadcast.
        let mut a = Allocations::new(cidr("10.0.0.0/30"));
        assert_eq!(a.allocate("a").expect("a"), Ipv4Addr::new(10, 0, 0, 2));
        let err = a.allocate("b").expect_err("full");
        assert!(matches!(err, IpamError::Exhausted { used: 1, .. }), "{err}");
        let mut big = Allocations::new(cidr("10.1.0.0/24"));
        for i in 0..253 {
            big.allocate(&format!("p{i}")).expect("fits");
        }
        assert!(big.allocate("one-too-many").is_err());
        assert!(!big.pods.values().any(|ip| ip.octets()[3] == 255));
    }

    #[test]
    fn allocations_survive_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = IpamStore::new(dir.path().join("net/ipam.json"));
        let c = cidr("10.244.77.0/24");
        let mut a = store.load(c).expect("empty");
        assert!(a.pods.is_empty());
        a.allocate("a").expect("a");
        a.allocate("b").expect("b");
        store.save(&a).expect("save");
        let back = store.load(c).expect("load");
        assert_eq!(back, a);
        let err = store.load(cidr("10.244.78.0/24")).expect_err("other cidr");
        assert!(matches!(err, IpamError::CidrChanged { .. }), "{err}");
        std::fs::write(store.path(), b"{").expect("write");
        assert!(matches!(store.load(c), Err(IpamError::Corrupt { .. })));
    }
}
