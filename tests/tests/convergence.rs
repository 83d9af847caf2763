//! Results converge without callbacks: active queries of open attempts and the expiry of unpaid
//! orders, with real processes (payd, adapters, sandboxes), real Postgres and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::calls::{self, Client, count, create, create_expiring, pay, wait_status};
use e2e::platform::{Platform, PlatformOptions, SandboxedChannel};
use payproto::channel::v1 as cpb;
use payproto::channel::v1::channel_events_service_client::ChannelEventsServiceClient;
use payproto::payment::v1 as pb;
use serde_json::json;

/// Short query schedules and expiries, so the tests see the jobs at work within seconds.
fn opts() -> PlatformOptions {
    let payd = [
        ("PAYD_PAYMENT_QUERY_DELAYS_MS", "200,200,400"),
        ("PAYD_PAYMENT_QUERY_CEILING_MS", "1000"),
        ("PAYD_PAYMENT_QUERY_TICK_MS", "50"),
        ("PAYD_EXPIRY_TICK_MS", "100"),
        ("PAYD_MIN_EXPIRY_SECS", "1"),
        ("PAYD_PAY_DEADLINE_MARGIN_MS", "300"),
    ];
    PlatformOptions {
        payd_env: payd
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        // The trade of a UnionPay front payment comes into existence when the payer's browser
        // submits the form, as at the real gateway.
        adapter_env: vec![(
            SandboxedChannel::Unionpay,
            "UNIONPAY_FRONT_REGISTER".into(),
            "false".into(),
        )],
    }
}

/// The sandbox's view of a trade: (HTTP status, its state or null).
async fn sandbox_trade(
    p: &Platform,
    ch: SandboxedChannel,
    out_trade_no: &str,
) -> (u16, serde_json::Value) {
    let r = reqwest::get(p.sandbox_url(ch, &format!("/sandbox/trades/{out_trade_no}")))
        .await
        .expect("sandbox reachable");
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, v["state"].clone())
}

async fn wait_sql(p: &Platform, sql: &str, want: i64, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while count(p, sql) != want {
        assert!(
            Instant::now() < deadline,
            "{what}: `{sql}` never gave {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn attempt_of(pay: &pb::PayResponse) -> String {
    pay.attempt.as_ref().expect("attempt").out_trade_no.clone()
}

/// The sandbox loses every callback: paid orders still end PAID, through active queries, on
/// every channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_callback_lost_paid_orders_end_paid_through_queries() {
    let p = Platform::start_with(&SandboxedChannel::ALL, 0.01, opts());
    let mut c: Client = calls::client(p.payd.endpoint()).await;
    for ch in SandboxedChannel::ALL {
        p.sandbox_post(ch, "/sandbox/faults", json!({"callback_mode": "lose"}))
            .await;
        let started = Instant::now();
        let (order, no) = p
            .paid_order(&mut c, ch, &format!("LOST-CB-{}", ch.name()), 1_234)
            .await;
        assert_eq!(order.status, pb::OrderStatus::Paid as i32);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}: took {:?}",
            ch.name(),
            started.elapsed()
        );
        // Learned by a query, not by a callback.
        assert_eq!(
            count(
                &p,
                &format!(
                    "SELECT count(*) AS n FROM channel_events WHERE out_trade_no = '{no}' \
                     AND event_id = 'query:{no}:SUCCEEDED' AND outcome = 'APPLIED'"
                )
            ),
            1,
            "{}",
            ch.name()
        );
        assert_eq!(
            count(
                &p,
                &format!(
                    "SELECT count(*) AS n FROM channel_events WHERE out_trade_no = '{no}' \
                     AND event_id NOT LIKE 'query:%'"
                )
            ),
            0,
            "{}: a callback arrived although the sandbox loses them",
            ch.name()
        );
        p.sandbox_delete(ch, "/sandbox/faults").await;
    }
}

/// An INIT attempt whose Prepay never reached the channel (its adapter is down during Pay) is
/// resolved by the query job: no such trade → CLOSED, never paid; the order stays payable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attempt_whose_prepay_never_reached_the_channel_resolves_closed() {
    let mut p = Platform::start_with(&SandboxedChannel::ALL, 0.01, opts());
    let mut c: Client = calls::client(p.payd.endpoint()).await;
    for ch in SandboxedChannel::ALL {
        let order = create(&mut c, &format!("LOST-PREPAY-{}", ch.name()), 2_000).await;
        p.kill_adapter(ch);
        let refused = pay(&mut c, &order.order_id, ch).await;
        assert!(refused.is_err(), "{}: {refused:?}", ch.name());
        let init = format!(
            "SELECT count(*) AS n FROM payment_attempts WHERE order_id = '{}' AND status = 'INIT'",
            order.order_id
        );
        assert_eq!(count(&p, &init), 1, "{}", ch.name());
        p.start_adapter(ch);
        wait_sql(
            &p,
            &format!(
                "SELECT count(*) AS n FROM payment_attempts WHERE order_id = '{}' AND status = 'CLOSED'",
                order.order_id
            ),
            1,
            Duration::from_secs(10),
            ch.name(),
        )
        .await;
        let o = calls::order_of(&mut c, &order.order_id).await;
        assert_eq!(o.status, pb::OrderStatus::Pending as i32, "{}", ch.name());
        assert!(
            p.sandbox_successes(ch).await.is_empty(),
            "{}: something was charged",
            ch.name()
        );
        // The order can be paid afresh (a new attempt, a new out_trade_no).
        let again = pay(&mut c, &order.order_id, ch).await.expect("pay again");
        assert_eq!(
            again.order.as_ref().unwrap().status,
            pb::OrderStatus::Paying as i32
        );
    }
}

