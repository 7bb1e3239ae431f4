//! nf_tables over netlink, without the `nft` program: the sync's operations sent as one
//! atomic batch on a `NETLINK_NETFILTER` socket, and the drift marker read with a dump of
//! the one marker chain.
//!
//! Why: nft 1.0.6 reads the whole ruleset into its cache before applying even one
//! `add element`, so through `nft -f` one endpoint change cost 737 ms at 10,000 Services
//! and the drift check 3.3 s. The kernel's own work for the same batch does not depend on
//! the table's size. `nft.rs` still renders the same operations as JSON: the reference the
//! tests compare against and the `nft -f` baseline of `tend bench services`.
//!
//! What remains is the kernel's own cost, measured with perf at 10,000 Services: every
//! added rule or verdict-map element makes the commit re-validate the whole table
//! (`nft_table_validate` walks every chain reachable from the base chains: 220 ms at
//! 10,000 Services on a loaded 2-core machine). That is why endpoints are data-map
//! elements ([`super::model::EndpointSet`]): an endpoint change adds no rule and no verdict,
//! so it skips validation. Services with ClientIP affinity keep per-endpoint chains and
//! an anonymous `numgen` verdict map, so their endpoint changes still validate, and a full
//! sync binds each anonymous map with a walk of the whole transaction
//! (`__nft_set_trans_bind`, O(n²)).
//!
//! - [`wire`]: netlink messages and attributes (pure);
//! - [`encode`]: [`Op`]s as nf_tables messages (pure);
//! - [`socket`]: the socket, in this or a named network namespace;
//! - [`NetlinkNft`] (here): send, read the kernel's reports, map an error to its op.

pub mod encode;
mod socket;
pub mod wire;

use std::io;

use super::TABLE;
use super::diff::Op;
use super::model::MARKER_CHAIN;
use super::nft::{NftApply, NftError};
use encode::{NFTA_RULE_CHAIN, NFTA_RULE_TABLE, NFTA_RULE_USERDATA, comment_of, encode};
use socket::Socket;
use wire::{MsgType, NFPROTO_IPV4, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, Writer};

/// The kernel's nf_tables, in this network namespace or a named one (`/run/netns/<name>`,
/// how tests and the benchmark run a node without touching the host).
#[derive(Debug, Default)]
pub struct NetlinkNft {
    pub netns: Option<String>,
    seq: u32,
    /// The size in bytes of the last batch sent (for the benchmark).
    pub last_batch_bytes: usize,
    /// The socket batches are sent on, kept open between them. Why: closing a
    /// NETLINK_NETFILTER socket makes nf_tables finish freeing what earlier commits
    /// removed (`nft_rcv_nl_event` flushes the destroy work, which waits for an RCU grace
    /// period): 10-20 ms per endpoint change on a loaded machine, more than the commit
    /// itself. Dropped after an I/O error, and reopened by the next batch.
    socket: Option<Socket>,
}

impl Clone for NetlinkNft {
    /// A clone opens its own socket: reports must not go to another's reader.
    fn clone(&self) -> Self {
        NetlinkNft {
            netns: self.netns.clone(),
            seq: self.seq,
            last_batch_bytes: self.last_batch_bytes,
            socket: None,
        }
    }
}

impl NetlinkNft {
    pub fn new(netns: Option<String>) -> Self {
        NetlinkNft {
            netns,
            // Distinct per process, so a report can never be taken for another's.
            seq: std::process::id().wrapping_mul(65_536),
            last_batch_bytes: 0,
            socket: None,
        }
    }

    fn place(&self) -> String {
        match &self.netns {
            Some(ns) => format!(" in network namespace {ns}"),
            None => String::new(),
        }
    }

    fn io(&self, what: &str, source: io::Error) -> NftError {
        NftError::Netlink {
            what: format!("{what}{}", self.place()),
            source,
        }
    }

    fn socket(&self) -> Result<Socket, NftError> {
        Socket::open(self.netns.as_deref())
            .map_err(|e| self.io("opening a NETLINK_NETFILTER socket", e))
    }

    /// Reserves `n` sequence numbers; returns the first.
    fn reserve(&mut self, n: usize) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(n as u32 + 4);
        first
    }
}

/// One operation in nft's words, for error messages.
pub fn describe(op: &Op) -> String {
    let t = format!("ip {TABLE}");
    match op {
        Op::AddTable => format!("add table {t}"),
        Op::DeleteTable => format!("delete table {t}"),
        Op::AddMap(m) => format!("add map {t} {}", m.as_str()),
        Op::AddBaseChain { name, hook, .. } => format!("add chain {t} {name} (hook {hook:?})"),
        Op::AddChain(c) => format!("add chain {t} {c}"),
        Op::FlushChain(c) => format!("flush chain {t} {c}"),
        Op::DeleteChain(c) => format!("delete chain {t} {c}"),
        Op::AddRule { chain, rule } => format!("add rule {t} {chain} {rule:?}"),
        Op::AddSet { name, .. } => format!("add set {t} {name}"),
        Op::DeleteSet(name) => format!("delete set {t} {name}"),
        Op::AddElements { map, elements } => format!(
            "add element {t} {} ({} elements)",
            map.as_str(),
            elements.len()
        ),
        Op::AddEndpointMap { name, protocol } => format!(
            "add map {t} {name} {{ typeof numgen random mod 65536 : ip daddr . {} dport; flags interval; }}",
            protocol.as_str()
        ),
        Op::AddIpSet(name) => format!("add set {t} {name} {{ type ipv4_addr; }}"),
        Op::FlushSet(name) => format!("flush set {t} {name}"),
        Op::FlushMap(name) => format!("flush map {t} {name}"),
        Op::DeleteMap(name) => format!("delete map {t} {name}"),
        Op::AddEndpointElements { map, endpoints } => {
            format!("add element {t} {map} ({} endpoints)", endpoints.len())
        }
        Op::AddIpElements { set, ips } => {
            format!("add element {t} {set} ({} addresses)", ips.len())
        }
        Op::DeleteElements { map, keys } => format!(
            "delete element {t} {} ({} elements)",
            map.as_str(),
            keys.len()
        ),
    }
}

