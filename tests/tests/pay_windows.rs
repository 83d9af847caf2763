//! The double-charge windows of Pay and CloseOrder, each reproduced with real processes (payd
//! replicas, adapters, sandboxes), real Postgres and Redis, and the interleaving forced by a
//! sandbox fault mode or a paused process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e::calls::{self, Client, close, count, create, order_of, pay, pay_by, wait_status};
use e2e::platform::{Platform, PlatformOptions, SandboxedChannel};
use payproto::channel::v1 as cpb;
use payproto::channel::v1::channel_events_service_client::ChannelEventsServiceClient;
use payproto::payment::v1 as pb;
use serde_json::json;

fn opts(payd: &[(&str, &str)]) -> PlatformOptions {
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

async fn sandbox_state(
    p: &Platform,
    ch: SandboxedChannel,
    out_trade_no: &str,
) -> serde_json::Value {
    p.sandbox_get(ch, &format!("/sandbox/trades/{out_trade_no}"))
        .await["state"]
        .clone()
}

/// Successful charges at all three sandboxes for the attempts of one order.
async fn charges_of(p: &Platform, merchant_order_no: &str) -> usize {
    let mut n = 0;
    for ch in SandboxedChannel::ALL {
        if !p.sandbox_addrs.contains_key(&ch) {
            continue;
        }
        for no in p.sandbox_successes(ch).await {
            n += usize::try_from(count(
                p,
                &format!(
                    "SELECT count(*) AS n FROM payment_attempts a JOIN orders o ON o.id = a.order_id \
                     WHERE a.out_trade_no = '{no}' AND o.merchant_order_no = '{merchant_order_no}'"
                ),
            ))
            .unwrap();
        }
    }
    n
}

/// Item 1: "not found" at the channel is not "closed". On every ordered pair of channels: Pay
/// on the first, then Pay on the second, then the payer uses the first trade's parameters
/// anyway (submits the old UnionPay form, pays the old QR) and pays the second too. At most
/// one charge succeeds: the switch is refused while the old trade may still come into
/// existence, or the old trade was really closed at its channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_every_channel_pair_a_switch_leaves_at_most_one_payable_trade() {
    let p = Platform::start_with(&SandboxedChannel::ALL, 0.01, opts(&[]));
    let mut c = calls::client(p.payd.endpoint()).await;
    for (i, (first, second)) in SandboxedChannel::ALL
        .iter()
        .flat_map(|a| SandboxedChannel::ALL.iter().map(move |b| (*a, *b)))
        .filter(|(a, b)| a != b)
        .enumerate()
    {
        let no = format!("PAIR-{i:04}-{}-{}", first.name(), second.name());
        let order = create(&mut c, &no, 1000 + i64::try_from(i).unwrap()).await;
        let old = pay(&mut c, &order.order_id, first)
            .await
            .expect("first pay");
        let switched = pay(&mut c, &order.order_id, second).await;
        match &switched {
            Ok(_) => {
                // Allowed only if the old trade was confirmed closed at its channel.
                let out = &old.attempt.as_ref().unwrap().out_trade_no;
                assert_eq!(sandbox_state(&p, first, out).await, json!("CLOSED"), "{no}");
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{no}: {e:?}");
                assert!(e.message().contains("retry after"), "{no}: {}", e.message());
            }
        }
        // The payer uses both sets of parameters they were given.
        p.payer_pays(first, &old, "success").await;
        if let Ok(new) = &switched {
            p.payer_pays(second, new, "success").await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            charges_of(&p, &no).await,
            1,
            "{no}: one order charged twice (switch {:?})",
            switched
                .as_ref()
                .map(|_| "allowed")
                .map_err(tonic::Status::code)
        );
        wait_status(
            &mut c,
            &order.order_id,
            pb::OrderStatus::Paid,
            Duration::from_secs(20),
        )
        .await;
    }
    // CloseOrder follows the same rule: an open Alipay QR or UnionPay form blocks it.
    for ch in [SandboxedChannel::Alipay, SandboxedChannel::Unionpay] {
        let order = create(&mut c, &format!("CLOSE-OPEN-{}", ch.name()), 500).await;
        pay(&mut c, &order.order_id, ch).await.expect("pay");
        let err = close(&mut c, &order.order_id).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert_eq!(
            order_of(&mut c, &order.order_id).await.status,
            pb::OrderStatus::Paying as i32
        );
    }
}

