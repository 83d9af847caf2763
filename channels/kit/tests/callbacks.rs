//! The callback listener over real TCP, with a tiny test adapter (the kit has no platform of its
//! own) and a "core" that accepts connections and never answers: the forward budget is a total,
//! a stalled header is cut off, bodies over the limit get 413, and callbacks beyond each stage's
//! limit (receiving, verifying, forwarding) are shed at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use channel_kit::settings::Secret;
use channel_kit::{
    Adapter, Callback, ChannelError, KitSettings, Listeners, Notification, RejectReason, Rejection,
    Reply, pb,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Verifies nothing: a body `pay:<event id>` is a successful payment of that id; a body
/// `slow:<ms>` is a forgery that takes that long to find out.
#[derive(Default)]
struct TestAdapter {
    /// Verifications begun.
    verifying: AtomicUsize,
    /// Verifications that passed.
    verified: AtomicUsize,
}

#[tonic::async_trait]
impl Adapter for TestAdapter {
    fn channel(&self) -> pb::Channel {
        pb::Channel::Wechat
    }
    async fn prepay(&self, _: pb::PrepayRequest) -> Result<pb::PrepayResponse, ChannelError> {
        Err(ChannelError::InvalidArgument("test adapter".into()))
    }
    async fn query_payment(
        &self,
        _: pb::QueryPaymentRequest,
    ) -> Result<pb::PaymentResult, ChannelError> {
        Err(ChannelError::InvalidArgument("test adapter".into()))
    }
    async fn close_payment(
        &self,
        _: pb::ClosePaymentRequest,
    ) -> Result<pb::PaymentResult, ChannelError> {
        Err(ChannelError::InvalidArgument("test adapter".into()))
    }
    async fn refund(&self, _: pb::RefundRequest) -> Result<pb::RefundResult, ChannelError> {
        Err(ChannelError::InvalidArgument("test adapter".into()))
    }
    async fn query_refund(
        &self,
        _: pb::QueryRefundRequest,
    ) -> Result<pb::RefundResult, ChannelError> {
        Err(ChannelError::InvalidArgument("test adapter".into()))
    }
    /// Day `ok-N`: N lines then their totals; `bad-N`: N lines then a bad line (DATA_LOSS).
    async fn fetch_statement(
        &self,
        req: pb::FetchStatementRequest,
        sink: channel_kit::statement::LineSink,
    ) -> Result<pb::StatementTotals, ChannelError> {
        let (kind, n) = req.day.split_once('-').unwrap();
        let (kind, n) = (kind.to_owned(), n.parse::<u64>().unwrap());
        tokio::task::spawn_blocking(move || {
            let mut tally = channel_kit::statement::Tally::default();
            for i in 0..n {
                let line = pb::StatementLine {
                    out_trade_no: format!("T{i}"),
                    amount: Some(pb::Money {
                        amount_minor: 1,
                        currency: "CNY".into(),
                    }),
                    source_line: i + 2,
                    ..Default::default()
                };
                tally.add(&line);
                sink.blocking_push(line)?;
            }
            if kind == "bad" {
                return Err(ChannelError::BadStatement(format!(
                    "bill line {}: 3 fields, the header has 27",
                    n + 2
                )));
            }
            Ok(tally.totals("CNY", String::new()))
        })
        .await
        .unwrap()
    }
    async fn verify_callback(&self, cb: &Callback) -> Result<Notification, Rejection> {
        self.verifying.fetch_add(1, Ordering::SeqCst);
        let body = std::str::from_utf8(&cb.body)
            .map_err(|_| Rejection::new(RejectReason::Malformed, "not utf-8"))?;
        if let Some(ms) = body.strip_prefix("slow:") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            return Err(Rejection::new(RejectReason::BadSignature, "slow forgery"));
        }
        let id = body
            .strip_prefix("pay:")
            .ok_or_else(|| Rejection::new(RejectReason::Malformed, "not pay:<id>"))?;
        self.verified.fetch_add(1, Ordering::SeqCst);
        Ok(Notification::Payment {
            event_id: id.to_owned(),
            result: pb::PaymentResult {
                out_trade_no: id.to_owned(),
                state: pb::TradeState::Succeeded as i32,
                ..Default::default()
            },
        })
    }
    fn ack(&self) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain",
            body: "SUCCESS".into(),
        }
    }
    fn nack(&self, why: &str) -> Reply {
        Reply {
            status: 500,
            content_type: "text/plain",
            body: format!("FAIL: {why}"),
        }
    }
}