impl NftApply for NetlinkNft {
    /// One batch: the kernel applies all of it or none. nft's way of waiting is kept: no
    /// acknowledgement is asked for, the batch is processed during `send`, and whatever the
    /// kernel queued by then is the list of errors.
    fn apply(&mut self, ops: &[Op]) -> Result<(), NftError> {
        if ops.is_empty() {
            return Ok(());
        }
        let batch = encode(ops, self.seq);
        self.reserve(batch.op_of.len() + 2);
        self.last_batch_bytes = batch.bytes.len();
        let socket = match self.socket.take() {
            Some(s) => s,
            None => self.socket()?,
        };
        socket
            .send(&batch.bytes)
            .map_err(|e| self.io(&format!("sending {} operations", ops.len()), e))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut refused: Vec<(u32, i32)> = Vec::new();
        // This batch's sequence numbers: begin, its messages, end.
        let last_seq = batch.first_seq.wrapping_add(batch.op_of.len() as u32 + 1);
        loop {
            let n = match socket.recv(&mut buf, false) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => return Err(self.io("reading nf_tables' answer", e)),
            };
            for reply in wire::replies(&buf[..n]) {
                if reply.ty == NLMSG_ERROR
                    && let Some((errno, seq)) = wire::error_of(reply.payload)
                    && errno != 0
                    && seq.wrapping_sub(batch.first_seq) <= last_seq.wrapping_sub(batch.first_seq)
                {
                    refused.push((seq, errno));
                }
            }
        }
        // Kept only when the exchange went well (an error above drops it).
        self.socket = Some(socket);
        let Some(&(seq, errno)) = refused.iter().min_by_key(|(seq, _)| *seq) else {
            return Ok(());
        };
        let why = io::Error::from_raw_os_error(errno).to_string();
        let (index, op) = match batch.op_at(seq) {
            Some(i) => (i + 1, ops.get(i).map(describe).unwrap_or_default()),
            None => (0, "the batch itself".to_string()),
        };
        Err(NftError::Refused {
            index,
            ops: ops.len(),
            op,
            why: format!("{why}{}", self.place()),
            more: refused.len() - 1,
        })
    }

    /// A dump of the marker chain only: its size does not depend on the table's.
    fn observe(&mut self) -> Result<Option<String>, NftError> {
        let seq = self.reserve(1);
        let mut w = Writer::default();
        w.begin(
            MsgType::GetRule.wire(),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            NFPROTO_IPV4,
            0,
        );
        w.str(NFTA_RULE_TABLE, TABLE);
        w.str(NFTA_RULE_CHAIN, MARKER_CHAIN);
        w.end();
        let socket = self.socket()?;
        socket
            .send(&w.buf)
            .map_err(|e| self.io("asking for the marker chain", e))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut found = None;
        loop {
            let n = match socket.recv(&mut buf, true) {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) => return Err(self.io("reading the marker chain", e)),
            };
            for reply in wire::replies(&buf[..n]).filter(|r| r.seq == seq) {
                match reply.ty {
                    NLMSG_DONE => return Ok(found),
                    NLMSG_ERROR => match wire::error_of(reply.payload) {
                        Some((0, _)) => {}
                        // The table or the chain is gone: that is drift, not an error.
                        Some((libc::ENOENT, _)) => return Ok(None),
                        Some((errno, _)) => {
                            return Err(self.io(
                                "listing the marker chain",
                                io::Error::from_raw_os_error(errno),
                            ));
                        }
                        None => return Ok(found),
                    },
                    ty if ty == MsgType::NewRule.wire() && found.is_none() => {
                        found = marker_in(reply.payload);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The comment of a NEWRULE message of our marker chain (payload after `nlmsghdr`).
fn marker_in(payload: &[u8]) -> Option<String> {
    let attrs = payload.get(4..)?;
    let mut ours = (false, false);
    let mut comment = None;
    for (ty, value) in wire::attrs(attrs) {
        match ty {
            NFTA_RULE_TABLE => ours.0 = value == format!("{TABLE}\0").as_bytes(),
            NFTA_RULE_CHAIN => ours.1 = value == format!("{MARKER_CHAIN}\0").as_bytes(),
            NFTA_RULE_USERDATA => comment = comment_of(value),
            _ => {}
        }
    }
    if ours == (true, true) { comment } else { None }
}

#[cfg(test)]
mod tests;