/// Item 1, continued: once the trade's own deadline (sent to the channel) has lapsed, the
/// channel can no longer take the payment, and the switch goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_that_cannot_be_closed_blocks_a_switch_only_until_its_deadline() {
    let p = Platform::start_with(
        &[SandboxedChannel::Unionpay, SandboxedChannel::Wechat],
        0.01,
        opts(&[
            ("PAYD_PAY_WINDOW_UNIONPAY_SECS", "2"),
            ("PAYD_PAY_DEADLINE_MARGIN_MS", "500"),
        ]),
    );
    let mut c = calls::client(p.payd.endpoint()).await;
    let order = create(&mut c, "DEADLINE-0001", 700).await;
    let old = pay(&mut c, &order.order_id, SandboxedChannel::Unionpay)
        .await
        .expect("pay");
    let err = pay(&mut c, &order.order_id, SandboxedChannel::Wechat)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    tokio::time::sleep(Duration::from_millis(3_600)).await;
    // Past the deadline the gateway refuses the old form's payment …
    assert_ne!(
        p.payer_pays(SandboxedChannel::Unionpay, &old, "success")
            .await,
        200
    );
    // … and the switch is allowed.
    let new = pay(&mut c, &order.order_id, SandboxedChannel::Wechat)
        .await
        .expect("switch after the deadline");
    assert_eq!(
        p.payer_pays(SandboxedChannel::Wechat, &new, "success")
            .await,
        200
    );
    wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(charges_of(&p, "DEADLINE-0001").await, 1);
    let a = old.attempt.unwrap();
    assert_eq!(
        count(
            &p,
            &format!(
                "SELECT count(*) AS n FROM payment_attempts WHERE out_trade_no = '{}' AND status IN ('CLOSED', 'FAILED')",
                a.out_trade_no
            )
        ),
        1
    );
}

/// Item 2: a Pay whose Prepay is delayed (the sandbox answers late) while its payd is paused
/// past the lock TTL; meanwhile another replica closes the order (then, on a second order,
/// switches channel). The delayed caller gets an error, never parameters, and one trade at
/// most is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pay_delayed_past_its_lock_gets_an_error_while_another_replica_closes_or_switches() {
    let p = Platform::start_with(
        &[SandboxedChannel::Wechat, SandboxedChannel::Alipay],
        0.01,
        opts(&[("PAYD_LOCK_TTL_MS", "600")]),
    );
    let other = p.spawn_payd();
    let mut c1 = calls::client(p.payd.endpoint()).await;
    let mut c2 = calls::client(other.endpoint()).await;

    for (n, switch) in [(1, false), (2, true)] {
        let no = format!("DELAYED-{n:04}");
        let order = create(&mut c1, &no, 900).await;
        p.sandbox_post(
            SandboxedChannel::Wechat,
            "/sandbox/faults",
            json!({"api_delay_ms": 2_000}),
        )
        .await;
        let id = order.order_id.clone();
        let mut delayed_client = c1.clone();
        let delayed =
            tokio::spawn(
                async move { pay(&mut delayed_client, &id, SandboxedChannel::Wechat).await },
            );
        // The Prepay has reached the sandbox (which executes it and answers late); freeze the
        // caller's payd past its lock TTL, so it cannot renew the lock.
        tokio::time::sleep(Duration::from_millis(500)).await;
        p.payd.pause();
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let second = if switch {
            pay(&mut c2, &order.order_id, SandboxedChannel::Alipay)
                .await
                .map(|r| r.order.unwrap())
        } else {
            close(&mut c2, &order.order_id).await
        };
        p.payd.resume();
        let second = second.expect("the other replica's call");
        p.sandbox_post(
            SandboxedChannel::Wechat,
            "/sandbox/faults",
            json!({"api_delay_ms": 0}),
        )
        .await;
        let delayed = delayed.await.unwrap();
        assert!(
            delayed.is_err(),
            "{no}: the delayed caller got parameters for an order that was {:?}: {delayed:?}",
            pb::OrderStatus::try_from(second.status)
        );
        // The WeChat trade the delayed Prepay opened is closed; at most the Alipay one is live.
        let trades = p
            .sandbox_get(SandboxedChannel::Wechat, "/sandbox/trades")
            .await;
        let mine: Vec<_> = trades
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| {
                count(
                    &p,
                    &format!(
                        "SELECT count(*) AS n FROM payment_attempts a JOIN orders o ON o.id = a.order_id \
                         WHERE a.out_trade_no = '{}' AND o.merchant_order_no = '{no}'",
                        t["out_trade_no"].as_str().unwrap()
                    ),
                ) == 1
            })
            .collect();
        assert_eq!(mine.len(), 1, "{no}: {trades}");
        assert_eq!(mine[0]["state"], json!("CLOSED"), "{no}: {trades}");
        let want = if switch {
            pb::OrderStatus::Paying
        } else {
            pb::OrderStatus::Closed
        };
        assert_eq!(order_of(&mut c1, &order.order_id).await.status, want as i32);
    }
}

