//! Facts out through the outbox, with real processes: every event reaches the app's EventSink
//! (after it was down, too) in order per order, WatchEvents resumes from a cursor exactly once, a
//! callback storm over three replicas (one killed and restarted) pays each order once and tells the
//! business once, and a customer who really pays twice is refunded automatically.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use e2e::calls::{self, count, create, pay, wait_status};
use e2e::platform::{Platform, PlatformOptions, SandboxedChannel};
use e2e::sink::TestSink;
use payproto::payment::v1 as pb;
use serde_json::json;

fn opts(sink: &TestSink, extra: &[(&str, &str)]) -> PlatformOptions {
    let mut payd_env = vec![
        (
            "PAYD_EVENT_SINKS".to_owned(),
            format!("shop-1={}", sink.url),
        ),
        (
            "PAYD_EVENT_RETRY_DELAYS_MS".to_owned(),
            "100,200,300,400,500,500,500,500,500,500,500,500,500,500,500,500,500,500,500,500"
                .to_owned(),
        ),
        ("PAYD_REFUND_JOB_TICK_MS".to_owned(), "100".to_owned()),
        // A killed dispatcher's claims come back after 2 × this + 5 s.
        ("PAYD_EVENT_SINK_TIMEOUT_MS".to_owned(), "1000".to_owned()),
    ];
    payd_env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    PlatformOptions {
        payd_env,
        adapter_env: vec![(
            SandboxedChannel::Unionpay,
            "UNIONPAY_FRONT_REGISTER".into(),
            "false".into(),
        )],
    }
}

/// The app's events in Postgres: event id → (order, sequence, type).
fn outbox_of(p: &Platform) -> HashMap<String, (String, i64, String)> {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct R {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        order_id: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        kind: String,
    }
    diesel::sql_query(
        "SELECT event_id::text AS id, order_id::text AS order_id, order_seq AS seq, \
         event_type AS kind FROM outbox_events WHERE app_id = 'shop-1'",
    )
    .load::<R>(&mut p.db.connect())
    .unwrap()
    .into_iter()
    .map(|r| (r.id, (r.order_id, r.seq, r.kind)))
    .collect()
}

/// Waits until the sink has every event of the outbox (by id), then checks that each order's
/// events arrived in sequence (a repeat on the wire may follow, never an out-of-order first).
async fn sink_has_everything(p: &Platform, sink: &TestSink, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let want = outbox_of(p);
        let got: HashSet<String> = sink.received().into_iter().map(|e| e.event_id).collect();
        let missing = want.keys().filter(|id| !got.contains(*id)).count();
        let pending = count(
            p,
            "SELECT count(*) AS n FROM outbox_events WHERE delivery <> 'DELIVERED'",
        );
        if missing == 0 && pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} events of {} never reached the sink; {pending} not delivered",
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut next: HashMap<String, i64> = HashMap::new();
    for e in sink.received() {
        let expected = next.entry(e.order_id.clone()).or_insert(1);
        if e.order_sequence == *expected {
            *expected += 1;
        } else {
            assert!(
                e.order_sequence < *expected,
                "order {} got event {} before {}",
                e.order_id,
                e.order_sequence,
                expected
            );
        }
        assert!(e.order.is_some(), "an event without its order: {e:?}");
    }
}

async fn watch(
    c: &mut calls::Client,
    cursor: &str,
    take: usize,
    within: Duration,
) -> Vec<pb::Event> {
    let mut stream = c
        .watch_events(calls::req(pb::WatchEventsRequest {
            cursor: cursor.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < take {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(m))) => out.push(m.event.unwrap()),
            Ok(Ok(None)) => break,
            Ok(Err(s)) => panic!("stream failed: {s:?}"),
            Err(_) => break,
        }
    }
    out
}

