//! Field tables, arrays and values: RabbitMQ's tags, round trips, nesting guard.

use bytes::Bytes;
use proptest::prelude::*;
use wire::reply::SYNTAX_ERROR;
use wire::types::{
    MAX_NESTING_DEPTH, decode_array, decode_table, decode_value, encode_array, encode_table, encode_value, skip_table,
};
use wire::{FieldTable, FieldValue};

use crate::{sample_table, strategies};

fn enc_value(v: &FieldValue) -> Vec<u8> {
    let mut out = Vec::new();
    encode_value(v, &mut out);
    out
}

#[test]
fn tags_are_rabbitmqs() {
    let cases: Vec<(FieldValue, Vec<u8>)> = vec![
        (FieldValue::Bool(true), vec![b't', 1]),
        (FieldValue::I8(-1), vec![b'b', 0xff]),
        (FieldValue::U8(200), vec![b'B', 200]),
        (FieldValue::I16(-2), vec![b's', 0xff, 0xfe]),
        (FieldValue::U16(258), vec![b'u', 1, 2]),
        (FieldValue::I32(-1), vec![b'I', 0xff, 0xff, 0xff, 0xff]),
        (FieldValue::U32(1), vec![b'i', 0, 0, 0, 1]),
        (FieldValue::I64(-1), [vec![b'l'], vec![0xff; 8]].concat()),
        (FieldValue::U64(1), vec![b'L', 0, 0, 0, 0, 0, 0, 0, 1]),
        (FieldValue::F32(1.0), [vec![b'f'], 1.0f32.to_be_bytes().to_vec()].concat()),
        (FieldValue::F64(1.0), [vec![b'd'], 1.0f64.to_be_bytes().to_vec()].concat()),
        (FieldValue::Decimal(2, 5), vec![b'D', 2, 0, 0, 0, 5]),
        (FieldValue::LongStr(Bytes::from_static(b"ab")), vec![b'S', 0, 0, 0, 2, b'a', b'b']),
        (FieldValue::Array(vec![FieldValue::Void]), vec![b'A', 0, 0, 0, 1, b'V']),
        (FieldValue::Timestamp(3), vec![b'T', 0, 0, 0, 0, 0, 0, 0, 3]),
        (FieldValue::Table(FieldTable::new()), vec![b'F', 0, 0, 0, 0]),
        (FieldValue::Void, vec![b'V']),
        (FieldValue::ByteArray(Bytes::from_static(&[9])), vec![b'x', 0, 0, 0, 1, 9]),
    ];
    for (value, bytes) in cases {
        assert_eq!(enc_value(&value), bytes, "{value:?}");
        assert_eq!(decode_value(&bytes), Ok((value, bytes.len())));
    }
}

#[test]
fn s_is_a_signed_short_not_a_short_string() {
    // RabbitMQ: ?SIMPLE_PARSE_TABLE($s, Value:16/signed, short).
    assert_eq!(decode_value(&[b's', 0x80, 0x00]), Ok((FieldValue::I16(i16::MIN), 3)));
}

#[test]
fn big_l_is_kept_bit_exact_and_read_as_signed_like_rabbitmq() {
    let bytes = [b'L', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe];
    let (v, n) = decode_value(&bytes).unwrap();
    assert_eq!(n, 9);
    assert_eq!(v, FieldValue::U64(u64::MAX - 1));
    // RabbitMQ decodes `L` as 64-bit signed: this is -2 to it.
    assert_eq!(v.as_i64(), Some(-2));
    assert_eq!(enc_value(&v), bytes);
    assert_eq!(FieldValue::U64(7).as_i64(), Some(7));
}

#[test]
fn bool_accepts_any_non_zero_octet() {
    assert_eq!(decode_value(&[b't', 2]), Ok((FieldValue::Bool(true), 2)));
    assert_eq!(decode_value(&[b't', 0]), Ok((FieldValue::Bool(false), 2)));
}

#[test]
fn sample_table_round_trips_and_keeps_order() {
    let t = sample_table();
    let mut out = Vec::new();
    encode_table(&t, &mut out);
    out.extend_from_slice(b"trailing");
    let (back, used) = decode_table(&out).unwrap();
    assert_eq!(back, t);
    assert_eq!(used, out.len() - 8);
    assert_eq!(skip_table(&out), Ok(used));
    assert_eq!(back.get("u16"), Some(&FieldValue::U16(60000)));
    assert_eq!(back.iter().next().map(|(k, _)| k), Some("bool"));
}