/// Item 3: a close that finds the trade paid with another amount answers the truth: the order
/// is held for review, not "PAID".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_that_finds_a_payment_of_another_amount_says_so_and_moves_nothing() {
    let p = Platform::start_with(&[SandboxedChannel::Wechat], 0.01, opts(&[]));
    let mut c = calls::client(p.payd.endpoint()).await;
    let order = create(&mut c, "HELD-0001", 1500).await;
    let paying = pay(&mut c, &order.order_id, SandboxedChannel::Wechat)
        .await
        .expect("pay");
    p.sandbox_post(
        SandboxedChannel::Wechat,
        "/sandbox/faults",
        json!({"callback_mode": "lose", "reported_amount_delta_minor": 1}),
    )
    .await;
    assert_eq!(
        p.payer_pays(SandboxedChannel::Wechat, &paying, "success")
            .await,
        200
    );
    let err = close(&mut c, &order.order_id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("held for review"),
        "{}",
        err.message()
    );
    assert!(!err.message().contains("PAID"), "{}", err.message());
    assert_eq!(
        order_of(&mut c, &order.order_id).await.status,
        pb::OrderStatus::Paying as i32
    );
    assert_eq!(
        count(
            &p,
            "SELECT count(*) AS n FROM channel_events WHERE outcome = 'AMOUNT_MISMATCH'"
        ),
        1
    );
}

/// Item 4: a Prepay refusal is not proof of "unpaid". The first Pay's answer is lost (the
/// sandbox answers after the adapter's timeout), the payer pays that trade anyway, and the
/// next Pay's Prepay is refused (ORDERPAID): payd asks the channel and the order is PAID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_prepay_is_settled_by_asking_the_channel() {
    let p = Platform::start_with(&[SandboxedChannel::Wechat], 0.01, opts(&[]));
    let mut c = calls::client(p.payd.endpoint()).await;
    let order = create(&mut c, "REFUSED-0001", 800).await;
    p.sandbox_post(
        SandboxedChannel::Wechat,
        "/sandbox/faults",
        json!({"api_delay_ms": 3_500, "callback_mode": "lose"}),
    )
    .await;
    let lost = pay(&mut c, &order.order_id, SandboxedChannel::Wechat)
        .await
        .unwrap_err();
    assert_eq!(lost.code(), tonic::Code::Unavailable, "{lost:?}");
    p.sandbox_post(
        SandboxedChannel::Wechat,
        "/sandbox/faults",
        json!({"api_delay_ms": 0}),
    )
    .await;
    let trades = p
        .sandbox_get(SandboxedChannel::Wechat, "/sandbox/trades")
        .await;
    let out_trade_no = trades[0]["out_trade_no"].as_str().unwrap().to_owned();
    let (status, _) = p
        .sandbox_post(
            SandboxedChannel::Wechat,
            &format!("/sandbox/trades/{out_trade_no}/pay"),
            json!({"outcome": "success"}),
        )
        .await;
    assert_eq!(status, 200);
    let err = pay(&mut c, &order.order_id, SandboxedChannel::Wechat)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("PAID"), "{}", err.message());
    let o = order_of(&mut c, &order.order_id).await;
    assert_eq!(o.status, pb::OrderStatus::Paid as i32);
    assert_eq!(o.paid_minor, 800);

    // A refusal for a trade the channel never created fails the attempt and leaves the order
    // payable (PENDING), so the payer can try again.
    let order = create(&mut c, "REFUSED-0002", 800).await;
    let err = pay_by(
        &mut c,
        &order.order_id,
        SandboxedChannel::Wechat,
        cpb::PayMethod::WechatJsapi,
        "",
        "",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
        ),
        "{err:?}"
    );
    assert_eq!(
        order_of(&mut c, &order.order_id).await.status,
        pb::OrderStatus::Pending as i32
    );
    let again = pay(&mut c, &order.order_id, SandboxedChannel::Wechat)
        .await
        .expect("pay again");
    assert_eq!(again.order.unwrap().status, pb::OrderStatus::Paying as i32);
}

