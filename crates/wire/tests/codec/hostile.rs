//! Hostile and malformed input: truncation, garbage, oversize frames, bad ids.

use bytes::BytesMut;
use proptest::prelude::*;
use wire::frame::{decode_frame, encode_content};
use wire::method::{BAD_ARGUMENTS_REPLY_CODE, UNKNOWN_METHOD_REPLY_CODE};
use wire::reply::{FRAME_ERROR, NOT_IMPLEMENTED, SYNTAX_ERROR, UNEXPECTED_FRAME};
use wire::{BasicProperties, Method};

use crate::{all_methods, decode_one, method_frame, raw_method_frame, sample_table};

/// A stream of valid frames of every kind.
fn valid_stream() -> Vec<Vec<u8>> {
    let mut frames: Vec<Vec<u8>> = all_methods().iter().map(|m| method_frame(1, m)).collect();
    let props =
        BasicProperties { headers: Some(sample_table()), delivery_mode: Some(2), ..Default::default() }.to_raw();
    let mut content = Vec::new();
    encode_content(&mut content, 1, &props, &[7u8; 5000], 4096);
    frames.push(content);
    frames.push(vec![8, 0, 0, 0, 0, 0, 0, 0xCE]);
    frames
}

#[test]
fn every_strict_prefix_of_a_frame_is_incomplete_and_left_untouched() {
    for bytes in valid_stream() {
        // `bytes` may hold several frames (content); only the first is checked here.
        let mut whole = BytesMut::from(&bytes[..]);
        let first_len = {
            let before = whole.len();
            decode_frame(&mut whole, 0).unwrap().expect("complete");
            before - whole.len()
        };
        for cut in 0..first_len {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(decode_frame(&mut buf, 0), Ok(None), "prefix {cut} of {first_len}");
            assert_eq!(buf.len(), cut, "buffer must be untouched");
        }
    }
}

#[test]
fn oversize_frame_is_refused_before_its_payload_arrives() {
    // Header of a 1 MB body frame, no payload yet, frame_max 131072.
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0x10, 0, 0][..]);
    let err = decode_frame(&mut buf, 131_072).unwrap_err();
    assert_eq!(err.code, FRAME_ERROR);
    assert!(err.text.contains("exceeds frame_max"), "{}", err.text);
    // Same for a method frame.
    let mut buf = BytesMut::from(&[1u8, 0, 0, 0xff, 0xff, 0xff, 0xff][..]);
    assert_eq!(decode_frame(&mut buf, 4096).unwrap_err().code, FRAME_ERROR);
    // With frame_max 0 the same header just waits for more bytes.
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0x10, 0, 0][..]);
    assert_eq!(decode_frame(&mut buf, 0), Ok(None));
}

#[test]
fn bad_frame_end_is_a_frame_error() {
    let mut frame = method_frame(1, &Method::TxSelect);
    *frame.last_mut().unwrap() = 0xCD;
    assert_eq!(decode_one(&frame, 0).unwrap_err().code, FRAME_ERROR);
}

#[test]
fn unknown_frame_type_is_a_frame_error_as_soon_as_the_header_is_in() {
    for kind in [0u8, 4, 9, b'A', 0xff] {
        let mut buf = BytesMut::from(&[kind, 0, 0, 0, 0, 0, 5][..]);
        assert_eq!(decode_frame(&mut buf, 0).unwrap_err().code, FRAME_ERROR, "type {kind}");
    }
}

#[test]
fn heartbeat_with_a_payload_is_a_frame_error() {
    let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 1][..]);
    assert_eq!(decode_frame(&mut buf, 0).unwrap_err().code, FRAME_ERROR);
}

#[test]
fn heartbeat_on_a_channel_is_returned_for_the_broker_to_judge() {
    // RabbitMQ answers UNEXPECTED_FRAME for that; the codec just reports the channel.
    assert_eq!(decode_one(&[8, 0, 3, 0, 0, 0, 0, 0xCE], 0), Ok(wire::Frame::Heartbeat { channel: 3 }));
}

#[test]
fn unknown_class_or_method_gets_the_chosen_code_with_ids() {
    assert_eq!(UNKNOWN_METHOD_REPLY_CODE, NOT_IMPLEMENTED);
    for (class_id, method_id) in [(60, 200), (60, 41), (99, 10), (0, 0), (40, 41), (10, 72)] {
        let err = decode_one(&raw_method_frame(1, class_id, method_id, &[]), 0).unwrap_err();
        assert_eq!((err.code, err.class_id, err.method_id), (NOT_IMPLEMENTED, class_id, method_id));
    }
}

#[test]
fn truncated_arguments_are_frame_errors_naming_the_method() {
    assert_eq!(BAD_ARGUMENTS_REPLY_CODE, FRAME_ERROR);
    for m in all_methods() {
        let mut payload = Vec::new();
        m.encode_payload(&mut payload);
        let (class_id, method_id) = m.ids();
        for cut in 4..payload.len() {
            let err = Method::decode_payload(&payload[..cut]).unwrap_err();
            assert_eq!((err.class_id, err.method_id), (class_id, method_id));
            // Cutting inside a table body shortens the table's bytes, not the method's:
            // the table length prefix then overruns the payload, still FRAME_ERROR.
            assert_eq!(err.code, FRAME_ERROR, "{} cut at {cut}: {}", m.name(), err.text);
            assert!(err.text.contains(m.name()), "{}", err.text);
        }
    }
}