#[test]
fn nan_payloads_survive_byte_exact() {
    let v = FieldValue::F64(f64::from_bits(0x7ff8_0000_dead_beef));
    let bytes = enc_value(&v);
    let (back, _) = decode_value(&bytes).unwrap();
    assert_eq!(enc_value(&back), bytes);
    let v = FieldValue::F32(f32::from_bits(0x7fc0_1234));
    let bytes = enc_value(&v);
    assert_eq!(enc_value(&decode_value(&bytes).unwrap().0), bytes);
}

#[test]
fn unknown_tags_are_syntax_errors() {
    for tag in [b'U', b'z', 0u8, 0xff, b'_'] {
        let table = [0, 0, 0, 3, 1, b'k', tag];
        let err = decode_table(&table).unwrap_err();
        assert_eq!(err.code, SYNTAX_ERROR, "tag {tag}");
        assert_eq!(skip_table(&table).unwrap_err().code, SYNTAX_ERROR);
    }
}

#[test]
fn entries_running_past_the_table_are_syntax_errors() {
    // Table claims 6 bytes; the `I` value needs 4 after the tag but only 2 are inside.
    let table = [0, 0, 0, 6, 1, b'k', b'I', 0, 0, 0, 0, 0];
    assert_eq!(decode_table(&table).unwrap_err().code, SYNTAX_ERROR);
    // Table length beyond the input.
    assert_eq!(decode_table(&[0, 0, 0, 9, 1]).unwrap_err().code, SYNTAX_ERROR);
    // Non-UTF-8 key.
    assert_eq!(decode_table(&[0, 0, 0, 3, 1, 0xff, b'V']).unwrap_err().code, SYNTAX_ERROR);
}

/// A table nested `levels` deep: {"a": {"a": ... {}}}.
fn nested_tables(levels: usize) -> Vec<u8> {
    let mut inner = vec![0, 0, 0, 0];
    for _ in 1..levels {
        let mut next = Vec::with_capacity(inner.len() + 7);
        next.extend_from_slice(&((inner.len() + 3) as u32).to_be_bytes());
        next.extend_from_slice(&[1, b'a', b'F']);
        next.extend_from_slice(&inner);
        inner = next;
    }
    inner
}

#[test]
fn nesting_is_bounded() {
    let ok = nested_tables(MAX_NESTING_DEPTH);
    assert!(decode_table(&ok).is_ok());
    assert!(skip_table(&ok).is_ok());
    let too_deep = nested_tables(MAX_NESTING_DEPTH + 1);
    assert_eq!(decode_table(&too_deep).unwrap_err().code, SYNTAX_ERROR);
    assert_eq!(skip_table(&too_deep).unwrap_err().code, SYNTAX_ERROR);
    // Hostile: 100k levels (about 700 KB) must fail fast, not overflow the stack.
    let hostile = nested_tables(100_000);
    assert_eq!(decode_table(&hostile).unwrap_err().code, SYNTAX_ERROR);
    assert_eq!(skip_table(&hostile).unwrap_err().code, SYNTAX_ERROR);
}

#[test]
fn nested_arrays_are_bounded_too() {
    let mut inner = vec![0, 0, 0, 0];
    for _ in 0..10_000 {
        let mut next = ((inner.len() + 1) as u32).to_be_bytes().to_vec();
        next.push(b'A');
        next.extend_from_slice(&inner);
        inner = next;
    }
    assert_eq!(decode_array(&inner).unwrap_err().code, SYNTAX_ERROR);
}

proptest! {
    #[test]
    fn any_value_round_trips(v in strategies::field_value()) {
        let bytes = enc_value(&v);
        let (back, used) = decode_value(&bytes).expect("decodes");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&back, &v);
    }

    #[test]
    fn any_table_round_trips(t in strategies::field_table()) {
        let mut bytes = Vec::new();
        encode_table(&t, &mut bytes);
        prop_assert_eq!(skip_table(&bytes), Ok(bytes.len()));
        let (back, used) = decode_table(&bytes).expect("decodes");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, t);
    }

    #[test]
    fn any_array_round_trips(a in proptest::collection::vec(strategies::field_value(), 0..8)) {
        let mut bytes = Vec::new();
        encode_array(&a, &mut bytes);
        prop_assert_eq!(decode_array(&bytes), Ok((a, bytes.len())));
    }

    #[test]
    fn random_bytes_never_panic_and_skip_agrees_with_decode(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let decoded = decode_table(&bytes);
        let skipped = skip_table(&bytes);
        prop_assert_eq!(decoded.as_ref().map(|(_, n)| *n).ok(), skipped.ok());
        let _ = decode_value(&bytes);
        let _ = decode_array(&bytes);
    }
}
