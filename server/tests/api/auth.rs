//! Caller authentication against the real server and Redis: every `payment.v1` call is signed
//! (`payproto::auth`), and a call that is unsigned, wrongly signed, expired, future-dated,
//! replayed, from an app without the method's role, or over the app's rate is refused before any
//! service sees it, changes nothing, and is counted by reason.
//!
//! The hand-signed requests here build the canonical string themselves (not through the client
//! layer) so that the timestamp and the nonce can be chosen.
use payproto::auth::{
    APP_ID_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, canonical_string, sign,
};
use payproto::payment::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::helpers::*;
use crate::refunds::{paid_order, refund_req};
use e2e::calls::{
    LIMITED_APP, READER_APP, ROTATING_APP, SMALL_REFUNDS_APP, client_as, rotating_old_secret,
    test_secret, unsigned_client,
};

const CREATE: &str = "/payment.v1.PaymentService/CreateOrder";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// A CreateOrder request signed by hand as `app` with `secret`, at `ts`, with `nonce`.
fn signed_create(
    app: &str,
    secret: &str,
    body: pb::CreateOrderRequest,
    ts: i64,
    nonce: &str,
) -> tonic::Request<pb::CreateOrderRequest> {
    let digest = hex::encode(Sha256::digest(body.encode_to_vec()));
    let canonical = canonical_string(CREATE, app, &ts.to_string(), nonce, &digest);
    let signature = sign(secret.as_bytes(), &canonical);
    let mut r = tonic::Request::new(body);
    let md = r.metadata_mut();
    md.insert(APP_ID_HEADER, app.parse().unwrap());
    md.insert(TIMESTAMP_HEADER, ts.to_string().parse().unwrap());
    md.insert(NONCE_HEADER, nonce.parse().unwrap());
    md.insert(SIGNATURE_HEADER, signature.parse().unwrap());
    r
}

/// The call was refused as UNAUTHENTICATED with a message containing `text`.
fn assert_unauthenticated<T: std::fmt::Debug>(r: Result<T, tonic::Status>, text: &str) {
    let e = r.expect_err(text);
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains(text), "{e:?}");
}

fn fresh_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The value of `name{label="value"}` in a scrape.
fn metric(metrics: &str, name: &str, label: &str, value: &str) -> f64 {
    e2e::platform::metric_sum(metrics, &format!("{name}{{{label}=\"{value}\"}}"))
}

