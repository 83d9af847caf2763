//! One conformance suite, run per channel against the real adapter process and its sandbox,
//! through `channel.v1.ChannelAdapter` as payd calls it: prepay, pending then paid on query,
//! idempotent prepay, partial refunds with their queries, a refund over the paid amount refused,
//! close of a paid trade answering SUCCEEDED, and (where the platform has one) the day's statement.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::platform::{AdapterClient, Platform, SandboxedChannel};
use payproto::channel::v1 as cpb;
use serde_json::json;

fn method(ch: SandboxedChannel) -> cpb::PayMethod {
    match ch {
        SandboxedChannel::Wechat => cpb::PayMethod::WechatNative,
        SandboxedChannel::Alipay => cpb::PayMethod::AlipayQr,
        SandboxedChannel::Unionpay => cpb::PayMethod::UnionpayFront,
    }
}

fn cny(minor: i64) -> Option<cpb::Money> {
    Some(cpb::Money {
        amount_minor: minor,
        currency: "CNY".into(),
    })
}

/// A fresh alphanumeric trade or refund number.
fn number(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..20]
    )
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp(),
        nanos: 0,
    }
}

async fn adapter(p: &Platform, ch: SandboxedChannel) -> AdapterClient {
    p.adapter_client(ch).await
}

async fn query(
    a: &mut AdapterClient,
    ch: SandboxedChannel,
    no: &str,
    prepay_id: &str,
) -> cpb::PaymentResult {
    a.query_payment(cpb::QueryPaymentRequest {
        out_trade_no: no.into(),
        method: method(ch) as i32,
        channel_prepay_id: prepay_id.into(),
        created_at: None,
    })
    .await
    .expect("query")
    .into_inner()
    .result
    .unwrap()
}

async fn conformance(ch: SandboxedChannel) {
    let p = Platform::start_channels(&[ch], 0.01);
    let mut a = adapter(&p, ch).await;
    let no = number("P");
    let prepay = cpb::PrepayRequest {
        out_trade_no: no.clone(),
        method: method(ch) as i32,
        amount: cny(10_000),
        subject: "conformance".into(),
        expires_at: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() + 900,
            nanos: 0,
        }),
        payer_id: String::new(),
        payer_ip: "198.51.100.4".into(),
        created_at: Some(now()),
    };
    let first = a.prepay(prepay.clone()).await.expect("prepay").into_inner();
    assert!(!first.pay_params.is_empty());
    let prepay_id = first.channel_prepay_id.clone();
    // The same prepay again is the same trade, with the same parameters for the payer.
    let again = a.prepay(prepay).await.expect("prepay again").into_inner();
    assert_eq!(again.pay_params, first.pay_params);
    assert_eq!(
        p.sandbox_get(ch, "/sandbox/trades")
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Pending before the payer pays.
    let r = query(&mut a, ch, &no, &prepay_id).await;
    assert!(
        [
            cpb::TradeState::Pending as i32,
            cpb::TradeState::NotFound as i32
        ]
        .contains(&r.state),
        "{r:?}"
    );

    p.sandbox_post(
        ch,
        &format!("/sandbox/trades/{no}/pay"),
        json!({"outcome": "success"}),
    )
    .await;
    let r = query(&mut a, ch, &no, &prepay_id).await;
    assert_eq!(r.state, cpb::TradeState::Succeeded as i32, "{r:?}");
    assert_eq!(r.paid, cny(10_000));
    assert!(!r.channel_trade_no.is_empty());

    // Closing a paid trade answers SUCCEEDED, never an error that could be read as "closed".
    let closed = a
        .close_payment(cpb::ClosePaymentRequest {
            out_trade_no: no.clone(),
            method: method(ch) as i32,
            channel_prepay_id: prepay_id.clone(),
            created_at: None,
        })
        .await
        .expect("close")
        .into_inner()
        .result
        .unwrap();
    assert_eq!(
        closed.state,
        cpb::TradeState::Succeeded as i32,
        "{closed:?}"
    );

    // Two partial refunds, each idempotent by its number, then one too many.
    let mut refunded = 0;
    for (i, amount) in [(1, 3_000), (2, 7_000)] {
        let refund_no = number(&format!("R{i}"));
        let created_at = Some(now());
        let req = cpb::RefundRequest {
            created_at,
            out_trade_no: no.clone(),
            out_refund_no: refund_no.clone(),
            refund: cny(amount),
            total: cny(10_000),
            reason: "conformance".into(),
            channel_trade_no: r.channel_trade_no.clone(),
        };
        let res = a
            .refund(req.clone())
            .await
            .expect("refund")
            .into_inner()
            .result
            .unwrap();
        assert!(
            [
                cpb::RefundState::Processing as i32,
                cpb::RefundState::Succeeded as i32
            ]
            .contains(&res.state),
            "{res:?}"
        );
        let again = a
            .refund(req)
            .await
            .expect("refund retried")
            .into_inner()
            .result
            .unwrap();
        assert_ne!(again.state, cpb::RefundState::Failed as i32, "{again:?}");
        let q = a
            .query_refund(cpb::QueryRefundRequest {
                out_trade_no: no.clone(),
                out_refund_no: refund_no.clone(),
                created_at,
            })
            .await
            .expect("query refund")
            .into_inner()
            .result
            .unwrap();
        assert_eq!(q.state, cpb::RefundState::Succeeded as i32, "{q:?}");
        refunded += amount;
    }
    assert_eq!(refunded, 10_000);
    let trade = p.sandbox_get(ch, &format!("/sandbox/trades/{no}")).await;
    let total: i64 = trade["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["amount_minor"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 10_000, "{trade}");

    let over = a
        .refund(cpb::RefundRequest {
            out_trade_no: no.clone(),
            out_refund_no: number("R9"),
            refund: cny(1),
            total: cny(10_000),
            reason: "one fen too many".into(),
            channel_trade_no: r.channel_trade_no.clone(),
            created_at: Some(now()),
        })
        .await;
    match over {
        Err(s) => assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}"),
        Ok(res) => assert_eq!(
            res.into_inner().result.unwrap().state,
            cpb::RefundState::Failed as i32
        ),
    }
    let trade = p.sandbox_get(ch, &format!("/sandbox/trades/{no}")).await;
    let total: i64 = trade["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["amount_minor"].as_i64().unwrap())
        .sum();
    assert_eq!(
        total, 10_000,
        "the platform refunded more than was paid: {trade}"
    );

    // The day's statement lists the payment (UnionPay's file transfer has no sandbox route yet).
    if ch != SandboxedChannel::Unionpay {
        let day = (chrono::Utc::now() + chrono::Duration::hours(8))
            .format("%Y-%m-%d")
            .to_string();
        let lines = a
            .fetch_statement(cpb::FetchStatementRequest { day })
            .await
            .expect("statement")
            .into_inner()
            .lines;
        assert!(
            lines.iter().any(|l| l.out_trade_no == no && l.trade_state == cpb::TradeState::Succeeded as i32),
            "{lines:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_adapter_conforms_against_its_sandbox() {
    conformance(SandboxedChannel::Wechat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_adapter_conforms_against_its_sandbox() {
    conformance(SandboxedChannel::Alipay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unionpay_adapter_conforms_against_its_sandbox() {
    conformance(SandboxedChannel::Unionpay).await;
}
