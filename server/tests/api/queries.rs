//! Active queries of open attempts against real Postgres with an unreachable adapter: claims
//! are exclusive across concurrent jobs, and an attempt still unknown past its last query is
//! flagged for a person (flag, metric, outbox event), never guessed.
use diesel::RunQueryDsl;

use crate::helpers::*;

/// A server whose WeChat adapter cannot be reached, with background jobs that tick every
/// `tick_ms` (a huge tick: the test drives the job itself).
async fn app_with_dead_adapter(delays: &str, tick_ms: u64) -> TestApp {
    let delays = delays.to_owned();
    spawn_app_with(move |s| {
        s.channel_wechat_endpoint = Some("http://127.0.0.1:9".into());
        s.channel_wechat_token = Some(payd::config::Secret::new("test-payd-to-wechat-token"));
        s.channel_timeout_ms = 300;
        s.payment_query_delays_ms = delays;
        s.payment_query_tick_ms = tick_ms;
        s.expiry_tick_ms = tick_ms;
        s.pay_deadline_margin_ms = 100;
    })
    .await
}

/// An order with one open WeChat attempt in `status`, due for a query now.
async fn open_attempt(app: &mut TestApp, no: &str, out_trade_no: &str, status: &str) -> String {
    let order = create_order(app, no, 1_000).await;
    diesel::sql_query(format!(
        "INSERT INTO payment_attempts (id, order_id, out_trade_no, channel, method, amount_minor, currency, status, payer_digest, pay_deadline, next_query_at) \
         VALUES (gen_random_uuid(), '{}', '{out_trade_no}', 'WECHAT', 'WECHAT_NATIVE', 1000, 'CNY', '{status}', '\\x00', now() + interval '1 hour', now() - interval '1 second')",
        order.order_id,
    ))
    .execute(&mut app.conn())
    .unwrap();
    order.order_id
}

fn metric(text: &str, prefix: &str) -> i64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum()
}

#[tokio::test]
async fn two_jobs_never_query_one_attempt_twice() {
    let mut app = app_with_dead_adapter("600000", 3_600_000).await;
    for i in 0..20 {
        open_attempt(
            &mut app,
            &format!("QRY-EXCL-{i:02}"),
            &format!("T000QRYEXCL{i:02}"),
            "PAYING",
        )
        .await;
    }
    let (a, b) = (app.app.clone(), app.app.clone());
    let (ra, rb) = tokio::join!(a.run_payment_queries(), b.run_payment_queries());
    let (na, nb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(na + nb, 20, "every due attempt claimed once: {na} + {nb}");
    assert_eq!(
        app.count("SELECT count(*) AS n FROM payment_attempts WHERE queries = 1"),
        20
    );
    // Nothing is due again before its next scheduled time.
    assert_eq!(app.app.run_payment_queries().await.unwrap(), 0);
    let text = app.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "payment_attempt_queries_total{channel=\"WECHAT\",result=\"UNAVAILABLE\"}"
        ),
        20,
        "{text}"
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM payment_attempts WHERE status = 'PAYING' AND NOT needs_attention AND next_query_at > now() + interval '1 minute'"),
        20
    );
}

#[tokio::test]
async fn an_attempt_unknown_past_its_last_query_is_flagged_for_a_person() {
    let mut app = app_with_dead_adapter("50", 20).await;
    let order_id = open_attempt(&mut app, "QRY-FLAG-01", "T000QRYFLAG01", "INIT").await;
    // The order expires in a second: its schedule (plus the 100 ms margin) ends there.
    diesel::sql_query(format!(
        "UPDATE orders SET expires_at = now() + interval '1 second' WHERE id = '{order_id}'"
    ))
    .execute(&mut app.conn())
    .unwrap();
    diesel::sql_query(format!(
        "UPDATE payment_attempts SET pay_deadline = now() + interval '1 second' WHERE order_id = '{order_id}'"
    ))
    .execute(&mut app.conn())
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while app.count(&format!(
        "SELECT count(*) AS n FROM payment_attempts WHERE order_id = '{order_id}' AND needs_attention"
    )) == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the attempt was never flagged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Never guessed: still INIT, no more queries due, the order not paid.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM payment_attempts WHERE order_id = '{order_id}' AND status = 'INIT' AND next_query_at IS NULL AND queries > 1"
        )),
        1
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM outbox_events WHERE order_id = '{order_id}' AND event_type = 'payment.needs_attention'"
        )),
        1
    );
    app.app.refresh_attempt_gauges().await.unwrap();
    let text = app.metrics_text().await;
    assert_eq!(
        metric(&text, "payment_attempts_flagged_total{channel=\"WECHAT\"}"),
        1,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "payment_attempts_needing_attention{channel=\"WECHAT\"}"
        ),
        1,
        "{text}"
    );
    assert_eq!(
        metric(&text, "payment_attempts_open{channel=\"WECHAT\"}"),
        1,
        "{text}"
    );
    // A flagged attempt is not claimed again.
    diesel::sql_query("UPDATE payment_attempts SET next_query_at = now() - interval '1 second'")
        .execute(&mut app.conn())
        .unwrap();
    assert_eq!(app.app.run_payment_queries().await.unwrap(), 0);
}

#[test]
fn the_schedule_gives_the_gaps_then_backs_off_then_ends_after_the_expiry() {
    use chrono::{DateTime, Duration as D};
    use payd::app::queries::next_query_due;
    use std::time::Duration;
    let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let ms = Duration::from_millis;
    let delays = [ms(10_000), ms(20_000), ms(30_000)];
    let expires = t0 + D::minutes(15);
    let due = |made| next_query_due(t0, expires, ms(60_000), &delays, ms(300_000), made);
    let mut times = Vec::new();
    let mut made = 0;
    while let Some(t) = due(made) {
        times.push((t - t0).num_seconds());
        made += 1;
    }
    // +10, +20, +30 s, then 60, 120, 240, 300 (ceiling), 300 … until 15 min + 60 s.
    assert_eq!(times, vec![10, 30, 60, 120, 240, 480, 780, 960]);
}

#[tokio::test]
async fn expired_orders_are_closed_and_one_that_cannot_be_is_not_retried_in_a_hot_loop() {
    let mut app = app_with_dead_adapter("600000", 3_600_000).await;
    let bare = create_order(&mut app, "EXP-BARE-01", 500).await;
    // An open attempt at an unreachable channel: the close cannot be confirmed.
    let stuck = open_attempt(&mut app, "EXP-STUCK-01", "T000EXPSTUCK01", "PAYING").await;
    diesel::sql_query("UPDATE orders SET expires_at = now() - interval '1 second'")
        .execute(&mut app.conn())
        .unwrap();
    assert_eq!(app.app.expire_orders().await.unwrap(), 2);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM order_transitions WHERE order_id = '{}' AND to_status = 'CLOSED' AND reason = 'expired'",
            bare.order_id
        )),
        1
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM orders WHERE id = '{stuck}' AND status = 'PENDING'"
        )),
        1
    );
    // The stuck order waits for its retry time instead of being taken again at once.
    assert_eq!(app.app.expire_orders().await.unwrap(), 0);
    let text = app.metrics_text().await;
    assert_eq!(metric(&text, "payment_orders_expired_total"), 1, "{text}");
}
