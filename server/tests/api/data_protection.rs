//! Data protection: personal fields sealed at rest and rotated, the audit log (one record per
//! state-changing call, append-only), production mode's secret checks, and errors that leak
//! nothing when the database fails.
use base64::Engine;
use diesel::RunQueryDsl;
use payproto::payment::v1 as pb;
use tonic::Code;

use crate::helpers::*;
use crate::refunds::{app_with_dead_adapter, paid_order, refund_req};

const PHONE: &str = "13800138000";

fn ring(ids: &[(&str, u8)]) -> String {
    ids.iter()
        .map(|(id, seed)| {
            let bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(31) ^ seed).collect();
            format!(
                "{id}:{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn hmac_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(
        (0..32u8)
            .map(|i| i.wrapping_mul(13) ^ 0x5a)
            .collect::<Vec<_>>(),
    )
}

fn install(ids: &[(&str, u8)]) {
    payd::crypto::install(std::sync::Arc::new(
        payd::crypto::DataKeys::parse(&ring(ids), &hmac_key()).unwrap(),
    ));
}

async fn refund_with_reason(app: &mut TestApp, reason: &str) -> pb::Refund {
    let order = paid_order(app, "dp-order-1", "8800000000000000001", 1000).await;
    let mut r = refund_req(&order.order_id, 100, "dp-refund-1");
    r.reason = reason.into();
    app.client
        .create_refund(req(r))
        .await
        .unwrap()
        .into_inner()
        .refund
        .unwrap()
}

async fn reason_of(app: &mut TestApp, id: &str) -> Result<String, tonic::Status> {
    app.client
        .get_refund(req(pb::GetRefundRequest {
            lookup: Some(pb::get_refund_request::Lookup::RefundId(id.into())),
        }))
        .await
        .map(|r| r.into_inner().refund.unwrap().reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_raw_row_holds_the_reason_and_rotation_moves_rows_to_the_new_key() {
    let mut app = app_with_dead_adapter("60000").await;
    install(&[("k1", 1)]);
    let refund = refund_with_reason(&mut app, &format!("payer asked by phone {PHONE}")).await;
    // Nothing in any table, as Postgres stores it, holds the phone number.
    let leaks = app.count(&format!(
        "SELECT count(*) AS n FROM refunds r WHERE r::text LIKE '%{PHONE}%'"
    ));
    assert_eq!(leaks, 0);
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM refunds WHERE reason = '' AND reason_sealed LIKE 'k1:%'"
        ),
        1
    );
    // The payer digest is keyed (33 bytes), not a plain SHA-256.
    assert_eq!(
        app.count("SELECT count(*) AS n FROM payment_attempts WHERE length(payer_digest) = 32"),
        0
    );

    // k2 added: the k1 row still opens; re-encrypt moves it; k1 can then go.
    install(&[("k1", 1), ("k2", 2)]);
    assert!(
        reason_of(&mut app, &refund.refund_id)
            .await
            .unwrap()
            .contains(PHONE)
    );
    let (n, _, _) = payd::storage::reseal_all(&app.app.db, 1).await.unwrap();
    assert_eq!(n, 1);
    let (again, _, _) = payd::storage::reseal_all(&app.app.db, 1).await.unwrap();
    assert_eq!(again, 0, "a second run changes nothing");
    assert_eq!(
        app.count("SELECT count(*) AS n FROM refunds WHERE reason_sealed LIKE 'k2:%'"),
        1
    );
    install(&[("k2", 2)]);
    assert!(
        reason_of(&mut app, &refund.refund_id)
            .await
            .unwrap()
            .contains(PHONE)
    );

    // A row whose key is gone is an opaque INTERNAL with a reference, never the key id.
    install(&[("k3", 3)]);
    let e = reason_of(&mut app, &refund.refund_id).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert!(
        e.message().starts_with("internal error (reference "),
        "{}",
        e.message()
    );
    assert!(!e.message().contains("k2"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_changing_call_leaves_exactly_one_audit_record_and_the_log_is_append_only() {
    let mut app = app_with_dead_adapter("60000").await;
    // CreateOrder + ReportPayment.
    let order = paid_order(&mut app, "au-order-1", "8800000000000000002", 1000).await;
    // CreateRefund (the adapter is down: PROCESSING, but created).
    let mut r = refund_req(&order.order_id, 100, "au-refund-1");
    r.reason = format!("call {PHONE}");
    app.client.create_refund(req(r)).await.unwrap();
    // A refused CloseOrder (the order is paid).
    let refused = app
        .client
        .close_order(req(pb::CloseOrderRequest {
            order_id: order.order_id.clone(),
            idempotency_key: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    // A replayed CreateOrder (same merchant order: nothing changes).
    app.client
        .create_order(req(create("au-order-1", 1000)))
        .await
        .unwrap();

    let per = |action: &str, outcome: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM audit_records WHERE action LIKE '%/{action}' AND outcome = '{outcome}'"
        ))
    };
    // The resubmitted CreateOrder returns the existing order in its own transaction: recorded
    // there as OK (it wrote the idempotent read); two CreateOrder calls, two records.
    assert_eq!(per("CreateOrder", "OK") + per("CreateOrder", "REPLAYED"), 2);
    assert_eq!(per("ReportPayment", "OK"), 1);
    assert_eq!(per("CreateRefund", "OK"), 1);
    assert_eq!(per("CloseOrder", "REFUSED"), 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM audit_records"), 5);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM audit_records WHERE code = 'FAILED_PRECONDITION' AND action LIKE '%/CloseOrder'"),
        1
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM audit_records WHERE action LIKE '%/CreateRefund' AND operator = 'alice' AND refund_id IS NOT NULL"),
        1
    );

    // Read back through ListAuditRecords, paged.
    let mut audit = audit_client(&app).await;
    let first = audit
        .list_audit_records(req(pb::ListAuditRecordsRequest {
            target: order.order_id.clone(),
            page_size: 2,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.records.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let rest = audit
        .list_audit_records(req(pb::ListAuditRecordsRequest {
            target: order.order_id.clone(),
            page_size: 50,
            page_token: first.next_page_token,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(rest.records.iter().all(|r| r.id < first.records[1].id));

    // Append-only: UPDATE, DELETE and TRUNCATE fail, even for the owner.
    let mut conn = app.conn();
    for sql in [
        "UPDATE audit_records SET outcome = 'OK'",
        "DELETE FROM audit_records",
        "TRUNCATE audit_records",
    ] {
        let e = diesel::sql_query(sql).execute(&mut conn).unwrap_err();
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM audit_records"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_database_leaks_no_sql_or_schema_to_the_caller() {
    let mut app = spawn_app().await;
    diesel::sql_query("ALTER TABLE orders RENAME COLUMN subject TO subject_gone")
        .execute(&mut app.conn())
        .unwrap();
    let e = app
        .client
        .create_order(req(create("leak-1", 100)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    let m = e.message().to_lowercase();
    assert!(m.starts_with("internal error (reference "), "{m}");
    for word in [
        "subject", "column", "select", "insert", "orders", "postgres", "/", "error:",
    ] {
        assert!(
            !m[..m.len().min(200)]
                .replacen("internal error", "", 1)
                .contains(word),
            "{word} in {m}"
        );
    }
    // The refusal itself is audited, outside the failed transaction.
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM audit_records WHERE outcome = 'FAILED' AND code = 'INTERNAL'"
        ),
        1
    );
}

#[test]
fn payd_refuses_to_start_in_production_with_weak_or_default_secrets() {
    let run = |envs: &[(&str, String)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_payd"))
            .arg("migrate")
            .env_clear()
            .env("PAYD_ENV", "production")
            .env("PAYD_DATABASE_URL", "postgres://127.0.0.1:1/none")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&[]).contains("data_keys"), "missing keys named");
    let weak = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let e = run(&[
        ("PAYD_DATA_KEYS", format!("k1:{weak}")),
        ("PAYD_DATA_HMAC_KEY", hmac_key()),
    ]);
    assert!(e.contains("data key k1"), "{e}");
    let e = run(&[
        ("PAYD_DATA_KEYS", ring(&[("k1", 1)])),
        ("PAYD_DATA_HMAC_KEY", hmac_key()),
        (
            "PAYD_ADAPTER_TOKENS",
            "wechat:test-wechat-adapter-token".into(),
        ),
    ]);
    assert!(e.contains("adapter_tokens") && e.contains("WECHAT"), "{e}");
}
