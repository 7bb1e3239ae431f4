//! The real [`NetOps`]: iproute2's `ip` (JSON output to observe) and `nft`. With a node
//! namespace set, everything the node owns happens inside that namespace (`ip -n NODE`,
//! `ip netns exec NODE nft`), which is how the tests run a node without touching the host.

use super::plan::{self, Observed, Step};
use super::{NetError, NetOps};
use crate::agent::network::ipam::Cidr;
use serde_json::Value;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Runs `ip` and `nft`, in the current network namespace or in a named one.
#[derive(Clone, Debug, Default)]
pub struct IpCommands {
    node_netns: Option<String>,
}

impl IpCommands {
    /// In the agent's own network namespace (the agent runs inside its node).
    pub fn new() -> Self {
        Self::default()
    }

    /// Acting on the named network namespace as the node.
    pub fn in_netns(name: impl Into<String>) -> Self {
        Self {
            node_netns: Some(name.into()),
        }
    }

    /// `ip [-n NODE] args`.
    fn ip(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        if let Some(ns) = &self.node_netns {
            c.args(["-n", ns]);
        }
        c.args(args);
        c
    }

    /// Another program in the node's namespace.
    fn node_program(&self, program: &str, args: &[&str]) -> Command {
        match &self.node_netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c.args(args);
                c
            }
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        }
    }

    fn ip_json(&self, args: &[&str]) -> Result<Value, NetError> {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let out = run(self.ip(&full), None, &[])?;
        if out.trim().is_empty() {
            return Ok(Value::Array(Vec::new()));
        }
        serde_json::from_str(&out).map_err(|source| NetError::Output {
            command: format!("ip {}", full.join(" ")),
            source,
        })
    }
}

