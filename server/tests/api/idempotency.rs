use diesel::RunQueryDsl;
use payproto::payment::v1 as pb;
use tonic::Code;

use crate::helpers::*;

fn keyed(no: &str, amount: i64, key: &str) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        idempotency_key: key.to_owned(),
        ..create(no, amount)
    }
}

#[tokio::test]
async fn the_same_key_and_parameters_replay_the_first_response() {
    let mut app = spawn_app().await;
    let first = app
        .client
        .create_order(req(keyed("IDEM-0001", 100, "k-1")))
        .await
        .unwrap()
        .into_inner();
    let second = app
        .client
        .create_order(req(keyed("IDEM-0001", 100, "k-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    assert_eq!(app.count("SELECT count(*) AS n FROM orders"), 1);
    let m = app.metrics_text().await;
    assert!(
        m.contains("payd_idempotent_replays_total{method=\"CreateOrder\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn the_same_key_with_other_parameters_is_refused_and_changes_nothing() {
    let mut app = spawn_app().await;
    app.client
        .create_order(req(keyed("IDEM-0002", 100, "k-2")))
        .await
        .unwrap();
    let before = app.snapshot();
    for other in [
        keyed("IDEM-0002", 101, "k-2"),
        keyed("IDEM-9999", 100, "k-2"),
    ] {
        let err = app.client.create_order(req(other)).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        assert!(
            err.message().contains("idempotency_key"),
            "{}",
            err.message()
        );
    }
    assert_eq!(app.snapshot(), before);
}

#[tokio::test]
async fn a_key_is_bound_to_its_method() {
    let mut app = spawn_app().await;
    let order = app
        .client
        .create_order(req(keyed("IDEM-0003", 100, "k-3")))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let err = app
        .client
        .close_order(req(pb::CloseOrderRequest {
            order_id: order.order_id,
            idempotency_key: "k-3".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn a_replayed_close_returns_the_first_answer_instead_of_a_refusal() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "IDEM-0004", 100).await;
    let close = pb::CloseOrderRequest {
        order_id: order.order_id.clone(),
        idempotency_key: "close-1".into(),
    };
    let first = app
        .client
        .close_order(req(close.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = app
        .client
        .close_order(req(close))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    // Without the key, the state machine answers.
    let err = app
        .client
        .close_order(req(pb::CloseOrderRequest {
            order_id: order.order_id,
            idempotency_key: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_refused_call_does_not_consume_its_key() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "IDEM-0005", 100).await;
    app.client
        .close_order(req(pb::CloseOrderRequest {
            order_id: order.order_id.clone(),
            idempotency_key: String::new(),
        }))
        .await
        .unwrap();
    let close = pb::CloseOrderRequest {
        order_id: order.order_id,
        idempotency_key: "close-2".into(),
    };
    for _ in 0..2 {
        let err = app
            .client
            .close_order(req(close.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM idempotency_keys"), 0);
}

#[tokio::test]
async fn concurrent_calls_with_one_key_create_one_order_and_get_one_answer() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut c = app.client.clone();
        tasks.push(tokio::spawn(async move {
            c.create_order(req(keyed("IDEM-0006", 700, "k-6")))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap().unwrap());
    }
    assert!(replies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(app.count("SELECT count(*) AS n FROM orders"), 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM idempotency_keys"), 1);
}

#[tokio::test]
async fn keys_past_their_retention_are_purged_and_may_be_reused() {
    let mut app = spawn_app().await;
    app.client
        .create_order(req(keyed("IDEM-0007", 100, "old")))
        .await
        .unwrap();
    app.client
        .create_order(req(keyed("IDEM-0008", 100, "recent")))
        .await
        .unwrap();
    // Age one key past the default 24 h retention.
    diesel::sql_query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE idem_key = 'old'")
        .execute(&mut app.conn())
        .unwrap();
    // An expired key is free again, even before the purge runs.
    app.client
        .create_order(req(keyed("IDEM-0009", 300, "old")))
        .await
        .unwrap();
    diesel::sql_query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE idem_key = 'old'")
        .execute(&mut app.conn())
        .unwrap();
    let purged = app.app.purge_idempotency_keys().await.unwrap();
    assert_eq!(purged, 1);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM idempotency_keys WHERE idem_key = 'recent'"),
        1
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM idempotency_keys"), 1);
}
