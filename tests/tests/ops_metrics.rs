//! Operations (issue 12), with real processes: after an end-to-end run (orders paid, closed,
//! refunded, and a customer who pays twice) every process's `/metrics` is served with the
//! exposition format's content type and passes `promtool check metrics`; the duplicate counter
//! reads 1; each order transition is counted once where it commits; gRPC codes are labelled by
//! their canonical names. Reflection lists only what each process serves, and the adapters
//! answer gRPC health.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::calls::{self, count, create, pay, wait_status};
use e2e::platform::{Platform, PlatformOptions, SandboxedChannel, metric_sum};
use payproto::payment::v1 as pb;
use serde_json::json;

async fn scrape(addr: std::net::SocketAddr) -> String {
    let r = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    r.text().await.unwrap()
}

/// `promtool check metrics` on `text`; skipped (with a message) only when promtool is absent
/// locally: CI installs it.
fn promtool_accepts(who: &str, text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "SKIPPED promtool check metrics for {who}: promtool is not installed (scripts/test.sh installs it)"
            );
            return;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused {who}'s /metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn services(endpoint: String) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = c
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected {resp:?}")
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_process_exports_lintable_metrics_and_a_duplicate_payment_counts_once() {
    let (wx, ali) = (SandboxedChannel::Wechat, SandboxedChannel::Alipay);
    let p = Platform::start_with(
        &[wx, ali],
        0.01,
        PlatformOptions {
            payd_env: vec![("PAYD_REFUND_JOB_TICK_MS".to_owned(), "100".to_owned())],
            adapter_env: Vec::new(),
        },
    );
    let mut c = calls::client(p.payd.endpoint()).await;

    // An ordinary payment, an order created twice (a replay), and a refused call.
    let plain = create(&mut c, "OPS-PLAIN-0001", 1_000).await;
    let again = create(&mut c, "OPS-PLAIN-0001", 1_000).await;
    assert_eq!(again.order_id, plain.order_id);
    let pr = pay(&mut c, &plain.order_id, ali).await.unwrap();
    assert_eq!(p.payer_pays(ali, &pr, "success").await, 200);
    wait_status(
        &mut c,
        &plain.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(20),
    )
    .await;
    assert!(pay(&mut c, "no-such-order", ali).await.is_err());

    // A customer who pays twice (the sandbox's close_race: the payment in flight inside the
    // closed WeChat trade completes after the switch to Alipay paid the order).
    p.sandbox_post(wx, "/sandbox/faults", json!({"close_race": true}))
        .await;
    let order = create(&mut c, "OPS-DUP-00001", 2_500).await;
    let first = pay(&mut c, &order.order_id, wx).await.unwrap();
    let second = pay(&mut c, &order.order_id, ali).await.unwrap();
    assert_eq!(p.payer_pays(ali, &second, "success").await, 200);
    wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(p.payer_pays(wx, &first, "success").await, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(
        &p,
        "SELECT count(*) AS n FROM duplicate_payments WHERE status = 'REFUNDED'",
    ) != 1
    {
        assert!(Instant::now() < deadline, "the duplicate was not refunded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The operations check runs every 10 s: wait for one pass after the refund.
    tokio::time::sleep(Duration::from_secs(11)).await;

    let m = scrape(p.payd.metrics).await;
    promtool_accepts("payd", &m);
    for ch in [wx, ali] {
        let a = scrape(p.adapter_addrs[&ch].metrics).await;
        promtool_accepts(ch.name(), &a);
        assert!(
            a.contains("adapter_platform_request_duration_seconds_bucket"),
            "{a}"
        );
        assert!(a.contains("process_resident_memory_bytes"), "{a}");
        assert!(
            a.contains("adapter_grpc_request_duration_seconds_count{method=\"Prepay\",service=\"channel.v1.ChannelAdapterService\"}"),
            "{a}"
        );
    }

    // The duplicate: counted once, refunded once, nothing left unrefunded.
    assert_eq!(
        metric_sum(&m, "payment_duplicate_payments_total{channel=\"WECHAT\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "payment_duplicate_payments_total{channel=\"ALIPAY\"}"),
        0.0,
        "primed at 0: {m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "payment_duplicate_refunds_total{channel=\"WECHAT\",outcome=\"succeeded\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "payment_duplicate_payments_unrefunded{channel=\"WECHAT\"}"
        ),
        0.0,
        "{m}"
    );
    // Transitions, once each where they commit: two orders created (the replay is not one),
    // each PENDING→PAYING→PAID, and the channel switch PAYING→PENDING→PAYING.
    let t = |from: &str, to: &str| {
        metric_sum(
            &m,
            &format!("payd_order_transitions_total{{from=\"{from}\",to=\"{to}\"}}"),
        )
    };
    assert_eq!(t("", "PENDING"), 2.0, "{m}");
    assert_eq!(t("PENDING", "PAYING"), 3.0, "{m}");
    assert_eq!(t("PAYING", "PENDING"), 1.0, "{m}");
    assert_eq!(t("PAYING", "PAID"), 2.0, "{m}");
    // Canonical code names, dependencies up, the lease held, build info, process metrics.
    assert!(
        metric_sum(
            &m,
            "payd_grpc_requests_total{code=\"OK\",method=\"CreateOrder\"}"
        ) >= 3.0,
        "{m}"
    );
    assert!(
        m.contains("code=\"NOT_FOUND\"") || m.contains("code=\"INVALID_ARGUMENT\""),
        "{m}"
    );
    assert!(!m.contains("The operation completed successfully"), "{m}");
    assert_eq!(
        metric_sum(&m, "payd_dependency_up{dependency=\"postgres\"}"),
        1.0
    );
    assert_eq!(
        metric_sum(&m, "payd_dependency_up{dependency=\"redis\"}"),
        1.0
    );
    assert_eq!(metric_sum(&m, "payd_worker_lease_held"), 1.0);
    // Both orders are paid: none open.
    assert_eq!(
        metric_sum(&m, "payment_orders_open{status=\"PENDING\"}"),
        0.0
    );
    assert_eq!(
        metric_sum(&m, "payment_orders_open{status=\"PAYING\"}"),
        0.0
    );
    assert!(
        m.contains("payment_orders_open{status=\"PAYING\"} 0"),
        "{m}"
    );
    assert!(m.contains("payd_build_info{version=\""), "{m}");
    assert!(m.contains("process_open_fds"), "{m}");
    assert!(
        m.contains("payd_grpc_request_duration_seconds_count{method=\"CreateOrder\",service=\"payment.v1.PaymentService\"}"),
        "{m}"
    );
    assert!(
        m.contains("payd_grpc_request_duration_seconds_count{method=\"ReportPayment\",service=\"channel.v1.ChannelEventsService\"}"),
        "{m}"
    );
    // payd's own calls to the adapters, client side.
    assert!(
        m.contains("payd_channel_request_duration_seconds_count{channel=\"WECHAT\",method=\"Prepay\",service=\"channel.v1.ChannelAdapterService\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn reflection_lists_only_what_each_process_serves_and_adapters_answer_health() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let wx = SandboxedChannel::Wechat;
    let p = Platform::start_channels(&[wx], 0.01);

    let payd = services(p.payd.endpoint()).await;
    assert!(
        payd.contains(&"payment.v1.PaymentService".to_owned()),
        "{payd:?}"
    );
    assert!(
        payd.contains(&"channel.v1.ChannelEventsService".to_owned()),
        "{payd:?}"
    );
    assert!(
        !payd.iter().any(|s| s.contains("ChannelAdapter")),
        "{payd:?}"
    );

    let endpoint = format!("http://{}", p.adapter_addrs[&wx].grpc);
    let adapter = services(endpoint.clone()).await;
    assert!(
        adapter.contains(&"channel.v1.ChannelAdapterService".to_owned()),
        "{adapter:?}"
    );
    assert!(
        adapter.contains(&"grpc.health.v1.Health".to_owned()),
        "{adapter:?}"
    );
    assert!(
        !adapter.iter().any(|s| s.starts_with("payment.")),
        "{adapter:?}"
    );
    assert!(
        !adapter.iter().any(|s| s.contains("ChannelEvents")),
        "{adapter:?}"
    );

    let channel = tonic::transport::Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
}
