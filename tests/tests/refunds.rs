//! Refunds through all three channels with real processes (payd replicas, adapters, sandboxes),
//! real Postgres and Redis: partial and multiple refunds that add up, a refund that can never
//! exceed what was paid whatever the concurrency, unknown outcomes settled by the query job, and
//! bad input refused without a trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e::calls::{self, count, create, get_refund, refund, wait_refund, wait_status};
use e2e::platform::{Platform, PlatformOptions, SandboxedChannel};
use payproto::payment::v1 as pb;
use serde_json::json;

fn opts(payd: &[(&str, &str)]) -> PlatformOptions {
    PlatformOptions {
        payd_env: payd
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        // The trade of a UnionPay front payment comes into existence when the payer's browser
        // submits the form, as at the real gateway.
        adapter_env: vec![(
            SandboxedChannel::Unionpay,
            "UNIONPAY_FRONT_REGISTER".into(),
            "false".into(),
        )],
    }
}

const SETTLE: Duration = Duration::from_secs(30);

fn code_and_message(r: Result<pb::Refund, tonic::Status>) -> (tonic::Code, String) {
    let e = r.expect_err("refused");
    (e.code(), e.message().to_owned())
}

/// Sum of the order's SUCCEEDED refunds in Postgres, and its refunded_minor.
fn pg_sums(p: &Platform, order_id: &str) -> (i64, i64) {
    let refunds = count(
        p,
        &format!(
            "SELECT coalesce(sum(amount_minor), 0)::bigint AS n FROM refunds \
             WHERE order_id = '{order_id}' AND status = 'SUCCEEDED'"
        ),
    );
    let order = count(
        p,
        &format!("SELECT refunded_minor AS n FROM orders WHERE id = '{order_id}'"),
    );
    (refunds, order)
}

/// The sandbox's refunds of a trade: (sum of those not failed, number of refunds).
async fn sandbox_sums(p: &Platform, ch: SandboxedChannel, out_trade_no: &str) -> (i64, usize) {
    let refunds = p.sandbox_refunds(ch, out_trade_no).await;
    let sum = refunds
        .iter()
        .filter(|r| r["state"] != "FAILED")
        .map(|r| r["amount_minor"].as_i64().unwrap())
        .sum();
    (sum, refunds.len())
}

