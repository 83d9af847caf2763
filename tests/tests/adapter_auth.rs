//! An adapter's `channel.v1.ChannelAdapter` admits payd's token only: a caller with no token or
//! another token cannot close or refund a trade (the sandbox's ledger shows nothing happened),
//! while payd's token works and the health service stays open for probes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::platform::{AdapterClient, Platform, SandboxedChannel, metric_sum};
use payproto::channel::v1 as cpb;
use serde_json::json;

fn cny(minor: i64) -> Option<cpb::Money> {
    Some(cpb::Money {
        amount_minor: minor,
        currency: "CNY".into(),
    })
}

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

async fn prepay(a: &mut AdapterClient, no: &str) -> Result<cpb::PrepayResponse, tonic::Status> {
    a.prepay(cpb::PrepayRequest {
        out_trade_no: no.into(),
        method: cpb::PayMethod::WechatNative as i32,
        amount: cny(5_000),
        subject: "auth".into(),
        expires_at: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() + 900,
            nanos: 0,
        }),
        payer_id: String::new(),
        payer_ip: "198.51.100.4".into(),
        created_at: Some(now()),
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn close(a: &mut AdapterClient, no: &str, prepay_id: &str) -> Result<(), tonic::Status> {
    a.close_payment(cpb::ClosePaymentRequest {
        out_trade_no: no.into(),
        method: cpb::PayMethod::WechatNative as i32,
        channel_prepay_id: prepay_id.into(),
        created_at: None,
    })
    .await
    .map(drop)
}

async fn refund(a: &mut AdapterClient, no: &str, trade_no: &str) -> Result<(), tonic::Status> {
    a.refund(cpb::RefundRequest {
        out_trade_no: no.into(),
        out_refund_no: number("R"),
        refund: cny(5_000),
        total: cny(5_000),
        reason: "auth".into(),
        channel_trade_no: trade_no.into(),
        created_at: Some(now()),
    })
    .await
    .map(drop)
}

fn assert_unauthenticated(r: Result<(), tonic::Status>, says: &str) {
    let s = r.expect_err("refused");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains(says), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_port_refuses_callers_without_payds_token() {
    let p = Platform::start_channels(&[SandboxedChannel::Wechat], 0.01);
    let mut payd = p.adapter_client(SandboxedChannel::Wechat).await;
    let mut anonymous = p.adapter_client_with(SandboxedChannel::Wechat, None).await;
    // The adapter's own ChannelEvents secret is not payd's credential either.
    let core_token = p.tokens[&SandboxedChannel::Wechat].clone();
    let mut wrong = p
        .adapter_client_with(SandboxedChannel::Wechat, Some(&core_token))
        .await;

    let to_close = number("P");
    let to_refund = number("P");
    let closing = prepay(&mut payd, &to_close).await.expect("payd's prepay");
    prepay(&mut payd, &to_refund).await.expect("payd's prepay");

    // Nobody else may open a trade …
    assert_unauthenticated(
        prepay(&mut anonymous, &number("P")).await.map(drop),
        "required",
    );
    assert_unauthenticated(
        prepay(&mut wrong, &number("P")).await.map(drop),
        "wrong token",
    );
    let trades = p
        .sandbox_get(SandboxedChannel::Wechat, "/sandbox/trades")
        .await;
    assert_eq!(trades.as_array().map(Vec::len), Some(2), "{trades}");

    // … close one …
    assert_unauthenticated(
        close(&mut anonymous, &to_close, &closing.channel_prepay_id).await,
        "required",
    );
    assert_unauthenticated(
        close(&mut wrong, &to_close, &closing.channel_prepay_id).await,
        "wrong token",
    );
    let trade = p
        .sandbox_get(
            SandboxedChannel::Wechat,
            &format!("/sandbox/trades/{to_close}"),
        )
        .await;
    assert_eq!(trade["state"], "PENDING", "{trade}");

    // … or refund a paid one.
    let (status, _) = p
        .sandbox_post(
            SandboxedChannel::Wechat,
            &format!("/sandbox/trades/{to_refund}/pay"),
            json!({"outcome": "success"}),
        )
        .await;
    assert_eq!(status, 200);
    let paid = p
        .sandbox_get(
            SandboxedChannel::Wechat,
            &format!("/sandbox/trades/{to_refund}"),
        )
        .await;
    let trade_no = paid["channel_trade_no"].as_str().unwrap().to_owned();
    assert_unauthenticated(
        refund(&mut anonymous, &to_refund, &trade_no).await,
        "required",
    );
    assert_unauthenticated(
        refund(&mut wrong, &to_refund, &trade_no).await,
        "wrong token",
    );
    let trade = p
        .sandbox_get(
            SandboxedChannel::Wechat,
            &format!("/sandbox/trades/{to_refund}"),
        )
        .await;
    assert_eq!(trade["refunds"], json!([]), "{trade}");

    // payd's token works.
    close(&mut payd, &to_close, &closing.channel_prepay_id)
        .await
        .expect("payd's close");
    let trade = p
        .sandbox_get(
            SandboxedChannel::Wechat,
            &format!("/sandbox/trades/{to_close}"),
        )
        .await;
    assert_eq!(trade["state"], "CLOSED", "{trade}");
    refund(&mut payd, &to_refund, &trade_no)
        .await
        .expect("payd's refund");
    let trade = p
        .sandbox_get(
            SandboxedChannel::Wechat,
            &format!("/sandbox/trades/{to_refund}"),
        )
        .await;
    assert_eq!(
        trade["refunds"].as_array().map(Vec::len),
        Some(1),
        "{trade}"
    );

    // Refusals are counted by reason; probes need no token.
    let m = p.adapter_metrics(SandboxedChannel::Wechat).await;
    let failures = |reason: &str| {
        metric_sum(
            &m,
            &format!(r#"adapter_grpc_auth_failures_total{{channel="wechat",reason="{reason}"}}"#),
        )
    };
    assert_eq!(failures("missing"), 3.0, "{m}");
    assert_eq!(failures("wrong"), 3.0, "{m}");
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        p.adapter_addrs[&SandboxedChannel::Wechat].grpc
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "channel.v1.ChannelAdapterService".into(),
        })
        .await
        .expect("health needs no token")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
