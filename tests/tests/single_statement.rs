//! The lifecycle's single-statement steps (`PAYD_SINGLE_STATEMENT_WRITES`, on by default:
//! CreateOrder, Pay's new attempt and last write, a success that pays the order) write exactly
//! what the steps' transactions write. The same lifecycles, through each channel, once with the
//! statements and once without, leave the same rows (ids, times and channel numbers aside), the
//! same events (decoded), the same transitions and the same audit log; and every event shows its
//! order exactly as committed, to the microsecond of `updated_at`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use diesel::RunQueryDsl;
use e2e::calls::{client, create, pay, wait_status};
use e2e::platform::{Platform, PlatformOptions, SandboxedChannel};
use payproto::payment::v1 as pb;
use prost::Message;

#[derive(diesel::QueryableByName)]
struct Line {
    #[diesel(sql_type = diesel::sql_types::Text)]
    line: String,
}

fn lines(p: &Platform, sql: &str) -> Vec<String> {
    diesel::sql_query(sql)
        .load::<Line>(&mut p.db.connect())
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect()
}

#[derive(diesel::QueryableByName)]
struct Event {
    #[diesel(sql_type = diesel::sql_types::Text)]
    order_no: String,
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    payload: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    row_updated_at: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    row_version: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    order_seq: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    event_type: String,
}

/// Pays one order through each channel and returns everything the lifecycles wrote, with what
/// differs from run to run (ids, times, channel numbers) left out.
async fn lifecycles(single_statement: bool) -> (Vec<String>, String) {
    let p = Platform::start_with(
        &SandboxedChannel::ALL,
        1.0,
        PlatformOptions {
            payd_env: vec![(
                "PAYD_SINGLE_STATEMENT_WRITES".to_owned(),
                single_statement.to_string(),
            )],
            adapter_env: Vec::new(),
        },
    );
    let mut c = client(p.payd.endpoint()).await;
    for ch in SandboxedChannel::ALL {
        let order = create(&mut c, &format!("STEPS-{}", ch.name()), 4321).await;
        let paying = pay(&mut c, &order.order_id, ch).await.expect("pay");
        assert_eq!(
            paying.order.as_ref().unwrap().status,
            pb::OrderStatus::Paying as i32
        );
        // Pay answers the rows as committed.
        assert_eq!(
            e2e::calls::order_of(&mut c, &order.order_id).await,
            paying.order.clone().unwrap()
        );
        assert_eq!(p.payer_pays(ch, &paying, "success").await, 200);
        wait_status(
            &mut c,
            &order.order_id,
            pb::OrderStatus::Paid,
            Duration::from_secs(20),
        )
        .await;
    }
    let mut dump = Vec::new();
    dump.extend(lines(
        &p,
        "SELECT concat_ws(' ', 'order', merchant_order_no, amount_minor, currency, status, \
         paid_minor, refunded_minor, version, event_seq, closed_at IS NULL, \
         transition_reason IS NULL, fence > 0, expires_at - created_at, \
         updated_at >= created_at) AS line FROM orders ORDER BY merchant_order_no",
    ));
    dump.extend(lines(
        &p,
        "SELECT concat_ws(' ', 'transition', o.merchant_order_no, t.version, t.from_status, \
         t.to_status, t.reason) AS line FROM order_transitions t JOIN orders o ON o.id = t.order_id \
         ORDER BY o.merchant_order_no, t.version",
    ));
    dump.extend(lines(
        &p,
        "SELECT concat_ws(' ', 'attempt', o.merchant_order_no, a.channel, a.method, a.amount_minor, \
         a.currency, a.status, a.version, a.paid_minor, a.pay_params IS NOT NULL, \
         a.channel_trade_no IS NOT NULL, a.succeeded_at IS NOT NULL, a.refund_reserved_minor, \
         a.refunded_minor, a.needs_attention) AS line \
         FROM payment_attempts a JOIN orders o ON o.id = a.order_id ORDER BY o.merchant_order_no",
    ));
    dump.extend(lines(
        &p,
        "SELECT concat_ws(' ', 'inbox', o.merchant_order_no, e.channel, e.kind, e.state, e.outcome, \
         e.payload->>'paid_minor', e.payload->>'paid_currency', e.payload->>'state') AS line \
         FROM channel_events e JOIN payment_attempts a ON a.out_trade_no = e.out_trade_no \
         JOIN orders o ON o.id = a.order_id ORDER BY o.merchant_order_no, e.id",
    ));
    dump.extend(lines(
        &p,
        "SELECT concat_ws(' ', 'audit', actor_kind, app_id, operator, adapter, action, outcome, \
         code, order_id IS NOT NULL, out_trade_no IS NOT NULL, refund_id IS NOT NULL, \
         target IS NOT NULL) AS line FROM audit_records \
         ORDER BY action, adapter, out_trade_no, target",
    ));
    let events: Vec<Event> = diesel::sql_query(
        "SELECT o.merchant_order_no AS order_no, e.payload, o.updated_at::text AS row_updated_at, \
         o.version AS row_version, e.order_seq, e.event_type FROM outbox_events e \
         JOIN orders o ON o.id = e.order_id ORDER BY o.merchant_order_no, e.order_seq",
    )
    .load(&mut p.db.connect())
    .unwrap();
    for e in events {
        let mut ev = pb::Event::decode(e.payload.as_slice()).unwrap();
        assert_eq!(ev.order_sequence, e.order_seq);
        assert_eq!(ev.r#type, e.event_type);
        let order = ev.order.as_mut().unwrap();
        // The last event shows the row as it is now: the same version, and `updated_at` to
        // the microsecond (the single statement encodes the event before it writes the row).
        if order.version == e.row_version {
            let ts = order.updated_at.unwrap();
            let shown = chrono::DateTime::from_timestamp(ts.seconds, ts.nanos as u32).unwrap();
            let stored: chrono::DateTime<chrono::Utc> = chrono::DateTime::parse_from_str(
                &format!("{}00", e.row_updated_at),
                "%Y-%m-%d %H:%M:%S%.f%z",
            )
            .unwrap()
            .into();
            assert_eq!(shown, stored, "{}: the event's updated_at", e.order_no);
        }
        ev.event_id.clear();
        ev.order_id.clear();
        ev.occurred_at = None;
        order.order_id.clear();
        order.created_at = None;
        order.updated_at = None;
        order.expires_at = None;
        if let Some(a) = ev.attempt.as_mut() {
            a.attempt_id.clear();
            a.order_id.clear();
            a.out_trade_no.clear();
            a.created_at = None;
        }
        dump.push(format!("event {} {ev:?}", e.order_no));
    }
    let metrics = p.payd_metrics().await;
    (dump, metrics)
}

/// The count of `payd_single_statement_writes_total{step, outcome}` in `metrics`.
fn writes(metrics: &str, step: &str, outcome: &str) -> u64 {
    let key =
        format!("payd_single_statement_writes_total{{outcome=\"{outcome}\",step=\"{step}\"}}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_single_statement_steps_write_what_the_transactions_write() {
    let (with, metrics) = lifecycles(true).await;
    // Every step of the three lifecycles took its single statement.
    for step in ["create_order", "open_attempt", "pay", "payment_result"] {
        assert_eq!(writes(&metrics, step, "committed"), 3, "{step}\n{metrics}");
        assert_eq!(writes(&metrics, step, "refused"), 0, "{step}");
    }
    let (without, metrics) = lifecycles(false).await;
    assert!(
        !metrics.contains("payd_single_statement_writes_total{"),
        "{metrics}"
    );
    assert!(with.len() > 30, "{with:#?}");
    assert_eq!(with, without);
}
