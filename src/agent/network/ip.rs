//! The real [`NetOps`]: iproute2's `ip` (JSON output to observe) and `nft`. With a node
//! namespace set, everything the node owns happens inside that namespace (`ip -n NODE`,
//! `ip netns exec NODE nft`), which is how the tests run a node without touching the host.
//!
//! Every process costs a fork and an exec (2-3 ms), and a pod's setup used to run thirteen.
//! Now [`IpCommands::observe`] asks for links, addresses, routes and namespaces in one
//! `ip -batch` and reads the node's forwarding flag itself when it runs in the node, and
//! [`NetOps::apply_all`] runs consecutive `ip` steps acting on the same namespace as one
//! batch: a pod's setup is four processes (observe: `ip` and `nft`; two batches).

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

    /// The options that make `ip` act on `place`.
    fn place_options(&self, place: &Place) -> Vec<String> {
        match (place, &self.node_netns) {
            (Place::Node, Some(ns)) | (Place::Pod(ns), _) => vec!["-n".into(), ns.clone()],
            (Place::Node, None) | (Place::Global, _) => Vec::new(),
        }
    }

    /// Runs `steps`, which act on the place `options` selects, as one `ip -batch`; a step
    /// failing with a tolerated error is done, and the batch goes on after it.
    fn batch(&self, options: &[String], steps: &[IpStep]) -> Result<(), NetError> {
        let mut rest = steps;
        while !rest.is_empty() {
            if let [one] = rest {
                let mut c = plain_ip(&[]);
                c.args(options).args(&one.args);
                run(c, None, one.tolerated)?;
                return Ok(());
            }
            let script: String = rest.iter().map(|s| s.args.join(" ") + "\n").collect();
            let mut c = plain_ip(&[]);
            c.args(options).args(["-batch", "-"]);
            let ran = exec(c, Some(&script))?;
            if ran.status.success() {
                return Ok(());
            }
            let failed = batch_failure(&ran.stderr).filter(|(n, _)| (1..=rest.len()).contains(n));
            let Some((n, said)) = failed else {
                return Err(NetError::Failed {
                    command: format!("{} <<< {script:?}", ran.shown),
                    status: ran.status.to_string(),
                    stderr: ran.stderr,
                });
            };
            let step = &rest[n - 1];
            if !step.tolerated.iter().any(|t| said.contains(t)) {
                let mut shown = vec!["ip".to_string()];
                shown.extend(options.iter().cloned());
                shown.extend(step.args.iter().cloned());
                return Err(NetError::Failed {
                    command: shown.join(" "),
                    status: ran.status.to_string(),
                    stderr: said,
                });
            }
            rest = &rest[n..];
        }
        Ok(())
    }
}

/// Parses what `ip -j -batch` printed: one JSON document per command that printed one.
fn json_documents(command: &str, out: &str) -> Result<Vec<Value>, NetError> {
    serde_json::Deserializer::from_str(out)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| NetError::Output {
            command: command.to_string(),
            source,
        })
}