/// Acceptance 1, per channel: a full refund; two partial refunds adding up to the total (order
/// PARTIALLY_REFUNDED, then REFUNDED); a third refused with FAILED_PRECONDITION naming the
/// remaining amount (0); the sandbox's ledger and Postgres agree on every sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_channel_refunds_in_full_and_in_parts_and_refuses_what_is_not_left() {
    let p = Platform::start_with(&SandboxedChannel::ALL, 0.01, opts(&[]));
    let mut c = calls::client(p.payd.endpoint()).await;
    for ch in SandboxedChannel::ALL {
        let name = ch.name();
        // A full refund.
        let (full, full_trade) = p
            .paid_order(&mut c, ch, &format!("RF-FULL-{name}"), 8_800)
            .await;
        let r = refund(&mut c, &full.order_id, 8_800, &format!("RQ-FULL-{name}"))
            .await
            .unwrap();
        assert_eq!(r.requested_by, "shop-1");
        assert_eq!(r.operator, "e2e");
        assert!(!r.out_refund_no.is_empty());
        wait_refund(
            &mut c,
            &format!("RQ-FULL-{name}"),
            pb::RefundStatus::Succeeded,
            SETTLE,
        )
        .await;
        let o = wait_status(&mut c, &full.order_id, pb::OrderStatus::Refunded, SETTLE).await;
        assert_eq!((o.paid_minor, o.refunded_minor), (8_800, 8_800));
        assert_eq!(pg_sums(&p, &full.order_id), (8_800, 8_800));
        assert_eq!(
            sandbox_sums(&p, ch, &full_trade).await,
            (8_800, 1),
            "{name}"
        );

        // Two partial refunds adding up to the total.
        let (order, trade) = p
            .paid_order(&mut c, ch, &format!("RF-PART-{name}"), 10_000)
            .await;
        refund(&mut c, &order.order_id, 3_000, &format!("RQ-P1-{name}"))
            .await
            .unwrap();
        wait_refund(
            &mut c,
            &format!("RQ-P1-{name}"),
            pb::RefundStatus::Succeeded,
            SETTLE,
        )
        .await;
        let o = wait_status(
            &mut c,
            &order.order_id,
            pb::OrderStatus::PartiallyRefunded,
            SETTLE,
        )
        .await;
        assert_eq!(o.refunded_minor, 3_000);
        refund(&mut c, &order.order_id, 7_000, &format!("RQ-P2-{name}"))
            .await
            .unwrap();
        wait_refund(
            &mut c,
            &format!("RQ-P2-{name}"),
            pb::RefundStatus::Succeeded,
            SETTLE,
        )
        .await;
        let o = wait_status(&mut c, &order.order_id, pb::OrderStatus::Refunded, SETTLE).await;
        assert_eq!(o.refunded_minor, 10_000);

        // A third: nothing is left, and the message says so.
        let (code, msg) =
            code_and_message(refund(&mut c, &order.order_id, 1, &format!("RQ-P3-{name}")).await);
        assert_eq!(code, tonic::Code::FailedPrecondition, "{name}: {msg}");
        assert!(
            msg.contains("REFUNDED") || msg.contains("remains refundable: 0"),
            "{name}: {msg}"
        );
        assert_eq!(pg_sums(&p, &order.order_id), (10_000, 10_000));
        assert_eq!(sandbox_sums(&p, ch, &trade).await, (10_000, 2), "{name}");
        for r in p.sandbox_refunds(ch, &trade).await {
            assert_eq!(r["state"], "SUCCEEDED", "{name}: {r}");
        }

        // A partially refunded order refuses more than what is left, naming it.
        let (order, _) = p
            .paid_order(&mut c, ch, &format!("RF-OVER-{name}"), 5_000)
            .await;
        refund(&mut c, &order.order_id, 4_000, &format!("RQ-O1-{name}"))
            .await
            .unwrap();
        // Settled before the listing below counts the succeeded refunds.
        wait_refund(
            &mut c,
            &format!("RQ-O1-{name}"),
            pb::RefundStatus::Succeeded,
            SETTLE,
        )
        .await;
        let (code, msg) = code_and_message(
            refund(&mut c, &order.order_id, 1_001, &format!("RQ-O2-{name}")).await,
        );
        assert_eq!(code, tonic::Code::FailedPrecondition, "{name}: {msg}");
        assert!(msg.contains("remains refundable: 1000"), "{name}: {msg}");
    }
    // The refunds are listed per order and per app, newest first, with a status filter.
    let all = c
        .list_refunds(calls::req(pb::ListRefundsRequest {
            statuses: vec![pb::RefundStatus::Succeeded as i32],
            page_size: 4,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.refunds.len(), 4);
    assert!(!all.next_page_token.is_empty());
    let mut seen = all.refunds.len();
    let mut token = all.next_page_token;
    while !token.is_empty() {
        let page = c
            .list_refunds(calls::req(pb::ListRefundsRequest {
                statuses: vec![pb::RefundStatus::Succeeded as i32],
                page_size: 4,
                page_token: token,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        seen += page.refunds.len();
        token = page.next_page_token;
    }
    assert_eq!(
        i64::try_from(seen).unwrap(),
        count(
            &p,
            "SELECT count(*) AS n FROM refunds WHERE status = 'SUCCEEDED'"
        )
    );
}

/// Acceptance 2: 50 concurrent CreateRefund calls of a tenth of the amount each, with distinct
/// numbers, spread over 3 payd processes, for one order: exactly 10 succeed, 40 are refused, the
/// sandbox saw exactly 10 refunds and the sums agree. Then 50 calls that all reuse one number:
/// one refund, identical replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_refunds_over_three_replicas_never_exceed_what_was_paid() {
    let p = Platform::start_with(&[SandboxedChannel::Wechat], 0.01, opts(&[]));
    let replicas = [p.spawn_payd(), p.spawn_payd()];
    let mut endpoints = vec![p.payd.endpoint()];
    endpoints.extend(replicas.iter().map(e2e::Payd::endpoint));
    let mut c = calls::client(p.payd.endpoint()).await;
    let ch = SandboxedChannel::Wechat;
    let (order, trade) = p.paid_order(&mut c, ch, "RF-RACE-0001", 10_000).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let endpoint = endpoints[i % 3].clone();
        let order_id = order.order_id.clone();
        tasks.spawn(async move {
            let mut c = calls::client(endpoint).await;
            refund(&mut c, &order_id, 1_000, &format!("RQ-RACE-{i:03}")).await
        });
    }
    let mut ok = 0;
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
                // Refused on the amount, or (once the ten refunds have settled) on the order's
                // state: either way nothing is left.
                assert!(
                    s.message().contains("remains refundable: 0")
                        || s.message().contains("order is REFUNDED"),
                    "{}",
                    s.message()
                );
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (10, 40));
    wait_status(&mut c, &order.order_id, pb::OrderStatus::Refunded, SETTLE).await;
    assert_eq!(pg_sums(&p, &order.order_id), (10_000, 10_000));
    assert_eq!(
        count(
            &p,
            &format!(
                "SELECT count(*) AS n FROM refunds WHERE order_id = '{}'",
                order.order_id
            )
        ),
        10
    );
    assert_eq!(sandbox_sums(&p, ch, &trade).await, (10_000, 10));

    // 50 calls with one number: one refund, and every reply the same bytes.
    let (order, trade) = p.paid_order(&mut c, ch, "RF-RACE-0002", 10_000).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let endpoint = endpoints[i % 3].clone();
        let order_id = order.order_id.clone();
        tasks.spawn(async move {
            let mut c = calls::client(endpoint).await;
            refund(&mut c, &order_id, 1_000, "RQ-SAME-0001").await
        });
    }
    let mut replies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        replies.push(r.unwrap().unwrap());
    }
    assert!(replies.windows(2).all(|w| w[0] == w[1]), "replies differ");
    assert_eq!(
        count(
            &p,
            &format!(
                "SELECT count(*) AS n FROM refunds WHERE order_id = '{}'",
                order.order_id
            )
        ),
        1
    );
    let at_sandbox = p.sandbox_refunds(ch, &trade).await;
    assert_eq!(at_sandbox.len(), 1, "{at_sandbox:?}");
    assert_eq!(at_sandbox[0]["requests"], 1, "{at_sandbox:?}");
    // The same number with another amount names the field.
    let (code, msg) = code_and_message(refund(&mut c, &order.order_id, 999, "RQ-SAME-0001").await);
    assert_eq!(code, tonic::Code::AlreadyExists);
    assert!(msg.contains("amount.amount_minor"), "{msg}");
}

