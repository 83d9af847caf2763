//! Reconciliation end to end: a Beijing day per channel with many transactions (the statement
//! served by the sandbox in the platform's format, through the adapter's FetchStatement stream),
//! 30 successes whose callbacks the sandbox silently lost (active queries disabled), 5 amounts
//! altered and 3 trades added in the statement. The run finds exactly those 38, repairs the 30
//! (orders PAID, `order.paid` events in the outbox) and reports the other 8; a second run of the
//! day finds nothing new and changes nothing.
//!
//! How the day is built: the 35 trades that matter go through the normal flow (CreateOrder, Pay,
//! the payer pays at the sandbox); the bulk is the sandbox's synthetic day
//! (`/sandbox/statements/synthetic`, `SYN<yyyyMMdd><i:012>`, amounts `100 + i % 9900` fen, at
//! 08:00 Beijing + i s), matched by PAID orders and SUCCEEDED attempts inserted with SQL. The bulk
//! size is `RECON_TXNS` (default 10,000 per channel).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::collections::HashMap;
use std::time::{Duration, Instant};

use e2e::calls::{Client, client, count, create, pay, req, wait_status};
use e2e::platform::{Platform, PlatformOptions, SandboxedChannel};
use payproto::payment::v1 as pb;
use serde_json::json;

type Recon = e2e::calls::ReconClient;

