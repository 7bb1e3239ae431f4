//! The encoding, byte for byte against what nft 1.0.6 sends for the same commands
//! (`nft --debug=mnl`), and the reading of the kernel's answers.

use std::net::Ipv4Addr;

use super::super::diff::Op;
use super::super::model::{Endpoint, IpKey, MapKey, MapName, PortKey, Protocol, Rule};
use super::encode::{Batch, comment_of, comment_udata, encode, key_bytes};
use super::wire::{self, MsgType, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END};
use super::{describe, marker_in};

fn rule(rule: Rule) -> Op {
    Op::AddRule {
        chain: "svc-b".into(),
        rule,
    }
}

fn ip_key() -> MapKey {
    MapKey::Ip(IpKey {
        ip: Ipv4Addr::new(10, 96, 0, 2),
        protocol: Protocol::Udp,
        port: 53,
    })
}

/// The messages of a batch between begin and end: type and attributes (after `nfgenmsg`).
fn messages(batch: &Batch) -> Vec<(u16, Vec<u8>)> {
    let all: Vec<(u16, Vec<u8>)> = wire::replies(&batch.bytes)
        .map(|m| (m.ty, m.payload[4..].to_vec()))
        .collect();
    assert_eq!(all.first().map(|m| m.0), Some(NFNL_MSG_BATCH_BEGIN));
    assert_eq!(all.last().map(|m| m.0), Some(NFNL_MSG_BATCH_END));
    all[1..all.len() - 1].to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

include!("nft_reference.rs");

#[test]
fn every_expression_encodes_as_nft_encodes_it() {
    for (name, op, expected) in nft_reference() {
        let batch = encode(std::slice::from_ref(&op), 100);
        let msgs = messages(&batch);
        assert_eq!(msgs.len(), 1, "{name}: one message");
        assert_eq!(hex(&msgs[0].1), expected, "{name}: {op:?}");
    }
}

#[test]
fn random_choice_is_an_anonymous_map_its_elements_and_the_rule_in_one_op() {
    let op = rule(Rule::Random(vec!["sep-a".into(), "rej".into()]));
    let batch = encode(std::slice::from_ref(&op), 100);
    let msgs = messages(&batch);
    let types: Vec<u16> = msgs.iter().map(|m| m.0).collect();
    assert_eq!(
        types,
        vec![
            MsgType::NewSet.wire(),
            MsgType::NewSetElem.wire(),
            MsgType::NewRule.wire()
        ]
    );
    assert_eq!(hex(&msgs[1].1), NFT_RANDOM_ELEMENTS);
    assert_eq!(hex(&msgs[2].1), NFT_RANDOM_RULE);
    let set: Vec<(u16, &[u8])> = wire::attrs(&msgs[0].1).collect();
    let get = |ty: u16| set.iter().find(|a| a.0 == ty).map(|a| a.1.to_vec());
    assert_eq!(get(2), Some(b"__map%d\0".to_vec()), "name");
    assert_eq!(
        get(3),
        Some(0x0bu32.to_be_bytes().to_vec()),
        "anonymous|constant|map"
    );
    assert_eq!(
        get(4),
        Some(4u32.to_be_bytes().to_vec()),
        "key type integer"
    );
    assert_eq!(
        get(6),
        Some(0xffff_ff00u32.to_be_bytes().to_vec()),
        "verdicts"
    );
    assert_eq!(get(10), Some(1u32.to_be_bytes().to_vec()), "set id");
    // All three messages report errors as the same op.
    assert_eq!(batch.op_at(101), Some(0));
    assert_eq!(batch.op_at(103), Some(0));
    assert_eq!(batch.op_at(100), None, "BATCH_BEGIN");
    assert_eq!(batch.op_at(104), None, "BATCH_END");
}

#[test]
fn sequence_numbers_map_back_to_their_operation() {
    let ops = vec![
        Op::AddChain("a".into()),
        rule(Rule::Random(vec!["x".into()])),
        Op::FlushChain("a".into()),
    ];
    let batch = encode(&ops, 7);
    assert_eq!(batch.op_of, vec![0, 1, 1, 1, 2]);
    assert_eq!(batch.op_at(8), Some(0));
    assert_eq!(batch.op_at(12), Some(2));
    assert_eq!(batch.op_at(6), None);
    assert_eq!(describe(&ops[2]), "flush chain ip tend-lb a");
}

#[test]
fn map_keys_pad_each_field_to_four_bytes() {
    assert_eq!(
        key_bytes(&ip_key()),
        vec![10, 96, 0, 2, 17, 0, 0, 0, 0, 53, 0, 0]
    );
    let port = MapKey::Port(PortKey {
        protocol: Protocol::Tcp,
        port: 30080,
    });
    assert_eq!(key_bytes(&port), vec![6, 0, 0, 0, 0x75, 0x80, 0, 0]);
}

#[test]
fn long_element_lists_are_split_over_messages_of_one_op() {
    let elements: Vec<(MapKey, String)> = (0..5000u32)
        .map(|i| {
            (
                MapKey::Ip(IpKey {
                    ip: Ipv4Addr::from(0x0a60_0000 + i),
                    protocol: Protocol::Tcp,
                    port: 80,
                }),
                format!("svc-{i:016x}"),
            )
        })
        .collect();
    let batch = encode(
        &[Op::AddElements {
            map: MapName::ServiceIps,
            elements,
        }],
        0,
    );
    let msgs = messages(&batch);
    assert!(msgs.len() > 1, "{} messages", msgs.len());
    let mut total = 0;
    for (_, attrs) in &msgs {
        let list = wire::attrs(attrs)
            .find(|a| a.0 == 3)
            .map(|a| a.1)
            .unwrap_or_default();
        // The nested length fits 16 bits, and every element is whole.
        assert!(list.len() < 65_000, "{}", list.len());
        total += wire::attrs(list).count();
    }
    assert_eq!(total, 5000);
    assert!(batch.op_of.iter().all(|op| *op == 0));
}

#[test]
fn the_marker_comment_is_nfts_user_data_and_is_read_back() {
    let udata = comment_udata("tend-lb 77 3");
    assert_eq!(udata[..2], [0, 13]);
    assert_eq!(comment_of(&udata), Some("tend-lb 77 3".into()));
    assert_eq!(comment_of(&[1, 2, 0, 0]), None, "another tag");
    assert_eq!(comment_of(&[0, 40, b'x']), None, "truncated");
    // A NEWRULE of the marker chain, as a dump returns it (nfgenmsg, then attributes).
    let batch = encode(
        &[Op::AddRule {
            chain: "marker".into(),
            rule: Rule::Marker("tend-lb 1 2".into()),
        }],
        0,
    );
    let payload = wire::replies(&batch.bytes)
        .nth(1)
        .map(|m| m.payload.to_vec())
        .unwrap_or_default();
    assert_eq!(marker_in(&payload), Some("tend-lb 1 2".into()));
    // The same rule in another chain is not the marker.
    let batch = encode(&[rule(Rule::Marker("tend-lb 1 2".into()))], 0);
    let payload = wire::replies(&batch.bytes)
        .nth(1)
        .map(|m| m.payload.to_vec())
        .unwrap_or_default();
    assert_eq!(marker_in(&payload), None);
    assert_eq!(marker_in(&[]), None);
}