/// A core that accepts TCP connections and never says a word; it hangs up on each connection
/// after `hold` (so the forwarder sees a transient failure and retries).
async fn black_hole(hold: Duration) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                drop(s);
            });
        }
    });
    addr
}

const FOREVER: Duration = Duration::from_secs(3600);

fn settings(core: SocketAddr) -> KitSettings {
    let any = "127.0.0.1:0".parse().unwrap();
    KitSettings {
        env: channel_kit::settings::AdapterEnv::Development,
        grpc_listen: any,
        callback_listen: any,
        metrics_listen: any,
        core_endpoint: format!("http://{core}"),
        core_token: Secret::new("test-core-token-0123456789"),
        grpc_token: Secret::new("test-grpc-token-0123456789"),
        forward_budget: Duration::from_millis(1_500),
        callback_header_timeout: Duration::from_millis(500),
        callback_body_timeout: Duration::from_millis(500),
        callback_max_in_flight: 64,
        callback_max_receiving: 64,
        callback_max_verifying: 4,
        callback_max_body_bytes: 64 * 1024,
        platform_timeout: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(1),
    }
}

struct Running {
    callbacks: SocketAddr,
    metrics: SocketAddr,
    adapter: Arc<TestAdapter>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(s: KitSettings) -> Running {
    let listeners = Listeners::bind(&s).await.unwrap();
    let callbacks = listeners.callbacks.local_addr().unwrap();
    let metrics = listeners.metrics.local_addr().unwrap();
    let adapter = Arc::new(TestAdapter::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(listeners.run(adapter.clone(), s, async move {
        let _ = stopped.await;
    }));
    Running {
        callbacks,
        metrics,
        adapter,
        _stop: stop,
    }
}

async fn post_callback(addr: SocketAddr, body: impl Into<String>) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/notify/payment"))
        .body(body.into())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_core_that_never_answers_gets_the_failure_reply_within_the_forward_budget() {
    // Each connection dies after two thirds of the budget: one attempt must not get a fresh
    // full budget after the first failed.
    let s = settings(black_hole(Duration::from_millis(1_000)).await);
    let budget = s.forward_budget;
    let app = start(s).await;

    let t = Instant::now();
    let (status, body) =
        tokio::time::timeout(budget * 3, post_callback(app.callbacks, "pay:P0001"))
            .await
            .expect("the listener answers at all");
    let took = t.elapsed();

    assert_eq!(status, 500, "{body}");
    assert!(body.starts_with("FAIL"), "{body}");
    let m = metrics_text(app.metrics).await;
    assert!(
        m.contains(r#"adapter_callbacks_total{channel="wechat",outcome="forward_failed"} 1"#),
        "{m}"
    );
    assert!(
        took < budget + Duration::from_millis(300),
        "answered after {took:?}, budget {budget:?}"
    );
}

#[tokio::test]
async fn a_client_that_stalls_in_its_header_is_disconnected_after_the_header_timeout() {
    let s = settings(black_hole(FOREVER).await);
    let header_timeout = s.callback_header_timeout;
    let app = start(s).await;

    let mut c = tokio::net::TcpStream::connect(app.callbacks).await.unwrap();
    c.write_all(b"POST /notify/payment HTTP/1.1\r\nHost: adapter\r\nContent-Le")
        .await
        .unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
    let took = t.elapsed();

    assert!(closed.is_ok(), "still connected after {took:?}");
    assert!(
        took >= header_timeout - Duration::from_millis(100)
            && took < header_timeout + Duration::from_millis(700),
        "disconnected after {took:?}, header timeout {header_timeout:?}"
    );
    let m = metrics_text(app.metrics).await;
    assert!(
        m.contains(r#"adapter_callback_timeouts_total{channel="wechat",phase="header"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_the_failure_reply_after_the_body_timeout() {
    let s = settings(black_hole(FOREVER).await);
    let body_timeout = s.callback_body_timeout;
    let app = start(s).await;

    let mut c = tokio::net::TcpStream::connect(app.callbacks).await.unwrap();
    c.write_all(
        b"POST /notify/payment HTTP/1.1\r\nHost: adapter\r\nContent-Length: 100\r\n\r\npay:",
    )
    .await
    .unwrap();
    let t = Instant::now();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let took = t.elapsed();

    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    assert!(answer.contains("FAIL"), "{answer}");
    assert!(took < body_timeout + Duration::from_millis(500), "{took:?}");
    assert_eq!(app.adapter.verified.load(Ordering::SeqCst), 0);
}

/// Waits until `counter` reaches `n` (5 s at most).
async fn wait_for(counter: &AtomicUsize, n: usize, what: &str) {
    let wait = Instant::now();
    while counter.load(Ordering::SeqCst) < n {
        assert!(wait.elapsed() < Duration::from_secs(5), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn beyond_the_in_flight_limit_a_verified_callback_is_shed_at_once_but_forgeries_are_still_verified()
 {
    let mut s = settings(black_hole(FOREVER).await);
    s.callback_max_in_flight = 2;
    s.forward_budget = Duration::from_secs(5);
    let app = start(s).await;

    // Two callbacks stuck forwarding to a core that never answers.
    let stuck: Vec<_> = (0..2)
        .map(|i| tokio::spawn(post_callback(app.callbacks, format!("pay:P{i}"))))
        .collect::<Vec<_>>();
    wait_for(&app.adapter.verified, 2, "callbacks not in flight").await;

    let t = Instant::now();
    let (status, body) = post_callback(app.callbacks, "pay:P2").await;
    let took = t.elapsed();
    // A forgery does not wait for a forwarding slot: it is verified and refused as usual.
    let (forged_status, forged_body) = post_callback(app.callbacks, "slow:0").await;

    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("FAIL"), "{body}");
    assert!(took < Duration::from_millis(300), "shed after {took:?}");
    assert_eq!(
        app.adapter.verified.load(Ordering::SeqCst),
        3,
        "verified before it was shed"
    );
    assert_eq!(
        (forged_status, forged_body.as_str()),
        (500, "FAIL: verification failed")
    );
    let m = metrics_text(app.metrics).await;
    assert!(
        m.contains(r#"adapter_callbacks_total{channel="wechat",outcome="shed"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(
            r#"adapter_callback_rejections_total{channel="wechat",reason="bad_signature"} 1"#
        ),
        "{m}"
    );
    for h in stuck {
        h.abort();
    }
}

#[tokio::test]
async fn beyond_the_verifying_limit_a_callback_is_shed_at_once_and_counted() {
    let mut s = settings(black_hole(FOREVER).await);
    s.callback_max_verifying = 2;
    let app = start(s).await;

    // Two forgeries that take their time to verify fill the verification stage.
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(post_callback(app.callbacks, "slow:1000")))
        .collect();
    wait_for(&app.adapter.verifying, 2, "forgeries not verifying").await;

    let t = Instant::now();
    let (status, body) = post_callback(app.callbacks, "pay:P0").await;
    let took = t.elapsed();

    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("FAIL"), "{body}");
    assert!(took < Duration::from_millis(300), "shed after {took:?}");
    assert_eq!(
        app.adapter.verifying.load(Ordering::SeqCst),
        2,
        "never verified"
    );
    for h in slow {
        let (status, body) = h.await.unwrap();
        assert_eq!((status, body.as_str()), (500, "FAIL: verification failed"));
    }
    let m = metrics_text(app.metrics).await;
    assert!(
        m.contains(r#"adapter_callbacks_total{channel="wechat",outcome="shed_verifying"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(
            r#"adapter_callback_rejections_total{channel="wechat",reason="bad_signature"} 2"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn beyond_the_receiving_limit_a_callback_is_shed_before_its_body_is_read() {
    let mut s = settings(black_hole(FOREVER).await);
    s.callback_max_receiving = 1;
    s.callback_body_timeout = Duration::from_secs(2);
    let app = start(s).await;

    // One sender that never finishes its body holds the only receiving slot.
    let mut slow = tokio::net::TcpStream::connect(app.callbacks).await.unwrap();
    slow.write_all(
        b"POST /notify/payment HTTP/1.1\r\nHost: adapter\r\nContent-Length: 100\r\n\r\npay:",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (status, body) = post_callback(app.callbacks, "pay:P0").await;

    assert_eq!(status, 503, "{body}");
    assert_eq!(app.adapter.verifying.load(Ordering::SeqCst), 0);
    let m = metrics_text(app.metrics).await;
    assert!(
        m.contains(r#"adapter_callbacks_total{channel="wechat",outcome="shed_receiving"} 1"#),
        "{m}"
    );
}

/// Sends `request` on a fresh connection and returns what comes back before the server closes
/// or 5 s pass.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn a_body_announced_over_the_limit_gets_413_with_the_failure_reply_unread() {
    let mut s = settings(black_hole(FOREVER).await);
    s.callback_max_body_bytes = 1024;
    let app = start(s).await;

    // Only the header is sent: an answer proves nothing of the body was waited for.
    let answer = raw_exchange(
        app.callbacks,
        b"POST /notify/payment HTTP/1.1\r\nHost: adapter\r\nContent-Length: 1025\r\n\r\n",
    )
    .await;

    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("FAIL: body too large"), "{answer}");
    assert_eq!(app.adapter.verified.load(Ordering::SeqCst), 0);
    let m = metrics_text(app.metrics).await;
    assert!(
        m.contains(r#"adapter_callback_rejections_total{channel="wechat",reason="too_large"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"adapter_callbacks_total{channel="wechat",outcome="rejected"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_chunked_body_that_grows_past_the_limit_gets_413_while_being_read() {
    let mut s = settings(black_hole(FOREVER).await);
    s.callback_max_body_bytes = 1024;
    let app = start(s).await;

    // No Content-Length: 4 + 1021 bytes in two chunks, one over the limit.
    let mut request = b"POST /notify/payment HTTP/1.1\r\nHost: adapter\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npay:\r\n3fd\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'x', 0x3fd));
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    let answer = raw_exchange(app.callbacks, &request).await;

    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("FAIL: body too large"), "{answer}");
    assert_eq!(app.adapter.verified.load(Ordering::SeqCst), 0);
    let m = metrics_text(app.metrics).await;
    assert!(
        m.contains(r#"adapter_callback_rejections_total{channel="wechat",reason="too_large"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_read_and_verified() {
    let mut s = settings(black_hole(FOREVER).await);
    s.callback_max_body_bytes = 1024;
    let app = start(s).await;

    // 1024 bytes that are not `pay:<id>`: refused by verification, not by size.
    let (status, body) = post_callback(app.callbacks, "x".repeat(1024)).await;

    assert_eq!(status, 500, "{body}");
    assert_eq!(body, "FAIL: verification failed");
    let m = metrics_text(app.metrics).await;
    assert!(
        m.contains(r#"adapter_callback_rejections_total{channel="wechat",reason="malformed"} 1"#),
        "{m}"
    );
    assert!(!m.contains("too_large"), "{m}");
}

async fn metrics_text(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn fetch_pages(
    day: &str,
    page_size: u32,
) -> (Vec<usize>, Result<pb::StatementTotals, tonic::Status>) {
    use pb::channel_adapter_service_server::ChannelAdapterService as _;
    use tokio_stream::StreamExt as _;
    let metrics = channel_kit::Metrics::new(pb::Channel::Wechat).unwrap();
    let service = channel_kit::grpc::AdapterService::new(Arc::new(TestAdapter::default()), metrics);
    let mut stream = service
        .fetch_statement(tonic::Request::new(pb::FetchStatementRequest {
            day: day.into(),
            page_size,
        }))
        .await
        .unwrap()
        .into_inner();
    let mut pages = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(page) if page.totals.is_some() => {
                assert!(page.lines.is_empty());
                assert!(stream.next().await.is_none(), "nothing after the totals");
                return (pages, Ok(page.totals.unwrap()));
            }
            Ok(page) => pages.push(page.lines.len()),
            Err(status) => {
                assert!(stream.next().await.is_none(), "nothing after the error");
                return (pages, Err(status));
            }
        }
    }
    panic!("the stream ended with neither totals nor an error");
}

#[tokio::test]
async fn a_statement_streams_in_pages_and_ends_with_its_totals() {
    let (pages, totals) = fetch_pages("ok-2500", 0).await;
    assert_eq!(pages, vec![1000, 1000, 500]);
    let totals = totals.unwrap();
    assert_eq!(totals.line_count, 2500);
    assert_eq!(totals.payment_count, 2500);
    assert_eq!(totals.payment_amount.unwrap().amount_minor, 2500);
    let (pages, _) = fetch_pages("ok-25", 10).await;
    assert_eq!(pages, vec![10, 10, 5]);
}

#[tokio::test]
async fn a_bad_line_after_pages_were_sent_ends_the_stream_with_data_loss_naming_it() {
    let (pages, end) = fetch_pages("bad-1500", 0).await;
    assert_eq!(pages, vec![1000, 500]);
    let status = end.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DataLoss);
    assert!(
        status.message().contains("line 1502"),
        "{}",
        status.message()
    );
}
