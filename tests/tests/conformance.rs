//! One conformance suite, run per channel against the real adapter process and its sandbox,
//! through `channel.v1.ChannelAdapter` as payd calls it: prepay, pending then paid on query,
//! idempotent prepay, partial refunds with their queries, a refund over the paid amount refused,
//! close of a paid trade answering SUCCEEDED, and the day's statement as a stream (UnionPay's
//! through the sandbox's file transfer); plus the sandbox's statement faults seen through it.
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

    // The day's statement streams the payment and both refunds, and ends with its totals.
    let (lines, _, end) = statement(&mut a, &beijing_today(), 0).await;
    let totals = end.expect("a complete statement");
    assert!(
        lines.iter().any(|l| l.out_trade_no == no
            && l.out_refund_no.is_empty()
            && l.trade_state == cpb::TradeState::Succeeded as i32
            && l.amount == cny(10_000)),
        "{lines:?}"
    );
    let refunds: Vec<_> = lines
        .iter()
        .filter(|l| !l.out_refund_no.is_empty())
        .collect();
    assert_eq!(refunds.len(), 2, "{lines:?}");
    assert!(
        refunds
            .iter()
            .all(|l| l.out_trade_no == no && l.refund_state == cpb::RefundState::Succeeded as i32)
    );
    assert_eq!(totals.line_count, lines.len() as u64);
    assert_eq!(totals.payment_count, 1);
    assert_eq!(totals.refund_count, 2);
    assert_eq!(totals.refund_amount, cny(10_000));
}

/// Today in Beijing, the platforms' statement day.
fn beijing_today() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(8))
        .format("%Y-%m-%d")
        .to_string()
}

/// Reads a FetchStatement stream to its end: the lines, the number of pages, and how it ended
/// (the totals, or the status, after which nothing may follow).
async fn statement(
    a: &mut AdapterClient,
    day: &str,
    page_size: u32,
) -> (
    Vec<cpb::StatementLine>,
    usize,
    Result<cpb::StatementTotals, tonic::Status>,
) {
    let mut stream = a
        .fetch_statement(cpb::FetchStatementRequest {
            day: day.into(),
            page_size,
        })
        .await
        .expect("the stream opens")
        .into_inner();
    let (mut lines, mut pages) = (Vec::new(), 0);
    loop {
        match stream.message().await {
            Ok(Some(page)) => {
                if let Some(totals) = page.totals {
                    assert!(page.lines.is_empty(), "the totals message carries no lines");
                    assert!(
                        matches!(stream.message().await, Ok(None)),
                        "nothing follows the totals"
                    );
                    return (lines, pages, Ok(totals));
                }
                assert!(page_size == 0 || page.lines.len() <= page_size as usize);
                pages += 1;
                lines.extend(page.lines);
            }
            Ok(None) => panic!("the stream ended without totals or an error"),
            Err(status) => return (lines, pages, Err(status)),
        }
    }
}

/// Opens a trade through the adapter and has the payer pay it at the sandbox.
async fn paid_trade(
    p: &Platform,
    a: &mut AdapterClient,
    ch: SandboxedChannel,
    amount: i64,
) -> String {
    let no = number("S");
    a.prepay(cpb::PrepayRequest {
        out_trade_no: no.clone(),
        method: method(ch) as i32,
        amount: cny(amount),
        subject: "statement".into(),
        expires_at: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() + 900,
            nanos: 0,
        }),
        payer_id: String::new(),
        payer_ip: "198.51.100.4".into(),
        created_at: Some(now()),
    })
    .await
    .expect("prepay");
    p.sandbox_post(
        ch,
        &format!("/sandbox/trades/{no}/pay"),
        json!({"outcome": "success"}),
    )
    .await;
    no
}

