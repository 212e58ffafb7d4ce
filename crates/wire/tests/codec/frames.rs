//! Frame encoding and decoding: content frames, body splitting, hot-path encoders.

use bytes::{Bytes, BytesMut};
use wire::frame::{
    Frame, body_frames, decode_frame, encode_basic_deliver, encode_basic_get_ok, encode_basic_return, encode_body,
    encode_content, encode_header, encode_heartbeat, max_body_payload,
};
use wire::{BasicProperties, Method};

use crate::{decode_one, method_frame};

#[test]
fn body_of_300_kib_is_split_within_frame_max() {
    let body: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    for frame_max in [4096u32, 131_072, 10_000, 9] {
        let mut out = Vec::new();
        encode_body(&mut out, 3, &body, frame_max);
        let mut buf = BytesMut::from(&out[..]);
        let mut reassembled = Vec::new();
        let mut frames = 0;
        while let Some(frame) = decode_frame(&mut buf, frame_max).unwrap() {
            let Frame::Body { channel: 3, payload } = frame else { panic!("body frame expected") };
            assert!(payload.len() + 8 <= frame_max as usize, "frame of {} bytes > {frame_max}", payload.len() + 8);
            assert!(!payload.is_empty());
            reassembled.extend_from_slice(&payload);
            frames += 1;
        }
        assert!(buf.is_empty());
        assert_eq!(reassembled, body);
        assert_eq!(frames, body.len().div_ceil(max_body_payload(frame_max)));
    }
    // Unlimited: one frame.
    let mut out = Vec::new();
    encode_body(&mut out, 1, &body, 0);
    assert_eq!(out.len(), body.len() + 8);
}

#[test]
fn body_frames_by_reference_match_encode_body_byte_for_byte() {
    // A writer that sends payloads by reference (frame head, payload slice, frame end)
    // must put the same bytes on the wire as encode_body.
    for len in [0usize, 1, 8, 4087, 4088, 4089, 65_536, 300 * 1024] {
        let body: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        for frame_max in [0u32, 9, 4096, 10_000, 131_072] {
            let mut expected = Vec::new();
            encode_body(&mut expected, 513, &body, frame_max);
            let mut got = Vec::new();
            for (head, range) in body_frames(len, 513, frame_max) {
                got.extend_from_slice(&head);
                got.extend_from_slice(&body[range]);
                got.push(wire::FRAME_END);
            }
            assert_eq!(got, expected, "{len}-byte body, frame_max {frame_max}");
        }
    }
}

#[test]
fn empty_body_has_no_frame() {
    let mut out = Vec::new();
    encode_body(&mut out, 1, &[], 4096);
    assert!(out.is_empty());
}

#[test]
fn content_frames_are_zero_copy_slices_of_the_read_buffer() {
    let props =
        BasicProperties { content_type: Some("text/plain".into()), delivery_mode: Some(2), ..Default::default() };
    let raw = props.to_raw();
    let mut out = Vec::new();
    encode_content(&mut out, 5, &raw, b"hello world", 4096);
    let mut buf = BytesMut::from(&out[..]);
    let base = buf.as_ptr() as usize;

    let Some(Frame::Header { channel: 5, class_id: 60, body_size: 11, properties }) =
        decode_frame(&mut buf, 4096).unwrap()
    else {
        panic!("header")
    };
    assert_eq!(&properties[..], &raw[..]);
    // The properties point into the original allocation (7 header + 12 fixed bytes in).
    assert_eq!(properties.as_ptr() as usize, base + 7 + 12);
    assert_eq!(BasicProperties::decode(&properties), Ok(props));

    let Some(Frame::Body { channel: 5, payload }) = decode_frame(&mut buf, 4096).unwrap() else { panic!("body") };
    assert_eq!(payload, Bytes::from_static(b"hello world"));
    let header_len = 8 + 12 + raw.len();
    assert_eq!(payload.as_ptr() as usize, base + header_len + 7);
    assert!(buf.is_empty());
}

#[test]
fn several_frames_in_one_buffer_decode_in_order() {
    let mut out = method_frame(1, &Method::BasicQosOk);
    encode_heartbeat(&mut out);
    encode_header(&mut out, 1, 60, 0, &[0, 0]);
    out.extend_from_slice(&method_frame(2, &Method::TxCommit));
    out.extend_from_slice(&[1, 0]); // start of a next frame
    let mut buf = BytesMut::from(&out[..]);
    assert_eq!(decode_frame(&mut buf, 4096), Ok(Some(Frame::Method { channel: 1, method: Method::BasicQosOk })));
    assert_eq!(decode_frame(&mut buf, 4096), Ok(Some(Frame::Heartbeat { channel: 0 })));
    assert_eq!(
        decode_frame(&mut buf, 4096),
        Ok(Some(Frame::Header { channel: 1, class_id: 60, body_size: 0, properties: Bytes::from_static(&[0, 0]) }))
    );
    assert_eq!(decode_frame(&mut buf, 4096), Ok(Some(Frame::Method { channel: 2, method: Method::TxCommit })));
    assert_eq!(decode_frame(&mut buf, 4096), Ok(None));
    assert_eq!(&buf[..], &[1, 0]);
}

#[test]
fn hot_path_encoders_match_the_generic_encoder() {
    let mut out = Vec::new();
    encode_basic_deliver(&mut out, 9, "ctag", 77, true, "ex", "rk");
    assert_eq!(
        out,
        method_frame(
            9,
            &Method::BasicDeliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 77,
                redelivered: true,
                exchange: "ex".into(),
                routing_key: "rk".into()
            }
        )
    );

    let mut out = Vec::new();
    encode_basic_get_ok(&mut out, 9, 78, false, "", "q", 5);
    assert_eq!(
        out,
        method_frame(
            9,
            &Method::BasicGetOk {
                delivery_tag: 78,
                redelivered: false,
                exchange: String::new(),
                routing_key: "q".into(),
                message_count: 5
            }
        )
    );

    let mut out = Vec::new();
    encode_basic_return(&mut out, 9, 312, "NO_ROUTE", "amq.direct", "nowhere");
    assert_eq!(
        out,
        method_frame(
            9,
            &Method::BasicReturn {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: "amq.direct".into(),
                routing_key: "nowhere".into()
            }
        )
    );
}

#[test]
fn hot_path_encoders_append_without_disturbing_existing_bytes() {
    let mut out = b"prefix".to_vec();
    encode_basic_deliver(&mut out, 1, "c", 1, false, "e", "r");
    assert_eq!(&out[..6], b"prefix");
    let frame = decode_one(&out[6..], 0).unwrap();
    assert!(matches!(frame, Frame::Method { channel: 1, method: Method::BasicDeliver { .. } }));
}

#[test]
fn frame_max_allows_rabbitmqs_fudge_but_no_more() {
    // frame_max 4096: a body frame of exactly 4096 bytes is fine, and RabbitMQ tolerates
    // up to 8 bytes more (payload == frame_max); beyond that is FRAME_ERROR.
    for (payload, ok) in [(4088usize, true), (4096, true), (4097, false)] {
        let mut out = vec![3, 0, 1];
        out.extend_from_slice(&(payload as u32).to_be_bytes());
        out.resize(7 + payload, 0xAB);
        out.push(0xCE);
        let result = decode_one(&out, 4096);
        assert_eq!(result.is_ok(), ok, "payload {payload}: {result:?}");
    }
}
