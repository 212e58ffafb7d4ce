//! Encode → decode round trips of every method, by example and by proptest.

use std::collections::HashSet;

use proptest::prelude::*;
use wire::Method;
use wire::frame::Frame;
use wire::method::method_name;

use crate::{all_methods, decode_one, method_frame, strategies};

#[test]
fn every_example_round_trips_as_payload_and_frame() {
    for m in all_methods() {
        let mut payload = Vec::new();
        m.encode_payload(&mut payload);
        assert_eq!(Method::decode_payload(&payload).as_ref(), Ok(&m), "{}", m.name());
        let (c, id) = m.ids();
        assert_eq!(&payload[..4], &[(c >> 8) as u8, c as u8, (id >> 8) as u8, id as u8]);

        let frame = method_frame(7, &m);
        assert_eq!(frame.len(), payload.len() + 8);
        assert_eq!(decode_one(&frame, 0), Ok(Frame::Method { channel: 7, method: m.clone() }), "{}", m.name());
    }
}

#[test]
fn examples_cover_every_known_method_once() {
    let methods = all_methods();
    let ids: HashSet<_> = methods.iter().map(Method::ids).collect();
    assert_eq!(ids.len(), methods.len(), "duplicate example");
    let known: HashSet<_> = (0..=u16::MAX)
        .step_by(5)
        .flat_map(|c| (0..=255u16).map(move |m| (c, m)))
        .filter(|&(c, m)| method_name(c, m).is_some())
        .collect();
    assert_eq!(ids, known);
    assert_eq!(known.len(), 66);
    for m in &methods {
        let (c, id) = m.ids();
        assert_eq!(Some(m.name()), method_name(c, id));
    }
}

#[test]
fn names_and_ids_follow_rabbitmq() {
    assert_eq!(Method::ExchangeUnbindOk.ids(), (40, 51));
    assert_eq!(Method::ExchangeUnbindOk.name(), "exchange.unbind-ok");
    let publish = Method::BasicPublish {
        ticket: 0,
        exchange: String::new(),
        routing_key: String::new(),
        mandatory: false,
        immediate: false,
    };
    assert_eq!(publish.name(), "basic.publish");
    assert_eq!(Method::BasicRecoverAsync { requeue: true }.name(), "basic.recover-async");
    assert_eq!(Method::ConnectionUpdateSecretOk.ids(), (10, 71));
    assert_eq!(Method::ConfirmSelect { nowait: false }.ids(), (85, 10));
}

#[test]
fn bits_are_packed_into_one_octet_in_declaration_order() {
    let m = Method::QueueDeclare {
        ticket: 0,
        queue: "q".into(),
        passive: true,
        durable: false,
        exclusive: true,
        auto_delete: false,
        nowait: true,
        arguments: Default::default(),
    };
    let mut p = Vec::new();
    m.encode_payload(&mut p);
    // ids(4) ticket(2) "q"(2) bits(1) table(4)
    assert_eq!(p.len(), 13);
    assert_eq!(p[8], 0b1_0101);
    let nack = Method::BasicNack { delivery_tag: 1, multiple: false, requeue: true };
    let mut p = Vec::new();
    nack.encode_payload(&mut p);
    assert_eq!(p[12..], [0b10]);
}

#[test]
fn reserved_bits_are_ignored_on_decode() {
    // basic.ack with every bit set: only bit 0 (multiple) means anything.
    let mut payload = vec![0, 60, 0, 80];
    payload.extend_from_slice(&5u64.to_be_bytes());
    payload.push(0xff);
    assert_eq!(Method::decode_payload(&payload), Ok(Method::BasicAck { delivery_tag: 5, multiple: true }));
}

#[test]
fn synchronous_requests_follow_rabbitmq() {
    use Method::*;
    assert!(BasicQos { prefetch_size: 0, prefetch_count: 1, global: false }.is_synchronous_request());
    assert!(
        QueueDeclare {
            ticket: 0,
            queue: String::new(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Default::default()
        }
        .is_synchronous_request()
    );
    assert!(
        !QueueDeclare {
            ticket: 0,
            queue: String::new(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: true,
            arguments: Default::default()
        }
        .is_synchronous_request()
    );
    assert!(TxCommit.is_synchronous_request());
    assert!(!BasicAck { delivery_tag: 1, multiple: false }.is_synchronous_request());
    assert!(
        !BasicPublish {
            ticket: 0,
            exchange: String::new(),
            routing_key: String::new(),
            mandatory: false,
            immediate: false
        }
        .is_synchronous_request()
    );
    assert!(!TxCommitOk.is_synchronous_request());
    assert!(
        QueueUnbind {
            ticket: 0,
            queue: String::new(),
            exchange: String::new(),
            routing_key: String::new(),
            arguments: Default::default()
        }
        .is_synchronous_request()
    );
}

#[test]
fn overlong_short_strings_are_truncated_on_a_char_boundary() {
    let text = "é".repeat(200); // 400 bytes
    let m = Method::ChannelClose { reply_code: 406, reply_text: text.clone(), class_id: 0, method_id: 0 };
    let mut p = Vec::new();
    m.encode_payload(&mut p);
    let Ok(Method::ChannelClose { reply_text, .. }) = Method::decode_payload(&p) else { panic!("decodes") };
    assert_eq!(reply_text.len(), 254);
    assert!(text.starts_with(&reply_text));
}

proptest! {
    #[test]
    fn any_method_round_trips(m in strategies::method(), channel in any::<u16>()) {
        let mut payload = Vec::new();
        m.encode_payload(&mut payload);
        let decoded = Method::decode_payload(&payload).expect("decodes");
        prop_assert_eq!(&decoded, &m);
        let frame = method_frame(channel, &m);
        prop_assert_eq!(decode_one(&frame, 0), Ok(Frame::Method { channel, method: m }));
    }
}
