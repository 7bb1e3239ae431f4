//! Talking to nft: operations rendered to the JSON schema of the `nftables` crate and loaded
//! with `nft -j -f -`, one transaction per sync ([`NftCommand`]); the table's marker read
//! back to find drift; [`RecordingNft`], the fake the sync's tests use.
//!
//! Every command names family `ip`, table [`TABLE`]: nothing here can touch another table.
//! The crate has no `verdict` map type (and cannot read named verdict maps back,
//! nftables-rs#237), so the four map declarations are written as raw JSON beside the
//! crate's objects, and what was programmed is remembered by the sync rather than read.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use nftables::expr::{
    BinaryOperation, CT, Expression, Fib, FibFlag, FibResult, Map, Meta, MetaKey, NamedExpression,
    NgMode, Numgen, Payload, PayloadField, Prefix, SetItem, Verdict,
};
use nftables::schema::{Chain, Element, NfCmd, NfListObject, Rule as NftRule, Set, SetFlag};
use nftables::schema::{SetType, SetTypeValue, Table};
use nftables::stmt::{
    JumpTarget, Mangle, Match, NAT, NATFlag, Operator, Reject, RejectType, Set as SetStmt, SetOp,
    Statement, VerdictMap,
};
use nftables::types::{NfChainType, NfFamily, NfHook};
use serde_json::{Value, json};

use super::TABLE;
use super::diff::Op;
use super::model::{
    EndpointSet, Hook, MARK_CHAIN, MARKER_CHAIN, MASQUERADE_MARK, MapKey, MapName, RANDOM_RANGE,
    Rule,
};

/// Why nft failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("could not run `{command}` (is nftables installed?): {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed on table ip {TABLE} ({ops} operations): {stderr}")]
    Failed {
        command: String,
        ops: usize,
        stderr: String,
    },
    #[error("`{command}` printed JSON this code cannot read: {why}")]
    Output { command: String, why: String },
    #[error("netlink to nf_tables: {what}: {source}")]
    Netlink {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "nf_tables refused operation {index} of {ops} on table ip {TABLE} ({op}): {why}; nothing was applied{}",
        if *more > 0 { format!(" ({more} more operations refused)") } else { String::new() }
    )]
    Refused {
        /// 1-based; 0 when the batch as a whole was refused.
        index: usize,
        ops: usize,
        op: String,
        why: String,
        more: usize,
    },
}

/// What the sync needs of nft: apply one transaction, and read the marker of the last full
/// sync back (`None`: the table or its marker is gone).
pub trait NftApply {
    fn apply(&mut self, ops: &[Op]) -> Result<(), NftError>;
    fn observe(&mut self) -> Result<Option<String>, NftError>;
}

fn family() -> NfFamily {
    NfFamily::IP
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn string(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

fn goto(target: &str) -> Expression<'static> {
    Expression::Verdict(Verdict::Goto(JumpTarget {
        target: Cow::Owned(target.to_string()),
    }))
}

fn matches(
    left: Expression<'static>,
    right: Expression<'static>,
    op: Operator,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn jump(target: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: Cow::Owned(target.to_string()),
    })
}

/// `meta l4proto . th dport`, with `ip daddr` in front for the maps keyed by IP.
fn dispatch_key(by_ip: bool) -> Expression<'static> {
    let mut parts = Vec::new();
    if by_ip {
        parts.push(payload("ip", "daddr"));
    }
    parts.push(meta(MetaKey::L4proto));
    parts.push(payload("th", "dport"));
    Expression::Named(NamedExpression::Concat(parts))
}

fn map_key(key: &MapKey) -> Expression<'static> {
    let parts = match key {
        MapKey::Ip(k) => vec![
            string(k.ip.to_string()),
            string(k.protocol.as_str()),
            Expression::Number(u32::from(k.port)),
        ],
        MapKey::Port(k) => vec![
            string(k.protocol.as_str()),
            Expression::Number(u32::from(k.port)),
        ],
    };
    Expression::Named(NamedExpression::Concat(parts))
}