/// The forwarding flag of the namespace this process is in.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// What a finished command said.
struct Ran {
    shown: String,
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command`, feeding `stdin`; an exit status that fails with one of `tolerated` in its
/// stderr counts as success (teardown of what is already gone, creation of what exists).
fn run(command: Command, stdin: Option<&str>, tolerated: &[&str]) -> Result<String, NetError> {
    let ran = exec(command, stdin)?;
    if !ran.status.success() && !tolerated.iter().any(|t| ran.stderr.contains(t)) {
        return Err(NetError::Failed {
            command: ran.shown,
            status: ran.status.to_string(),
            stderr: ran.stderr,
        });
    }
    Ok(ran.stdout)
}

/// Runs `command` to its end, feeding `stdin`.
fn exec(mut command: Command, stdin: Option<&str>) -> Result<Ran, NetError> {
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
    Ok(Ran {
        shown,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Where an `ip` step acts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// The node (`ip -n NODE` when the ops act on a named node namespace).
    Node,
    /// Named namespaces themselves (`ip netns add|del`): global, never `-n NODE`.
    Global,
    /// Inside a pod's namespace (`ip -n POD`).
    Pod(String),
}

/// A step that is one `ip` command: where, its arguments, and the errors that mean done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpStep {
    pub place: Place,
    pub args: Vec<String>,
    pub tolerated: &'static [&'static str],
}

/// The `ip` command of `step`; `None` for steps done otherwise (sysctl, nft).
pub fn ip_step(step: &Step) -> Option<IpStep> {
    let v = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let (place, args, tolerated): (Place, Vec<String>, &'static [&'static str]) = match step {
        Step::EnableForwarding | Step::ReplaceNatTable { .. } | Step::DeleteNatTable => {
            return None;
        }
        Step::CreateBridge { name } => (
            Place::Node,
            v(&["link", "add", name, "type", "bridge"]),
            EXISTS,
        ),
        Step::AddAddress { dev, addr, prefix } => (
            Place::Node,
            v(&["addr", "replace", &format!("{addr}/{prefix}"), "dev", dev]),
            &[],
        ),
        Step::LinkUp { dev } => (Place::Node, v(&["link", "set", dev, "up"]), &[]),
        Step::ReplaceRoute { dst, via } => (
            Place::Node,
            v(&[
                "route",
                "replace",
                &dst.to_string(),
                "via",
                &via.to_string(),
            ]),
            &[],
        ),
        Step::DeleteRoute { dst } => (
            Place::Node,
            v(&["route", "del", &dst.to_string()]),
            &["No such process", "Cannot find"],
        ),
        Step::CreateNetns { name } => (Place::Global, v(&["netns", "add", name]), EXISTS),
        Step::CreateVeth { host, netns, peer } => (
            Place::Node,
            v(&[
                "link", "add", host, "type", "veth", "peer", "name", peer, "netns", netns,
            ]),
            EXISTS,
        ),
        Step::AttachToBridge { dev, bridge } => (
            Place::Node,
            v(&["link", "set", dev, "master", bridge, "up"]),
            &[],
        ),
        Step::Hairpin { dev } => (
            Place::Node,
            v(&["link", "set", dev, "type", "bridge_slave", "hairpin", "on"]),
            &[],
        ),
        Step::PodAddress {
            netns,
            dev,
            addr,
            prefix,
        } => (
            Place::Pod(netns.clone()),
            v(&["addr", "replace", &format!("{addr}/{prefix}"), "dev", dev]),
            &[],
        ),
        Step::PodLinkUp { netns, dev } => (
            Place::Pod(netns.clone()),
            v(&["link", "set", dev, "up"]),
            &[],
        ),
        Step::PodDefaultRoute { netns, via } => (
            Place::Pod(netns.clone()),
            v(&["route", "replace", "default", "via", &via.to_string()]),
            &[],
        ),
        Step::DeleteLink { name } => (Place::Node, v(&["link", "del", name]), GONE),
        Step::DeleteNetns { name } => (Place::Global, v(&["netns", "del", name]), GONE),
    };
    Some(IpStep {
        place,
        args,
        tolerated,
    })
}

/// Which batch failed line an `ip -batch` stderr names (`Command failed -:N`, 1-based), and
/// what was said about it (the lines before, back to the previous failure).
pub fn batch_failure(stderr: &str) -> Option<(usize, String)> {
    let mut said = Vec::new();
    let mut failure = None;
    for line in stderr.lines() {
        if let Some(n) = line.trim().strip_prefix("Command failed -:") {
            failure = n.trim().parse::<usize>().ok().map(|n| (n, said.join("\n")));
            said.clear();
        } else {
            said.push(line);
        }
    }
    failure
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
        // One run of `ip` for links, IPv4 addresses, routes and named namespaces (whose
        // names are global, /var/run/netns, whichever namespace `ip` is in).
        const SCRIPT: &str = "link show\naddr show\nroute show\nnetns list\n";
        let command = self.ip(&["-4", "-j", "-batch", "-"]);
        let shown = format!("{} <<< {SCRIPT:?}", show(&command));
        let out = run(command, Some(SCRIPT), &[])?;
        let docs = json_documents(&shown, &out)?;
        let items = |i: usize| {
            docs.get(i)
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        for link in items(0) {
            if let Some(name) = link.get("ifname").and_then(Value::as_str) {
                let up = link
                    .get("flags")
                    .and_then(Value::as_array)
                    .is_some_and(|f| f.iter().any(|f| f == "UP"));
                observed.links.insert(name.to_string(), up);
            }
        }
        for info in items(1)
            .iter()
            .filter(|l| l.get("ifname").and_then(Value::as_str) == Some(plan::BRIDGE))
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
        for route in items(2) {
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
        // `netns list` prints nothing at all when there is no named namespace.
        for n in items(3) {
            if let Some(name) = n.get("name").and_then(Value::as_str) {
                observed.netns.insert(name.to_string());
            }
        }
        let forwarding = match &self.node_netns {
            None => std::fs::read_to_string(IP_FORWARD).map_err(|source| NetError::Io {
                path: IP_FORWARD.into(),
                source,
            })?,
            Some(_) => run(self.node_program("cat", &[IP_FORWARD]), None, &[])?,
        };
        observed.forwarding = forwarding.trim() == "1";
        let table = self.node_program("nft", &["list", "table", "ip", plan::NAT_TABLE]);
        observed.nat_table = run(table, None, &[])
            .ok()
            .map(|listing| plan::parse_nat_table(&listing));
        Ok(observed)
    }

    fn apply(&mut self, step: &Step) -> Result<(), NetError> {
        if let Some(ip) = ip_step(step) {
            let options = self.place_options(&ip.place);
            return self.batch(&options, &[ip]);
        }
        match step {
            Step::EnableForwarding => match &self.node_netns {
                None => std::fs::write(IP_FORWARD, "1\n").map_err(|source| NetError::Io {
                    path: IP_FORWARD.into(),
                    source,
                })?,
                Some(_) => {
                    let c = self.node_program("sh", &["-c", &format!("echo 1 > {IP_FORWARD}")]);
                    run(c, None, &[])?;
                }
            },
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
            // The others are `ip` steps, done above.
            _ => {}
        }
        Ok(())
    }

    /// Consecutive `ip` steps acting on the same namespace run as one `ip -batch`.
    fn apply_all(&mut self, steps: &[Step]) -> Result<(), NetError> {
        let mut i = 0;
        while i < steps.len() {
            let Some(first) = ip_step(&steps[i]) else {
                self.apply(&steps[i])?;
                i += 1;
                continue;
            };
            let options = self.place_options(&first.place);
            let mut group = vec![first];
            i += 1;
            while let Some(next) = steps.get(i).and_then(ip_step) {
                // Batch lines are split at blanks: an argument holding one runs alone.
                let plain = next.args.iter().all(|a| !a.contains(char::is_whitespace));
                if self.place_options(&next.place) != options || !plain {
                    break;
                }
                group.push(next);
                i += 1;
            }
            self.batch(&options, &group)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_become_ip_commands_in_their_place() {
        let veth = ip_step(&Step::CreateVeth {
            host: "vtabc".into(),
            netns: "tend-abc".into(),
            peer: "eth0".into(),
        })
        .expect("ip");
        assert_eq!(veth.place, Place::Node);
        assert_eq!(
            veth.args.join(" "),
            "link add vtabc type veth peer name eth0 netns tend-abc"
        );
        assert_eq!(veth.tolerated, EXISTS);
        let route = ip_step(&Step::PodDefaultRoute {
            netns: "tend-abc".into(),
            via: Ipv4Addr::new(10, 244, 0, 1),
        })
        .expect("ip");
        assert_eq!(route.place, Place::Pod("tend-abc".into()));
        assert_eq!(route.args.join(" "), "route replace default via 10.244.0.1");
        let ns = ip_step(&Step::DeleteNetns { name: "x".into() }).expect("ip");
        assert_eq!((ns.place, ns.tolerated), (Place::Global, GONE));
        assert_eq!(ip_step(&Step::EnableForwarding), None);
        assert_eq!(ip_step(&Step::DeleteNatTable), None);
    }

    #[test]
    fn places_merge_when_the_agent_runs_in_its_node() {
        let inside = IpCommands::new();
        assert_eq!(
            inside.place_options(&Place::Node),
            inside.place_options(&Place::Global)
        );
        let outside = IpCommands::in_netns("node1");
        assert_eq!(outside.place_options(&Place::Node), ["-n", "node1"]);
        assert!(outside.place_options(&Place::Global).is_empty());
        assert_eq!(
            outside.place_options(&Place::Pod("tend-abc".into())),
            ["-n", "tend-abc"]
        );
    }

    #[test]
    fn batch_failures_name_their_line_and_message() {
        let stderr = "RTNETLINK answers: File exists\nCommand failed -:2\n";
        assert_eq!(
            batch_failure(stderr),
            Some((2, "RTNETLINK answers: File exists".to_string()))
        );
        assert_eq!(
            batch_failure("Cannot find device \"x\"\nCommand failed -:13"),
            Some((13, "Cannot find device \"x\"".to_string()))
        );
        assert_eq!(batch_failure("ip: something else"), None);
    }
}