/// Item 5: two in-flight Pays with one idempotency key and different parameters. The key is
/// checked under the lock before any channel call: the second is refused and never touches a
/// channel, so it cannot close the first one's trade.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pays_with_one_key_and_other_parameters_never_close_each_others_trade() {
    let p = Platform::start_with(
        &[SandboxedChannel::Wechat, SandboxedChannel::Alipay],
        0.01,
        opts(&[]),
    );
    let mut c = calls::client(p.payd.endpoint()).await;
    for n in 0..3 {
        let order = create(&mut c, &format!("KEY-{n:04}"), 600).await;
        for ch in [SandboxedChannel::Wechat, SandboxedChannel::Alipay] {
            p.sandbox_post(ch, "/sandbox/faults", json!({"api_delay_ms": 400}))
                .await;
        }
        let key = format!("key-{n}");
        let calls_ = [SandboxedChannel::Wechat, SandboxedChannel::Alipay].map(|ch| {
            let mut c = c.clone();
            let id = order.order_id.clone();
            let key = key.clone();
            tokio::spawn(
                async move { pay_by(&mut c, &id, ch, calls::qr_method(ch), "", &key).await },
            )
        });
        let mut ok = Vec::new();
        let mut refused = 0;
        for h in calls_ {
            match h.await.unwrap() {
                Ok(r) => ok.push(r),
                Err(e) => {
                    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
                    refused += 1;
                }
            }
        }
        assert_eq!((ok.len(), refused), (1, 1));
        let winner = ok[0].attempt.as_ref().unwrap();
        let mut trades = 0;
        for ch in [SandboxedChannel::Wechat, SandboxedChannel::Alipay] {
            let all = p.sandbox_get(ch, "/sandbox/trades").await;
            for t in all.as_array().unwrap() {
                if count(
                    &p,
                    &format!(
                        "SELECT count(*) AS n FROM payment_attempts WHERE out_trade_no = '{}' AND order_id = '{}'",
                        t["out_trade_no"].as_str().unwrap(),
                        order.order_id
                    ),
                ) == 1
                {
                    trades += 1;
                    assert_eq!(t["out_trade_no"], json!(winner.out_trade_no), "{t}");
                    assert_eq!(
                        t["state"],
                        json!("PENDING"),
                        "the winner's trade was closed: {t}"
                    );
                }
            }
        }
        assert!(trades <= 1, "the refused call opened a trade");
    }
}

