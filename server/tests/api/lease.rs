//! The snowflake worker-id lease and the uniqueness of `out_trade_no`: a replica that lost its
//! lease mints nothing until it holds one again, and a taken number is a retryable conflict.
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use payproto::payment::v1 as pb;
use tonic::Code;

use crate::helpers::*;

fn pay_req(order_id: &str) -> pb::PayRequest {
    pb::PayRequest {
        order_id: order_id.to_owned(),
        channel: payproto::channel::v1::Channel::Wechat as i32,
        method: payproto::channel::v1::PayMethod::WechatNative as i32,
        payer: Some(pb::Payer {
            payer_id: String::new(),
            client_ip: "203.0.113.7".into(),
        }),
        idempotency_key: String::new(),
    }
}

/// Pays fresh orders until the answer has `code` (the lease check runs every 50 ms here). A
/// fresh order each time: a retried INIT attempt keeps the number it has.
async fn pay_until(app: &mut TestApp, code: Code) -> tonic::Status {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let no = format!("LEASE-{}", uuid::Uuid::new_v4().simple());
        let order = create_order(app, &no[..20], 100).await;
        let err = app
            .client
            .pay(req(pay_req(&order.order_id)))
            .await
            .unwrap_err();
        if err.code() == code || Instant::now() > deadline {
            return err;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(diesel::QueryableByName)]
struct Lease {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

#[tokio::test]
async fn a_replica_that_lost_its_worker_id_lease_mints_no_trade_number_until_it_leases_again() {
    // No channel is configured: once a number is minted, Pay stops at "channel not enabled"
    // (FAILED_PRECONDITION); without a lease it stops before, UNAVAILABLE.
    let mut app = spawn_app_with(|s| s.worker_lease_check_ms = 50).await;
    let order = create_order(&mut app, "LEASE-0001", 100).await;
    let err = app
        .client
        .pay(req(pay_req(&order.order_id)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // The lease's connection dies (a terminated backend, a network cut) and another replica
    // takes every worker id meanwhile.
    let mut conn = app.conn();
    let ns = payd::storage::WORKER_LEASE_NAMESPACE;
    let lease: Vec<Lease> = diesel::sql_query(format!(
        "SELECT pid, objid::bigint AS id FROM pg_locks WHERE locktype = 'advisory' AND classid = {ns} \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ))
    .load(&mut conn)
    .unwrap();
    assert_eq!(lease.len(), 1, "one lease held by the server");
    let (pid, id) = (lease[0].pid, lease[0].id);
    let mut other = app.conn();
    diesel::sql_query(format!(
        "SELECT count(*) FROM generate_series(0, 1023) g WHERE g <> {id} AND pg_try_advisory_lock({ns}, g::int)"
    ))
    .execute(&mut other)
    .unwrap();
    // Queued behind the server's lease, so this connection gets the id the moment it is free.
    diesel::sql_query(format!(
        "SELECT pg_terminate_backend({pid}), pg_advisory_lock({ns}, {id}::int)"
    ))
    .execute(&mut other)
    .unwrap();

    let err = pay_until(&mut app, Code::Unavailable).await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("lease"), "{}", err.message());
    let opened = app.count("SELECT count(*) AS n FROM payment_attempts");
    let err = pay_until(&mut app, Code::Unavailable).await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        app.count("SELECT count(*) AS n FROM payment_attempts"),
        opened,
        "an attempt was opened without a lease"
    );

    // The other replica goes away: the server leases an id again and mints again.
    drop(other);
    let err = pay_until(&mut app, Code::FailedPrecondition).await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

#[tokio::test]
async fn a_taken_out_trade_no_is_a_retryable_conflict_not_an_internal_error() {
    use payd::storage::attempts::{self, InsertRefused, NewAttemptRow};
    let mut app = spawn_app().await;
    let a = create_order(&mut app, "TAKEN-0001", 100).await;
    let b = create_order(&mut app, "TAKEN-0002", 100).await;
    let mut conn = app.conn();
    let row = |order: &str| NewAttemptRow {
        id: uuid::Uuid::now_v7(),
        order_id: order.parse().unwrap(),
        out_trade_no: "P123456789012",
        channel: payd::domain::Channel::Wechat,
        method: payd::domain::PayMethod::WechatNative,
        amount_minor: 100,
        currency: "CNY",
        status: payd::domain::AttemptStatus::Init,
        payer_digest: b"",
        pay_deadline: chrono::Utc::now(),
        next_query_at: None,
    };
    assert!(
        attempts::insert(&mut conn, &row(&a.order_id))
            .unwrap()
            .is_ok()
    );
    assert_eq!(
        attempts::insert(&mut conn, &row(&b.order_id))
            .unwrap()
            .unwrap_err(),
        InsertRefused::TradeNoTaken
    );
    // The error a use case makes of it is ABORTED: retry with a fresh number.
    let status: tonic::Status =
        payd::app::ServiceError::Conflict(payd::app::Subject::Order(b.order_id.parse().unwrap()))
            .into();
    assert_eq!(status.code(), Code::Aborted);
}