/// Orders left unpaid are CLOSED at their expiry, at the channel too: a WeChat trade and a
/// scanned Alipay trade are closed there; an Alipay QR never scanned and a UnionPay form never
/// submitted never became trades (the platform has no such trade); a UnionPay form submitted
/// but not paid is closed by the platform at its `payTimeout`. None can be paid afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unpaid_orders_are_closed_at_expiry_at_the_channel_too() {
    let p = Platform::start_with(&SandboxedChannel::ALL, 0.01, opts());
    let mut c: Client = calls::client(p.payd.endpoint()).await;
    let mut cases = Vec::new();
    // Never paid at all: no attempt.
    let bare = create_expiring(&mut c, "EXPIRE-BARE", 100, 3).await;
    for (ch, touched) in [
        (SandboxedChannel::Wechat, false),
        (SandboxedChannel::Alipay, false),
        (SandboxedChannel::Alipay, true),
        (SandboxedChannel::Unionpay, false),
        (SandboxedChannel::Unionpay, true),
    ] {
        let order =
            create_expiring(&mut c, &format!("EXPIRE-{}-{touched}", ch.name()), 300, 3).await;
        let paid = pay(&mut c, &order.order_id, ch).await.expect("pay");
        let no = attempt_of(&paid);
        if touched {
            match ch {
                SandboxedChannel::Alipay => {
                    p.sandbox_post(ch, &format!("/sandbox/trades/{no}/scan"), json!({}))
                        .await;
                }
                SandboxedChannel::Unionpay => {
                    let params = paid.pay_params.clone().into_iter().collect();
                    p.payer_submits_form(&params).await;
                }
                SandboxedChannel::Wechat => {}
            }
        }
        cases.push((ch, touched, order, paid, no));
    }
    let within = Duration::from_secs(15);
    wait_status(&mut c, &bare.order_id, pb::OrderStatus::Closed, within).await;
    for (ch, touched, order, paid, no) in &cases {
        let what = format!("{}/{touched}", ch.name());
        wait_status(&mut c, &order.order_id, pb::OrderStatus::Closed, within).await;
        assert_eq!(
            count(
                &p,
                &format!(
                    "SELECT count(*) AS n FROM order_transitions WHERE order_id = '{}' \
                     AND to_status = 'CLOSED' AND reason = 'expired'",
                    order.order_id
                )
            ),
            1,
            "{what}"
        );
        // Settled, never paid: CLOSED, except a UnionPay form submitted but never paid, which
        // UnionPay's query reports as failed once it lapsed at its payTimeout.
        let closed = count(
            &p,
            &format!(
                "SELECT count(*) AS n FROM payment_attempts WHERE out_trade_no = '{no}' AND status = 'CLOSED'"
            ),
        );
        let failed = count(
            &p,
            &format!(
                "SELECT count(*) AS n FROM payment_attempts WHERE out_trade_no = '{no}' AND status = 'FAILED'"
            ),
        );
        let want = if (*ch, *touched) == (SandboxedChannel::Unionpay, true) {
            (0, 1)
        } else {
            (1, 0)
        };
        assert_eq!((closed, failed), want, "{what}: (closed, failed)");
        let (status, state) = sandbox_trade(&p, *ch, no).await;
        match (ch, touched) {
            (SandboxedChannel::Wechat, _)
            | (SandboxedChannel::Alipay, true)
            | (SandboxedChannel::Unionpay, true) => {
                assert_eq!(state, json!("CLOSED"), "{what}: HTTP {status}");
            }
            (SandboxedChannel::Alipay | SandboxedChannel::Unionpay, false) => {
                assert!(
                    status == 404 || state == json!("CLOSED"),
                    "{what}: HTTP {status} {state}"
                );
            }
        }
        assert_ne!(p.payer_pays(*ch, paid, "success").await, 200, "{what}");
    }
    for ch in SandboxedChannel::ALL {
        assert!(p.sandbox_successes(ch).await.is_empty(), "{}", ch.name());
    }
}

/// A success that arrives after the order expired still counts: the channel's late word (a
/// callback delivered after the close, money moved) takes the CLOSED order to PAID.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_success_after_expiry_still_counts() {
    let p = Platform::start_with(&[SandboxedChannel::Wechat], 0.01, opts());
    let mut c: Client = calls::client(p.payd.endpoint()).await;
    let order = create_expiring(&mut c, "EXPIRE-LATE", 700, 2).await;
    let paid = pay(&mut c, &order.order_id, SandboxedChannel::Wechat)
        .await
        .expect("pay");
    let no = attempt_of(&paid);
    wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Closed,
        Duration::from_secs(10),
    )
    .await;
    let mut events = ChannelEventsServiceClient::connect(p.payd.endpoint())
        .await
        .unwrap();
    let mut r = tonic::Request::new(cpb::ReportPaymentRequest {
        channel: calls::channel_of(SandboxedChannel::Wechat) as i32,
        channel_event_id: format!("late-{no}"),
        result: Some(cpb::PaymentResult {
            out_trade_no: no.clone(),
            state: cpb::TradeState::Succeeded as i32,
            channel_trade_no: format!("4200{no}"),
            paid: Some(cpb::Money {
                amount_minor: 700,
                currency: "CNY".into(),
            }),
            paid_at: None,
            channel_status: "SUCCESS".into(),
        }),
    });
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", p.tokens[&SandboxedChannel::Wechat])
            .parse()
            .unwrap(),
    );
    events.report_payment(r).await.expect("report");
    let o = wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(o.paid_minor, 700);
    assert_eq!(
        count(
            &p,
            &format!(
                "SELECT count(*) AS n FROM order_transitions WHERE order_id = '{}' \
                 AND from_status = 'CLOSED' AND to_status = 'PAID'",
                order.order_id
            )
        ),
        1
    );
}