fn prefix(ip: Ipv4Addr, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(string(ip.to_string())),
        len: u32::from(len),
    }))
}

/// The statements of one rule.
pub fn statements(rule: &Rule) -> Vec<Statement<'static>> {
    let mark = || meta(MetaKey::Mark);
    let masq_bit = || Expression::Number(MASQUERADE_MARK);
    match rule {
        Rule::Jump(c) => vec![jump(c)],
        Rule::Goto(c) => vec![Statement::Goto(JumpTarget {
            target: Cow::Owned(c.clone()),
        })],
        Rule::NewJump(c) => vec![
            matches(
                Expression::Named(NamedExpression::CT(CT {
                    key: "state".into(),
                    family: None,
                    dir: None,
                })),
                string("new"),
                Operator::IN,
            ),
            jump(c),
        ],
        Rule::MarkOutside { cidr } => vec![
            matches(
                payload("ip", "saddr"),
                prefix(cidr.0, cidr.1),
                Operator::NEQ,
            ),
            jump(MARK_CHAIN),
        ],
        Rule::Hairpin { ip } => vec![
            matches(payload("ip", "saddr"), string(ip.to_string()), Operator::EQ),
            jump(MARK_CHAIN),
        ],
        Rule::AffinityGoto { set, chain } => vec![
            matches(
                payload("ip", "saddr"),
                string(format!("@{set}")),
                Operator::EQ,
            ),
            Statement::Goto(JumpTarget {
                target: Cow::Owned(chain.clone()),
            }),
        ],
        Rule::AffinityUpdate { set } => vec![Statement::Set(SetStmt {
            op: SetOp::Update,
            elem: payload("ip", "saddr"),
            set: Cow::Owned(format!("@{set}")),
        })],
        Rule::Random(chains) => {
            let items = chains
                .iter()
                .enumerate()
                .map(|(i, c)| SetItem::Mapping(Expression::Number(i as u32), goto(c)))
                .collect();
            vec![Statement::VerdictMap(VerdictMap {
                key: Expression::Named(NamedExpression::Numgen(Numgen {
                    mode: NgMode::Random,
                    ng_mod: chains.len() as u32,
                    offset: None,
                })),
                data: Expression::Named(NamedExpression::Set(items)),
            })]
        }
        Rule::HairpinSet { set } => vec![
            matches(
                payload("ip", "saddr"),
                string(format!("@{set}")),
                Operator::EQ,
            ),
            jump(MARK_CHAIN),
        ],
        Rule::DnatMap { protocol, map } => vec![
            matches(
                meta(MetaKey::L4proto),
                string(protocol.as_str()),
                Operator::EQ,
            ),
            Statement::DNAT(Some(NAT {
                addr: Some(Expression::Named(NamedExpression::Map(Box::new(Map {
                    key: Expression::Named(NamedExpression::Numgen(Numgen {
                        mode: NgMode::Random,
                        ng_mod: RANDOM_RANGE,
                        offset: None,
                    })),
                    data: string(format!("@{map}")),
                })))),
                family: Some(nftables::stmt::NATFamily::IP),
                port: None,
                flags: None,
            })),
        ],
        Rule::Dnat { protocol, ip, port } => vec![
            matches(
                meta(MetaKey::L4proto),
                string(protocol.as_str()),
                Operator::EQ,
            ),
            Statement::DNAT(Some(NAT {
                addr: Some(string(ip.to_string())),
                family: None,
                port: Some(Expression::Number(u32::from(*port))),
                flags: None,
            })),
        ],
        Rule::DispatchIp(map) => vec![Statement::VerdictMap(VerdictMap {
            key: dispatch_key(true),
            data: string(format!("@{}", map.as_str())),
        })],
        Rule::DispatchLocalPort { map, localhost } => {
            let mut out = vec![matches(
                Expression::Named(NamedExpression::Fib(Fib {
                    result: FibResult::Type,
                    flags: HashSet::from([FibFlag::Daddr]),
                })),
                string("local"),
                Operator::EQ,
            )];
            if !localhost {
                out.push(matches(
                    payload("ip", "daddr"),
                    prefix(Ipv4Addr::new(127, 0, 0, 0), 8),
                    Operator::NEQ,
                ));
            }
            out.push(Statement::VerdictMap(VerdictMap {
                key: dispatch_key(false),
                data: string(format!("@{}", map.as_str())),
            }));
            out
        }
        Rule::SetMark => vec![Statement::Mangle(Mangle {
            key: mark(),
            value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
                mark(),
                masq_bit(),
            ]))),
        })],
        Rule::ReturnUnmarked => vec![
            matches(
                Expression::BinaryOperation(Box::new(BinaryOperation::AND(mark(), masq_bit()))),
                Expression::Number(0),
                Operator::EQ,
            ),
            Statement::Return(None),
        ],
        Rule::ClearMark => vec![Statement::Mangle(Mangle {
            key: mark(),
            value: Expression::BinaryOperation(Box::new(BinaryOperation::XOR(mark(), masq_bit()))),
        })],
        Rule::Masquerade => vec![Statement::Masquerade(Some(NAT {
            addr: None,
            family: None,
            port: None,
            flags: Some(HashSet::from([NATFlag::FullyRandom])),
        }))],
        Rule::RejectTcp => vec![
            matches(meta(MetaKey::L4proto), string("tcp"), Operator::EQ),
            Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))),
        ],
        Rule::Reject => vec![Statement::Reject(None)],
        Rule::Marker(_) => vec![Statement::Return(None)],
    }
}

