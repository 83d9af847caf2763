//! End to end, per channel, with real processes: payd, the channel's adapter and its sandbox.
//! CreateOrder → Pay → the sandbox's payer pays → signed callback → the adapter verifies and
//! forwards → the order is PAID with the amount checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e::calls::{count, create, order_of, req, wait_status};
use e2e::platform::{Platform, SandboxedChannel, metric_sum};
use payproto::channel::v1 as cpb;
use payproto::payment::v1 as pb;
use serde_json::json;

fn channel_and_method(ch: SandboxedChannel) -> (cpb::Channel, cpb::PayMethod) {
    match ch {
        SandboxedChannel::Wechat => (cpb::Channel::Wechat, cpb::PayMethod::WechatNative),
        SandboxedChannel::Alipay => (cpb::Channel::Alipay, cpb::PayMethod::AlipayQr),
        SandboxedChannel::Unionpay => (cpb::Channel::Unionpay, cpb::PayMethod::UnionpayFront),
    }
}

async fn client(p: &Platform) -> e2e::calls::Client {
    e2e::calls::client(p.payd.endpoint()).await
}

async fn pay(
    c: &mut e2e::calls::Client,
    order: &pb::Order,
    ch: SandboxedChannel,
) -> Result<pb::PayResponse, tonic::Status> {
    let (channel, method) = channel_and_method(ch);
    c.pay(req(pb::PayRequest {
        order_id: order.order_id.clone(),
        channel: channel as i32,
        method: method as i32,
        payer: Some(pb::Payer {
            payer_id: String::new(),
            client_ip: "203.0.113.7".into(),
        }),
        idempotency_key: String::new(),
    }))
    .await
    .map(|r| r.into_inner())
}

