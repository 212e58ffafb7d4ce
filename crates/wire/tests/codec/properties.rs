//! Basic properties: full decode/encode, the allocation-light summary, headers only.

use bytes::Bytes;
use proptest::prelude::*;
use wire::properties::{PropertiesSummary, headers_of, summarize};
use wire::reply::{FRAME_ERROR, SYNTAX_ERROR};
use wire::{BasicProperties, FieldTable, FieldValue};

use crate::{sample_table, strategies};

fn full() -> BasicProperties {
    BasicProperties {
        content_type: Some("application/json".into()),
        content_encoding: Some("gzip".into()),
        headers: Some(sample_table()),
        delivery_mode: Some(2),
        priority: Some(9),
        correlation_id: Some("corr".into()),
        reply_to: Some("amq.rabbitmq.reply-to".into()),
        expiration: Some("60000".into()),
        message_id: Some("id-1".into()),
        timestamp: Some(1_700_000_000),
        kind: Some("order.created".into()),
        user_id: Some("guest".into()),
        app_id: Some("shop".into()),
        cluster_id: Some("c1".into()),
    }
}

#[test]
fn flags_follow_the_spec_bit_order() {
    let p = BasicProperties { content_type: Some("a".into()), ..Default::default() };
    assert_eq!(p.to_raw(), vec![0x80, 0x00, 1, b'a']);
    let p = BasicProperties { cluster_id: Some(String::new()), ..Default::default() };
    assert_eq!(p.to_raw(), vec![0x00, 0x04, 0]);
    let p = BasicProperties { delivery_mode: Some(2), priority: Some(1), ..Default::default() };
    assert_eq!(p.to_raw(), vec![0x18, 0x00, 2, 1]);
    assert_eq!(BasicProperties::default().to_raw(), vec![0, 0]);
}

#[test]
fn full_properties_round_trip() {
    let p = full();
    let raw = p.to_raw();
    assert_eq!(BasicProperties::decode(&raw), Ok(p.clone()));
    assert_eq!(
        summarize(&raw),
        Ok(PropertiesSummary {
            delivery_mode: Some(2),
            priority: Some(9),
            expiration: Some("60000".into()),
            has_headers: true,
            reply_to_direct: true,
        })
    );
    assert_eq!(headers_of(&raw), Ok(Some(sample_table())));
}

#[test]
fn empty_headers_table_is_not_absent_headers() {
    let p = BasicProperties { headers: Some(FieldTable::new()), ..Default::default() };
    let raw = p.to_raw();
    assert_eq!(BasicProperties::decode(&raw), Ok(p));
    assert!(summarize(&raw).unwrap().has_headers);
    assert_eq!(headers_of(&raw), Ok(Some(FieldTable::new())));
    assert_eq!(headers_of(&[0, 0]), Ok(None));
    assert_eq!(summarize(&[0, 0]), Ok(PropertiesSummary::default()));
}

#[test]
fn continuation_words_are_accepted_when_they_add_no_property() {
    // delivery-mode + continuation bit, then an empty second flags word.
    assert_eq!(
        BasicProperties::decode(&[0x10, 0x01, 0x00, 0x00, 2]),
        Ok(BasicProperties { delivery_mode: Some(2), ..Default::default() })
    );
    assert_eq!(summarize(&[0x10, 0x01, 0x00, 0x00, 2]).unwrap().delivery_mode, Some(2));
    // A continuation word that sets property bits names properties basic doesn't have.
    assert_eq!(BasicProperties::decode(&[0x00, 0x01, 0x80, 0x00]).unwrap_err().code, FRAME_ERROR);
    // A continuation flag with no following word is truncated.
    assert_eq!(BasicProperties::decode(&[0x00, 0x01]).unwrap_err().code, FRAME_ERROR);
}

#[test]
fn malformed_properties_are_rejected() {
    // Flag set, field missing.
    assert_eq!(BasicProperties::decode(&[0x80, 0x00]).unwrap_err().code, FRAME_ERROR);
    assert_eq!(summarize(&[0x80, 0x00]).unwrap_err().code, FRAME_ERROR);
    // Trailing bytes.
    assert_eq!(BasicProperties::decode(&[0x00, 0x00, 1]).unwrap_err().code, FRAME_ERROR);
    assert_eq!(summarize(&[0x00, 0x00, 1]).unwrap_err().code, FRAME_ERROR);
    // No flags at all.
    assert!(BasicProperties::decode(&[]).is_err());
    assert!(summarize(&[0x10]).is_err());
    // A malformed header table is a SYNTAX_ERROR in decode, summarize and headers_of.
    let bad_headers = [0x20, 0x00, 0, 0, 0, 3, 1, b'k', b'Z'];
    assert_eq!(BasicProperties::decode(&bad_headers).unwrap_err().code, SYNTAX_ERROR);
    assert_eq!(summarize(&bad_headers).unwrap_err().code, SYNTAX_ERROR);
    assert_eq!(headers_of(&bad_headers).unwrap_err().code, SYNTAX_ERROR);
}

#[test]
fn headers_of_skips_the_fields_before_headers() {
    let mut h = FieldTable::new();
    h.insert("x-match", FieldValue::LongStr(Bytes::from_static(b"any")));
    let p = BasicProperties {
        content_type: Some("t".into()),
        content_encoding: Some("e".into()),
        headers: Some(h.clone()),
        app_id: Some("a".into()),
        ..Default::default()
    };
    assert_eq!(headers_of(&p.to_raw()), Ok(Some(h)));
}

proptest! {
    #[test]
    fn any_properties_round_trip(p in strategies::properties()) {
        let raw = p.to_raw();
        prop_assert_eq!(BasicProperties::decode(&raw), Ok(p.clone()));
        let summary = summarize(&raw).expect("summarizes");
        prop_assert_eq!(summary, PropertiesSummary { delivery_mode: p.delivery_mode, priority: p.priority, expiration: p.expiration.clone(), has_headers: p.headers.is_some(), reply_to_direct: p.reply_to.as_deref() == Some("amq.rabbitmq.reply-to") });
        prop_assert_eq!(headers_of(&raw), Ok(p.headers.clone()));
    }

    #[test]
    fn summarize_accepts_exactly_what_decode_accepts(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(summarize(&raw).is_ok(), BasicProperties::decode(&raw).is_ok());
        let _ = headers_of(&raw);
    }
}
