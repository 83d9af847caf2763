//! The audit log over a whole flow through the real binaries: every state-changing call that
//! reached payd — the app's CreateOrder, Pay, CloseOrder, CreateRefund, RedeliverEvents, the
//! operator's RunReconciliation, whether they changed something, were repeats or were refused,
//! and the adapter's first report of each payment and refund event — left exactly one record,
//! and payd's own per-method call counters agree with the log. An adapter's repeat of an event
//! already recorded writes nothing (the platforms resend at will; a repeat costs no write) and is
//! counted instead. `payctl audit` shows the log to a person.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::calls::{self, close, count, create, pay, req, wait_status};
use e2e::platform::{Platform, PlatformOptions, SandboxedChannel};
use payproto::payment::v1 as pb;

/// payd's `payd_grpc_request_duration_seconds_count` for `service`/`method`.
async fn calls_of(p: &Platform, service: &str, method: &str) -> i64 {
    let text = p.payd_metrics().await;
    text.lines()
        .filter(|l| l.starts_with("payd_grpc_request_duration_seconds_count{"))
        .filter(|l| {
            l.contains(&format!("method=\"{method}\""))
                && l.contains(&format!("service=\"{service}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
        .sum()
}

/// payd's count of channel events of `kind` that could change nothing (repeats of a recorded
/// event, successes already applied): written nowhere, counted.
async fn repeats(p: &Platform, kind: &str) -> i64 {
    p.payd_metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("payd_channel_events_total{"))
        .filter(|l| {
            l.contains(&format!("kind=\"{kind}\""))
                && (l.contains("outcome=\"REPEATED\"") || l.contains("outcome=\"ALREADY_APPLIED\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
        .sum()
}

const STATE_CHANGING: &[(&str, &str)] = &[
    ("payment.v1.PaymentService", "CreateOrder"),
    ("payment.v1.PaymentService", "Pay"),
    ("payment.v1.PaymentService", "CloseOrder"),
    ("payment.v1.PaymentService", "CreateRefund"),
    ("payment.v1.PaymentService", "RedeliverEvents"),
    ("payment.v1.ReconciliationService", "RunReconciliation"),
    ("payment.v1.ReconciliationService", "ResolveDiscrepancy"),
    ("channel.v1.ChannelEventsService", "ReportPayment"),
    ("channel.v1.ChannelEventsService", "ReportRefund"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_changing_call_of_a_whole_flow_leaves_exactly_one_audit_record() {
    let ch = SandboxedChannel::Wechat;
    // No active queries during the test: every result arrives as the adapter's report.
    let p = Platform::start_with(
        &[ch],
        0.01,
        PlatformOptions {
            payd_env: vec![
                ("PAYD_PAYMENT_QUERY_DELAYS_MS".into(), "600000".into()),
                ("PAYD_REFUND_QUERY_DELAYS_MS".into(), "600000".into()),
            ],
            ..PlatformOptions::default()
        },
    );
    let mut c = calls::client(p.payd.endpoint()).await;

    // Pay one order, repeat its creation, refund part of it (an operator named), and close
    // another twice (the second is refused).
    let a = create(&mut c, "AUDIT-0001", 5000).await;
    let again = create(&mut c, "AUDIT-0001", 5000).await;
    assert_eq!(again.order_id, a.order_id);
    let paying = pay(&mut c, &a.order_id, ch).await.unwrap();
    assert_eq!(p.payer_pays(ch, &paying, "success").await, 200);
    wait_status(
        &mut c,
        &a.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(30),
    )
    .await;
    let mut refund = req(pb::CreateRefundRequest {
        order_id: a.order_id.clone(),
        amount: Some(pb::Money {
            amount_minor: 1000,
            currency: "CNY".into(),
        }),
        reason: "one cup short".into(),
        refund_request_no: "AUDIT-RF-1".into(),
        operator: "alice".into(),
    });
    refund
        .metadata_mut()
        .insert("x-request-id", "audit-test-refund-1".parse().unwrap());
    c.create_refund(refund).await.unwrap();
    wait_status(
        &mut c,
        &a.order_id,
        pb::OrderStatus::PartiallyRefunded,
        Duration::from_secs(30),
    )
    .await;
    let b = create(&mut c, "AUDIT-0002", 100).await;
    close(&mut c, &b.order_id).await.unwrap();
    let refused = close(&mut c, &b.order_id).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    c.redeliver_events(req(pb::RedeliverEventsRequest::default()))
        .await
        .unwrap();
    let mut r = calls::recon_client(p.payd.endpoint()).await;
    let mut run = req(pb::RunReconciliationRequest {
        channel: payproto::channel::v1::Channel::Wechat as i32,
        day: "2026-12-01".into(),
    });
    run.metadata_mut()
        .insert("x-operator", "bob".parse().unwrap());
    r.run_reconciliation(run).await.unwrap();

    // A record is written before its call's answer, and payd counts a call when it answers:
    // once nothing is in flight (the platform's retries of notifications settle), the two agree.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let by_action = loop {
        let mut by_action: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (service, method) in STATE_CHANGING {
            let action = format!("/{service}/{method}");
            let records = count(
                &p,
                &format!("SELECT count(*) AS n FROM audit_records WHERE action = '{action}'"),
            );
            let mut served = calls_of(&p, service, method).await;
            // Repeats of a recorded event are counted, not audited.
            let kind = match *method {
                "ReportPayment" => Some("PAYMENT"),
                "ReportRefund" => Some("REFUND"),
                _ => None,
            };
            if let Some(kind) = kind {
                served -= repeats(&p, kind).await;
            }
            by_action.insert(action, (records, served));
        }
        if by_action.values().all(|(r, s)| r == s) {
            break by_action
                .into_iter()
                .map(|(a, (r, _))| (a, r))
                .collect::<BTreeMap<_, _>>();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit records and served calls differ: {by_action:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let n = |m: &str| by_action[&format!("/payment.v1.PaymentService/{m}")];
    assert_eq!(n("CreateOrder"), 3);
    assert_eq!(n("Pay"), 1);
    assert_eq!(n("CloseOrder"), 2);
    assert_eq!(n("CreateRefund"), 1);
    assert_eq!(n("RedeliverEvents"), 1);
    // One record per event the adapter reported, however often it reported it.
    for (action, kind) in [("ReportPayment", "PAYMENT"), ("ReportRefund", "REFUND")] {
        let recorded = by_action[&format!("/channel.v1.ChannelEventsService/{action}")];
        let events = count(
            &p,
            &format!("SELECT count(*) AS n FROM channel_events WHERE kind = '{kind}'"),
        );
        assert_eq!(
            recorded, events,
            "{action}: {recorded} records for {events} events"
        );
        let distinct = count(
            &p,
            &format!(
                "SELECT count(DISTINCT target) AS n FROM audit_records WHERE action LIKE '%/{action}'"
            ),
        );
        assert_eq!(distinct, recorded, "{action}: an event was audited twice");
    }
    assert!(by_action["/channel.v1.ChannelEventsService/ReportPayment"] >= 1);
    assert!(by_action["/channel.v1.ChannelEventsService/ReportRefund"] >= 1);
    // Outcomes and actors as they happened.
    let q = |sql: &str| {
        count(
            &p,
            &format!("SELECT count(*) AS n FROM audit_records WHERE {sql}"),
        )
    };
    assert_eq!(q("action LIKE '%/CreateOrder' AND outcome = 'OK'"), 2);
    assert_eq!(q("action LIKE '%/CreateOrder' AND outcome = 'REPLAYED'"), 1);
    assert_eq!(
        q("action LIKE '%/CloseOrder' AND outcome = 'REFUSED' AND code = 'FAILED_PRECONDITION'"),
        1
    );
    assert_eq!(
        q(
            "action LIKE '%/CreateRefund' AND outcome = 'OK' AND operator = 'alice' \
           AND actor_kind = 'OPERATOR' AND request_id = 'audit-test-refund-1' AND app_id = 'shop-1'"
        ),
        1
    );
    assert_eq!(
        q("action LIKE '%/RunReconciliation' AND operator = 'bob'"),
        1
    );
    assert_eq!(
        q("action LIKE '%/ReportPayment' AND actor_kind = 'ADAPTER' AND adapter = 'wechat'"),
        by_action["/channel.v1.ChannelEventsService/ReportPayment"]
    );
    let of_a = e2e::invariants::rows(
        &p.db,
        &format!(
            "SELECT action, outcome, code FROM audit_records WHERE order_id = '{}' ORDER BY id",
            a.order_id
        ),
    );
    assert_eq!(
        q(&format!("order_id = '{}' AND outcome = 'OK'", a.order_id)),
        // CreateOrder, Pay, the first ReportPayment, CreateRefund, the first ReportRefund.
        5,
        "{of_a:?}"
    );

    // The log cannot be rewritten.
    let mut conn = p.db.connect();
    for sql in [
        "UPDATE audit_records SET outcome = 'OK'",
        "DELETE FROM audit_records",
    ] {
        let e = diesel::RunQueryDsl::execute(diesel::sql_query(sql), &mut conn);
        assert!(e.is_err(), "{sql} succeeded");
    }

    // And a person reads it with payctl.
    let out = tokio::process::Command::new(e2e::binary("payctl"))
        .args([
            "--endpoint",
            &p.payd.endpoint(),
            "--app",
            "shop-1",
            "--json",
        ])
        .env("PAYCTL_SECRET", calls::test_secret("shop-1"))
        .env_remove("PAYCTL_SECRET_FILE")
        .args(["audit", "--target", &a.order_id, "--page-size", "50"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = page["records"].as_array().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "/payment.v1.PaymentService/CreateRefund"
                && r["operator"] == "alice"),
        "{page}"
    );
    assert!(
        records.iter().all(|r| r["order_id"] == a.order_id.as_str()),
        "{page}"
    );
}
