use std::collections::BTreeMap;

use payproto::payment::v1 as pb;
use tonic::Code;

use crate::helpers::*;

enum Call {
    Create(pb::CreateOrderRequest),
    CreateAs(Option<&'static str>, pb::CreateOrderRequest),
    Get(pb::GetOrderRequest),
    List(pb::ListOrdersRequest),
    Close(pb::CloseOrderRequest),
}

fn with(f: impl FnOnce(&mut pb::CreateOrderRequest)) -> Call {
    let mut r = create("VALID-0001", 100);
    f(&mut r);
    Call::Create(r)
}

fn money(amount_minor: i64, currency: &str) -> Option<pb::Money> {
    Some(pb::Money {
        amount_minor,
        currency: currency.to_owned(),
    })
}

fn list(f: impl FnOnce(&mut pb::ListOrdersRequest)) -> Call {
    let mut r = pb::ListOrdersRequest::default();
    f(&mut r);
    Call::List(r)
}

fn get(lookup: Option<pb::get_order_request::Lookup>) -> Call {
    Call::Get(pb::GetOrderRequest { lookup })
}

fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

const UNKNOWN_ID: &str = "0190f3c1-0000-7000-8000-000000000000";

/// (name, call, expected code, text the message must contain)
fn bad_inputs() -> Vec<(&'static str, Call, Code, &'static str)> {
    use pb::get_order_request::Lookup;
    let many: BTreeMap<String, String> =
        (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    vec![
        (
            "no app id",
            Call::CreateAs(None, create("VALID-0001", 100)),
            Code::Unauthenticated,
            "x-app-id",
        ),
        (
            "upper-case app id",
            Call::CreateAs(Some("Shop"), create("VALID-0001", 100)),
            Code::Unauthenticated,
            "x-app-id",
        ),
        (
            "empty merchant_order_no",
            with(|r| r.merchant_order_no.clear()),
            Code::InvalidArgument,
            "merchant_order_no",
        ),
        (
            "short merchant_order_no",
            with(|r| r.merchant_order_no = "ab123".into()),
            Code::InvalidArgument,
            "merchant_order_no",
        ),
        (
            "long merchant_order_no",
            with(|r| r.merchant_order_no = "x".repeat(65)),
            Code::InvalidArgument,
            "merchant_order_no",
        ),
        (
            "space in merchant_order_no",
            with(|r| r.merchant_order_no = "ORDER 0001".into()),
            Code::InvalidArgument,
            "merchant_order_no",
        ),
        (
            "non-ASCII merchant_order_no",
            with(|r| r.merchant_order_no = "订单-000001".into()),
            Code::InvalidArgument,
            "merchant_order_no",
        ),
        (
            "missing amount",
            with(|r| r.amount = None),
            Code::InvalidArgument,
            "amount",
        ),
        (
            "zero amount",
            with(|r| r.amount = money(0, "CNY")),
            Code::InvalidArgument,
            "amount.amount_minor",
        ),
        (
            "negative amount",
            with(|r| r.amount = money(-1, "CNY")),
            Code::InvalidArgument,
            "amount.amount_minor",
        ),
        (
            "amount over the maximum",
            with(|r| r.amount = money(10_000_000_001, "CNY")),
            Code::InvalidArgument,
            "amount.amount_minor",
        ),
        (
            "lower-case currency",
            with(|r| r.amount = money(100, "cny")),
            Code::InvalidArgument,
            "amount.currency",
        ),
        (
            "unknown currency",
            with(|r| r.amount = money(100, "XYZ")),
            Code::InvalidArgument,
            "amount.currency",
        ),
        (
            "empty currency",
            with(|r| r.amount = money(100, "")),
            Code::InvalidArgument,
            "amount.currency",
        ),
        (
            "empty subject",
            with(|r| r.subject.clear()),
            Code::InvalidArgument,
            "subject",
        ),
        (
            "blank subject",
            with(|r| r.subject = "   ".into()),
            Code::InvalidArgument,
            "subject",
        ),
        (
            "long subject",
            with(|r| r.subject = "咖".repeat(129)),
            Code::InvalidArgument,
            "subject",
        ),
        (
            "control character in subject",
            with(|r| r.subject = "a\nb".into()),
            Code::InvalidArgument,
            "subject",
        ),
        (
            "expiry too short",
            with(|r| r.expires_in_seconds = 59),
            Code::InvalidArgument,
            "expires_in_seconds",
        ),
        (
            "negative expiry",
            with(|r| r.expires_in_seconds = -1),
            Code::InvalidArgument,
            "expires_in_seconds",
        ),
        (
            "expiry too long",
            with(|r| r.expires_in_seconds = 7 * 24 * 3600 + 1),
            Code::InvalidArgument,
            "expires_in_seconds",
        ),
        (
            "too much metadata",
            with(|r| r.metadata = many.clone()),
            Code::InvalidArgument,
            "metadata",
        ),
        (
            "bad metadata key",
            with(|r| {
                r.metadata.insert("a key".into(), "v".into());
            }),
            Code::InvalidArgument,
            "metadata",
        ),
        (
            "long metadata value",
            with(|r| {
                r.metadata.insert("k".into(), "v".repeat(257));
            }),
            Code::InvalidArgument,
            "metadata[k]",
        ),
        (
            "space in idempotency_key",
            with(|r| r.idempotency_key = "a b".into()),
            Code::InvalidArgument,
            "idempotency_key",
        ),
        (
            "long idempotency_key",
            with(|r| r.idempotency_key = "k".repeat(256)),
            Code::InvalidArgument,
            "idempotency_key",
        ),
        (
            "GetOrder without lookup",
            get(None),
            Code::InvalidArgument,
            "lookup",
        ),
        (
            "GetOrder with a malformed id",
            get(Some(Lookup::OrderId("42".into()))),
            Code::InvalidArgument,
            "order_id",
        ),
        (
            "GetOrder with a malformed merchant_order_no",
            get(Some(Lookup::MerchantOrderNo("a b".into()))),
            Code::InvalidArgument,
            "merchant_order_no",
        ),
        (
            "GetOrder of an unknown order",
            get(Some(Lookup::OrderId(UNKNOWN_ID.into()))),
            Code::NotFound,
            UNKNOWN_ID,
        ),
        (
            "ListOrders page too large",
            list(|r| r.page_size = 201),
            Code::InvalidArgument,
            "page_size",
        ),
        (
            "ListOrders negative page",
            list(|r| r.page_size = -1),
            Code::InvalidArgument,
            "page_size",
        ),
        (
            "ListOrders forged page token",
            list(|r| r.page_token = "not-a-token".into()),
            Code::InvalidArgument,
            "page_token",
        ),
        (
            "ListOrders unspecified status",
            list(|r| r.statuses = vec![0]),
            Code::InvalidArgument,
            "statuses",
        ),
        (
            "ListOrders unknown status",
            list(|r| r.statuses = vec![99]),
            Code::InvalidArgument,
            "statuses",
        ),
        (
            "ListOrders inverted range",
            list(|r| {
                r.created_from = ts(2_000_000_000, 0);
                r.created_to = ts(1_000_000_000, 0);
            }),
            Code::InvalidArgument,
            "created_from",
        ),
        (
            "ListOrders bad nanos",
            list(|r| r.created_to = ts(1, -5)),
            Code::InvalidArgument,
            "created_to",
        ),
        (
            "CloseOrder with a malformed id",
            Call::Close(pb::CloseOrderRequest {
                order_id: "x".into(),
                idempotency_key: String::new(),
            }),
            Code::InvalidArgument,
            "order_id",
        ),
        (
            "CloseOrder of an unknown order",
            Call::Close(pb::CloseOrderRequest {
                order_id: UNKNOWN_ID.into(),
                idempotency_key: String::new(),
            }),
            Code::NotFound,
            UNKNOWN_ID,
        ),
    ]
}

#[tokio::test]
async fn every_malformed_request_gets_its_documented_status_and_changes_nothing() {
    let mut app = spawn_app().await;
    // Some state to leave untouched.
    create_order(&mut app, "EXISTING-01", 100).await;
    let before = app.snapshot();
    let cases = bad_inputs();
    assert!(cases.len() >= 20);
    let total = cases.len();
    for (name, call, code, text) in cases {
        let mut c = app.client.clone();
        let result = match call {
            Call::Create(r) => c.create_order(req(r)).await.map(|_| ()),
            Call::CreateAs(app_id, r) => {
                let mut rq = tonic::Request::new(r);
                if let Some(a) = app_id {
                    rq.metadata_mut().insert("x-app-id", a.parse().unwrap());
                }
                c.create_order(rq).await.map(|_| ())
            }
            Call::Get(r) => c.get_order(req(r)).await.map(|_| ()),
            Call::List(r) => c.list_orders(req(r)).await.map(|_| ()),
            Call::Close(r) => c.close_order(req(r)).await.map(|_| ()),
        };
        let err = result.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(
            err.message().contains(text),
            "{name}: message {:?} lacks {text:?}",
            err.message()
        );
        assert_eq!(app.snapshot(), before, "{name} changed the database");
    }
    // Every refusal is counted: by the services, or (a bad caller) by the auth layer.
    let m = app.metrics_text().await;
    let counted: u64 = m
        .lines()
        .filter(|l| {
            l.starts_with("payd_rejected_requests_total{")
                || l.starts_with("payd_auth_failures_total{")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, total as u64, "{m}");
}