fn chain(name: &str) -> Chain<'static> {
    Chain {
        family: family(),
        table: TABLE.into(),
        name: Cow::Owned(name.to_string()),
        ..Chain::default()
    }
}

fn table() -> Table<'static> {
    Table {
        family: family(),
        name: TABLE.into(),
        handle: None,
    }
}

fn cmd(c: NfCmd<'static>) -> Value {
    // Serializing these types cannot fail (no maps with non-string keys, no I/O).
    serde_json::to_value(c).unwrap_or(Value::Null)
}

fn elements(map: MapName, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: family(),
        table: TABLE.into(),
        name: map.as_str().into(),
        elem: Cow::Owned(elem),
    })
}

/// One operation as one command of nft's JSON schema.
pub fn render(op: &Op) -> Value {
    match op {
        Op::AddTable => cmd(NfCmd::Add(NfListObject::Table(table()))),
        Op::DeleteTable => cmd(NfCmd::Delete(NfListObject::Table(table()))),
        Op::AddMap(map) => {
            let key: &[&str] = if map.keyed_by_ip() {
                &["ipv4_addr", "inet_proto", "inet_service"]
            } else {
                &["inet_proto", "inet_service"]
            };
            json!({"add": {"map": {
                "family": "ip", "table": TABLE, "name": map.as_str(),
                "type": key, "map": "verdict",
            }}})
        }
        Op::AddBaseChain {
            name,
            nat,
            hook,
            priority,
        } => cmd(NfCmd::Add(NfListObject::Chain(Chain {
            _type: Some(if *nat {
                NfChainType::NAT
            } else {
                NfChainType::Filter
            }),
            hook: Some(match hook {
                Hook::Prerouting => NfHook::Prerouting,
                Hook::Input => NfHook::Input,
                Hook::Forward => NfHook::Forward,
                Hook::Output => NfHook::Output,
                Hook::Postrouting => NfHook::Postrouting,
            }),
            prio: Some(*priority),
            ..chain(name)
        }))),
        Op::AddChain(name) => cmd(NfCmd::Add(NfListObject::Chain(chain(name)))),
        Op::FlushChain(name) => cmd(NfCmd::Flush(nftables::schema::FlushObject::Chain(chain(
            name,
        )))),
        Op::DeleteChain(name) => cmd(NfCmd::Delete(NfListObject::Chain(chain(name)))),
        Op::AddRule { chain, rule } => cmd(NfCmd::Add(NfListObject::Rule(NftRule {
            family: family(),
            table: TABLE.into(),
            chain: Cow::Owned(chain.clone()),
            expr: Cow::Owned(statements(rule)),
            handle: None,
            index: None,
            comment: match rule {
                Rule::Marker(m) => Some(Cow::Owned(m.clone())),
                _ => None,
            },
        }))),
        Op::AddSet { name, timeout } => cmd(NfCmd::Add(NfListObject::Set(Box::new(Set {
            family: family(),
            table: TABLE.into(),
            name: Cow::Owned(name.clone()),
            set_type: SetTypeValue::Single(SetType::Ipv4Addr),
            flags: Some(HashSet::from([SetFlag::Timeout])),
            timeout: Some(*timeout),
            ..Set::default()
        })))),
        Op::AddEndpointMap { name, protocol } => {
            // nft 1.0.6's JSON has no `typeof` (and refuses `type integer`): this command is
            // for reading only; [`NftCommand`] loads transactions with it as text.
            json!({"add": {"map": {
                "family": "ip", "table": TABLE, "name": name,
                "typeof": format!("numgen random mod {RANDOM_RANGE} : ip daddr . {} dport", protocol.as_str()),
                "type": "integer", "map": ["ipv4_addr", "inet_service"], "flags": ["interval"],
            }}})
        }
        Op::AddIpSet(name) => cmd(NfCmd::Add(NfListObject::Set(Box::new(Set {
            family: family(),
            table: TABLE.into(),
            name: Cow::Owned(name.clone()),
            set_type: SetTypeValue::Single(SetType::Ipv4Addr),
            ..Set::default()
        })))),
        Op::FlushSet(name) => {
            json!({"flush": {"set": {"family": "ip", "table": TABLE, "name": name}}})
        }
        Op::FlushMap(name) => {
            json!({"flush": {"map": {"family": "ip", "table": TABLE, "name": name}}})
        }
        Op::DeleteMap(name) => {
            json!({"delete": {"map": {"family": "ip", "table": TABLE, "name": name}}})
        }
        Op::AddEndpointElements { map, endpoints } => {
            let set = EndpointSet {
                protocol: super::model::Protocol::Tcp,
                endpoints: endpoints.clone(),
            };
            let elem: Vec<Value> = set
                .intervals()
                .into_iter()
                .map(|((a, b), ep)| {
                    json!([{"range": [a, b]}, {"concat": [ep.ip.to_string(), ep.port]}])
                })
                .collect();
            json!({"add": {"element": {"family": "ip", "table": TABLE, "name": map, "elem": elem}}})
        }
        Op::AddIpElements { set, ips } => {
            let elem: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
            json!({"add": {"element": {"family": "ip", "table": TABLE, "name": set, "elem": elem}}})
        }
        Op::DeleteSet(name) => cmd(NfCmd::Delete(NfListObject::Set(Box::new(Set {
            family: family(),
            table: TABLE.into(),
            name: Cow::Owned(name.clone()),
            ..Set::default()
        })))),
        Op::AddElements { map, elements: e } => cmd(NfCmd::Add(elements(
            *map,
            e.iter()
                .map(|(k, c)| Expression::List(vec![map_key(k), goto(c)]))
                .collect(),
        ))),
        Op::DeleteElements { map, keys } => cmd(NfCmd::Delete(elements(
            *map,
            keys.iter().map(map_key).collect(),
        ))),
    }
}