fn failures(metrics: &str, reason: &str) -> f64 {
    metric(metrics, "payd_auth_failures_total", "reason", reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_wrong_expired_future_and_malformed_calls_are_unauthenticated_and_change_nothing()
{
    let app = spawn_app().await;
    let mut raw = unsigned_client(app.endpoint()).await;
    let secret = test_secret(APP);

    // Unsigned: only x-app-id, as before authentication existed.
    assert_unauthenticated(
        raw.create_order(req(create("AUTH-1", 100))).await,
        "x-payd-timestamp metadata is required",
    );
    // No metadata at all.
    assert_unauthenticated(
        raw.create_order(tonic::Request::new(create("AUTH-1", 100)))
            .await,
        "x-app-id",
    );

    // Wrong secret.
    let mut wrong = client_as(
        app.endpoint(),
        APP,
        "a-wrong-secret-of-the-right-length-000000",
    )
    .await;
    assert_unauthenticated(
        wrong.create_order(req(create("AUTH-1", 100))).await,
        "does not match",
    );

    // A signature over another body (the amount changed after signing).
    let mut tampered = signed_create(APP, &secret, create("AUTH-1", 100), now(), &fresh_nonce());
    tampered.get_mut().amount.as_mut().unwrap().amount_minor = 1;
    assert_unauthenticated(raw.create_order(tampered).await, "does not match");

    // Expired and future-dated, both correctly signed: the default window is ±300 s.
    let old = signed_create(
        APP,
        &secret,
        create("AUTH-1", 100),
        now() - 301,
        &fresh_nonce(),
    );
    assert_unauthenticated(raw.create_order(old).await, "expired");
    let future = signed_create(
        APP,
        &secret,
        create("AUTH-1", 100),
        now() + 301,
        &fresh_nonce(),
    );
    assert_unauthenticated(raw.create_order(future).await, "in the future");

    // Malformed: a nonce too short, a timestamp that is not a number, a signature not hex.
    let mut short = signed_create(APP, &secret, create("AUTH-1", 100), now(), "abc");
    assert_unauthenticated(raw.create_order(short).await, "x-payd-nonce");
    short = signed_create(APP, &secret, create("AUTH-1", 100), now(), &fresh_nonce());
    short
        .metadata_mut()
        .insert(TIMESTAMP_HEADER, "17e8".parse().unwrap());
    assert_unauthenticated(raw.create_order(short).await, "Unix seconds");
    let mut nothex = signed_create(APP, &secret, create("AUTH-1", 100), now(), &fresh_nonce());
    nothex
        .metadata_mut()
        .insert(SIGNATURE_HEADER, "zz".repeat(32).parse().unwrap());
    assert_unauthenticated(raw.create_order(nothex).await, "64 hex digits");
    // An app nobody registered.
    assert_unauthenticated(
        raw.create_order(signed_create(
            "stranger",
            &secret,
            create("AUTH-1", 100),
            now(),
            &fresh_nonce(),
        ))
        .await,
        "no registered app",
    );

    assert_eq!(
        app.count("SELECT count(*) AS n FROM orders"),
        0,
        "a refused call created an order"
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM idempotency_keys"), 0);
    let m = app.metrics_text().await;
    assert_eq!(failures(&m, "missing"), 2.0);
    assert_eq!(failures(&m, "wrong_signature"), 2.0);
    assert_eq!(failures(&m, "expired"), 1.0);
    assert_eq!(failures(&m, "future"), 1.0);
    assert_eq!(failures(&m, "malformed"), 3.0);
    assert_eq!(failures(&m, "unknown_app"), 1.0);

    // The same request, signed now, goes through: the refusals were not about the body.
    let ok = signed_create(APP, &secret, create("AUTH-1", 100), now(), &fresh_nonce());
    raw.create_order(ok).await.unwrap();
    assert_eq!(app.count("SELECT count(*) AS n FROM orders"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_is_refused_even_with_a_new_idempotency_key_or_on_another_replica() {
    let app = spawn_app().await;
    let mut raw = unsigned_client(app.endpoint()).await;
    let secret = test_secret(APP);
    let nonce = fresh_nonce();
    let ts = now();
    raw.create_order(signed_create(
        APP,
        &secret,
        create("AUTH-R", 100),
        ts,
        &nonce,
    ))
    .await
    .unwrap();
    // The captured request, byte for byte.
    let e = raw
        .create_order(signed_create(
            APP,
            &secret,
            create("AUTH-R", 100),
            ts,
            &nonce,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("already used"), "{e:?}");
    // The nonce is spent for the app whatever the body: a different order under it is refused
    // too (an attacker cannot re-sign, but the rule is simple and checked).
    let e = raw
        .create_order(signed_create(
            APP,
            &secret,
            create("AUTH-R2", 100),
            ts,
            &nonce,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(app.count("SELECT count(*) AS n FROM orders"), 1);
    assert_eq!(failures(&app.metrics_text().await, "replayed"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_the_role_is_permission_denied_and_large_refunds_need_their_own() {
    let mut app = spawn_app_with(|s| s.refund_large_thresholds = "CNY=5000".into()).await;
    let mut reader = client_as(app.endpoint(), READER_APP, &test_secret(READER_APP)).await;
    let e = reader
        .create_order(req_as(READER_APP, create("AUTH-P", 100)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("orders.write"), "{e:?}");
    let e = reader
        .watch_events(req_as(READER_APP, pb::WatchEventsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // It may read: an unknown order is NOT_FOUND, not a refusal.
    let e = reader
        .get_order(req_as(
            READER_APP,
            pb::GetOrderRequest {
                lookup: Some(pb::get_order_request::Lookup::MerchantOrderNo(
                    "NO-SUCH-ORDER".into(),
                )),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(app.count("SELECT count(*) AS n FROM orders"), 0);

    // Refunds above CNY 50.00 need refunds.write_large, which SMALL_REFUNDS_APP lacks.
    let mut small = client_as(
        app.endpoint(),
        SMALL_REFUNDS_APP,
        &test_secret(SMALL_REFUNDS_APP),
    )
    .await;
    // (shop-1's order: the layer refuses before any service could say NOT_FOUND.)
    let order = paid_order(&mut app, "AUTH-L", "AUTHL0001", 10_000).await;
    let e = small
        .create_refund(req_as(
            SMALL_REFUNDS_APP,
            refund_req(&order.order_id, 5_001, "AUTH-L-RF1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("refunds.write_large"), "{e:?}");
    assert_eq!(app.count("SELECT count(*) AS n FROM refunds"), 0);
    // At the threshold it passes the layer (and reaches the service).
    let e = small
        .create_refund(req_as(
            SMALL_REFUNDS_APP,
            refund_req(&order.order_id, 5_000, "AUTH-L-RF2"),
        ))
        .await;
    assert!(
        e.as_ref()
            .map_or_else(|s| s.code() != Code::PermissionDenied, |_| true),
        "{e:?}"
    );
    let m = app.metrics_text().await;
    let denied = |role| metric(&m, "payd_auth_denials_total", "role", role);
    assert_eq!(denied("orders.write"), 1.0);
    assert_eq!(denied("events.read"), 1.0);
    assert_eq!(denied("refunds.write_large"), 1.0);
}

/// App A cannot read, pay, close or refund app B's order: to A it does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_read_pay_close_or_refund_another_apps_order() {
    let mut app = spawn_app().await;
    let open = create_order(&mut app, "AUTH-X1", 100).await;
    let paid = paid_order(&mut app, "AUTH-X2", "AUTHX0002", 100).await;
    let before = app.snapshot();
    let c = &mut app.client;
    let other = "shop-2";
    let e = c
        .get_order(req_as(
            other,
            pb::GetOrderRequest {
                lookup: Some(pb::get_order_request::Lookup::OrderId(
                    open.order_id.clone(),
                )),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .pay(req_as(
            other,
            pb::PayRequest {
                order_id: open.order_id.clone(),
                channel: payproto::channel::v1::Channel::Wechat as i32,
                method: payproto::channel::v1::PayMethod::WechatNative as i32,
                idempotency_key: "AUTH-X-PAY".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .close_order(req_as(
            other,
            pb::CloseOrderRequest {
                order_id: open.order_id.clone(),
                idempotency_key: "AUTH-X-CLOSE".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .create_refund(req_as(other, refund_req(&paid.order_id, 50, "AUTH-X-RF")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let listed = c
        .list_orders(req_as(other, pb::ListOrdersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.orders.is_empty());
    // Signing as shop-2 while naming shop-1 in x-app-id does not work either: the layer signs
    // as the app it holds the secret of, and the header it signs is the one it sends.
    let mut as_two = client_as(app.endpoint(), other, &test_secret(other)).await;
    let e = as_two
        .get_order(tonic::Request::new(pb::GetOrderRequest {
            lookup: Some(pb::get_order_request::Lookup::OrderId(
                open.order_id.clone(),
            )),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        app.snapshot(),
        before,
        "another app's calls changed something"
    );
}

/// An app over its rate gets RESOURCE_EXHAUSTED with a retry hint; other apps are served, and
/// the limit is in Redis (shared by replicas), so a second server sees the same budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_above_the_limit_is_resource_exhausted_while_other_apps_are_served() {
    let mut app = spawn_app().await;
    let mut limited = client_as(app.endpoint(), LIMITED_APP, &test_secret(LIMITED_APP)).await;
    let get = |app_id: &str| {
        req_as(
            app_id,
            pb::GetOrderRequest {
                lookup: Some(pb::get_order_request::Lookup::MerchantOrderNo(
                    "NO-SUCH-ORDER".into(),
                )),
            },
        )
    };
    let mut exhausted = 0;
    let mut hint = None;
    for _ in 0..20 {
        match limited.get_order(get(LIMITED_APP)).await {
            Err(e) if e.code() == Code::ResourceExhausted => {
                exhausted += 1;
                hint = e
                    .metadata()
                    .get("retry-after-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
            }
            Err(e) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
            Ok(_) => panic!("an unknown order was found"),
        }
        // Another app is served throughout.
        let e = app.client.get_order(get(APP)).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }
    // 5 a second with bursts of 5: twenty calls in well under a second admit about five.
    assert!(exhausted >= 10, "only {exhausted} of 20 were limited");
    let hint = hint.expect("a retry-after-ms hint");
    assert!((1..=1_000).contains(&hint), "{hint}");
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "payd_rate_limited_total", "app", LIMITED_APP),
        f64::from(exhausted)
    );
    // After the hinted wait the app is served again.
    tokio::time::sleep(std::time::Duration::from_millis(hint + 250)).await;
    let e = limited.get_order(get(LIMITED_APP)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// During a rotation both of an app's secrets verify; a secret that was removed does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_secrets_of_a_rotating_app_verify() {
    let app = spawn_app().await;
    for (i, secret) in [rotating_old_secret(), test_secret(ROTATING_APP)]
        .iter()
        .enumerate()
    {
        let mut c = client_as(app.endpoint(), ROTATING_APP, secret).await;
        let no = format!("ROT-000{i}");
        c.create_order(req_as(ROTATING_APP, create(&no, 100)))
            .await
            .unwrap();
    }
    let mut gone = client_as(
        app.endpoint(),
        ROTATING_APP,
        "test-fixture-retired-secret-of-rotating-1-x",
    )
    .await;
    let e = gone
        .create_order(req_as(ROTATING_APP, create("ROT-GONE", 100)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(app.count("SELECT count(*) AS n FROM orders"), 2);
}

/// Without Redis no replica can tell a replay: calls are refused as UNAVAILABLE, never let
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_calls_fail_closed() {
    let app = spawn_app_with(|s| {
        s.redis_url = payd::config::Secret::new("redis://127.0.0.1:1/");
    })
    .await;
    let mut c = app.client.clone();
    let e = c
        .create_order(req(create("AUTH-NR", 100)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(app.count("SELECT count(*) AS n FROM orders"), 0);
}
