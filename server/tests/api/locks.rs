use std::time::Duration;

use payd::app::ServiceError;
use payd::domain::{AppId, OrderEvent, OrderId};
use payproto::payment::v1 as pb;

use crate::helpers::*;

fn app_id() -> AppId {
    AppId::parse("t", APP).unwrap()
}

#[tokio::test]
async fn a_holder_paused_past_its_ttl_has_its_write_rejected_by_the_fence() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "FENCE-0001", 100).await;
    let id: OrderId = order.order_id.parse().unwrap();
    let resource = format!("order:{id}");

    // A takes the lock with a short TTL, then "pauses" (GC, VM stall) past it.
    let a = app
        .app
        .locks
        .acquire_with_ttl(&resource, Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    // B gets the lock legitimately and moves the order on.
    let b = app.app.locks.acquire(&resource).await.unwrap();
    assert!(b.fence() > a.fence());
    app.app
        .apply_event(
            app_id(),
            id,
            OrderEvent::PaymentStarted,
            "B starts a payment",
            &b,
            None,
        )
        .await
        .unwrap();

    // A wakes up, re-reads the order (PAYING, current version: optimistic checks alone would
    // pass) and tries to close it: the fence refuses.
    let before = app.snapshot();
    let r = app
        .app
        .apply_event(
            app_id(),
            id,
            OrderEvent::Closed,
            "A's stale write",
            &a,
            None,
        )
        .await;
    assert!(matches!(r, Err(ServiceError::Fenced(_))), "{r:?}");
    assert_eq!(app.snapshot(), before);

    // A's release does not free B's lock.
    assert!(!app.app.locks.release(a).await.unwrap());
    assert!(app.app.locks.release(b).await.unwrap());
    let m = app.metrics_text().await;
    assert!(m.contains("payd_fence_rejections_total 1"), "{m}");
}

#[tokio::test]
async fn a_busy_order_answers_aborted_after_the_bounded_wait() {
    let mut app = spawn_app_with(|s| s.lock_wait_ms = 150).await;
    let order = create_order(&mut app, "BUSY-0001", 100).await;
    let held = app
        .app
        .locks
        .acquire(&format!("order:{}", order.order_id))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = app
        .client
        .close_order(req(pb::CloseOrderRequest {
            order_id: order.order_id.clone(),
            idempotency_key: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted);
    assert!(started.elapsed() >= Duration::from_millis(150));
    app.app.locks.release(held).await.unwrap();
    // Free again: the close goes through.
    app.client
        .close_order(req(pb::CloseOrderRequest {
            order_id: order.order_id,
            idempotency_key: String::new(),
        }))
        .await
        .unwrap();
}

#[tokio::test]
async fn fencing_tokens_keep_increasing_after_redis_forgets_them() {
    let app = spawn_app().await;
    let first = app.app.locks.acquire("order:x").await.unwrap();
    let f1 = first.fence();
    app.app.locks.release(first).await.unwrap();
    // Simulate Redis losing its data (no persistence): delete the fence counter.
    let client = redis::Client::open(e2e::redis_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("{}fence:order:x", app.redis.prefix))
        .query(&mut conn)
        .unwrap();
    let second = app.app.locks.acquire("order:x").await.unwrap();
    assert!(second.fence() > f1, "{} <= {f1}", second.fence());
    app.app.locks.release(second).await.unwrap();
}

#[tokio::test]
async fn with_redis_unreachable_a_close_fails_fast_as_unavailable() {
    let mut app =
        spawn_app_with(|s| s.redis_url = payd::config::Secret::new("redis://127.0.0.1:1")).await;
    let order = create_order(&mut app, "NOREDIS-01", 100).await;
    let before = app.snapshot();
    let err = app
        .client
        .close_order(req(pb::CloseOrderRequest {
            order_id: order.order_id,
            idempotency_key: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(app.snapshot(), before);
}