#[test]
fn trailing_argument_bytes_are_frame_errors() {
    let mut payload = Vec::new();
    Method::BasicAck { delivery_tag: 1, multiple: false }.encode_payload(&mut payload);
    payload.push(0);
    let err = Method::decode_payload(&payload).unwrap_err();
    assert_eq!((err.code, err.class_id, err.method_id), (FRAME_ERROR, 60, 80));
    let err = decode_one(&raw_method_frame(1, 90, 10, &[0]), 0).unwrap_err();
    assert_eq!((err.code, err.class_id, err.method_id), (FRAME_ERROR, 90, 10));
}

#[test]
fn method_payload_without_ids_is_a_frame_error() {
    for payload in [&[][..], &[0], &[0, 60, 0]] {
        let mut frame = vec![1, 0, 1];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(0xCE);
        assert_eq!(decode_one(&frame, 0).unwrap_err().code, FRAME_ERROR);
    }
}

#[test]
fn malformed_utf8_short_string_is_a_frame_error_like_rabbitmq() {
    // queue.declare with queue name 0xff 0xfe.
    let mut args = vec![0, 0, 2, 0xff, 0xfe, 0];
    args.extend_from_slice(&[0, 0, 0, 0]);
    let err = decode_one(&raw_method_frame(1, 50, 10, &args), 0).unwrap_err();
    assert_eq!((err.code, err.class_id, err.method_id), (FRAME_ERROR, 50, 10));
    assert!(err.text.contains("Malformed UTF-8"), "{}", err.text);
}

#[test]
fn malformed_argument_table_is_a_syntax_error_with_ids() {
    // queue.declare "q" with arguments {"k": <tag 'Z'>}.
    let mut args = vec![0, 0, 1, b'q', 0];
    args.extend_from_slice(&[0, 0, 0, 3, 1, b'k', b'Z']);
    let err = decode_one(&raw_method_frame(1, 50, 10, &args), 0).unwrap_err();
    assert_eq!((err.code, err.class_id, err.method_id), (SYNTAX_ERROR, 50, 10));
}

#[test]
fn deeply_nested_arguments_are_rejected_without_overflowing_the_stack() {
    let mut table = vec![0, 0, 0, 0];
    for _ in 0..20_000 {
        let mut next = ((table.len() + 3) as u32).to_be_bytes().to_vec();
        next.extend_from_slice(&[1, b'a', b'F']);
        next.extend_from_slice(&table);
        table = next;
    }
    let mut args = vec![0, 0, 1, b'q', 0];
    args.extend_from_slice(&table);
    let err = decode_one(&raw_method_frame(1, 50, 10, &args), 0).unwrap_err();
    assert_eq!((err.code, err.class_id, err.method_id), (SYNTAX_ERROR, 50, 10));
}

#[test]
fn content_header_checks() {
    // Non-zero weight: UNEXPECTED_FRAME, as RabbitMQ's command assembler.
    let mut f = vec![2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 1];
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&[0, 0, 0xCE]);
    assert_eq!(decode_one(&f, 0).unwrap_err().code, UNEXPECTED_FRAME);
    // Too short for class/weight/body size.
    assert_eq!(decode_one(&[2, 0, 1, 0, 0, 0, 3, 0, 60, 0, 0xCE], 0).unwrap_err().code, FRAME_ERROR);
    // No property flags.
    let mut f = vec![2, 0, 1, 0, 0, 0, 12, 0, 60, 0, 0];
    f.extend_from_slice(&[0; 8]);
    f.push(0xCE);
    assert_eq!(decode_one(&f, 0).unwrap_err().code, FRAME_ERROR);
}

/// Decode frames until the buffer runs dry or errors; must never panic.
fn drain(bytes: &[u8], frame_max: u32) {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(_)) = decode_frame(&mut buf, frame_max) {}
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), frame_max in prop_oneof![Just(0u32), Just(4096), any::<u32>()]) {
        drain(&bytes, frame_max);
        let _ = Method::decode_payload(&bytes);
        let _ = BasicProperties::decode(&bytes);
    }

    #[test]
    fn random_frames_with_plausible_headers_never_panic(kind in 1u8..=8, channel in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut frame = vec![kind];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(0xCE);
        drain(&frame, 4096);
    }

    #[test]
    fn mutated_valid_frames_never_panic(index in 0usize..67, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let stream = valid_stream();
        let mut bytes = stream[index % stream.len()].clone();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        drain(&bytes, 0);
        drain(&bytes, 4096);
        if bytes.len() > 8 {
            let _ = Method::decode_payload(&bytes[7..bytes.len() - 1]);
        }
    }
}