/// Item 6: parameters are not handed out past their validity. A WeChat prepay_id lives 2 h;
/// here the window is 4 s: near its end a Pay opens a new trade (and closes the old one)
/// instead of replaying parameters the payer could no longer use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_near_the_end_of_their_validity_are_replaced_by_a_new_trade() {
    let p = Platform::start_with(
        &[SandboxedChannel::Wechat],
        0.01,
        opts(&[("PAYD_PAY_WINDOW_WECHAT_SECS", "4")]),
    );
    let mut c = calls::client(p.payd.endpoint()).await;
    let order = create(&mut c, "STALE-0001", 400).await;
    let first = pay(&mut c, &order.order_id, SandboxedChannel::Wechat)
        .await
        .expect("pay");
    let again = pay(&mut c, &order.order_id, SandboxedChannel::Wechat)
        .await
        .expect("pay again");
    let a = first.attempt.unwrap().out_trade_no;
    assert_eq!(
        again.attempt.unwrap().out_trade_no,
        a,
        "fresh parameters are reused"
    );
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    let late = pay(&mut c, &order.order_id, SandboxedChannel::Wechat)
        .await
        .expect("late pay");
    let b = late.attempt.as_ref().unwrap().out_trade_no.clone();
    assert_ne!(a, b, "stale parameters were handed out again");
    assert_eq!(
        sandbox_state(&p, SandboxedChannel::Wechat, &a).await,
        json!("CLOSED")
    );
    assert_eq!(
        p.payer_pays(SandboxedChannel::Wechat, &late, "success")
            .await,
        200
    );
    wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(20),
    )
    .await;
}

async fn report_as_adapter(
    p: &Platform,
    ch: SandboxedChannel,
    event_id: &str,
    result: cpb::PaymentResult,
) {
    let mut events = ChannelEventsServiceClient::connect(p.payd.endpoint())
        .await
        .unwrap();
    let mut r = tonic::Request::new(cpb::ReportPaymentRequest {
        channel: calls::channel_of(ch) as i32,
        channel_event_id: event_id.into(),
        result: Some(result),
    });
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", p.tokens[&ch]).parse().unwrap(),
    );
    events.report_payment(r).await.expect("report");
}

/// Item 7: when an order becomes PAID, its other open trade is closed at its channel, so a
/// second QR still on the payer's screen cannot be paid. Here an attempt the core had closed
/// reports a success after all (the channel's late word: money moved), while a newer attempt
/// is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_an_order_is_paid_its_other_open_trade_is_closed_at_its_channel() {
    let p = Platform::start_with(&[SandboxedChannel::Wechat], 0.01, opts(&[]));
    let mut c: Client = calls::client(p.payd.endpoint()).await;
    let order = create(&mut c, "OTHERS-0001", 1100).await;
    let jsapi = pay_by(
        &mut c,
        &order.order_id,
        SandboxedChannel::Wechat,
        cpb::PayMethod::WechatJsapi,
        "oPayer0000000000000000000001",
        "",
    )
    .await
    .expect("pay jsapi");
    let native = pay(&mut c, &order.order_id, SandboxedChannel::Wechat)
        .await
        .expect("switch to native");
    let a = jsapi.attempt.unwrap().out_trade_no;
    let b = native.attempt.as_ref().unwrap().out_trade_no.clone();
    assert_eq!(
        sandbox_state(&p, SandboxedChannel::Wechat, &a).await,
        json!("CLOSED")
    );
    report_as_adapter(
        &p,
        SandboxedChannel::Wechat,
        "late-success-1",
        cpb::PaymentResult {
            out_trade_no: a.clone(),
            state: cpb::TradeState::Succeeded as i32,
            channel_trade_no: format!("4200{a}"),
            paid: Some(cpb::Money {
                amount_minor: 1100,
                currency: "CNY".into(),
            }),
            paid_at: None,
            channel_status: "SUCCESS".into(),
        },
    )
    .await;
    wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(10),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sandbox_state(&p, SandboxedChannel::Wechat, &b).await != json!("CLOSED") {
        assert!(
            std::time::Instant::now() < deadline,
            "the second trade stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        p.payer_pays(SandboxedChannel::Wechat, &native, "success")
            .await,
        409
    );
    // The core records the close once the channel confirmed it.
    let sql = format!(
        "SELECT count(*) AS n FROM payment_attempts WHERE out_trade_no = '{b}' AND status = 'CLOSED'"
    );
    while count(&p, &sql) != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second attempt stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