fn bulk() -> i64 {
    std::env::var("RECON_TXNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn beijing_today() -> chrono::NaiveDate {
    (chrono::Utc::now() + chrono::Duration::hours(8)).date_naive()
}

/// PAID orders and SUCCEEDED attempts matching the sandbox's synthetic lines of `day`.
fn insert_synthetic_locals(p: &Platform, ch: SandboxedChannel, day: chrono::NaiveDate, n: i64) {
    use diesel::RunQueryDsl;
    let (channel, method) = match ch {
        SandboxedChannel::Wechat => ("WECHAT", "WECHAT_NATIVE"),
        SandboxedChannel::Alipay => ("ALIPAY", "ALIPAY_QR"),
        SandboxedChannel::Unionpay => ("UNIONPAY", "UNIONPAY_FRONT"),
    };
    let ymd = day.format("%Y%m%d").to_string();
    let mut conn = p.db.connect();
    diesel::sql_query(format!(
        "WITH s AS (SELECT i, gen_random_uuid() AS oid, 100 + i % 9900 AS amt, \
           (DATE '{day}' + TIME '08:00') AT TIME ZONE 'Asia/Shanghai' + i * INTERVAL '1 second' AS at \
           FROM generate_series(0, {n} - 1) AS i), \
         o AS (INSERT INTO orders (id, app_id, merchant_order_no, amount_minor, currency, subject, \
           status, paid_minor, expires_at) \
           SELECT oid, 'shop-1', 'SYN-' || i, amt, 'CNY', 'synthetic', 'PAID', amt, at + INTERVAL '1 hour' \
           FROM s RETURNING id) \
         INSERT INTO payment_attempts (id, order_id, out_trade_no, channel, method, amount_minor, \
           currency, status, payer_digest, paid_minor, succeeded_at, pay_deadline) \
         SELECT gen_random_uuid(), oid, 'SYN{ymd}' || lpad(i::text, 12, '0'), '{channel}', '{method}', \
           amt, 'CNY', 'SUCCEEDED', '\\x00'::bytea, amt, at, at + INTERVAL '1 hour' FROM s"
    ))
    .execute(&mut conn)
    .expect("synthetic local rows");
}

async fn wait_finished(r: &mut Recon, id: &str, within: Duration) -> pb::ReconciliationRun {
    let deadline = Instant::now() + within;
    loop {
        let run = r
            .get_reconciliation_run(req(pb::GetReconciliationRunRequest { id: id.into() }))
            .await
            .expect("get run")
            .into_inner()
            .run
            .expect("run");
        if run.status != "RUNNING" {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} still RUNNING: {run:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_day(r: &mut Recon, ch: SandboxedChannel, day: &str) -> pb::ReconciliationRun {
    let started = r
        .run_reconciliation(req(pb::RunReconciliationRequest {
            channel: e2e::calls::channel_of(ch) as i32,
            day: day.into(),
        }))
        .await
        .expect("run reconciliation")
        .into_inner();
    let id = started.run.expect("run").id;
    wait_finished(r, &id, Duration::from_secs(120)).await
}

async fn discrepancies(r: &mut Recon, run_id: &str) -> Vec<pb::Discrepancy> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = r
            .list_discrepancies(req(pb::ListDiscrepanciesRequest {
                run_id: run_id.into(),
                page_size: 20,
                cursor: cursor.clone(),
                ..Default::default()
            }))
            .await
            .expect("list")
            .into_inner();
        all.extend(page.discrepancies);
        if page.next_cursor.is_empty() {
            return all;
        }
        cursor = page.next_cursor;
    }
}

async fn payctl(p: &Platform, args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(e2e::binary("payctl"))
        .args(["--endpoint", &p.payd.endpoint(), "--app", "ops"])
        .env("PAYCTL_SECRET", e2e::calls::test_secret("ops"))
        .env_remove("PAYCTL_SECRET_FILE")
        .args(args)
        .output()
        .await
        .expect("payctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("payctl --json prints JSON")
}

async fn paid_through_flow(
    p: &Platform,
    c: &mut Client,
    ch: SandboxedChannel,
    no: &str,
    amount: i64,
) -> (String, String) {
    let order = create(c, no, amount).await;
    let paying = pay(c, &order.order_id, ch).await.expect("pay");
    assert_eq!(p.payer_pays(ch, &paying, "success").await, 200);
    (
        order.order_id,
        paying.attempt.expect("attempt").out_trade_no,
    )
}

async fn reconciles_a_day(ch: SandboxedChannel) {
    let n = bulk();
    let p = Platform::start_with(
        &[ch],
        0.01,
        PlatformOptions {
            // Active queries off: only reconciliation can find the lost results.
            payd_env: vec![(
                "PAYD_PAYMENT_QUERY_DELAYS_MS".into(),
                "3600000,3600000".into(),
            )],
            ..Default::default()
        },
    );
    let mut c = client(p.payd.endpoint()).await;
    let mut r = e2e::calls::recon_client(p.payd.endpoint()).await;
    let day = beijing_today();
    let day_s = day.format("%Y-%m-%d").to_string();
    let tag = ch.name();

    // 5 paid normally, whose amounts the statement will alter.
    let mut altered = Vec::new();
    for i in 0..5 {
        let (order, no) =
            paid_through_flow(&p, &mut c, ch, &format!("RC-{tag}-A{i}"), 1000 + i).await;
        wait_status(
            &mut c,
            &order,
            pb::OrderStatus::Paid,
            Duration::from_secs(30),
        )
        .await;
        altered.push(no);
    }
    // 30 paid at the channel whose callbacks are silently lost.
    let (s, _) = p
        .sandbox_post(ch, "/sandbox/faults", json!({"callback_mode": "lose"}))
        .await;
    assert_eq!(s, 200);
    let mut lost = HashMap::new();
    for i in 0..30 {
        let (order, no) =
            paid_through_flow(&p, &mut c, ch, &format!("RC-{tag}-L{i}"), 2000 + i).await;
        lost.insert(no, order);
    }
    let alter: serde_json::Map<String, serde_json::Value> =
        altered.iter().map(|no| (no.clone(), json!(77))).collect();
    let added: Vec<String> = (0..3).map(|i| format!("ADD{tag}{i:09}")).collect();
    let add: Vec<_> = added
        .iter()
        .map(|no| json!({"out_trade_no": no, "amount_minor": 555, "kind": "payment"}))
        .collect();
    let (s, body) = p
        .sandbox_post(
            ch,
            "/sandbox/statements/faults",
            json!({"alter": alter, "add": add}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = p
        .sandbox_post(
            ch,
            "/sandbox/statements/synthetic",
            json!({"day": day_s, "payments": n}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    insert_synthetic_locals(&p, ch, day, n);
    for order in lost.values() {
        let o = e2e::calls::order_of(&mut c, order).await;
        assert_eq!(
            o.status,
            pb::OrderStatus::Paying as i32,
            "a lost callback arrived"
        );
    }

    let t0 = Instant::now();
    let run = run_day(&mut r, ch, &day_s).await;
    let elapsed = t0.elapsed();
    assert_eq!(run.status, "COMPLETED", "{run:?}");
    assert_eq!(run.lines_read, u64::try_from(n).unwrap() + 38, "{run:?}");
    assert_eq!(run.discrepancies, 38, "{run:?}");
    assert_eq!(run.repaired, 30, "{run:?}");
    eprintln!("{tag}: reconciled {} lines in {elapsed:?}", run.lines_read);

    // The same through payctl, for scripts (--json) and people.
    let shown = payctl(&p, &["--json", "recon", "show", &run.id]).await;
    assert_eq!(shown["run"]["status"], "COMPLETED", "{shown}");
    assert_eq!(shown["run"]["repaired"], 30, "{shown}");
    let listed = payctl(
        &p,
        &[
            "--json",
            "recon",
            "list",
            "--run",
            &run.id,
            "--kind",
            "amount_mismatch",
        ],
    )
    .await;
    assert_eq!(
        listed["discrepancies"].as_array().map(Vec::len),
        Some(5),
        "{listed}"
    );

    let found = discrepancies(&mut r, &run.id).await;
    assert_eq!(found.len(), 38);
    let of = |kind: &str, status: &str| -> Vec<String> {
        let mut v: Vec<String> = found
            .iter()
            .filter(|d| d.kind == kind && d.status == status)
            .map(|d| d.out_trade_no.clone())
            .collect();
        v.sort();
        v
    };
    let mut want_lost: Vec<String> = lost.keys().cloned().collect();
    want_lost.sort();
    assert_eq!(of("MISSING_LOCALLY", "REPAIRED"), want_lost);
    assert_eq!(of("MISSING_LOCALLY", "OPEN"), added);
    let mut want_altered = altered.clone();
    want_altered.sort();
    assert_eq!(of("AMOUNT_MISMATCH", "OPEN"), want_altered);
    for d in found.iter().filter(|d| d.kind == "AMOUNT_MISMATCH") {
        assert_eq!(d.channel_amount_minor, Some(77));
        assert!(d.source_line > 0);
    }
    for order in lost.values() {
        let o = e2e::calls::order_of(&mut c, order).await;
        assert_eq!(o.status, pb::OrderStatus::Paid as i32);
    }
    let paid_events = || {
        count(
            &p,
            "SELECT count(*) AS n FROM outbox_events WHERE event_type = 'order.paid' \
             AND order_id IN (SELECT order_id FROM payment_attempts WHERE out_trade_no LIKE 'RC%' \
             OR out_trade_no IN (SELECT out_trade_no FROM payment_attempts a JOIN orders o \
             ON o.id = a.order_id WHERE o.merchant_order_no LIKE 'RC-%'))",
        )
    };
    assert_eq!(
        paid_events(),
        35,
        "an order.paid event per paid order of the flow"
    );
    // One reconciliation.discrepancy_found per new discrepancy: the 35 of our orders to their
    // app (shop-1), the 3 unknown trades to the operations app; one completion, to operations.
    let recon_events = |kind: &str, app: &str| {
        count(
            &p,
            &format!(
                "SELECT count(*) AS n FROM outbox_events WHERE event_type = '{kind}' \
                 AND app_id = '{app}'"
            ),
        )
    };
    assert_eq!(
        recon_events("reconciliation.discrepancy_found", "shop-1"),
        35
    );
    assert_eq!(recon_events("reconciliation.discrepancy_found", "ops"), 3);
    assert_eq!(recon_events("reconciliation.completed", "ops"), 1);
    assert_eq!(
        count(
            &p,
            "SELECT count(*) AS n FROM outbox_events WHERE event_type = \
             'reconciliation.discrepancy_found' AND app_id = 'ops' AND order_id IS NULL \
             AND stream_key LIKE 'reconciliation:%'"
        ),
        3
    );

    // A second run of the same day: nothing new, nothing changed.
    let transitions = count(&p, "SELECT count(*) AS n FROM order_transitions");
    let events = count(&p, "SELECT count(*) AS n FROM outbox_events");
    let again = run_day(&mut r, ch, &day_s).await;
    assert_eq!(again.status, "COMPLETED", "{again:?}");
    assert_eq!((again.discrepancies, again.repaired), (0, 0), "{again:?}");
    assert!(discrepancies(&mut r, &again.id).await.is_empty());
    assert_eq!(
        count(&p, "SELECT count(*) AS n FROM recon_discrepancies"),
        38
    );
    assert_eq!(
        count(&p, "SELECT count(*) AS n FROM order_transitions"),
        transitions
    );
    // Its only event is its own completion.
    assert_eq!(
        count(&p, "SELECT count(*) AS n FROM outbox_events"),
        events + 1
    );
    assert_eq!(
        recon_events("reconciliation.discrepancy_found", "shop-1"),
        35
    );
    assert_eq!(recon_events("reconciliation.discrepancy_found", "ops"), 3);
    assert_eq!(recon_events("reconciliation.completed", "ops"), 2);
    assert_eq!(
        count(&p, "SELECT count(*) AS n FROM recon_statement_lines"),
        0
    );

    // A person settles one of the 8; a settled one cannot be settled again.
    let open = found
        .iter()
        .find(|d| d.status == "OPEN")
        .expect("an open one");
    let resolved = r
        .resolve_discrepancy(req(pb::ResolveDiscrepancyRequest {
            id: open.id.clone(),
            resolution: "confirmed with the channel".into(),
            note: "test".into(),
            operator: "alice".into(),
        }))
        .await
        .expect("resolve")
        .into_inner()
        .discrepancy
        .expect("discrepancy");
    assert_eq!(resolved.status, "RESOLVED");
    assert_eq!(resolved.resolved_by, "shop-1/alice");
    let twice = r
        .resolve_discrepancy(req(pb::ResolveDiscrepancyRequest {
            id: open.id.clone(),
            resolution: "again".into(),
            note: String::new(),
            operator: "bob".into(),
        }))
        .await
        .expect_err("already resolved");
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn wechat_day_is_reconciled_and_lost_results_repaired() {
    reconciles_a_day(SandboxedChannel::Wechat).await;
}

#[tokio::test]
async fn alipay_day_is_reconciled_and_lost_results_repaired() {
    reconciles_a_day(SandboxedChannel::Alipay).await;
}

#[tokio::test]
async fn unionpay_day_is_reconciled_and_lost_results_repaired() {
    reconciles_a_day(SandboxedChannel::Unionpay).await;
}

/// A statement whose summary does not add up ends the stream with DATA_LOSS: the run FAILS with
/// the adapter's error and records nothing.
#[tokio::test]
async fn a_broken_statement_fails_the_run_and_records_nothing() {
    let ch = SandboxedChannel::Wechat;
    let p = Platform::start_channels(&[ch], 0.01);
    let mut r = e2e::calls::recon_client(p.payd.endpoint()).await;
    let day = beijing_today().format("%Y-%m-%d").to_string();
    let (s, _) = p
        .sandbox_post(
            ch,
            "/sandbox/statements/faults",
            json!({"add": [{"out_trade_no": "ADDBROKEN000001", "amount_minor": 100, "kind": "payment"}],
                   "corrupt_summary": true}),
        )
        .await;
    assert_eq!(s, 200);
    let run = run_day(&mut r, ch, &day).await;
    assert_eq!(run.status, "FAILED", "{run:?}");
    assert!(run.error.contains("DataLoss"), "{run:?}");
    assert_eq!(
        count(&p, "SELECT count(*) AS n FROM recon_discrepancies"),
        0
    );
    assert_eq!(
        count(&p, "SELECT count(*) AS n FROM recon_statement_lines"),
        0
    );
    // The day can be run again (no run is left RUNNING).
    let (s, _) = p
        .sandbox_post(
            ch,
            "/sandbox/statements/faults",
            json!({"corrupt_summary": false}),
        )
        .await;
    assert_eq!(s, 200);
    let run = run_day(&mut r, ch, &day).await;
    assert_eq!(run.status, "COMPLETED", "{run:?}");
    assert_eq!(run.discrepancies, 1, "the added trade: {run:?}");
    // The failed run and the completed one each have their event; the one discrepancy has one.
    for (kind, n) in [
        ("reconciliation.failed", 1),
        ("reconciliation.completed", 1),
        ("reconciliation.discrepancy_found", 1),
    ] {
        assert_eq!(
            count(
                &p,
                &format!(
                    "SELECT count(*) AS n FROM outbox_events WHERE event_type = '{kind}' \
                     AND app_id = 'ops'"
                )
            ),
            n,
            "{kind}"
        );
    }
}