/// Acceptance 3, per channel: a refund whose channel call times out (the sandbox executes it and
/// holds the answer) ends as the sandbox has it through the query job, with no second refund
/// sent; the same for a refund the platform fails after accepting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_whose_call_times_out_is_settled_by_the_query_job_without_a_second_refund() {
    let p = Platform::start_with(
        &SandboxedChannel::ALL,
        0.01,
        opts(&[
            ("PAYD_CHANNEL_TIMEOUT_MS", "1500"),
            (
                "PAYD_REFUND_QUERY_DELAYS_MS",
                "300,300,500,500,1000,1000,2000,2000",
            ),
            ("PAYD_REFUND_JOB_TICK_MS", "100"),
        ]),
    );
    let mut c = calls::client(p.payd.endpoint()).await;
    for ch in SandboxedChannel::ALL {
        let name = ch.name();
        for (outcome, want) in [
            ("success", pb::RefundStatus::Succeeded),
            ("fail", pb::RefundStatus::Failed),
        ] {
            let (order, trade) = p
                .paid_order(&mut c, ch, &format!("RF-TO-{name}-{outcome}"), 6_000)
                .await;
            // Callbacks lost: only the query job can learn the outcome.
            p.sandbox_post(
                ch,
                "/sandbox/faults",
                json!({"refund_answer_delay_ms": 3000, "refund_outcome": outcome,
                       "callback_mode": "lose"}),
            )
            .await;
            let no = format!("RQ-TO-{name}-{outcome}");
            let r = refund(&mut c, &order.order_id, 6_000, &no).await.unwrap();
            assert_eq!(
                r.status,
                pb::RefundStatus::Processing as i32,
                "{name}/{outcome}: the call timed out, so the outcome is unknown: {r:?}"
            );
            p.sandbox_post(ch, "/sandbox/faults", json!({"refund_answer_delay_ms": 0}))
                .await;
            let settled = wait_refund(&mut c, &no, want, SETTLE).await;
            let at_sandbox = p.sandbox_refunds(ch, &trade).await;
            assert_eq!(at_sandbox.len(), 1, "{name}/{outcome}: {at_sandbox:?}");
            // One refund, and one request for it — except a refused Alipay refund: Alipay's
            // query cannot tell "refused" from "never received" (no refund_status either way),
            // and its documented answer is to re-send the same out_request_no, which Alipay
            // refuses again. Still one refund number, never a second refund.
            let requests = if ch == SandboxedChannel::Alipay && outcome == "fail" {
                2
            } else {
                1
            };
            assert_eq!(
                at_sandbox[0]["requests"], requests,
                "{name}/{outcome}: {at_sandbox:?}"
            );
            assert_eq!(
                at_sandbox[0]["state"],
                if outcome == "success" {
                    "SUCCEEDED"
                } else {
                    "FAILED"
                },
                "{name}/{outcome}"
            );
            match want {
                pb::RefundStatus::Succeeded => {
                    wait_status(&mut c, &order.order_id, pb::OrderStatus::Refunded, SETTLE).await;
                    assert_eq!(pg_sums(&p, &order.order_id), (6_000, 6_000));
                }
                _ => {
                    assert!(!settled.failure_reason.is_empty(), "{settled:?}");
                    // The failed refund released its amount.
                    let o = calls::order_of(&mut c, &order.order_id).await;
                    assert_eq!(o.status, pb::OrderStatus::Paid as i32);
                    assert_eq!(
                        count(
                            &p,
                            &format!(
                                "SELECT refund_reserved_minor AS n FROM payment_attempts \
                                 WHERE out_trade_no = '{trade}'"
                            )
                        ),
                        0
                    );
                }
            }
            p.sandbox_delete(ch, "/sandbox/faults").await;
        }
    }
}