/// Runs `command`, feeding `stdin`; an exit status that fails with one of `tolerated` in its
/// stderr counts as success (teardown of what is already gone, creation of what exists).
fn run(mut command: Command, stdin: Option<&str>, tolerated: &[&str]) -> Result<String, NetError> {
    let shown = show(&command);
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| NetError::Spawn {
        command: shown.clone(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| NetError::Spawn {
                command: shown.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| NetError::Spawn {
        command: shown.clone(),
        source,
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() && !tolerated.iter().any(|t| stderr.contains(t)) {
        return Err(NetError::Failed {
            command: shown,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip args` in the agent's own namespace: pod namespaces are named globally.
fn plain_ip(args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(args);
    c
}

fn show(command: &Command) -> String {
    let mut s = command.get_program().to_string_lossy().into_owned();
    for a in command.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

const GONE: &[&str] = &["Cannot find device", "No such file", "No such process"];
const EXISTS: &[&str] = &["File exists"];

impl NetOps for IpCommands {
    fn observe(&mut self) -> Result<Observed, NetError> {
        let mut observed = Observed::default();
        // `ip netns list` names are global (/var/run/netns), not the node's.
        let netns = run(plain_ip(&["-j", "netns", "list"]), None, &[])?;
        if !netns.trim().is_empty() {
            let list: Value = serde_json::from_str(&netns).map_err(|source| NetError::Output {
                command: "ip -j netns list".into(),
                source,
            })?;
            for n in list.as_array().into_iter().flatten() {
                if let Some(name) = n.get("name").and_then(Value::as_str) {
                    observed.netns.insert(name.to_string());
                }
            }
        }
        for link in self
            .ip_json(&["link", "show"])?
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(name) = link.get("ifname").and_then(Value::as_str) {
                let up = link
                    .get("flags")
                    .and_then(Value::as_array)
                    .is_some_and(|f| f.iter().any(|f| f == "UP"));
                observed.links.insert(name.to_string(), up);
            }
        }
        if observed.links.contains_key(plan::BRIDGE) {
            let addrs = self.ip_json(&["-4", "addr", "show", "dev", plan::BRIDGE])?;
            for info in addrs
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.get("addr_info").and_then(Value::as_array))
                .flatten()
            {
                let local = info.get("local").and_then(Value::as_str);
                let prefix = info.get("prefixlen").and_then(Value::as_u64);
                if let (Some(Ok(ip)), Some(Ok(prefix))) =
                    (local.map(str::parse::<Ipv4Addr>), prefix.map(u8::try_from))
                {
                    observed.bridge_addresses.insert((ip, prefix));
                }
            }
        }
        for route in self
            .ip_json(&["-4", "route", "show"])?
            .as_array()
            .into_iter()
            .flatten()
        {
            let dst = route.get("dst").and_then(Value::as_str);
            let via = route.get("gateway").and_then(Value::as_str);
            let (Some(dst), Some(via)) = (dst, via) else {
                continue;
            };
            // A host route is shown without its /32.
            let dst = if dst.contains('/') {
                dst.to_string()
            } else {
                format!("{dst}/32")
            };
            if let (Ok(dst), Ok(via)) = (dst.parse::<Cidr>(), via.parse::<Ipv4Addr>()) {
                observed.routes.insert(dst, via);
            }
        }
        let forwarding = run(
            self.node_program("cat", &["/proc/sys/net/ipv4/ip_forward"]),
            None,
            &[],
        )?;
        observed.forwarding = forwarding.trim() == "1";
        let table = self.node_program("nft", &["list", "table", "ip", plan::NAT_TABLE]);
        observed.nat_table = run(table, None, &[])
            .ok()
            .map(|listing| plan::parse_nat_table(&listing));
        Ok(observed)
    }

    fn apply(&mut self, step: &Step) -> Result<(), NetError> {
        let s = |v: &dyn std::fmt::Display| v.to_string();
        match step {
            Step::EnableForwarding => {
                let c = self.node_program("sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
                run(c, None, &[])?;
            }
            Step::CreateBridge { name } => {
                run(
                    self.ip(&["link", "add", name, "type", "bridge"]),
                    None,
                    EXISTS,
                )?;
            }
            Step::AddAddress { dev, addr, prefix } => {
                let a = format!("{addr}/{prefix}");
                run(self.ip(&["addr", "replace", &a, "dev", dev]), None, &[])?;
            }
            Step::LinkUp { dev } => {
                run(self.ip(&["link", "set", dev, "up"]), None, &[])?;
            }
            Step::ReplaceRoute { dst, via } => {
                let (dst, via) = (s(dst), s(via));
                run(self.ip(&["route", "replace", &dst, "via", &via]), None, &[])?;
            }
            Step::DeleteRoute { dst } => {
                let dst = s(dst);
                let tolerated = &["No such process", "Cannot find"];
                run(self.ip(&["route", "del", &dst]), None, tolerated)?;
            }
            Step::ReplaceNatTable {
                pod_cidr,
                cluster_cidr,
            } => {
                let script = plan::nat_table_script(*pod_cidr, *cluster_cidr);
                run(self.node_program("nft", &["-f", "-"]), Some(&script), &[])?;
            }
            Step::DeleteNatTable => {
                let script = plan::nat_table_delete_script();
                run(self.node_program("nft", &["-f", "-"]), Some(&script), &[])?;
            }
            Step::CreateNetns { name } => {
                run(plain_ip(&["netns", "add", name]), None, EXISTS)?;
            }
            Step::CreateVeth { host, netns, peer } => {
                let args = [
                    "link", "add", host, "type", "veth", "peer", "name", peer, "netns", netns,
                ];
                run(self.ip(&args), None, EXISTS)?;
            }
            Step::AttachToBridge { dev, bridge } => {
                run(
                    self.ip(&["link", "set", dev, "master", bridge, "up"]),
                    None,
                    &[],
                )?;
            }
            Step::PodAddress {
                netns,
                dev,
                addr,
                prefix,
            } => {
                let a = format!("{addr}/{prefix}");
                run(
                    plain_ip(&["-n", netns, "addr", "replace", &a, "dev", dev]),
                    None,
                    &[],
                )?;
            }
            Step::PodLinkUp { netns, dev } => {
                run(
                    plain_ip(&["-n", netns, "link", "set", dev, "up"]),
                    None,
                    &[],
                )?;
            }
            Step::PodDefaultRoute { netns, via } => {
                let via = s(via);
                let args = ["-n", netns, "route", "replace", "default", "via", &via];
                run(plain_ip(&args), None, &[])?;
            }
            Step::DeleteLink { name } => {
                run(self.ip(&["link", "del", name]), None, GONE)?;
            }
            Step::DeleteNetns { name } => {
                run(plain_ip(&["netns", "del", name]), None, GONE)?;
            }
        }
        Ok(())
    }
}
