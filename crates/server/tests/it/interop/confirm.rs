//! Publisher confirms (confirm.select, basic.ack from the server).

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::{Confirmation, ExchangeKind};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publish_is_confirmed_in_order() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    w!(ch.confirm_select(ConfirmSelectOptions::default())).expect("confirm.select");
    // Selecting again is harmless.
    w!(ch.confirm_select(ConfirmSelectOptions::default())).expect("confirm.select again");
    assert!(ch.status().confirm());
    let q = declare(&ch, "").await;

    let mut confirms = Vec::new();
    for i in 0..200 {
        let body = format!("m{i}");
        let c = w!(ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default()
        ))
        .expect("basic.publish");
        confirms.push(c);
    }
    for (i, c) in confirms.into_iter().enumerate() {
        assert_eq!(w!(c).unwrap_or_else(|e| panic!("confirm {i}: {e}")), Confirmation::Ack(None), "publish {i}");
    }
    assert!(w!(ch.wait_for_confirms()).expect("wait_for_confirms").is_empty());
    assert_eq!(counts(&conn, &q).await.0, 200);

    // Unroutable messages are confirmed too.
    let c = w!(ch.basic_publish(
        "amq.direct".into(),
        "nowhere".into(),
        BasicPublishOptions::default(),
        b"lost",
        BasicProperties::default()
    ))
    .expect("publish");
    assert_eq!(w!(c).expect("confirm"), Confirmation::Ack(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_routed_to_several_queues_is_confirmed_once() {
    let server = TestServer::start().await;
    let (conn, ch) = open(&server).await;
    w!(ch.exchange_declare(
        "fan".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default()
    ))
    .expect("exchange.declare");
    let mut queues = Vec::new();
    for _ in 0..3 {
        let q = declare(&ch, "").await;
        w!(ch.queue_bind(
            q.as_str().into(),
            "fan".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default()
        ))
        .expect("bind");
        queues.push(q);
    }
    w!(ch.confirm_select(ConfirmSelectOptions::default())).expect("confirm.select");
    let mut confirms = Vec::new();
    for _ in 0..5 {
        confirms.push(
            w!(ch.basic_publish(
                "fan".into(),
                "".into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default()
            ))
            .expect("publish"),
        );
    }
    for c in confirms {
        assert_eq!(w!(c).expect("confirm"), Confirmation::Ack(None));
    }
    for q in &queues {
        assert_eq!(counts(&conn, q).await.0, 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_are_numbered_per_channel() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    let a = channel(&conn).await;
    let b = channel(&conn).await;
    let q = declare(&a, "").await;
    w!(a.confirm_select(ConfirmSelectOptions::default())).expect("confirm.select");
    w!(b.confirm_select(ConfirmSelectOptions::default())).expect("confirm.select");
    // Interleaved publishes on two channels: each channel's sequence starts at 1 and
    // lapin matches every ack to its own publish.
    let mut confirms = Vec::new();
    for i in 0..20 {
        let ch = if i % 3 == 0 { &b } else { &a };
        confirms.push(
            w!(ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default()
            ))
            .expect("publish"),
        );
    }
    for c in confirms {
        assert_eq!(w!(c).expect("confirm"), Confirmation::Ack(None));
    }
    assert_eq!(counts(&conn, &q).await.0, 20);
}