/// Acceptance 3, the crash: the payd that sent the refund is killed (SIGKILL) while the channel
/// holds its answer; another replica's query job finds the PENDING refund and settles it as the
/// sandbox has it, without a second refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_whose_sender_is_killed_is_settled_by_another_replica() {
    let p = Platform::start_with(
        &[SandboxedChannel::Wechat, SandboxedChannel::Alipay],
        0.01,
        opts(&[
            ("PAYD_REFUND_PENDING_GRACE_MS", "1500"),
            (
                "PAYD_REFUND_QUERY_DELAYS_MS",
                "300,300,500,500,1000,1000,2000",
            ),
            ("PAYD_REFUND_JOB_TICK_MS", "100"),
        ]),
    );
    let mut c = calls::client(p.payd.endpoint()).await;
    for ch in [SandboxedChannel::Wechat, SandboxedChannel::Alipay] {
        let name = ch.name();
        let (order, trade) = p
            .paid_order(&mut c, ch, &format!("RF-KILL-{name}"), 4_200)
            .await;
        p.sandbox_post(
            ch,
            "/sandbox/faults",
            json!({"refund_answer_delay_ms": 4000, "callback_mode": "lose"}),
        )
        .await;
        let sender = p.spawn_payd();
        let endpoint = sender.endpoint();
        let order_id = order.order_id.clone();
        let no = format!("RQ-KILL-{name}");
        let call = tokio::spawn({
            let no = no.clone();
            async move {
                let mut c = calls::client(endpoint).await;
                refund(&mut c, &order_id, 4_200, &no).await
            }
        });
        // Wait until the sandbox has executed the refund (its answer is being held), then kill.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while p.sandbox_refunds(ch, &trade).await.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the refund never reached {name}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sender.kill();
        assert!(call.await.unwrap().is_err(), "the killed sender answered");
        assert_eq!(
            get_refund(&mut c, &no).await.status,
            pb::RefundStatus::Pending as i32
        );
        p.sandbox_post(ch, "/sandbox/faults", json!({"refund_answer_delay_ms": 0}))
            .await;
        wait_refund(&mut c, &no, pb::RefundStatus::Succeeded, SETTLE).await;
        wait_status(&mut c, &order.order_id, pb::OrderStatus::Refunded, SETTLE).await;
        let at_sandbox = p.sandbox_refunds(ch, &trade).await;
        assert_eq!(at_sandbox.len(), 1, "{name}: {at_sandbox:?}");
        assert_eq!(at_sandbox[0]["requests"], 1, "{name}: {at_sandbox:?}");
        assert_eq!(pg_sums(&p, &order.order_id), (4_200, 4_200));
        p.sandbox_delete(ch, "/sandbox/faults").await;
    }
}

