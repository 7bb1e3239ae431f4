//! Our [`Op`]s as one nf_tables netlink batch (pure): the messages `nft` itself would send
//! for the same commands (checked against `nft --debug=mnl` and, in tests/lb_netlink.rs,
//! against the kernel's own listing of what `nft -j -f` loads). Each message's sequence
//! number maps back to the operation it encodes, so a kernel error names the operation.
//!
//! Expression encodings follow what nft 1.0.6 generates (linux/netfilter/nf_tables.h gives
//! the attribute numbers):
//! - `ip saddr 10.0.0.1`: `payload` 4 bytes at network header + 12, `cmp eq`;
//! - a prefix: the whole bytes only (`/16`: 2 bytes), plus `bitwise` for a partial byte;
//! - concatenations (`ip daddr . meta l4proto . th dport`): each field in its own 32-bit
//!   register (the key is padded per field to 4 bytes), then `lookup`;
//! - `numgen random mod N vmap { ... }`: an anonymous constant map (`__map%d`, named by
//!   the kernel) and its elements in the same batch, referenced by set id.

use std::net::Ipv4Addr;

use super::super::TABLE;
use super::super::diff::Op;
use super::super::model::{
    Endpoint, EndpointSet, Hook, MARK_CHAIN, MASQUERADE_MARK, MapKey, MapName, Protocol,
    RANDOM_RANGE, Rule,
};
use super::wire::{
    MsgType, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NFPROTO_IPV4,
    NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, Writer,
};

// Attribute numbers (linux/netfilter/nf_tables.h).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
/// `NFT_DATA_VERDICT`: a map's data are verdicts.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

// nft's datatypes (its `enum datatypes`); a concatenation is `a << 6 | b` per field.
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

const NF_ACCEPT: u32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

/// Registers: 0 is the verdict; 1 the first 16-byte one; 9.. the 32-bit ones after the
/// first word of register 1 (concatenations fill consecutive words).
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG32_01: u32 = 9;
const REG32_02: u32 = 10;

const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const IP_SADDR: u32 = 12;
const IP_DADDR: u32 = 16;
const TH_DPORT: u32 = 2;

const META_MARK: u32 = 3;
const META_L4PROTO: u32 = 16;
const CT_STATE: u32 = 0;
const CT_STATE_NEW: u32 = 1 << 3;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const NFT_NG_RANDOM: u32 = 1;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NFT_NAT_DNAT: u32 = 1;
const NFT_BYTEORDER_HTON: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const NFT_REJECT_TCP_RST: u32 = 1;
const ICMP_PORT_UNREACH: u8 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 2;
const RTN_LOCAL: u32 = 2;
/// `NFTNL_UDATA_RULE_COMMENT`: the tag of a rule's comment in its user data.
pub(super) const UDATA_RULE_COMMENT: u8 = 0;

/// Element lists longer than this go in several messages: a nested attribute's length is
/// 16 bits.
const ELEMENTS_PER_MESSAGE: usize = 60_000;

/// One batch ready to send: `BATCH_BEGIN`, the messages, `BATCH_END`.
#[derive(Debug, Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// The sequence number of `BATCH_BEGIN`; message `i` after it has `first_seq + 1 + i`.
    pub first_seq: u32,
    /// For each message after `BATCH_BEGIN`, the index of the op it belongs to.
    pub op_of: Vec<usize>,
}

impl Batch {
    /// The op a sequence number belongs to (`None`: begin, end, or not ours).
    pub fn op_at(&self, seq: u32) -> Option<usize> {
        let i = seq.checked_sub(self.first_seq)?.checked_sub(1)?;
        self.op_of.get(i as usize).copied()
    }
}

struct Encoder {
    w: Writer,
    seq: u32,
    op: usize,
    op_of: Vec<usize>,
    set_id: u32,
}

