//! `payctl` for people and scripts, against the running platform: a full payment and refund
//! through the binary in `--json` form and in table form (with the QR code), errors with exit
//! codes by class, and shell completions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::platform::{Platform, SandboxedChannel};
use serde_json::{Value, json};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn payctl(endpoint: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(e2e::binary("payctl"))
        .env_remove("NO_COLOR")
        .env_remove("PAYCTL_SECRET_FILE")
        .env("PAYCTL_SECRET", e2e::calls::test_secret("shop-ctl"))
        .args(["--endpoint", endpoint, "--app", "shop-ctl"])
        .args(args)
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn ok_json(endpoint: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let r = payctl(endpoint, &all).await;
    assert_eq!(r.code, 0, "payctl {args:?}: {}{}", r.stdout, r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

async fn ok_table(endpoint: &str, args: &[&str]) -> String {
    let r = payctl(endpoint, args).await;
    assert_eq!(r.code, 0, "payctl {args:?}: {}{}", r.stdout, r.stderr);
    r.stdout
}

/// The value after `key` in a key/value block (`  key   value`).
fn kv<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(key)).then(|| l.trim_start()[key.len()..].trim())
        })
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn payer_pays(p: &Platform, trade: &str) {
    let (status, _) = p
        .sandbox_post(
            SandboxedChannel::Wechat,
            &format!("/sandbox/trades/{trade}/pay"),
            json!({"outcome": "success"}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payctl_drives_a_payment_and_a_refund_in_json_and_table_forms() {
    let p = Platform::start_channels(&[SandboxedChannel::Wechat], 0.01);
    let ep = p.payd.endpoint();
    let ep = ep.as_str();

    // --json: every answer is one JSON document.
    let o = ok_json(
        ep,
        &[
            "create-order",
            "--merchant-order-no",
            "CTL-JSON-0001",
            "--amount",
            "8888",
            "--subject",
            "Coffee beans",
            "--meta",
            "sku=beans-1kg",
        ],
    )
    .await;
    let id = o["order"]["order_id"].as_str().unwrap().to_owned();
    assert_eq!(o["order"]["status"], "PENDING");
    assert_eq!(
        o["order"]["amount"],
        json!({"amount_minor": 8888, "currency": "CNY"})
    );
    assert_eq!(o["order"]["metadata"]["sku"], "beans-1kg");
    let pay = ok_json(
        ep,
        &[
            "pay",
            "--order-id",
            &id,
            "--channel",
            "wechat",
            "--method",
            "wechat_native",
            "--client-ip",
            "127.0.0.1",
        ],
    )
    .await;
    assert_eq!(pay["order"]["status"], "PAYING");
    assert_eq!(pay["attempt"]["channel"], "wechat");
    assert!(
        pay["pay_params"]["code_url"]
            .as_str()
            .unwrap()
            .starts_with("weixin://"),
        "{pay}"
    );
    payer_pays(&p, pay["attempt"]["out_trade_no"].as_str().unwrap()).await;
    until("PAID", || async {
        ok_json(ep, &["get-order", "--order-id", &id]).await["order"]["status"] == "PAID"
    })
    .await;
    let r = ok_json(
        ep,
        &[
            "refund",
            "--order-id",
            &id,
            "--amount",
            "1000",
            "--refund-request-no",
            "CTL-RF-J1",
            "--reason",
            "one bag short",
            "--operator",
            "alice",
        ],
    )
    .await;
    assert_eq!(r["refund"]["refund_request_no"], "CTL-RF-J1");
    until("the refund succeeding", || async {
        ok_json(ep, &["get-refund", "--refund-request-no", "CTL-RF-J1"]).await["refund"]["status"]
            == "SUCCEEDED"
    })
    .await;
    let order = ok_json(ep, &["get-order", "--merchant-order-no", "CTL-JSON-0001"]).await;
    assert_eq!(order["order"]["status"], "PARTIALLY_REFUNDED");
    assert_eq!(order["order"]["refunded_minor"], 1000);
    let list = ok_json(ep, &["list-refunds", "--order-id", &id]).await;
    assert_eq!(list["refunds"].as_array().unwrap().len(), 1);
    let orders = ok_json(ep, &["list-orders"]).await;
    assert!(
        orders["orders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["order_id"] == id.as_str())
    );
    let events = payctl(ep, &["--json", "watch-events", "--limit", "3"]).await;
    assert_eq!(events.code, 0, "{}", events.stderr);
    let lines: Vec<Value> = events
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["type"], "order.created");

    // Tables: aligned key/value blocks and lists, the QR code when asked for, no colour when
    // stdout is not a terminal.
    let t = ok_table(
        ep,
        &[
            "create-order",
            "--merchant-order-no",
            "CTL-TABLE-0001",
            "--amount",
            "2500",
            "--subject",
            "Tea",
        ],
    )
    .await;
    assert!(t.starts_with("Order\n"), "{t}");
    assert_eq!(kv(&t, "status"), "PENDING");
    assert_eq!(kv(&t, "amount"), "25.00 CNY");
    assert!(!t.contains('\x1b'), "colour without a terminal: {t:?}");
    let id2 = kv(&t, "order_id").to_owned();
    let t = ok_table(
        ep,
        &[
            "pay",
            "--order-id",
            &id2,
            "--channel",
            "wechat",
            "--method",
            "wechat_native",
            "--qr",
        ],
    )
    .await;
    assert!(t.contains("Scan to pay"), "{t}");
    assert!(
        t.contains('█') || t.contains('▀') || t.contains('▄'),
        "no QR code drawn: {t}"
    );
    assert!(kv(&t, "code_url").starts_with("weixin://"), "{t}");
    payer_pays(&p, kv(&t, "out_trade_no")).await;
    until("PAID", || async {
        kv(
            &ok_table(ep, &["get-order", "--order-id", &id2]).await,
            "status",
        ) == "PAID"
    })
    .await;
    let t = ok_table(
        ep,
        &[
            "refund",
            "--order-id",
            &id2,
            "--amount",
            "2500",
            "--refund-request-no",
            "CTL-RF-T1",
            "--operator",
            "bob",
        ],
    )
    .await;
    assert!(t.starts_with("Refund\n"), "{t}");
    assert_eq!(kv(&t, "amount"), "25.00 CNY");
    until("the refund succeeding", || async {
        kv(
            &ok_table(ep, &["get-refund", "--refund-request-no", "CTL-RF-T1"]).await,
            "status",
        ) == "SUCCEEDED"
    })
    .await;
    let t = ok_table(ep, &["list-refunds", "--order-id", &id2]).await;
    let mut lines = t.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("REFUND REQUEST NO  ORDER ID"), "{t}");
    let row = lines.next().unwrap();
    // Columns line up under their headers.
    assert_eq!(row.find(&id2), header.find("ORDER ID"), "{t}");
    assert_eq!(row.find("SUCCEEDED"), header.find("STATUS"), "{t}");
    let t = ok_table(ep, &["list-orders", "--status", "REFUNDED"]).await;
    assert!(t.contains(&id2) && !t.contains(&id), "{t}");
    let coloured = ok_table(ep, &["--color", "always", "get-order", "--order-id", &id2]).await;
    assert!(coloured.contains("\x1b["), "{coloured:?}");

    // Errors: the status and message, an exit code by class, JSON on stderr with --json.
    let nf = payctl(ep, &["get-order", "--merchant-order-no", "CTL-NOPE"]).await;
    assert_eq!(nf.code, 4, "{}", nf.stderr);
    assert!(nf.stderr.starts_with("error: NOT_FOUND: "), "{}", nf.stderr);
    let nf = payctl(
        ep,
        &["--json", "get-order", "--merchant-order-no", "CTL-NOPE"],
    )
    .await;
    assert_eq!(nf.code, 4);
    let e: Value = serde_json::from_str(nf.stderr.trim()).unwrap();
    assert_eq!(e["error"]["code"], "NOT_FOUND");
    let too_much = payctl(
        ep,
        &[
            "refund",
            "--order-id",
            &id,
            "--amount",
            "999999",
            "--refund-request-no",
            "CTL-RF-BIG",
        ],
    )
    .await;
    assert_eq!(too_much.code, 5, "{}", too_much.stderr);
    let down = payctl("http://127.0.0.1:1", &["list-orders"]).await;
    assert_eq!(down.code, 3, "{}", down.stderr);
    let bad = payctl(
        ep,
        &[
            "pay",
            "--order-id",
            &id,
            "--channel",
            "paypal",
            "--method",
            "x",
        ],
    )
    .await;
    assert_eq!(bad.code, 5, "{}", bad.stderr);

    // Shell completions.
    let c = payctl(ep, &["completions", "bash"]).await;
    assert_eq!(c.code, 0);
    assert!(
        c.stdout.contains("_payctl") && c.stdout.contains("create-order"),
        "{}",
        c.stdout
    );
}
