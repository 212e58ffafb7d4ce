//! Message content: bodies spanning many frames, empty bodies, and properties and
//! headers of every field type arriving exactly as sent.

use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, LongString};

use super::*;

fn pattern(len: usize) -> Vec<u8> {
    // Not periodic on any frame size, so a misplaced or repeated chunk shows.
    (0..len).map(|i| ((i * 7 + i / 251) % 256) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_message_spans_frames_intact() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    let big = pattern(1024 * 1024);
    // 1 MiB in 128 KiB frames, and from a client with 4 KiB frames (256+ body frames).
    publish(&ch, "", &q, &big).await;
    let small_frames = connect_uri(&format!("{}?frame_max=4096", server.uri())).await;
    assert_eq!(small_frames.configuration().frame_max(), 4096);
    let sch = channel(&small_frames).await;
    publish(&sch, "", &q, &big).await;
    // Another connection: make sure the server has routed it before going on here.
    qos(&sch, 0, false).await;
    // An empty body: a content header and no body frame.
    publish(&ch, "", &q, b"").await;
    // A body exactly filling one frame, and one byte more.
    let frame_payload = 131_072 - 8;
    publish(&ch, "", &q, &pattern(frame_payload)).await;
    publish(&ch, "", &q, &pattern(frame_payload + 1)).await;

    let cch = channel(&conn).await;
    let mut c = consume(&cch, &q, "").await;
    let a = next(&mut c).await;
    assert!(a.data == big, "1 MiB body from the default-frame client differs");
    let b = next(&mut c).await;
    assert!(b.data == big, "1 MiB body from the 4 KiB-frame client differs");
    assert!(next(&mut c).await.data.is_empty());
    assert!(next(&mut c).await.data == pattern(frame_payload));
    assert!(next(&mut c).await.data == pattern(frame_payload + 1));

    // Delivered to a client with small frames, too (get on the 4 KiB connection).
    publish(&ch, "", &q, &big).await;
    w!(cch.close(200, "OK".into())).expect("close");
    let mut sizes = Vec::new();
    while let Some(m) = w!(sch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })).expect("get") {
        sizes.push(m.data.len());
        if m.data.len() == big.len() {
            assert!(m.data == big, "1 MiB body read with 4 KiB frames differs");
        }
    }
    // The consumer's 5 unacked deliveries were requeued ahead of the last publish.
    let mut expected = vec![big.len(), big.len(), 0, frame_payload, frame_payload + 1, big.len()];
    expected.sort_unstable();
    sizes.sort_unstable();
    assert_eq!(sizes, expected);
}

fn every_field_type() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongString(LongString::from("deep")));
    nested.insert("n".into(), AMQPValue::LongInt(-7));
    let array = FieldArray::from(vec![
        AMQPValue::Boolean(false),
        AMQPValue::LongInt(1),
        AMQPValue::LongString(LongString::from("two")),
        AMQPValue::FieldTable(nested.clone()),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void])),
    ]);
    let entries: Vec<(&str, AMQPValue)> = vec![
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-8)),
        ("u8", AMQPValue::ShortShortUInt(200)),
        ("i16", AMQPValue::ShortInt(-1600)),
        ("u16", AMQPValue::ShortUInt(60_000)),
        ("i32", AMQPValue::LongInt(-3_200_000)),
        ("u32", AMQPValue::LongUInt(4_000_000_000)),
        ("i64", AMQPValue::LongLongInt(-6_400_000_000_000)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(-2.25e100)),
        ("decimal", AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 12_345 })),
        ("longstr", AMQPValue::LongString(LongString::from("héllo \u{0} wörld"))),
        ("bytes", AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2, 255]))),
        ("array", AMQPValue::FieldArray(array)),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        ("table", AMQPValue::FieldTable(nested)),
        ("void", AMQPValue::Void),
        ("empty-table", AMQPValue::FieldTable(FieldTable::default())),
        ("empty-array", AMQPValue::FieldArray(FieldArray::from(Vec::new()))),
    ];
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_and_headers_arrive_as_sent() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    let q = declare(&ch, "").await;
    let full = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(every_field_type())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("reply.queue".into())
        .with_expiration("60000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_123)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("interop-test".into())
        .with_cluster_id("cluster".into());
    // A few sparse flag combinations as well.
    let sparse = [
        BasicProperties::default(),
        BasicProperties::default().with_headers(FieldTable::default()),
        BasicProperties::default().with_delivery_mode(1).with_app_id("a".into()),
        BasicProperties::default().with_cluster_id("only-the-last-flag".into()),
    ];
    let all: Vec<BasicProperties> = std::iter::once(full).chain(sparse).collect();
    for (i, props) in all.iter().enumerate() {
        publish_with(&ch, "", &q, format!("{i}").as_bytes(), props.clone()).await;
    }
    // Through a consumer...
    let cch = channel(&conn).await;
    let mut c = consume(&cch, &q, "").await;
    for (i, props) in all.iter().enumerate() {
        let d = next(&mut c).await;
        assert_eq!(body(&d), i.to_string());
        assert_eq!(&d.properties, props, "properties of message {i} via basic.deliver");
    }
    // ...and through basic.get (the requeued copies, after the consumer's channel closes).
    w!(cch.close(200, "OK".into())).expect("close");
    for (i, props) in all.iter().enumerate() {
        let m = get(&ch, &q).await.expect("requeued message");
        assert_eq!(body(&m), i.to_string());
        assert!(m.redelivered);
        assert_eq!(&m.properties, props, "properties of message {i} via basic.get-ok");
    }
}
