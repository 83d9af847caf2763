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
    let redis = PrivateRedis::start(e2e::free_addr().port());
    let url = redis.url();
    let mut app = spawn_app_with(|s| s.redis_url = payd::config::Secret::new(url)).await;
    let order = create_order(&mut app, "NOREDIS-01", 100).await;
    drop(redis);
    let before = app.snapshot();
    let err = app
        .client
        .close_order(req(pb::CloseOrderRequest {
            order_id: order.order_id,
            idempotency_key: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(app.snapshot(), before);
}

/// A private `redis-server` on a free port, killed on drop.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services.sh installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kleppmann's case with a Redis failover: A holds the lock, Redis fails over to a replica that
/// never saw the lock (nor any fence), B takes the lock and writes, then A wakes up and writes:
/// refused. The tokens come from Postgres, so they would keep increasing even if the new
/// Redis's clock were behind (a token from Redis data or time would then be lower for B than
/// for A, and A's stale write would win).
#[tokio::test]
async fn fences_keep_increasing_across_a_failover_to_a_redis_that_lost_everything() {
    let port = e2e::free_addr().port();
    let primary = PrivateRedis::start(port);
    let mut app = spawn_app_with(|s| s.redis_url = payd::config::Secret::new(primary.url())).await;
    let order = create_order(&mut app, "FAILOVER-01", 100).await;
    let id: OrderId = order.order_id.parse().unwrap();
    let a = app.app.locks.acquire(&format!("order:{id}")).await.unwrap();

    drop(primary);
    let _replica = PrivateRedis::start(port);
    // The lock's connection manager reconnects to the new Redis on the same address.
    let b = loop {
        match app.app.locks.acquire(&format!("order:{id}")).await {
            Ok(b) => break b,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(b.fence() > a.fence(), "{} <= {}", b.fence(), a.fence());
    app.app
        .apply_event(app_id(), id, OrderEvent::PaymentStarted, "B", &b, None)
        .await
        .unwrap();
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
}

/// The lock outlives the chain of channel calls it guards: while its holder runs, it is renewed
/// past its TTL; once released (or its holder stops), it is free again.
#[tokio::test]
async fn a_held_lock_is_renewed_past_its_ttl_while_its_holder_runs() {
    let app = spawn_app_with(|s| {
        s.lock_ttl_ms = 300;
        s.lock_wait_ms = 100;
    })
    .await;
    let held = app.app.locks.acquire("order:renewed").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        matches!(
            app.app.locks.acquire("order:renewed").await,
            Err(payd::locks::LockError::Busy(_))
        ),
        "the lock expired under a running holder"
    );
    assert!(app.app.locks.release(held).await.unwrap());
    let again = app.app.locks.acquire("order:renewed").await.unwrap();
    app.app.locks.release(again).await.unwrap();
}