/// Acceptance 4: bad inputs get their documented status, name what is wrong, and change nothing
/// in Postgres or at the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_refund_requests_get_their_documented_status_and_change_nothing() {
    use tonic::Code;
    let p = Platform::start_with(&[SandboxedChannel::Wechat], 0.01, opts(&[]));
    let mut c = calls::client(p.payd.endpoint()).await;
    let ch = SandboxedChannel::Wechat;
    let (paid, trade) = p.paid_order(&mut c, ch, "RF-BAD-PAID", 10_000).await;
    // An earlier refund, so that a reused number has something to collide with.
    refund(&mut c, &paid.order_id, 1_000, "RQ-BAD-FIRST")
        .await
        .unwrap();
    wait_refund(&mut c, "RQ-BAD-FIRST", pb::RefundStatus::Succeeded, SETTLE).await;
    let unpaid = create(&mut c, "RF-BAD-UNPAID", 10_000).await;
    let closed = create(&mut c, "RF-BAD-CLOSED", 10_000).await;
    calls::close(&mut c, &closed.order_id).await.unwrap();
    let mut other = c.clone();
    let other_app = {
        let mut r = tonic::Request::new(pb::CreateOrderRequest {
            merchant_order_no: "RF-BAD-OTHER".into(),
            amount: Some(pb::Money {
                amount_minor: 500,
                currency: "CNY".into(),
            }),
            subject: "another app's".into(),
            expires_in_seconds: 900,
            ..Default::default()
        });
        r.metadata_mut()
            .insert("x-app-id", "shop-2".parse().unwrap());
        other
            .create_order(r)
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap()
    };
    let snapshot = || {
        count(
            &p,
            "SELECT ((SELECT count(*) FROM refunds) * 1000000 \
                  + (SELECT coalesce(sum(refund_reserved_minor), 0) FROM payment_attempts) \
                  + (SELECT coalesce(sum(version), 0) FROM orders) * 100 \
                  + (SELECT count(*) FROM refund_transitions) * 10)::bigint AS n",
        )
    };
    let before = snapshot();
    let sandbox_before = p.sandbox_refunds(ch, &trade).await.len();

    struct Case {
        name: &'static str,
        order_id: String,
        amount: Option<(i64, &'static str)>,
        reason: String,
        no: String,
        app: &'static str,
        want: Code,
        names: &'static str,
    }
    let case = |name, order_id: &str, amount, no: &str, want, names| Case {
        name,
        order_id: order_id.to_owned(),
        amount,
        reason: "changed my mind".into(),
        no: no.to_owned(),
        app: "shop-1",
        want,
        names,
    };
    let paid_id = paid.order_id.as_str();
    let mut cases = vec![
        case(
            "zero amount",
            paid_id,
            Some((0, "CNY")),
            "RQ-BAD-0001",
            Code::InvalidArgument,
            "amount.amount_minor",
        ),
        case(
            "negative amount",
            paid_id,
            Some((-100, "CNY")),
            "RQ-BAD-0002",
            Code::InvalidArgument,
            "amount.amount_minor",
        ),
        case(
            "no amount",
            paid_id,
            None,
            "RQ-BAD-0003",
            Code::InvalidArgument,
            "amount",
        ),
        case(
            "more than remains",
            paid_id,
            Some((9_001, "CNY")),
            "RQ-BAD-0004",
            Code::FailedPrecondition,
            "remains refundable: 9000",
        ),
        case(
            "more than was paid",
            paid_id,
            Some((20_000, "CNY")),
            "RQ-BAD-0005",
            Code::FailedPrecondition,
            "remains refundable: 9000",
        ),
        case(
            "another currency",
            paid_id,
            Some((100, "USD")),
            "RQ-BAD-0006",
            Code::InvalidArgument,
            "amount.currency",
        ),
        case(
            "an unknown currency",
            paid_id,
            Some((100, "XXX")),
            "RQ-BAD-0007",
            Code::InvalidArgument,
            "amount.currency",
        ),
        case(
            "an unknown order",
            "0192d5a8-7b7c-7cc3-9a43-2bd0d0c5a001",
            Some((100, "CNY")),
            "RQ-BAD-0008",
            Code::NotFound,
            "order",
        ),
        case(
            "another app's order",
            &other_app.order_id,
            Some((100, "CNY")),
            "RQ-BAD-0009",
            Code::NotFound,
            "order",
        ),
        case(
            "a malformed order id",
            "not-a-uuid",
            Some((100, "CNY")),
            "RQ-BAD-0010",
            Code::InvalidArgument,
            "order_id",
        ),
        case(
            "an unpaid order",
            &unpaid.order_id,
            Some((100, "CNY")),
            "RQ-BAD-0011",
            Code::FailedPrecondition,
            "PENDING",
        ),
        case(
            "a closed order",
            &closed.order_id,
            Some((100, "CNY")),
            "RQ-BAD-0012",
            Code::FailedPrecondition,
            "CLOSED",
        ),
        case(
            "a short refund_request_no",
            paid_id,
            Some((100, "CNY")),
            "RQ-1",
            Code::InvalidArgument,
            "refund_request_no",
        ),
        case(
            "a refund_request_no with a space",
            paid_id,
            Some((100, "CNY")),
            "RQ BAD 0014",
            Code::InvalidArgument,
            "refund_request_no",
        ),
        case(
            "an empty refund_request_no",
            paid_id,
            Some((100, "CNY")),
            "",
            Code::InvalidArgument,
            "refund_request_no",
        ),
        case(
            "a reused refund_request_no with another amount",
            paid_id,
            Some((2_000, "CNY")),
            "RQ-BAD-FIRST",
            Code::AlreadyExists,
            "amount.amount_minor",
        ),
    ];
    let mut long = case(
        "an overlong reason",
        paid_id,
        Some((100, "CNY")),
        "RQ-BAD-0017",
        Code::InvalidArgument,
        "reason",
    );
    long.reason = "x".repeat(81);
    cases.push(long);
    let mut ctrl = case(
        "a reason with a control character",
        paid_id,
        Some((100, "CNY")),
        "RQ-BAD-0018",
        Code::InvalidArgument,
        "reason",
    );
    ctrl.reason = "bad\u{7}bell".into();
    cases.push(ctrl);
    let mut reused_reason = case(
        "a reused refund_request_no with another reason",
        paid_id,
        Some((1_000, "CNY")),
        "RQ-BAD-FIRST",
        Code::AlreadyExists,
        "reason",
    );
    reused_reason.reason = "another reason".into();
    cases.push(reused_reason);
    let mut anon = case(
        "no app id",
        paid_id,
        Some((100, "CNY")),
        "RQ-BAD-0020",
        Code::Unauthenticated,
        "x-app-id",
    );
    anon.app = "";
    cases.push(anon);

    assert!(cases.len() >= 12);
    for k in cases {
        let mut r = tonic::Request::new(pb::CreateRefundRequest {
            order_id: k.order_id.clone(),
            amount: k.amount.map(|(m, cur)| pb::Money {
                amount_minor: m,
                currency: cur.into(),
            }),
            reason: k.reason.clone(),
            refund_request_no: k.no.clone(),
            operator: String::new(),
        });
        if !k.app.is_empty() {
            r.metadata_mut().insert("x-app-id", k.app.parse().unwrap());
        }
        let e = c.create_refund(r).await.expect_err(k.name);
        assert_eq!(e.code(), k.want, "{}: {}", k.name, e.message());
        assert!(
            e.message().contains(k.names),
            "{}: {:?} does not name {:?}",
            k.name,
            e.message(),
            k.names
        );
        assert_eq!(snapshot(), before, "{} changed something", k.name);
    }
    assert_eq!(p.sandbox_refunds(ch, &trade).await.len(), sandbox_before);
    // Unknown lookups are NOT_FOUND; another app's refund is invisible.
    let e = c
        .get_refund(calls::req(pb::GetRefundRequest {
            lookup: Some(pb::get_refund_request::Lookup::RefundRequestNo(
                "RQ-NOPE-01".into(),
            )),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mine = get_refund(&mut c, "RQ-BAD-FIRST").await;
    let mut r = tonic::Request::new(pb::GetRefundRequest {
        lookup: Some(pb::get_refund_request::Lookup::RefundId(
            mine.refund_id.clone(),
        )),
    });
    r.metadata_mut()
        .insert("x-app-id", "shop-2".parse().unwrap());
    assert_eq!(c.get_refund(r).await.unwrap_err().code(), Code::NotFound);
    // The refusals were counted.
    let metrics = reqwest::get(format!("http://{}/metrics", p.payd.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        e2e::platform::metric_sum(
            &metrics,
            "payd_rejected_requests_total{method=\"CreateRefund\""
        ) >= 18.0,
        "{metrics}"
    );
}