/// `ops` as one atomic batch whose sequence numbers start at `first_seq`.
pub fn encode(ops: &[Op], first_seq: u32) -> Batch {
    let mut e = Encoder {
        w: Writer::default(),
        seq: first_seq,
        op: 0,
        op_of: Vec::with_capacity(ops.len() + 2),
        set_id: 0,
    };
    e.w.begin(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        first_seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    e.w.end();
    for (i, op) in ops.iter().enumerate() {
        e.op = i;
        e.op(op);
    }
    e.seq = e.seq.wrapping_add(1);
    e.w.begin(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        e.seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    e.w.end();
    Batch {
        bytes: e.w.buf,
        first_seq,
        op_of: e.op_of,
    }
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// A map key as the kernel stores it: each field padded to 4 bytes; addresses and ports
/// in network order.
pub fn key_bytes(key: &MapKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    let (protocol, port) = match key {
        MapKey::Ip(k) => {
            out.extend_from_slice(&k.ip.octets());
            (k.protocol, k.port)
        }
        MapKey::Port(k) => (k.protocol, k.port),
    };
    out.extend_from_slice(&[protocol_number(protocol), 0, 0, 0]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

impl Encoder {
    fn msg(&mut self, ty: MsgType, flags: u16) {
        self.seq = self.seq.wrapping_add(1);
        self.op_of.push(self.op);
        self.w
            .begin(ty.wire(), NLM_F_REQUEST | flags, self.seq, NFPROTO_IPV4, 0);
    }

    fn next_set_id(&mut self) -> u32 {
        self.set_id += 1;
        self.set_id
    }

    fn chain_msg(&mut self, ty: MsgType, flags: u16, name: &str) {
        self.msg(ty, flags);
        self.w.str(NFTA_CHAIN_TABLE, TABLE);
        self.w.str(NFTA_CHAIN_NAME, name);
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::AddTable | Op::DeleteTable => {
                let (ty, flags) = if *op == Op::AddTable {
                    (MsgType::NewTable, NLM_F_CREATE)
                } else {
                    (MsgType::DelTable, 0)
                };
                self.msg(ty, flags);
                self.w.str(NFTA_TABLE_NAME, TABLE);
                if *op == Op::AddTable {
                    self.w.u32(NFTA_TABLE_FLAGS, 0);
                }
                self.w.end();
            }
            Op::AddMap(map) => {
                let (key_type, key_len) = if map.keyed_by_ip() {
                    (
                        (TYPE_IPADDR << 12) | (TYPE_INET_PROTOCOL << 6) | TYPE_INET_SERVICE,
                        12,
                    )
                } else {
                    ((TYPE_INET_PROTOCOL << 6) | TYPE_INET_SERVICE, 8)
                };
                let id = self.next_set_id();
                self.msg(MsgType::NewSet, NLM_F_CREATE);
                self.w.str(NFTA_SET_TABLE, TABLE);
                self.w.str(NFTA_SET_NAME, map.as_str());
                self.w.u32(NFTA_SET_FLAGS, NFT_SET_MAP);
                self.w.u32(NFTA_SET_KEY_TYPE, key_type);
                self.w.u32(NFTA_SET_KEY_LEN, key_len);
                self.w.u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
                self.w.u32(NFTA_SET_DATA_LEN, 0);
                self.w.u32(NFTA_SET_ID, id);
                self.w.end();
            }
            Op::AddBaseChain {
                name,
                nat,
                hook,
                priority,
            } => {
                self.chain_msg(MsgType::NewChain, NLM_F_CREATE, name);
                let h = self.w.open(NFTA_CHAIN_HOOK);
                self.w.u32(NFTA_HOOK_HOOKNUM, hook_number(*hook));
                self.w.u32(NFTA_HOOK_PRIORITY, *priority as u32);
                self.w.close(h);
                self.w.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
                self.w
                    .str(NFTA_CHAIN_TYPE, if *nat { "nat" } else { "filter" });
                self.w.end();
            }
            Op::AddChain(name) => {
                self.chain_msg(MsgType::NewChain, NLM_F_CREATE, name);
                self.w.end();
            }
            Op::DeleteChain(name) => {
                self.chain_msg(MsgType::DelChain, 0, name);
                self.w.end();
            }
            Op::FlushChain(name) => {
                // DELRULE without a handle removes every rule of the chain.
                self.msg(MsgType::DelRule, 0);
                self.w.str(NFTA_RULE_TABLE, TABLE);
                self.w.str(NFTA_RULE_CHAIN, name);
                self.w.end();
            }
            Op::AddRule { chain, rule } => self.rule(chain, rule),
            Op::AddSet { name, timeout } => {
                let id = self.next_set_id();
                self.msg(MsgType::NewSet, NLM_F_CREATE);
                self.w.str(NFTA_SET_TABLE, TABLE);
                self.w.str(NFTA_SET_NAME, name);
                // EVAL ("dynamic"): the packet path adds to it (`update @set`).
                self.w.u32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL);
                self.w.u32(NFTA_SET_KEY_TYPE, TYPE_IPADDR);
                self.w.u32(NFTA_SET_KEY_LEN, 4);
                self.w.u32(NFTA_SET_ID, id);
                self.w
                    .u64(NFTA_SET_TIMEOUT, u64::from(*timeout).saturating_mul(1000));
                self.w
                    .bytes(NFTA_SET_USERDATA, &key_byteorder_udata(BYTEORDER_BIG));
                self.w.end();
            }
            Op::DeleteSet(name) | Op::DeleteMap(name) => {
                self.msg(MsgType::DelSet, 0);
                self.w.str(NFTA_SET_TABLE, TABLE);
                self.w.str(NFTA_SET_NAME, name);
                self.w.end();
            }
            Op::AddElements { map, elements } => {
                let items: Vec<(Vec<u8>, Data)> = elements
                    .iter()
                    .map(|(k, c)| (key_bytes(k), Data::Goto(c.as_str())))
                    .collect();
                self.elements(MsgType::NewSetElem, map.as_str(), None, &items);
            }
            Op::DeleteElements { map, keys } => {
                let items: Vec<(Vec<u8>, Data)> =
                    keys.iter().map(|k| (key_bytes(k), Data::None)).collect();
                self.elements(MsgType::DelSetElem, map.as_str(), None, &items);
            }
            Op::AddEndpointMap { name, protocol } => {
                let id = self.next_set_id();
                self.msg(MsgType::NewSet, NLM_F_CREATE);
                self.w.str(NFTA_SET_TABLE, TABLE);
                self.w.str(NFTA_SET_NAME, name);
                self.w.u32(NFTA_SET_FLAGS, NFT_SET_INTERVAL | NFT_SET_MAP);
                self.w.u32(NFTA_SET_KEY_TYPE, TYPE_INTEGER);
                self.w.u32(NFTA_SET_KEY_LEN, 4);
                self.w
                    .u32(NFTA_SET_DATA_TYPE, (TYPE_IPADDR << 6) | TYPE_INET_SERVICE);
                self.w.u32(NFTA_SET_DATA_LEN, 8);
                self.w.u32(NFTA_SET_ID, id);
                self.w
                    .bytes(NFTA_SET_USERDATA, &endpoint_map_udata(*protocol));
                self.w.end();
            }
            Op::AddIpSet(name) => {
                let id = self.next_set_id();
                self.msg(MsgType::NewSet, NLM_F_CREATE);
                self.w.str(NFTA_SET_TABLE, TABLE);
                self.w.str(NFTA_SET_NAME, name);
                self.w.u32(NFTA_SET_FLAGS, 0);
                self.w.u32(NFTA_SET_KEY_TYPE, TYPE_IPADDR);
                self.w.u32(NFTA_SET_KEY_LEN, 4);
                self.w.u32(NFTA_SET_ID, id);
                self.w
                    .bytes(NFTA_SET_USERDATA, &key_byteorder_udata(BYTEORDER_BIG));
                self.w.end();
            }
            Op::FlushSet(name) | Op::FlushMap(name) => {
                // DELSETELEM without elements removes them all (nft names the set first).
                self.msg(MsgType::DelSetElem, 0);
                self.w.str(NFTA_SET_ELEM_LIST_SET, name);
                self.w.str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
                self.w.end();
            }
            Op::AddEndpointElements { map, endpoints } => {
                let items = endpoint_elements(endpoints);
                self.elements(MsgType::NewSetElem, map, None, &items);
            }
            Op::AddIpElements { set, ips } => {
                let items: Vec<(Vec<u8>, Data)> = ips
                    .iter()
                    .map(|ip| (ip.octets().to_vec(), Data::None))
                    .collect();
                self.elements(MsgType::NewSetElem, set, None, &items);
            }
        }
    }

    /// Elements of a set by name (or by id, for a set of this batch), split over messages
    /// so that no element list outgrows its 16-bit length.
    fn elements(&mut self, ty: MsgType, set: &str, set_id: Option<u32>, items: &[(Vec<u8>, Data)]) {
        let mut rest = items;
        while !rest.is_empty() {
            let flags = if ty == MsgType::NewSetElem {
                NLM_F_CREATE
            } else {
                0
            };
            self.msg(ty, flags);
            self.w.str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
            self.w.str(NFTA_SET_ELEM_LIST_SET, set);
            if let Some(id) = set_id {
                self.w.u32(NFTA_SET_ELEM_LIST_SET_ID, id);
            }
            let list = self.w.open(NFTA_SET_ELEM_LIST_ELEMENTS);
            let start = self.w.buf.len();
            let mut written = 0;
            for (key, data) in rest {
                // An interval's start and end stay in one message (nft sends them so).
                if self.w.buf.len() - start > ELEMENTS_PER_MESSAGE
                    && !matches!(data, Data::IntervalEnd)
                {
                    break;
                }
                // libnftnl numbers the list's items from 1 (the kernel reads any type).
                let elem = self.w.open((written % 0x3fff + 1) as u16);
                if let Data::IntervalEnd = data {
                    self.w.u32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                }
                let k = self.w.open(NFTA_SET_ELEM_KEY);
                self.w.bytes(NFTA_DATA_VALUE, key);
                self.w.close(k);
                match data {
                    Data::Goto(chain) => {
                        let d = self.w.open(NFTA_SET_ELEM_DATA);
                        self.verdict(NFT_GOTO, Some(chain));
                        self.w.close(d);
                    }
                    Data::Value(value) => {
                        let d = self.w.open(NFTA_SET_ELEM_DATA);
                        self.w.bytes(NFTA_DATA_VALUE, value);
                        self.w.close(d);
                    }
                    Data::None | Data::IntervalEnd => {}
                }
                self.w.close(elem);
                written += 1;
            }
            self.w.close(list);
            self.w.end();
            rest = &rest[written..];
        }
    }

    /// `NFTA_DATA_VERDICT { code, chain }`.
    fn verdict(&mut self, code: i32, chain: Option<&str>) {
        let v = self.w.open(NFTA_DATA_VERDICT);
        self.w.u32(NFTA_VERDICT_CODE, code as u32);
        if let Some(c) = chain {
            self.w.str(NFTA_VERDICT_CHAIN, c);
        }
        self.w.close(v);
    }

    fn rule(&mut self, chain: &str, rule: &Rule) {
        // The anonymous verdict map of `numgen ... vmap { }` goes first, in this op.
        let map_id = match rule {
            Rule::Random(targets) => Some(self.anonymous_map(targets)),
            _ => None,
        };
        self.msg(MsgType::NewRule, NLM_F_CREATE | NLM_F_APPEND);
        self.w.str(NFTA_RULE_TABLE, TABLE);
        self.w.str(NFTA_RULE_CHAIN, chain);
        let list = self.w.open(NFTA_RULE_EXPRESSIONS);
        let mut x = Exprs { w: &mut self.w };
        x.rule(rule, map_id);
        self.w.close(list);
        if let Rule::Marker(comment) = rule {
            self.w.bytes(NFTA_RULE_USERDATA, &comment_udata(comment));
        }
        self.w.end();
    }

    /// `{ 0 : goto a, 1 : goto b, ... }` as an anonymous constant map; returns its id.
    fn anonymous_map(&mut self, targets: &[String]) -> u32 {
        let id = self.next_set_id();
        self.msg(MsgType::NewSet, NLM_F_CREATE);
        self.w.str(NFTA_SET_TABLE, TABLE);
        self.w.str(NFTA_SET_NAME, ANONYMOUS_MAP);
        self.w.u32(
            NFTA_SET_FLAGS,
            NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_MAP,
        );
        self.w.u32(NFTA_SET_KEY_TYPE, TYPE_INTEGER);
        self.w.u32(NFTA_SET_KEY_LEN, 4);
        self.w.u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
        self.w.u32(NFTA_SET_DATA_LEN, 0);
        self.w.u32(NFTA_SET_ID, id);
        // Tells `nft list` that the keys (numgen's results) are in host order.
        self.w
            .bytes(NFTA_SET_USERDATA, &key_byteorder_udata(BYTEORDER_HOST));
        let desc = self.w.open(NFTA_SET_DESC);
        self.w.u32(NFTA_SET_DESC_SIZE, targets.len() as u32);
        self.w.close(desc);
        self.w.end();
        let items: Vec<(Vec<u8>, Data)> = targets
            .iter()
            .enumerate()
            .map(|(i, c)| ((i as u32).to_ne_bytes().to_vec(), Data::Goto(c.as_str())))
            .collect();
        self.elements(MsgType::NewSetElem, ANONYMOUS_MAP, Some(id), &items);
        id
    }
}

/// What an element carries besides its key.
enum Data<'a> {
    None,
    /// A verdict map's `goto <chain>`.
    Goto(&'a str),
    /// A data map's value.
    Value(Vec<u8>),
    /// The element ends an interval (its key is one past the interval's last value).
    IntervalEnd,
}

/// An endpoint map's elements as nft sends them: for each interval `[a, b]`, the key `a`
/// with the endpoint (`ip . port`, the port padded to 4 bytes), then the key `b + 1`
/// flagged as an interval end (also after the last one: the key is a 32-bit integer, so
/// 65536 fits). Keys are big-endian: the rule turns numgen's result with `byteorder hton`.
fn endpoint_elements(endpoints: &[Endpoint]) -> Vec<(Vec<u8>, Data<'static>)> {
    let set = EndpointSet {
        protocol: Protocol::Tcp,
        endpoints: endpoints.to_vec(),
    };
    let mut out = Vec::with_capacity(endpoints.len() * 2);
    for ((start, end), ep) in set.intervals() {
        let mut value = ep.ip.octets().to_vec();
        value.extend_from_slice(&ep.port.to_be_bytes());
        value.extend_from_slice(&[0, 0]);
        out.push((start.to_be_bytes().to_vec(), Data::Value(value)));
        out.push(((end + 1).to_be_bytes().to_vec(), Data::IntervalEnd));
    }
    out
}

/// The user data nft 1.0.6 writes for `typeof numgen random mod 65536 : ip daddr . tcp
/// dport` (copied from `nft --debug=mnl`), which is what lets `nft list` print the map's
/// `typeof` (its key is a plain integer, which has no `type` spelling). The byte at
/// [`TYPEOF_DPORT_PROTOCOL`] names the dport's protocol header (tcp 8, udp 6, sctp 10).
const ENDPOINT_MAP_UDATA: [u8; 100] = [
    0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x1a, 0x00, 0x04,
    0x17, 0x00, 0x00, 0x00, 0x01, 0x12, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00,
    0x01, 0x00, 0x02, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0x34, 0x00, 0x04, 0x0d, 0x00, 0x00, 0x00,
    0x01, 0x2c, 0x00, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01, 0x0c, 0x00, 0x04, 0x0c, 0x00,
    0x00, 0x00, 0x01, 0x04, 0x0c, 0x00, 0x00, 0x00, 0x01, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00,
    0x01, 0x0c, 0x00, 0x04, 0x08, 0x00, 0x00, 0x00, 0x01, 0x04, 0x02, 0x00, 0x00, 0x00, 0x06, 0x04,
    0x00, 0x00, 0x00, 0x00,
];
const TYPEOF_DPORT_PROTOCOL: usize = 84;

/// [`ENDPOINT_MAP_UDATA`] for `protocol`'s dport.
pub fn endpoint_map_udata(protocol: Protocol) -> Vec<u8> {
    let mut out = ENDPOINT_MAP_UDATA.to_vec();
    out[TYPEOF_DPORT_PROTOCOL] = match protocol {
        Protocol::Tcp => 8,
        Protocol::Udp => 6,
        Protocol::Sctp => 10,
    };
    out
}

/// The kernel replaces `%d` with the first free number, as for nft's own anonymous maps.
const ANONYMOUS_MAP: &str = "__map%d";

fn hook_number(hook: Hook) -> u32 {
    match hook {
        Hook::Prerouting => 0,
        Hook::Input => 1,
        Hook::Forward => 2,
        Hook::Output => 3,
        Hook::Postrouting => 4,
    }
}

/// A rule comment in libnftnl's user-data format (tag, length, NUL-terminated text), which
/// is what `nft list` shows as `comment "..."`. Cut at 254 bytes (the length is one byte).
pub fn comment_udata(comment: &str) -> Vec<u8> {
    let mut text: Vec<u8> = comment.as_bytes().iter().copied().take(254).collect();
    text.push(0);
    let mut out = vec![UDATA_RULE_COMMENT, text.len() as u8];
    out.extend_from_slice(&text);
    out
}

/// The comment in a rule's user data, if it has one.
pub fn comment_of(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (tag, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if tag == UDATA_RULE_COMMENT {
            let text = value.split(|b| *b == 0).next().unwrap_or(value);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

/// nft's byte orders (its `enum byteorder`), as set user data records them.
const BYTEORDER_HOST: u32 = 1;
const BYTEORDER_BIG: u32 = 2;
/// `NFTNL_UDATA_SET_KEYBYTEORDER`.
const UDATA_SET_KEYBYTEORDER: u8 = 0;

/// A set's user data saying in which byte order its keys are (only `nft list` reads it).
fn key_byteorder_udata(order: u32) -> Vec<u8> {
    let mut out = vec![UDATA_SET_KEYBYTEORDER, 4];
    out.extend_from_slice(&order.to_ne_bytes());
    out
}

/// The expressions of one rule, written into an open `NFTA_RULE_EXPRESSIONS`.
struct Exprs<'a> {
    w: &'a mut Writer,
}

impl Exprs<'_> {
    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Writer)) {
        let elem = self.w.open(NFTA_LIST_ELEM);
        self.w.str(NFTA_EXPR_NAME, name);
        let data = self.w.open(NFTA_EXPR_DATA);
        body(self.w);
        self.w.close(data);
        self.w.close(elem);
    }

    fn payload(&mut self, dreg: u32, base: u32, offset: u32, len: u32) {
        self.expr("payload", |w| {
            w.u32(1, dreg); // NFTA_PAYLOAD_DREG
            w.u32(2, base); // NFTA_PAYLOAD_BASE
            w.u32(3, offset); // NFTA_PAYLOAD_OFFSET
            w.u32(4, len); // NFTA_PAYLOAD_LEN
        });
    }

    fn meta_load(&mut self, key: u32, dreg: u32) {
        self.expr("meta", |w| {
            w.u32(2, key); // NFTA_META_KEY
            w.u32(1, dreg); // NFTA_META_DREG
        });
    }

    fn cmp(&mut self, op: u32, value: &[u8]) {
        self.expr("cmp", |w| {
            w.u32(1, REG_1); // NFTA_CMP_SREG
            w.u32(2, op); // NFTA_CMP_OP
            let d = w.open(3); // NFTA_CMP_DATA
            w.bytes(NFTA_DATA_VALUE, value);
            w.close(d);
        });
    }

    /// `reg1 = (reg1 & mask) ^ xor` over `mask.len()` bytes. nft names the (default)
    /// boolean operation only for `meta mark` arithmetic; `explicit` does the same.
    fn bitwise(&mut self, mask: &[u8], xor: &[u8], explicit: bool) {
        self.expr("bitwise", |w| {
            w.u32(1, REG_1); // NFTA_BITWISE_SREG
            w.u32(2, REG_1); // NFTA_BITWISE_DREG
            if explicit {
                w.u32(6, 0); // NFTA_BITWISE_OP: NFT_BITWISE_BOOL
            }
            w.u32(3, mask.len() as u32); // NFTA_BITWISE_LEN
            let m = w.open(4); // NFTA_BITWISE_MASK
            w.bytes(NFTA_DATA_VALUE, mask);
            w.close(m);
            let x = w.open(5); // NFTA_BITWISE_XOR
            w.bytes(NFTA_DATA_VALUE, xor);
            w.close(x);
        });
    }

    fn immediate_verdict(&mut self, code: i32, chain: Option<&str>) {
        self.expr("immediate", |w| {
            w.u32(1, REG_VERDICT); // NFTA_IMMEDIATE_DREG
            let d = w.open(2); // NFTA_IMMEDIATE_DATA
            let v = w.open(NFTA_DATA_VERDICT);
            w.u32(NFTA_VERDICT_CODE, code as u32);
            if let Some(c) = chain {
                w.str(NFTA_VERDICT_CHAIN, c);
            }
            w.close(v);
            w.close(d);
        });
    }

    fn immediate_value(&mut self, dreg: u32, value: &[u8]) {
        self.expr("immediate", |w| {
            w.u32(1, dreg);
            let d = w.open(2);
            w.bytes(NFTA_DATA_VALUE, value);
            w.close(d);
        });
    }

    /// `lookup` of register 1 in a set by name (or id, for this batch's anonymous map);
    /// with `vmap` the found verdict is the rule's.
    fn lookup(&mut self, set: &str, set_id: Option<u32>, vmap: bool) {
        self.expr("lookup", |w| {
            w.u32(2, REG_1); // NFTA_LOOKUP_SREG
            if vmap {
                w.u32(3, REG_VERDICT); // NFTA_LOOKUP_DREG
            }
            w.str(1, set); // NFTA_LOOKUP_SET
            if let Some(id) = set_id {
                w.u32(4, id); // NFTA_LOOKUP_SET_ID
            }
        });
    }

    /// `ip saddr|daddr <addr>/<len>` compared with `op`, as nft does it: a whole-byte
    /// prefix loads only its bytes (`/16`: 2); any other loads the address and masks it.
    fn prefix(&mut self, offset: u32, addr: Ipv4Addr, len: u8, op: u32) {
        let len = len.min(32);
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        let value = (u32::from(addr) & mask).to_be_bytes();
        if len.is_multiple_of(8) && len > 0 {
            let bytes = usize::from(len / 8);
            self.payload(REG_1, PAYLOAD_NETWORK, offset, bytes as u32);
            self.cmp(op, &value[..bytes]);
        } else {
            self.payload(REG_1, PAYLOAD_NETWORK, offset, 4);
            self.bitwise(&mask.to_be_bytes(), &[0; 4], false);
            self.cmp(op, &value);
        }
    }

    fn l4proto_is(&mut self, protocol: Protocol) {
        self.meta_load(META_L4PROTO, REG_1);
        self.cmp(CMP_EQ, &[protocol_number(protocol)]);
    }

    fn mark_bitwise(&mut self, mask: u32, xor: u32) {
        self.meta_load(META_MARK, REG_1);
        self.bitwise(&mask.to_ne_bytes(), &xor.to_ne_bytes(), true);
    }

    fn reject(&mut self, ty: u32, code: u8) {
        self.expr("reject", |w| {
            w.u32(1, ty); // NFTA_REJECT_TYPE
            w.bytes(2, &[code]); // NFTA_REJECT_ICMP_CODE
        });
    }

    fn rule(&mut self, rule: &Rule, map_id: Option<u32>) {
        match rule {
            Rule::Jump(c) => self.immediate_verdict(NFT_JUMP, Some(c)),
            Rule::Goto(c) => self.immediate_verdict(NFT_GOTO, Some(c)),
            Rule::NewJump(c) => {
                self.expr("ct", |w| {
                    w.u32(2, CT_STATE); // NFTA_CT_KEY
                    w.u32(1, REG_1); // NFTA_CT_DREG
                });
                self.bitwise(&CT_STATE_NEW.to_ne_bytes(), &[0; 4], false);
                self.cmp(CMP_NEQ, &[0; 4]);
                self.immediate_verdict(NFT_JUMP, Some(c));
            }
            Rule::MarkOutside { cidr } => {
                self.prefix(IP_SADDR, cidr.0, cidr.1, CMP_NEQ);
                self.immediate_verdict(NFT_JUMP, Some(MARK_CHAIN));
            }
            Rule::Hairpin { ip } => {
                self.payload(REG_1, PAYLOAD_NETWORK, IP_SADDR, 4);
                self.cmp(CMP_EQ, &ip.octets());
                self.immediate_verdict(NFT_JUMP, Some(MARK_CHAIN));
            }
            Rule::AffinityGoto { set, chain } => {
                self.payload(REG_1, PAYLOAD_NETWORK, IP_SADDR, 4);
                self.lookup(set, None, false);
                self.immediate_verdict(NFT_GOTO, Some(chain));
            }
            Rule::AffinityUpdate { set } => {
                self.payload(REG_1, PAYLOAD_NETWORK, IP_SADDR, 4);
                self.expr("dynset", |w| {
                    w.u32(4, REG_1); // NFTA_DYNSET_SREG_KEY
                    w.u32(3, NFT_DYNSET_OP_UPDATE); // NFTA_DYNSET_OP
                    w.str(1, set); // NFTA_DYNSET_SET_NAME
                });
            }
            Rule::Random(targets) => {
                self.expr("numgen", |w| {
                    w.u32(1, REG_1); // NFTA_NG_DREG
                    w.u32(2, targets.len() as u32); // NFTA_NG_MODULUS
                    w.u32(3, NFT_NG_RANDOM); // NFTA_NG_TYPE
                    w.u32(4, 0); // NFTA_NG_OFFSET
                });
                self.lookup(ANONYMOUS_MAP, map_id, true);
            }
            Rule::HairpinSet { set } => {
                self.payload(REG_1, PAYLOAD_NETWORK, IP_SADDR, 4);
                self.lookup(set, None, false);
                self.immediate_verdict(NFT_JUMP, Some(MARK_CHAIN));
            }
            Rule::DnatMap { protocol, map } => {
                self.l4proto_is(*protocol);
                self.expr("numgen", |w| {
                    w.u32(1, REG_1); // NFTA_NG_DREG
                    w.u32(2, RANDOM_RANGE); // NFTA_NG_MODULUS
                    w.u32(3, NFT_NG_RANDOM); // NFTA_NG_TYPE
                    w.u32(4, 0); // NFTA_NG_OFFSET
                });
                self.expr("byteorder", |w| {
                    w.u32(1, REG_1); // NFTA_BYTEORDER_SREG
                    w.u32(2, REG_1); // NFTA_BYTEORDER_DREG
                    w.u32(3, NFT_BYTEORDER_HTON); // NFTA_BYTEORDER_OP
                    w.u32(4, 4); // NFTA_BYTEORDER_LEN
                    w.u32(5, 4); // NFTA_BYTEORDER_SIZE
                });
                self.expr("lookup", |w| {
                    w.u32(2, REG_1); // NFTA_LOOKUP_SREG
                    w.u32(3, REG_1); // NFTA_LOOKUP_DREG
                    w.str(1, map); // NFTA_LOOKUP_SET
                });
                // As nft sends it: the kernel takes max = min and sets the range flags
                // (`map ips`, `proto specified`) from the registers given.
                self.expr("nat", |w| {
                    w.u32(1, NFT_NAT_DNAT); // NFTA_NAT_TYPE
                    w.u32(2, u32::from(NFPROTO_IPV4)); // NFTA_NAT_FAMILY
                    w.u32(3, REG_1); // NFTA_NAT_REG_ADDR_MIN: the address
                    w.u32(5, REG32_01); // NFTA_NAT_REG_PROTO_MIN: the port after it
                });
            }
            Rule::Dnat { protocol, ip, port } => {
                self.l4proto_is(*protocol);
                self.immediate_value(REG_1, &ip.octets());
                self.immediate_value(2, &port.to_be_bytes());
                self.expr("nat", |w| {
                    w.u32(1, NFT_NAT_DNAT); // NFTA_NAT_TYPE
                    w.u32(2, u32::from(NFPROTO_IPV4)); // NFTA_NAT_FAMILY
                    w.u32(3, REG_1); // NFTA_NAT_REG_ADDR_MIN
                    w.u32(5, 2); // NFTA_NAT_REG_PROTO_MIN
                    w.u32(7, NF_NAT_RANGE_PROTO_SPECIFIED); // NFTA_NAT_FLAGS
                });
            }
            Rule::DispatchIp(map) => {
                self.payload(REG_1, PAYLOAD_NETWORK, IP_DADDR, 4);
                self.meta_load(META_L4PROTO, REG32_01);
                self.payload(REG32_02, PAYLOAD_TRANSPORT, TH_DPORT, 2);
                self.lookup(map_name(*map), None, true);
            }
            Rule::DispatchLocalPort { map, localhost } => {
                self.expr("fib", |w| {
                    w.u32(3, NFTA_FIB_F_DADDR); // NFTA_FIB_FLAGS
                    w.u32(2, NFT_FIB_RESULT_ADDRTYPE); // NFTA_FIB_RESULT
                    w.u32(1, REG_1); // NFTA_FIB_DREG
                });
                self.cmp(CMP_EQ, &RTN_LOCAL.to_ne_bytes());
                if !localhost {
                    self.prefix(IP_DADDR, Ipv4Addr::new(127, 0, 0, 0), 8, CMP_NEQ);
                }
                self.meta_load(META_L4PROTO, REG_1);
                self.payload(REG32_01, PAYLOAD_TRANSPORT, TH_DPORT, 2);
                self.lookup(map_name(*map), None, true);
            }
            Rule::SetMark => {
                self.mark_bitwise(!MASQUERADE_MARK, MASQUERADE_MARK);
                self.meta_set_mark();
            }
            Rule::ReturnUnmarked => {
                self.mark_bitwise(MASQUERADE_MARK, 0);
                self.cmp(CMP_EQ, &[0; 4]);
                self.immediate_verdict(NFT_RETURN, None);
            }
            Rule::ClearMark => {
                self.mark_bitwise(u32::MAX, MASQUERADE_MARK);
                self.meta_set_mark();
            }
            Rule::Masquerade => self.expr("masq", |w| {
                w.u32(1, NF_NAT_RANGE_PROTO_RANDOM_FULLY); // NFTA_MASQ_FLAGS
            }),
            Rule::RejectTcp => {
                self.l4proto_is(Protocol::Tcp);
                self.reject(NFT_REJECT_TCP_RST, 0);
            }
            Rule::Reject => self.reject(NFT_REJECT_ICMP_UNREACH, ICMP_PORT_UNREACH),
            Rule::Marker(_) => self.immediate_verdict(NFT_RETURN, None),
        }
    }

    fn meta_set_mark(&mut self) {
        self.expr("meta", |w| {
            w.u32(2, META_MARK); // NFTA_META_KEY
            w.u32(3, REG_1); // NFTA_META_SREG
        });
    }
}

fn map_name(map: MapName) -> &'static str {
    map.as_str()
}