async fn pays_end_to_end(ch: SandboxedChannel) {
    let p = Platform::start_channels(&[ch], 0.01);
    let mut c = client(&p).await;
    let order = create(&mut c, &format!("E2E-{}-0001", ch.name()), 8888).await;
    let paying = pay(&mut c, &order, ch).await.expect("pay");
    assert_eq!(
        paying.order.as_ref().unwrap().status,
        pb::OrderStatus::Paying as i32
    );
    assert!(!paying.pay_params.is_empty(), "no pay params");
    let out_trade_no = paying.attempt.as_ref().unwrap().out_trade_no.clone();

    // The sandbox holds the trade the adapter opened, for the order's amount.
    let trade = p
        .sandbox_get(ch, &format!("/sandbox/trades/{out_trade_no}"))
        .await;
    assert_eq!(trade["amount_minor"], json!(8888), "{trade}");
    assert_eq!(trade["prepay_requests"], json!(1), "{trade}");

    // The payer pays; the platform calls back; the adapter verifies and forwards.
    let (status, body) = p
        .sandbox_post(
            ch,
            &format!("/sandbox/trades/{out_trade_no}/pay"),
            json!({"outcome": "success"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let paid = wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(paid.paid_minor, 8888);
    assert_eq!(
        count(
            &p,
            &format!(
                "SELECT count(*) AS n FROM payment_attempts WHERE out_trade_no = '{out_trade_no}' AND status = 'SUCCEEDED' AND paid_minor = 8888"
            )
        ),
        1
    );
    // The sandbox's ledger agrees: exactly one successful trade for the order.
    let trade = p
        .sandbox_get(ch, &format!("/sandbox/trades/{out_trade_no}"))
        .await;
    assert_eq!(trade["state"], json!("SUCCEEDED"), "{trade}");
    let m = p.adapter_metrics(ch).await;
    assert!(
        metric_sum(&m, "adapter_callbacks_total{channel=\"") >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_pays_end_to_end() {
    pays_end_to_end(SandboxedChannel::Wechat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_pays_end_to_end() {
    pays_end_to_end(SandboxedChannel::Alipay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unionpay_pays_end_to_end() {
    pays_end_to_end(SandboxedChannel::Unionpay).await;
}

/// The documented failure reply of each platform's callback protocol.
fn is_documented_failure(ch: SandboxedChannel, status: u64, body: &str) -> bool {
    match ch {
        // WeChat: anything but 200/204 makes it retry; we answer 4xx/5xx {"code":"FAIL",…}.
        SandboxedChannel::Wechat => !(status == 200 || status == 204) && body.contains("FAIL"),
        // Alipay: anything but the exact body `success` is a failure.
        SandboxedChannel::Alipay => body.trim() != "success",
        // UnionPay: only HTTP 200 counts as delivered.
        SandboxedChannel::Unionpay => status != 200,
    }
}

async fn forged_callbacks_are_rejected(ch: SandboxedChannel, tampers: &[&str]) {
    let p = Platform::start_channels(&[ch], 0.01);
    let mut c = client(&p).await;
    let order = create(&mut c, &format!("FORGE-{}-01", ch.name()), 4200).await;
    let paying = pay(&mut c, &order, ch).await.expect("pay");
    let out_trade_no = paying.attempt.unwrap().out_trade_no;
    // The payer really pays, but callbacks are lost: only our forged ones arrive.
    let (s, _) = p
        .sandbox_post(ch, "/sandbox/faults", json!({"callback_mode": "lose"}))
        .await;
    assert_eq!(s, 200);
    let (s, _) = p
        .sandbox_post(
            ch,
            &format!("/sandbox/trades/{out_trade_no}/pay"),
            json!({"outcome": "success"}),
        )
        .await;
    assert_eq!(s, 200);
    for tamper in tampers {
        let (s, reply) = p
            .sandbox_post(
                ch,
                &format!("/sandbox/trades/{out_trade_no}/notify"),
                json!({"tamper": tamper}),
            )
            .await;
        assert_eq!(s, 200, "{reply}");
        let status = reply["http_status"].as_u64().unwrap_or(0);
        let body = reply["body"].as_str().unwrap_or_default();
        assert!(
            is_documented_failure(ch, status, body),
            "{tamper}: {status} {body}"
        );
    }
    let o = order_of(&mut c, &order.order_id).await;
    assert_eq!(
        o.status,
        pb::OrderStatus::Paying as i32,
        "a forged callback changed the order"
    );
    assert_eq!(count(&p, "SELECT count(*) AS n FROM channel_events"), 0);
    let m = p.adapter_metrics(ch).await;
    let rejected = metric_sum(&m, "adapter_callback_rejections_total{");
    assert_eq!(rejected, tampers.len() as f64, "{m}");

    // The genuine callback still goes through afterwards.
    let (s, reply) = p
        .sandbox_post(
            ch,
            &format!("/sandbox/trades/{out_trade_no}/notify"),
            json!({"tamper": "none"}),
        )
        .await;
    assert_eq!(s, 200, "{reply}");
    assert!(
        !is_documented_failure(
            ch,
            reply["http_status"].as_u64().unwrap_or(0),
            reply["body"].as_str().unwrap_or_default()
        ),
        "{reply}"
    );
    wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_rejects_forged_tampered_wrong_serial_and_stale_callbacks() {
    forged_callbacks_are_rejected(
        SandboxedChannel::Wechat,
        &["signature", "body", "serial", "stale_timestamp"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_rejects_forged_tampered_and_foreign_key_callbacks() {
    forged_callbacks_are_rejected(SandboxedChannel::Alipay, &["signature", "body", "serial"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unionpay_rejects_forged_tampered_and_wrong_cert_callbacks() {
    forged_callbacks_are_rejected(SandboxedChannel::Unionpay, &["signature", "body", "serial"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_pays_open_one_attempt_and_one_prepay() {
    let p = Platform::start_channels(&[SandboxedChannel::Wechat], 0.01);
    let mut c = client(&p).await;
    let order = create(&mut c, "CONCURRENT-PAY-01", 1999).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut c = c.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            // A busy lock answers ABORTED: the caller retries, as a client would.
            loop {
                match pay(&mut c, &order, SandboxedChannel::Wechat).await {
                    Err(s) if s.code() == tonic::Code::Aborted => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    other => return other,
                }
            }
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap().expect("pay"));
    }
    let first = &replies[0];
    for r in &replies {
        assert_eq!(r.pay_params, first.pay_params);
        assert_eq!(r.attempt, first.attempt);
    }
    assert_eq!(count(&p, "SELECT count(*) AS n FROM payment_attempts"), 1);
    let out_trade_no = &first.attempt.as_ref().unwrap().out_trade_no;
    let trades = p
        .sandbox_get(SandboxedChannel::Wechat, "/sandbox/trades")
        .await;
    assert_eq!(trades.as_array().map(Vec::len), Some(1), "{trades}");
    let trade = p
        .sandbox_get(
            SandboxedChannel::Wechat,
            &format!("/sandbox/trades/{out_trade_no}"),
        )
        .await;
    assert_eq!(trade["prepay_requests"], json!(1), "{trade}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_killed_before_forwarding_loses_nothing() {
    let mut p = Platform::start_channels(&[SandboxedChannel::Wechat], 0.01);
    let mut c = client(&p).await;
    let order = create(&mut c, "KILLED-ADAPTER-1", 2500).await;
    let paying = pay(&mut c, &order, SandboxedChannel::Wechat)
        .await
        .expect("pay");
    let out_trade_no = paying.attempt.unwrap().out_trade_no;

    p.kill_adapter(SandboxedChannel::Wechat);
    let (s, _) = p
        .sandbox_post(
            SandboxedChannel::Wechat,
            &format!("/sandbox/trades/{out_trade_no}/pay"),
            json!({"outcome": "success"}),
        )
        .await;
    assert_eq!(s, 200);
    // The platform's first deliveries hit a dead adapter.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        order_of(&mut c, &order.order_id).await.status,
        pb::OrderStatus::Paying as i32
    );
    let log = p
        .sandbox_get(SandboxedChannel::Wechat, "/sandbox/callbacks")
        .await;
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|d| d["delivered"] == json!(false)),
        "no failed delivery: {log}"
    );

    // Back up: the platform's retry schedule brings the result.
    p.start_adapter(SandboxedChannel::Wechat);
    let paid = wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(paid.paid_minor, 2500);
    assert_eq!(count(&p, "SELECT count(*) AS n FROM channel_events"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_channel_closes_the_old_trade_first_and_paid_or_closed_orders_refuse_pay() {
    let p = Platform::start_channels(&[SandboxedChannel::Wechat, SandboxedChannel::Alipay], 0.01);
    let mut c = client(&p).await;

    // WeChat first, then the payer changes their mind: the WeChat trade is closed at WeChat
    // before the Alipay one opens.
    let order = create(&mut c, "SWITCH-00001", 1200).await;
    let wx = pay(&mut c, &order, SandboxedChannel::Wechat)
        .await
        .expect("pay wechat")
        .attempt
        .unwrap();
    let ali = pay(&mut c, &order, SandboxedChannel::Alipay)
        .await
        .expect("pay alipay")
        .attempt
        .unwrap();
    assert_ne!(wx.out_trade_no, ali.out_trade_no);
    let wx_trade = p
        .sandbox_get(
            SandboxedChannel::Wechat,
            &format!("/sandbox/trades/{}", wx.out_trade_no),
        )
        .await;
    assert_eq!(wx_trade["state"], json!("CLOSED"), "{wx_trade}");
    assert_eq!(
        count(
            &p,
            &format!(
                "SELECT count(*) AS n FROM payment_attempts WHERE out_trade_no = '{}' AND status = 'CLOSED'",
                wx.out_trade_no
            )
        ),
        1
    );
    p.sandbox_post(
        SandboxedChannel::Alipay,
        &format!("/sandbox/trades/{}/pay", ali.out_trade_no),
        json!({"outcome": "success"}),
    )
    .await;
    wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(20),
    )
    .await;
    let err = pay(&mut c, &order, SandboxedChannel::Wechat)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("PAID"), "{}", err.message());

    // The payer paid by WeChat but the callback was lost; switching to Alipay finds the payment
    // when closing the WeChat trade: the order is PAID and no second trade opens.
    let order2 = create(&mut c, "SWITCH-00002", 700).await;
    p.sandbox_post(
        SandboxedChannel::Wechat,
        "/sandbox/faults",
        json!({"callback_mode": "lose"}),
    )
    .await;
    let wx2 = pay(&mut c, &order2, SandboxedChannel::Wechat)
        .await
        .expect("pay")
        .attempt
        .unwrap();
    p.sandbox_post(
        SandboxedChannel::Wechat,
        &format!("/sandbox/trades/{}/pay", wx2.out_trade_no),
        json!({"outcome": "success"}),
    )
    .await;
    let err = pay(&mut c, &order2, SandboxedChannel::Alipay)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        order_of(&mut c, &order2.order_id).await.status,
        pb::OrderStatus::Paid as i32
    );
    assert_eq!(
        count(
            &p,
            "SELECT count(*) AS n FROM payment_attempts a JOIN orders o ON o.id = a.order_id \
             WHERE o.merchant_order_no = 'SWITCH-00002'"
        ),
        1
    );

    // CloseOrder on a PAYING order closes the trade at the channel too.
    let order3 = create(&mut c, "SWITCH-00003", 300).await;
    let wx3 = pay(&mut c, &order3, SandboxedChannel::Wechat)
        .await
        .expect("pay")
        .attempt
        .unwrap();
    let closed = c
        .close_order(req(pb::CloseOrderRequest {
            order_id: order3.order_id.clone(),
            idempotency_key: String::new(),
        }))
        .await
        .expect("close")
        .into_inner()
        .order
        .unwrap();
    assert_eq!(closed.status, pb::OrderStatus::Closed as i32);
    let t = p
        .sandbox_get(
            SandboxedChannel::Wechat,
            &format!("/sandbox/trades/{}", wx3.out_trade_no),
        )
        .await;
    assert_eq!(t["state"], json!("CLOSED"), "{t}");
    let err = pay(&mut c, &order3, SandboxedChannel::Wechat)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("CLOSED"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_unionpay_trade_which_cannot_be_closed_blocks_a_switch_instead_of_risking_two_charges()
 {
    let p = Platform::start_channels(
        &[SandboxedChannel::Unionpay, SandboxedChannel::Wechat],
        0.01,
    );
    let mut c = client(&p).await;
    let order = create(&mut c, "UNION-SWITCH-1", 900).await;
    let up = pay(&mut c, &order, SandboxedChannel::Unionpay)
        .await
        .expect("pay")
        .attempt
        .unwrap();
    let err = pay(&mut c, &order, SandboxedChannel::Wechat)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains(&up.out_trade_no),
        "{}",
        err.message()
    );
    assert_eq!(count(&p, "SELECT count(*) AS n FROM payment_attempts"), 1);
    let trades = p
        .sandbox_get(SandboxedChannel::Wechat, "/sandbox/trades")
        .await;
    assert_eq!(trades.as_array().map(Vec::len), Some(0), "{trades}");
    // Paying the open trade still works.
    p.sandbox_post(
        SandboxedChannel::Unionpay,
        &format!("/sandbox/trades/{}/pay", up.out_trade_no),
        json!({"outcome": "success"}),
    )
    .await;
    wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(20),
    )
    .await;
}

/// Pays one order through `ch` and waits until it is PAID.
async fn pay_one(p: &Platform, c: &mut e2e::calls::Client, ch: SandboxedChannel, no: &str) {
    let order = create(c, no, 100).await;
    let paying = pay(c, &order, ch).await.expect("pay");
    let out_trade_no = paying.attempt.as_ref().unwrap().out_trade_no.clone();
    let (status, body) = p
        .sandbox_post(
            ch,
            &format!("/sandbox/trades/{out_trade_no}/pay"),
            json!({"outcome": "success"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_status(
        c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(20),
    )
    .await;
}

/// WeChat rotates its platform key in the middle of a run of 100 payments: public key only, then
/// the public key and a new platform certificate at random, then the certificate only. The adapter
/// (never restarted) learns the certificate from /v3/certificates when it first sees its serial,
/// and every callback is accepted at its first delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_platform_key_rotation_during_100_payments_loses_no_callback() {
    let p = Platform::start_channels(&[SandboxedChannel::Wechat], 0.01);
    let mut c = client(&p).await;
    let adapter_pid = p.adapters[&SandboxedChannel::Wechat].child.id();
    for i in 0..30 {
        pay_one(&p, &mut c, SandboxedChannel::Wechat, &format!("ROT-{i:04}")).await;
    }
    let (status, rotated) = p
        .sandbox_post(SandboxedChannel::Wechat, "/sandbox/keys/rotate", json!({}))
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_serial = rotated["serial"].as_str().unwrap().to_owned();
    for i in 30..70 {
        pay_one(&p, &mut c, SandboxedChannel::Wechat, &format!("ROT-{i:04}")).await;
    }
    let (status, retired) = p
        .sandbox_post(SandboxedChannel::Wechat, "/sandbox/keys/retire", json!({}))
        .await;
    assert_eq!(status, 200, "{retired}");
    assert_eq!(retired["active"], json!([new_serial]));
    for i in 70..100 {
        pay_one(&p, &mut c, SandboxedChannel::Wechat, &format!("ROT-{i:04}")).await;
    }

    assert_eq!(
        p.adapters[&SandboxedChannel::Wechat].child.id(),
        adapter_pid,
        "no restart"
    );
    let log = p
        .sandbox_get(SandboxedChannel::Wechat, "/sandbox/callbacks")
        .await;
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 100, "one delivery per payment, no retry");
    assert!(
        log.iter()
            .all(|e| e["delivered"] == json!(true) && e["attempt"] == json!(1)),
        "{log:?}"
    );
    let m = p.adapter_metrics(SandboxedChannel::Wechat).await;
    assert_eq!(
        metric_sum(&m, "adapter_callback_rejections_total{"),
        0.0,
        "{m}"
    );
    assert_eq!(
        count(&p, "SELECT count(*) AS n FROM orders WHERE status = 'PAID'"),
        100
    );
}

/// Alipay creates a precreate's trade only when the payer scans the QR code: until then the
/// sandbox (like Alipay) answers ACQ.TRADE_NOT_EXIST, which the adapter reports as NOT_FOUND, for
/// as long as nobody scans it. After the scan it is PENDING, and a payment makes the order PAID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alipay_qr_that_is_never_scanned_stays_not_found_until_scanned() {
    let p = Platform::start_channels(&[SandboxedChannel::Alipay], 0.01);
    let mut c = client(&p).await;
    let order = create(&mut c, "E2E-alipay-unscanned", 500).await;
    let paying = pay(&mut c, &order, SandboxedChannel::Alipay)
        .await
        .expect("pay");
    let out_trade_no = paying.attempt.as_ref().unwrap().out_trade_no.clone();
    let mut a = p.adapter_client(SandboxedChannel::Alipay).await;
    let mut query = async || {
        a.query_payment(cpb::QueryPaymentRequest {
            out_trade_no: out_trade_no.clone(),
            method: cpb::PayMethod::AlipayQr as i32,
            channel_prepay_id: String::new(),
            created_at: None,
        })
        .await
        .expect("query")
        .into_inner()
        .result
        .unwrap()
    };
    for _ in 0..5 {
        let r = query().await;
        assert_eq!(r.state, cpb::TradeState::NotFound as i32, "{r:?}");
        assert_eq!(r.channel_status, "ACQ.TRADE_NOT_EXIST");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, body) = p
        .sandbox_post(
            SandboxedChannel::Alipay,
            &format!("/sandbox/trades/{out_trade_no}/scan"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = query().await;
    assert_eq!(r.state, cpb::TradeState::Pending as i32, "{r:?}");
    let (status, body) = p
        .sandbox_post(
            SandboxedChannel::Alipay,
            &format!("/sandbox/trades/{out_trade_no}/pay"),
            json!({"outcome": "success"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(query().await.state, cpb::TradeState::Succeeded as i32);
}