/// The sandbox's statement faults reach the core through the adapter's stream: a dropped line is
/// gone, an altered one carries the new amount, an added one appears; a synthetic day streams
/// in pages; a summary that does not add up ends the stream with DATA_LOSS naming the line, after
/// pages were already sent.
async fn statement_faults(ch: SandboxedChannel) {
    let p = Platform::start_channels(&[ch], 0.01);
    let mut a = adapter(&p, ch).await;
    let day = beijing_today();
    let dropped = paid_trade(&p, &mut a, ch, 1_000).await;
    let altered = paid_trade(&p, &mut a, ch, 2_000).await;
    let kept = paid_trade(&p, &mut a, ch, 3_000).await;
    let unknown = number("X");
    let (status, faults) = p
        .sandbox_post(
            ch,
            "/sandbox/statements/faults",
            json!({
                "drop": [dropped],
                "alter": {altered.clone(): 1_999},
                "add": [{"out_trade_no": unknown, "amount_minor": 777, "kind": "payment"}],
            }),
        )
        .await;
    assert_eq!(status, 200, "{faults}");
    assert_eq!(faults["drop"], json!([dropped]), "{faults}");

    let (lines, _, end) = statement(&mut a, &day, 0).await;
    let totals = end.expect("a complete statement");
    let amount = |no: &str| {
        lines
            .iter()
            .find(|l| l.out_trade_no == no)
            .map(|l| l.amount.as_ref().unwrap().amount_minor)
    };
    assert_eq!(amount(&dropped), None, "{lines:?}");
    assert_eq!(amount(&altered), Some(1_999));
    assert_eq!(amount(&kept), Some(3_000));
    assert_eq!(amount(&unknown), Some(777));
    assert_eq!(totals.payment_count, 3);
    assert_eq!(totals.payment_amount, cny(1_999 + 3_000 + 777));
    assert!(lines.iter().all(|l| l.source_line > 0));

    // A synthetic day: 2,500 generated lines besides the three, in pages of at most 1,000.
    p.sandbox_post(
        ch,
        "/sandbox/statements/synthetic",
        json!({"day": day, "payments": 2_500}),
    )
    .await;
    let (lines, pages, end) = statement(&mut a, &day, 1_000).await;
    let totals = end.expect("a complete synthetic statement");
    assert_eq!(lines.len(), 2_503);
    assert_eq!(pages, 3);
    assert_eq!(totals.line_count, 2_503);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.out_trade_no.starts_with("SYN"))
            .count(),
        2_500
    );

    // A file whose summary does not add up: pages already went out, then DATA_LOSS.
    p.sandbox_post(
        ch,
        "/sandbox/statements/faults",
        json!({"corrupt_summary": true}),
    )
    .await;
    let (lines, pages, end) = statement(&mut a, &day, 1_000).await;
    let status = end.expect_err("a bad summary is not a statement");
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    assert!(status.message().contains("line"), "{status:?}");
    assert!(
        pages >= 2 && lines.len() >= 2_000,
        "pages were streamed before the error"
    );

    // Cleared, the statement is the ledger's again.
    assert_eq!(
        p.sandbox_delete(ch, "/sandbox/statements/faults").await,
        200
    );
    let (lines, _, end) = statement(&mut a, &day, 0).await;
    assert_eq!(end.expect("complete").payment_count, 3);
    assert_eq!(amount_of(&lines, &dropped), Some(1_000));
    assert_eq!(amount_of(&lines, &altered), Some(2_000));
}

fn amount_of(lines: &[cpb::StatementLine], no: &str) -> Option<i64> {
    lines
        .iter()
        .find(|l| l.out_trade_no == no)
        .map(|l| l.amount.as_ref().unwrap().amount_minor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_statement_faults_reach_the_stream() {
    statement_faults(SandboxedChannel::Wechat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_statement_faults_reach_the_stream() {
    statement_faults(SandboxedChannel::Alipay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unionpay_statement_faults_reach_the_stream_through_the_file_transfer() {
    statement_faults(SandboxedChannel::Unionpay).await;
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

/// `VmHWM` (peak resident memory) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Reads a statement stream counting its lines without keeping them.
async fn count_statement(a: &mut AdapterClient, day: &str) -> (u64, cpb::StatementTotals) {
    let mut stream = a
        .fetch_statement(cpb::FetchStatementRequest {
            day: day.into(),
            page_size: 0,
        })
        .await
        .expect("the stream opens")
        .into_inner();
    let mut n = 0u64;
    while let Some(page) = stream.message().await.expect("no error") {
        if let Some(totals) = page.totals {
            return (n, totals);
        }
        n += page.lines.len() as u64;
    }
    panic!("the stream ended without totals");
}

/// The adapter process's peak memory as a synthetic day grows from 10^5 to 10^6 lines, through
/// the sandbox, the platform's real file format and the gRPC stream. VmHWM only grows, so a flat
/// figure after 10^6 means the larger day needed no more memory than the smaller one:
///
/// ```text
/// cargo test -p e2e --test conformance adapter_memory -- --ignored --nocapture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: -- --ignored --nocapture"]
async fn adapter_memory_is_flat_as_a_synthetic_day_grows() {
    for ch in [
        SandboxedChannel::Wechat,
        SandboxedChannel::Alipay,
        SandboxedChannel::Unionpay,
    ] {
        let p = Platform::start_with(
            &[ch],
            0.01,
            e2e::platform::PlatformOptions {
                // The sandbox writes a synthetic bill while answering; give it time.
                adapter_env: vec![(ch, "ADAPTER_PLATFORM_TIMEOUT_MS".into(), "300000".into())],
                ..Default::default()
            },
        );
        let mut a = adapter(&p, ch).await;
        let adapter_pid = p.adapters[&ch].child.id();
        let day = "2026-12-01";
        for n in [100_000u64, 1_000_000] {
            p.sandbox_post(
                ch,
                "/sandbox/statements/synthetic",
                json!({"day": day, "payments": n}),
            )
            .await;
            let started = std::time::Instant::now();
            let (count, totals) = count_statement(&mut a, day).await;
            assert_eq!((count, totals.line_count), (n, n));
            println!(
                "{}: lines={n} adapter_peak_rss_kib={} elapsed={:?}",
                ch.name(),
                peak_rss_kib(adapter_pid),
                started.elapsed()
            );
        }
    }
}