/// A transaction as the text `nft -j -f -` reads.
pub fn document(ops: &[Op]) -> String {
    let cmds: Vec<Value> = ops.iter().map(render).collect();
    json!({ "nftables": cmds }).to_string()
}

/// The real nft, in this network namespace or in a named one (`ip netns exec`), which is
/// how tests and the benchmark run a node without touching the host.
#[derive(Debug, Clone, Default)]
pub struct NftCommand {
    pub netns: Option<String>,
}

impl NftCommand {
    fn command(&self, args: &[&str]) -> (Command, String) {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "nft"]);
                c
            }
            None => Command::new("nft"),
        };
        c.args(args);
        let shown = match &self.netns {
            Some(ns) => format!("ip netns exec {ns} nft {}", args.join(" ")),
            None => format!("nft {}", args.join(" ")),
        };
        (c, shown)
    }

    /// Loads an nft document (JSON with `json`, else nft's own syntax) in one transaction.
    pub fn load(&self, document: &str, json: bool, ops: usize) -> Result<(), NftError> {
        let args: &[&str] = if json {
            &["-j", "-f", "-"]
        } else {
            &["-f", "-"]
        };
        let (mut c, shown) = self.command(args);
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NftError::Spawn {
                command: shown.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error shows up as nft's failure below.
            let _ = stdin.write_all(document.as_bytes());
        }
        let out = child.wait_with_output().map_err(|source| NftError::Spawn {
            command: shown.clone(),
            source,
        })?;
        if out.status.success() {
            return Ok(());
        }
        Err(NftError::Failed {
            command: shown,
            ops,
            stderr: first_lines(&String::from_utf8_lossy(&out.stderr)),
        })
    }
}