/// Acceptance 5: a sink that is down for a while gets every event once it is back, in order per
/// order; a WatchEvents client that disconnects and resumes from its cursor gets every event
/// exactly once, in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_that_was_down_gets_everything_in_order_and_watch_events_resumes_exactly_once() {
    let sink = TestSink::start().await;
    let p = Platform::start_with(&SandboxedChannel::ALL, 0.01, opts(&sink, &[]));
    let mut c = calls::client(p.payd.endpoint()).await;
    sink.set_down(true);
    let mut orders = Vec::new();
    for (i, ch) in SandboxedChannel::ALL.iter().cycle().take(9).enumerate() {
        let (order, _) = p
            .paid_order(
                &mut c,
                *ch,
                &format!("EV-DOWN-{i:04}"),
                1_000 + i64::try_from(i).unwrap(),
            )
            .await;
        calls::refund(&mut c, &order.order_id, 300, &format!("EV-RF-{i:04}"))
            .await
            .unwrap();
        // Settled (and its events committed) before the counts below.
        calls::wait_refund(
            &mut c,
            &format!("EV-RF-{i:04}"),
            pb::RefundStatus::Succeeded,
            Duration::from_secs(30),
        )
        .await;
        orders.push(order);
    }
    create(&mut c, "EV-DOWN-UNPAID", 500).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(sink.refused() > 0, "the sink was never tried while down");
    assert_eq!(sink.received().len(), 0);
    sink.set_down(false);
    sink_has_everything(&p, &sink, Duration::from_secs(60)).await;
    let kinds: BTreeMap<String, usize> =
        outbox_of(&p)
            .values()
            .fold(BTreeMap::new(), |mut m, (_, _, k)| {
                *m.entry(k.clone()).or_default() += 1;
                m
            });
    assert_eq!(kinds.get("order.created"), Some(&10), "{kinds:?}");
    assert_eq!(kinds.get("order.paid"), Some(&9), "{kinds:?}");
    assert_eq!(kinds.get("refund.succeeded"), Some(&9), "{kinds:?}");
    assert_eq!(kinds.get("order.partially_refunded"), Some(&9), "{kinds:?}");

    // WatchEvents: read a part, disconnect, resume from the last cursor, read the rest.
    let total = outbox_of(&p).len();
    let first = watch(&mut c, "", total / 2, Duration::from_secs(10)).await;
    assert_eq!(first.len(), total / 2);
    let cursor = first.last().unwrap().cursor.clone();
    let rest = watch(
        &mut c,
        &cursor,
        total - first.len(),
        Duration::from_secs(10),
    )
    .await;
    let all: Vec<pb::Event> = first.into_iter().chain(rest).collect();
    let ids: HashSet<&str> = all.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), all.len(), "an event came twice");
    assert_eq!(all.len(), total, "events are missing from the stream");
    let cursors: Vec<i64> = all.iter().map(|e| e.cursor.parse().unwrap()).collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "not in stream order"
    );
    // A new event shows up live on a stream that is caught up.
    let mut live = c
        .watch_events(calls::req(pb::WatchEventsRequest {
            cursor: all.last().unwrap().cursor.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    create(&mut c, "EV-LIVE-0001", 700).await;
    let e = tokio::time::timeout(Duration::from_secs(10), live.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .event
        .unwrap();
    assert_eq!(e.r#type, "order.created");
    assert_eq!(e.order.unwrap().merchant_order_no, "EV-LIVE-0001");
    // A bad cursor is named.
    let bad = c
        .watch_events(calls::req(pb::WatchEventsRequest {
            cursor: "yesterday".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("cursor"));
}

/// Acceptance 3: a customer pays one order through two channels — WeChat answered the close
/// before the switch as done while the payment was already in flight inside it — so the order
/// is PAID once, one duplicate is recorded and refunded at the sandbox, the counter reads 1, and
/// the ledgers net to exactly one charge. Separately, a payment that lands after the order was
/// closed still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customer_who_pays_twice_is_refunded_automatically_and_a_late_payment_counts() {
    let sink = TestSink::start().await;
    let p = Platform::start_with(
        &[SandboxedChannel::Wechat, SandboxedChannel::Alipay],
        0.01,
        opts(&sink, &[]),
    );
    let mut c = calls::client(p.payd.endpoint()).await;
    let (wx, ali) = (SandboxedChannel::Wechat, SandboxedChannel::Alipay);
    p.sandbox_post(wx, "/sandbox/faults", json!({"close_race": true}))
        .await;

    let order = create(&mut c, "DUP-TWO-CH-01", 2_500).await;
    let first = pay(&mut c, &order.order_id, wx).await.unwrap();
    let first_trade = first.attempt.clone().unwrap().out_trade_no;
    // The switch closes the WeChat trade first; WeChat says closed, but the payment inside it wins.
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

    // The duplicate is recorded, refunded in full at WeChat, and the order is untouched.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let refunds = p.sandbox_refunds(wx, &first_trade).await;
        if refunds.iter().any(|r| r["state"] == "SUCCEEDED")
            && count(
                &p,
                "SELECT count(*) AS n FROM duplicate_payments WHERE status = 'REFUNDED'",
            ) == 1
        {
            assert_eq!(refunds.len(), 1, "{refunds:?}");
            assert_eq!(refunds[0]["amount_minor"], 2_500);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the duplicate was not refunded: {refunds:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = calls::order_of(&mut c, &order.order_id).await;
    assert_eq!(o.status, pb::OrderStatus::Paid as i32);
    assert_eq!((o.paid_minor, o.refunded_minor), (2_500, 0));
    assert_eq!(count(&p, "SELECT count(*) AS n FROM duplicate_payments"), 1);
    // Net: two charges, one refunded.
    let charged = p.sandbox_successes(wx).await.len() + p.sandbox_successes(ali).await.len();
    assert_eq!(charged, 2);
    let refunded: i64 = p
        .sandbox_refunds(wx, &first_trade)
        .await
        .iter()
        .map(|r| r["amount_minor"].as_i64().unwrap())
        .sum();
    assert_eq!(
        2 * 2_500 - refunded,
        2_500,
        "the ledgers do not net to one charge"
    );
    let m = reqwest::get(format!("http://{}/metrics", p.payd.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        e2e::platform::metric_sum(&m, "payment_duplicate_payments_total{channel=\"WECHAT\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        e2e::platform::metric_sum(
            &m,
            "payment_duplicate_refunds_total{channel=\"WECHAT\",outcome=\"succeeded\"}"
        ),
        1.0,
        "{m}"
    );

    // A late payment: CloseOrder (WeChat says closed, the payment in flight wins) → CLOSED, then
    // the payment lands → PAID, once.
    let late = create(&mut c, "DUP-LATE-0001", 1_200).await;
    let lp = pay(&mut c, &late.order_id, wx).await.unwrap();
    calls::close(&mut c, &late.order_id).await.unwrap();
    assert_eq!(
        calls::order_of(&mut c, &late.order_id).await.status,
        pb::OrderStatus::Closed as i32
    );
    assert_eq!(p.payer_pays(wx, &lp, "success").await, 200);
    wait_status(
        &mut c,
        &late.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(20),
    )
    .await;

    // The business heard each fact once: paid twice → one order.paid per order, one
    // duplicate_detected, and the duplicate's refund.
    sink_has_everything(&p, &sink, Duration::from_secs(30)).await;
    let kinds: Vec<(String, String)> = sink
        .received()
        .iter()
        .map(|e| (e.order_id.clone(), e.r#type.clone()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let of = |id: &str, k: &str| kinds.iter().filter(|(o, t)| o == id && t == k).count();
    assert_eq!(of(&order.order_id, "order.paid"), 1);
    assert_eq!(of(&order.order_id, "payment.duplicate_detected"), 1);
    assert_eq!(of(&order.order_id, "refund.succeeded"), 1);
    assert_eq!(of(&late.order_id, "order.closed"), 1);
    assert_eq!(of(&late.order_id, "order.paid"), 1);
}

/// Acceptances 1 and 4: a storm of paid orders whose callbacks the sandboxes send 5 times each,
/// concurrently, with Create and Pay spread over 3 payd processes, one of which is killed
/// (SIGKILL) in the middle and restarted: exactly one PAID transition and one order.paid event
/// per order, each delivered to the sink, every callback acknowledged to the platforms, and the
/// sandboxes' ledgers agree. `STORM_ORDERS` sets the size (default 1000).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callback_storm_over_three_replicas_with_one_killed_pays_and_tells_each_order_once() {
    let n: usize = std::env::var("STORM_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let sink = TestSink::start().await;
    sink.fail_per_mille(50);
    let p = Platform::start_with(&SandboxedChannel::ALL, 0.01, opts(&sink, &[]));
    for ch in SandboxedChannel::ALL {
        p.sandbox_post(ch, "/sandbox/faults", json!({"callback_copies": 5}))
            .await;
    }
    let mut replicas = [Some(p.spawn_payd()), Some(p.spawn_payd())];
    let endpoints: Vec<String> = std::iter::once(p.payd.endpoint())
        .chain(replicas.iter().map(|r| r.as_ref().unwrap().endpoint()))
        .collect();
    let p = std::sync::Arc::new(p);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for w in 0..12 {
        let p = p.clone();
        let next = next.clone();
        let endpoints = endpoints.clone();
        tasks.spawn(async move {
            let mut paid = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    return paid;
                }
                let ch = SandboxedChannel::ALL[i % 3];
                // Replica 2 dies mid-storm: its clients move on to the others.
                let mut k = (i + w) % 3;
                loop {
                    let Ok(mut c) = calls::try_client(endpoints[k].clone()).await else {
                        k = (k + 1) % 3;
                        continue;
                    };
                    let attempt = async {
                        let o = c
                            .create_order(calls::req(pb::CreateOrderRequest {
                                merchant_order_no: format!("STORM-{i:05}"),
                                amount: Some(pb::Money {
                                    amount_minor: 100 + i64::try_from(i).unwrap(),
                                    currency: "CNY".into(),
                                }),
                                subject: "storm".into(),
                                expires_in_seconds: 900,
                                ..Default::default()
                            }))
                            .await?
                            .into_inner()
                            .order
                            .unwrap();
                        let r = pay(&mut c, &o.order_id, ch).await?;
                        Ok::<_, tonic::Status>((o, r))
                    }
                    .await;
                    match attempt {
                        Ok((o, r)) => {
                            assert_eq!(p.payer_pays(ch, &r, "success").await, 200);
                            paid.push(o.order_id);
                            break;
                        }
                        Err(s)
                            if s.code() == tonic::Code::Unavailable
                                || s.code() == tonic::Code::Unknown
                                || s.code() == tonic::Code::Cancelled
                                || s.code() == tonic::Code::Aborted
                                // The killed replica's port, reused by another test's
                                // process (an adapter has no PaymentService).
                                || s.code() == tonic::Code::Unimplemented =>
                        {
                            k = (k + 1) % 3;
                        }
                        Err(s) => panic!("order {i}: {s:?}"),
                    }
                }
            }
        });
    }
    // The kill, in the middle.
    while next.load(std::sync::atomic::Ordering::SeqCst) < n / 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replicas[1].take().unwrap().kill();
    let restarted = p.spawn_payd();
    let mut paid: Vec<String> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        paid.extend(r.unwrap());
    }
    assert_eq!(paid.len(), n);
    let mut c = calls::client(p.payd.endpoint()).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&p, "SELECT count(*) AS n FROM orders WHERE status = 'PAID'")
        < i64::try_from(n).unwrap()
    {
        assert!(Instant::now() < deadline, "not every order reached PAID");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("storm of {n} paid in {:?}", started.elapsed());
    for id in paid.iter().take(3) {
        calls::order_of(&mut c, id).await;
    }
    let n = i64::try_from(n).unwrap();
    assert_eq!(
        count(
            &p,
            "SELECT count(*) AS n FROM order_transitions WHERE to_status = 'PAID'"
        ),
        n
    );
    assert_eq!(
        count(
            &p,
            "SELECT count(*) AS n FROM outbox_events WHERE event_type = 'order.paid'"
        ),
        n
    );
    assert_eq!(count(&p, "SELECT count(*) AS n FROM duplicate_payments"), 0);
    sink_has_everything(&p, &sink, Duration::from_secs(120)).await;
    let paid_events: HashSet<String> = sink
        .received()
        .into_iter()
        .filter(|e| e.r#type == "order.paid")
        .map(|e| e.order_id)
        .collect();
    assert_eq!(i64::try_from(paid_events.len()).unwrap(), n);
    // The platforms saw every callback acknowledged, and their ledgers hold one charge per order.
    let mut charges = 0;
    for ch in SandboxedChannel::ALL {
        charges += p.sandbox_successes(ch).await.len();
        let log = p.sandbox_get(ch, "/sandbox/callbacks").await;
        let refused: Vec<&serde_json::Value> = log
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "payment" && a["delivered"] != true)
            .collect();
        assert!(
            refused.is_empty(),
            "{}: {} callbacks were refused, e.g. {:?}",
            ch.name(),
            refused.len(),
            refused.first()
        );
    }
    assert_eq!(i64::try_from(charges).unwrap(), n);
    drop(restarted);
}
