//! The operations in nft's own syntax, one command a line, for `nft -f` (pure). nft 1.0.6's
//! JSON cannot declare an endpoint map (`typeof numgen ...`), so [`super::nft::NftCommand`]
//! loads a transaction holding one as this text; the benchmark's hand-written baseline is
//! the same text.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::TABLE;
use super::diff::Op;
use super::model::{
    EndpointSet, Hook, MARK_CHAIN, MASQUERADE_MARK, MapKey, Protocol, RANDOM_RANGE, Rule,
};

fn cidr(ip: Ipv4Addr, len: u8) -> String {
    format!("{ip}/{len}")
}

/// One rule's statements.
pub fn rule(rule: &Rule) -> String {
    match rule {
        Rule::Jump(c) => format!("jump {c}"),
        Rule::Goto(c) => format!("goto {c}"),
        Rule::NewJump(c) => format!("ct state new jump {c}"),
        Rule::MarkOutside { cidr: (ip, len) } => {
            format!("ip saddr != {} jump {MARK_CHAIN}", cidr(*ip, *len))
        }
        Rule::Hairpin { ip } => format!("ip saddr {ip} jump {MARK_CHAIN}"),
        Rule::AffinityGoto { set, chain } => format!("ip saddr @{set} goto {chain}"),
        Rule::AffinityUpdate { set } => format!("update @{set} {{ ip saddr }}"),
        Rule::Random(chains) => {
            let arms: Vec<String> = chains
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{i} : goto {c}"))
                .collect();
            format!(
                "numgen random mod {} vmap {{ {} }}",
                chains.len(),
                arms.join(", ")
            )
        }
        Rule::HairpinSet { set } => format!("ip saddr @{set} jump {MARK_CHAIN}"),
        Rule::DnatMap { protocol, map } => format!(
            "meta l4proto {} dnat ip to numgen random mod {RANDOM_RANGE} map @{map}",
            protocol.as_str()
        ),
        Rule::Dnat { protocol, ip, port } => {
            format!("meta l4proto {} dnat ip to {ip}:{port}", protocol.as_str())
        }
        Rule::DispatchIp(map) => {
            format!("ip daddr . meta l4proto . th dport vmap @{}", map.as_str())
        }
        Rule::DispatchLocalPort { map, localhost } => format!(
            "fib daddr type local {}meta l4proto . th dport vmap @{}",
            if *localhost {
                ""
            } else {
                "ip daddr != 127.0.0.0/8 "
            },
            map.as_str()
        ),
        Rule::SetMark => format!("meta mark set meta mark | {MASQUERADE_MARK:#x}"),
        Rule::ReturnUnmarked => format!("meta mark & {MASQUERADE_MARK:#x} == 0 return"),
        Rule::ClearMark => format!("meta mark set meta mark ^ {MASQUERADE_MARK:#x}"),
        Rule::Masquerade => "masquerade fully-random".into(),
        Rule::RejectTcp => "meta l4proto tcp reject with tcp reset".into(),
        Rule::Reject => "reject".into(),
        // A marker is tend's own text (instance and generation): no quotes in it.
        Rule::Marker(m) => format!("return comment \"{}\"", m.replace('"', "'")),
    }
}

fn key(k: &MapKey) -> String {
    match k {
        MapKey::Ip(k) => format!("{} . {} . {}", k.ip, k.protocol.as_str(), k.port),
        MapKey::Port(k) => format!("{} . {}", k.protocol.as_str(), k.port),
    }
}

fn hook(h: Hook) -> &'static str {
    match h {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    }
}

/// One operation as one `nft -f` command.
pub fn command(op: &Op) -> String {
    let t = format!("ip {TABLE}");
    match op {
        Op::AddTable => format!("add table {t}"),
        Op::DeleteTable => format!("delete table {t}"),
        Op::AddMap(map) => format!(
            "add map {t} {} {{ type {} : verdict; }}",
            map.as_str(),
            if map.keyed_by_ip() {
                "ipv4_addr . inet_proto . inet_service"
            } else {
                "inet_proto . inet_service"
            }
        ),
        Op::AddBaseChain {
            name,
            nat,
            hook: h,
            priority,
        } => format!(
            "add chain {t} {name} {{ type {} hook {} priority {priority}; policy accept; }}",
            if *nat { "nat" } else { "filter" },
            hook(*h)
        ),
        Op::AddChain(c) => format!("add chain {t} {c}"),
        Op::FlushChain(c) => format!("flush chain {t} {c}"),
        Op::DeleteChain(c) => format!("delete chain {t} {c}"),
        Op::AddRule { chain, rule: r } => format!("add rule {t} {chain} {}", rule(r)),
        Op::AddSet { name, timeout } => {
            format!("add set {t} {name} {{ type ipv4_addr; flags timeout; timeout {timeout}s; }}")
        }
        Op::DeleteSet(name) => format!("delete set {t} {name}"),
        Op::DeleteMap(name) => format!("delete map {t} {name}"),
        Op::AddElements { map, elements } => {
            let items: Vec<String> = elements
                .iter()
                .map(|(k, c)| format!("{} : goto {c}", key(k)))
                .collect();
            format!(
                "add element {t} {} {{ {} }}",
                map.as_str(),
                items.join(", ")
            )
        }
        Op::DeleteElements { map, keys } => {
            let items: Vec<String> = keys.iter().map(key).collect();
            format!(
                "delete element {t} {} {{ {} }}",
                map.as_str(),
                items.join(", ")
            )
        }
        Op::AddEndpointMap { name, protocol } => format!(
            "add map {t} {name} {{ typeof numgen random mod {RANDOM_RANGE} : ip daddr . {} dport; flags interval; }}",
            protocol.as_str()
        ),
        Op::AddIpSet(name) => format!("add set {t} {name} {{ type ipv4_addr; }}"),
        Op::FlushSet(name) => format!("flush set {t} {name}"),
        Op::FlushMap(name) => format!("flush map {t} {name}"),
        Op::AddEndpointElements { map, endpoints } => {
            let set = EndpointSet {
                protocol: Protocol::Tcp,
                endpoints: endpoints.clone(),
            };
            let items: Vec<String> = set
                .intervals()
                .into_iter()
                .map(|((a, b), ep)| format!("{a}-{b} : {} . {}", ep.ip, ep.port))
                .collect();
            format!("add element {t} {map} {{ {} }}", items.join(", "))
        }
        Op::AddIpElements { set, ips } => {
            let items: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
            format!("add element {t} {set} {{ {} }}", items.join(", "))
        }
    }
}

/// A transaction as `nft -f` reads it: one command a line.
pub fn document(ops: &[Op]) -> String {
    let mut out = String::new();
    for op in ops {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{}", command(op));
    }
    out
}