fn first_lines(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).take(3).collect();
    lines.join(" / ")
}

impl NftApply for NftCommand {
    fn apply(&mut self, ops: &[Op]) -> Result<(), NftError> {
        if ops.is_empty() {
            return Ok(());
        }
        if ops.iter().any(|op| matches!(op, Op::AddEndpointMap { .. })) {
            // nft's JSON cannot declare an endpoint map (no `typeof`): the same
            // transaction in nft's own syntax.
            return self.load(&super::text::document(ops), false, ops.len());
        }
        self.load(&document(ops), true, ops.len())
    }

    fn observe(&mut self) -> Result<Option<String>, NftError> {
        let (mut c, shown) = self.command(&["-j", "list", "chain", "ip", TABLE, MARKER_CHAIN]);
        let out = c
            .stdin(Stdio::null())
            .output()
            .map_err(|source| NftError::Spawn {
                command: shown.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // The table or the chain is gone: that is drift, not an error.
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(NftError::Failed {
                command: shown,
                ops: 0,
                stderr: first_lines(&stderr),
            });
        }
        marker_of(&String::from_utf8_lossy(&out.stdout)).map_err(|why| NftError::Output {
            command: shown,
            why,
        })
    }
}

/// The comment of the marker chain's rule in a `nft -j list chain` listing.
pub fn marker_of(listing: &str) -> Result<Option<String>, String> {
    let v: Value = serde_json::from_str(listing).map_err(|e| e.to_string())?;
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no \"nftables\" array")?;
    Ok(items
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| r.get("table").and_then(Value::as_str) == Some(TABLE))
        .find_map(|r| r.get("comment").and_then(Value::as_str))
        .map(str::to_string))
}

/// The fake: records every transaction, answers `observe` with what the last full sync
/// wrote unless told the table was flushed, and fails when told to.
#[derive(Debug, Default)]
pub struct RecordingNft {
    pub transactions: Vec<Vec<Op>>,
    /// What `observe` answers; `apply` sets it from a marker rule it sees.
    pub marker: Option<String>,
    /// The next `apply` fails (once).
    pub fail_next: bool,
}

impl NftApply for RecordingNft {
    fn apply(&mut self, ops: &[Op]) -> Result<(), NftError> {
        if std::mem::take(&mut self.fail_next) {
            return Err(NftError::Failed {
                command: "nft -j -f -".into(),
                ops: ops.len(),
                stderr: "told to fail".into(),
            });
        }
        for op in ops {
            if let Op::AddRule {
                rule: Rule::Marker(m),
                ..
            } = op
            {
                self.marker = Some(m.clone());
            }
        }
        self.transactions.push(ops.to_vec());
        Ok(())
    }

    fn observe(&mut self) -> Result<Option<String>, NftError> {
        Ok(self.marker.clone())
    }
}
