//! How payctl shows things: aligned tables and key/value blocks (coloured on a terminal), or
//! JSON for scripts; QR codes for QR pay methods; errors with their gRPC status and an exit code
//! by class.
use std::io::IsTerminal;

use payproto::channel::v1 as cpb;
use payproto::payment::v1 as pb;
use serde_json::{Value, json};

/// Output settings from the global flags.
#[derive(Clone, Copy)]
pub struct Out {
    pub json: bool,
    pub color: bool,
    /// Whether stdout is a terminal (QR codes are drawn only there, unless asked for).
    pub tty: bool,
}

impl Out {
    pub fn new(json: bool, color: &str) -> Self {
        let tty = std::io::stdout().is_terminal();
        let color = match color {
            "always" => true,
            "never" => false,
            _ => tty && std::env::var_os("NO_COLOR").is_none(),
        };
        Self { json, color, tty }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }

    pub fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }

    /// A status, coloured by what it means for the money.
    pub fn status(&self, s: &str) -> String {
        let code = match s {
            "PAID" | "SUCCEEDED" | "OK" => "32",
            "PENDING" | "PAYING" | "PROCESSING" | "INIT" | "PARTIALLY_REFUNDED" => "33",
            "FAILED" | "REFUSED" => "31",
            "REFUNDED" => "36",
            "CLOSED" => "2",
            _ => "0",
        };
        self.paint(code, s)
    }

    /// Prints a JSON value (pretty) — the only output in `--json` mode.
    pub fn json(&self, v: &Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        );
    }

    /// Key/value block, keys aligned.
    pub fn kv(&self, title: &str, rows: &[(&str, String)]) {
        println!("{}", self.bold(title));
        let w = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, v) in rows {
            if v.is_empty() {
                continue;
            }
            let pad = " ".repeat(w - k.chars().count());
            println!("  {}{pad}  {v}", self.dim(k));
        }
    }

    /// An aligned table; `status_col` is coloured as a status.
    pub fn table(&self, headers: &[&str], rows: &[Vec<String>], status_col: Option<usize>) {
        let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: Vec<String>, raw: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = w[i] - raw[i].chars().count();
                s.push_str(c);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad + 2));
                }
            }
            s
        };
        let hs: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
        println!("{}", line(hs.iter().map(|h| self.bold(h)).collect(), &hs));
        for r in rows {
            let cells = r
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if Some(i) == status_col {
                        self.status(c)
                    } else {
                        c.clone()
                    }
                })
                .collect();
            println!("{}", line(cells, r));
        }
        if rows.is_empty() {
            println!("{}", self.dim("(none)"));
        }
    }

    /// A QR code for `data`, drawn with Unicode half blocks (two modules per character row).
    pub fn qr(&self, data: &str) {
        match qrcode::QrCode::new(data.as_bytes()) {
            Ok(code) => {
                let s = code
                    .render::<qrcode::render::unicode::Dense1x2>()
                    .dark_color(qrcode::render::unicode::Dense1x2::Light)
                    .light_color(qrcode::render::unicode::Dense1x2::Dark)
                    .quiet_zone(true)
                    .build();
                println!("{s}");
            }
            Err(e) => eprintln!("(cannot draw a QR code: {e})"),
        }
    }
}

pub fn money(m: Option<&pb::Money>) -> String {
    m.map_or(String::new(), |m| fmt_minor(m.amount_minor, &m.currency))
}

/// `8888 CNY` → `88.88 CNY` (every supported currency has two decimals).
pub fn fmt_minor(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let a = minor.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", a / 100, a % 100)
}

fn money_json(m: Option<&pb::Money>) -> Value {
    m.map_or(
        Value::Null,
        |m| json!({"amount_minor": m.amount_minor, "currency": m.currency}),
    )
}

pub fn ts(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
        .map_or(String::new(), |d| {
            d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
}

fn ts_json(t: Option<&prost_types::Timestamp>) -> Value {
    let s = ts(t);
    if s.is_empty() { Value::Null } else { json!(s) }
}

pub fn order_status(v: i32) -> String {
    pb::OrderStatus::try_from(v).map_or(v.to_string(), |s| {
        s.as_str_name()
            .trim_start_matches("ORDER_STATUS_")
            .to_owned()
    })
}

pub fn refund_status(v: i32) -> String {
    pb::RefundStatus::try_from(v).map_or(v.to_string(), |s| {
        s.as_str_name()
            .trim_start_matches("REFUND_STATUS_")
            .to_owned()
    })
}

pub fn attempt_status(v: i32) -> String {
    pb::AttemptStatus::try_from(v).map_or(v.to_string(), |s| {
        s.as_str_name()
            .trim_start_matches("ATTEMPT_STATUS_")
            .to_owned()
    })
}

pub fn channel(v: i32) -> String {
    cpb::Channel::try_from(v).map_or(v.to_string(), |s| {
        s.as_str_name()
            .trim_start_matches("CHANNEL_")
            .to_lowercase()
    })
}

pub fn method(v: i32) -> String {
    cpb::PayMethod::try_from(v).map_or(v.to_string(), |s| {
        s.as_str_name()
            .trim_start_matches("PAY_METHOD_")
            .to_lowercase()
    })
}

pub fn order_json(o: &pb::Order) -> Value {
    json!({
        "order_id": o.order_id,
        "app_id": o.app_id,
        "merchant_order_no": o.merchant_order_no,
        "amount": money_json(o.amount.as_ref()),
        "subject": o.subject,
        "metadata": o.metadata,
        "status": order_status(o.status),
        "paid_minor": o.paid_minor,
        "refunded_minor": o.refunded_minor,
        "version": o.version,
        "expires_at": ts_json(o.expires_at.as_ref()),
        "created_at": ts_json(o.created_at.as_ref()),
        "updated_at": ts_json(o.updated_at.as_ref()),
        "closed_at": ts_json(o.closed_at.as_ref()),
    })
}

pub fn attempt_json(a: &pb::PaymentAttempt) -> Value {
    json!({
        "attempt_id": a.attempt_id,
        "order_id": a.order_id,
        "out_trade_no": a.out_trade_no,
        "channel": channel(a.channel),
        "method": method(a.method),
        "status": attempt_status(a.status),
        "amount": money_json(a.amount.as_ref()),
        "created_at": ts_json(a.created_at.as_ref()),
    })
}

pub fn refund_json(r: &pb::Refund) -> Value {
    json!({
        "refund_id": r.refund_id,
        "order_id": r.order_id,
        "app_id": r.app_id,
        "refund_request_no": r.refund_request_no,
        "out_refund_no": r.out_refund_no,
        "channel": channel(r.channel),
        "amount": money_json(r.amount.as_ref()),
        "reason": r.reason,
        "status": refund_status(r.status),
        "channel_refund_no": r.channel_refund_no,
        "failure_reason": r.failure_reason,
        "requested_by": r.requested_by,
        "operator": r.operator,
        "needs_attention": r.needs_attention,
        "version": r.version,
        "created_at": ts_json(r.created_at.as_ref()),
        "updated_at": ts_json(r.updated_at.as_ref()),
        "succeeded_at": ts_json(r.succeeded_at.as_ref()),
    })
}

pub fn audit_outcome(v: i32) -> String {
    pb::AuditOutcome::try_from(v)
        .map(|o| {
            o.as_str_name()
                .trim_start_matches("AUDIT_OUTCOME_")
                .to_owned()
        })
        .unwrap_or_else(|_| v.to_string())
}

pub fn audit_json(r: &pb::AuditRecord) -> Value {
    json!({
        "id": r.id,
        "at": ts(r.at.as_ref()),
        "actor_kind": r.actor_kind,
        "app_id": r.app_id,
        "operator": r.operator,
        "adapter": r.adapter,
        "action": r.action,
        "outcome": audit_outcome(r.outcome),
        "code": r.code,
        "request_id": r.request_id,
        "order_id": r.order_id,
        "out_trade_no": r.out_trade_no,
        "refund_id": r.refund_id,
        "recon_run_id": r.recon_run_id,
        "target": r.target,
    })
}

pub fn event_json(e: &pb::Event) -> Value {
    json!({
        "event_id": e.event_id,
        "type": e.r#type,
        "order_id": e.order_id,
        "order_sequence": e.order_sequence,
        "cursor": e.cursor,
        "occurred_at": ts_json(e.occurred_at.as_ref()),
        "order": e.order.as_ref().map(order_json),
        "refund": e.refund.as_ref().map(refund_json),
        "attempt": e.attempt.as_ref().map(attempt_json),
        "detail": e.detail,
    })
}

impl Out {
    pub fn order(&self, o: &pb::Order) {
        if self.json {
            return self.json(&json!({ "order": order_json(o) }));
        }
        self.order_block(o);
    }

    pub fn order_block(&self, o: &pb::Order) {
        let cur = o.amount.as_ref().map_or("", |m| m.currency.as_str());
        let mut rows = vec![
            ("order_id", o.order_id.clone()),
            ("merchant_order_no", o.merchant_order_no.clone()),
            ("status", self.status(&order_status(o.status))),
            ("amount", money(o.amount.as_ref())),
            (
                "paid",
                if o.paid_minor > 0 {
                    fmt_minor(o.paid_minor, cur)
                } else {
                    String::new()
                },
            ),
            (
                "refunded",
                if o.refunded_minor > 0 {
                    fmt_minor(o.refunded_minor, cur)
                } else {
                    String::new()
                },
            ),
            ("subject", o.subject.clone()),
            ("version", o.version.to_string()),
            ("created_at", ts(o.created_at.as_ref())),
            ("expires_at", ts(o.expires_at.as_ref())),
            ("closed_at", ts(o.closed_at.as_ref())),
        ];
        for (k, v) in &o.metadata {
            rows.push(("meta", format!("{k}={v}")));
        }
        self.kv("Order", &rows);
    }

    pub fn orders(&self, os: &[pb::Order], next: &str) {
        if self.json {
            return self.json(&json!({
                "orders": os.iter().map(order_json).collect::<Vec<_>>(),
                "next_page_token": next,
            }));
        }
        let rows: Vec<Vec<String>> = os
            .iter()
            .map(|o| {
                vec![
                    o.order_id.clone(),
                    o.merchant_order_no.clone(),
                    order_status(o.status),
                    money(o.amount.as_ref()),
                    ts(o.created_at.as_ref()),
                    o.subject.clone(),
                ]
            })
            .collect();
        self.table(
            &[
                "ORDER ID",
                "MERCHANT ORDER NO",
                "STATUS",
                "AMOUNT",
                "CREATED",
                "SUBJECT",
            ],
            &rows,
            Some(2),
        );
        if !next.is_empty() {
            println!("{}", self.dim(&format!("next page: --page-token {next}")));
        }
    }

    /// Pay's answer; draws the QR code of QR methods (on a terminal, or when `qr` is set).
    pub fn pay(&self, r: &pb::PayResponse, qr: bool) {
        if self.json {
            return self.json(&json!({
                "order": r.order.as_ref().map(order_json),
                "attempt": r.attempt.as_ref().map(attempt_json),
                "pay_params": r.pay_params,
            }));
        }
        if let Some(o) = &r.order {
            self.order_block(o);
        }
        if let Some(a) = &r.attempt {
            self.kv(
                "Attempt",
                &[
                    ("attempt_id", a.attempt_id.clone()),
                    ("out_trade_no", a.out_trade_no.clone()),
                    ("channel", channel(a.channel)),
                    ("method", method(a.method)),
                    ("status", self.status(&attempt_status(a.status))),
                ],
            );
        }
        let params: Vec<(&str, String)> = r
            .pay_params
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        if !params.is_empty() {
            self.kv("Pay parameters (for the payer's device)", &params);
        }
        let code = ["code_url", "qr_code"]
            .iter()
            .find_map(|k| r.pay_params.get(*k));
        if let Some(code) = code
            && (qr || self.tty)
        {
            println!("{}", self.bold("Scan to pay"));
            self.qr(code);
        }
    }

    pub fn refund(&self, r: &pb::Refund) {
        if self.json {
            return self.json(&json!({ "refund": refund_json(r) }));
        }
        let attention = if r.needs_attention {
            self.paint("1;31", "NEEDS ATTENTION")
        } else {
            String::new()
        };
        self.kv(
            "Refund",
            &[
                ("refund_id", r.refund_id.clone()),
                ("refund_request_no", r.refund_request_no.clone()),
                ("order_id", r.order_id.clone()),
                ("status", self.status(&refund_status(r.status))),
                ("attention", attention),
                ("amount", money(r.amount.as_ref())),
                ("channel", channel(r.channel)),
                ("out_refund_no", r.out_refund_no.clone()),
                ("channel_refund_no", r.channel_refund_no.clone()),
                ("reason", r.reason.clone()),
                ("failure_reason", r.failure_reason.clone()),
                ("operator", r.operator.clone()),
                ("created_at", ts(r.created_at.as_ref())),
                ("succeeded_at", ts(r.succeeded_at.as_ref())),
            ],
        );
    }

    pub fn refunds(&self, rs: &[pb::Refund], next: &str) {
        if self.json {
            return self.json(&json!({
                "refunds": rs.iter().map(refund_json).collect::<Vec<_>>(),
                "next_page_token": next,
            }));
        }
        let rows: Vec<Vec<String>> = rs
            .iter()
            .map(|r| {
                vec![
                    r.refund_request_no.clone(),
                    r.order_id.clone(),
                    refund_status(r.status),
                    money(r.amount.as_ref()),
                    channel(r.channel),
                    if r.needs_attention {
                        "yes".into()
                    } else {
                        String::new()
                    },
                    ts(r.created_at.as_ref()),
                ]
            })
            .collect();
        self.table(
            &[
                "REFUND REQUEST NO",
                "ORDER ID",
                "STATUS",
                "AMOUNT",
                "CHANNEL",
                "ATTENTION",
                "CREATED",
            ],
            &rows,
            Some(2),
        );
        if !next.is_empty() {
            println!("{}", self.dim(&format!("next page: --page-token {next}")));
        }
    }

    /// A page of the audit log.
    pub fn audit(&self, rs: &[pb::AuditRecord], next: &str) {
        if self.json {
            return self.json(&json!({
                "records": rs.iter().map(audit_json).collect::<Vec<_>>(),
                "next_page_token": next,
            }));
        }
        let rows: Vec<Vec<String>> = rs
            .iter()
            .map(|r| {
                let who = [r.app_id.as_str(), r.operator.as_str(), r.adapter.as_str()]
                    .iter()
                    .filter(|v| !v.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join("/");
                let target = [
                    r.order_id.as_str(),
                    r.refund_id.as_str(),
                    r.recon_run_id.as_str(),
                    r.target.as_str(),
                ]
                .into_iter()
                .find(|v| !v.is_empty())
                .unwrap_or_default()
                .to_owned();
                vec![
                    ts(r.at.as_ref()),
                    r.actor_kind.clone(),
                    who,
                    r.action.rsplit('/').next().unwrap_or_default().to_owned(),
                    audit_outcome(r.outcome),
                    r.code.clone(),
                    target,
                ]
            })
            .collect();
        self.table(
            &["AT", "ACTOR", "WHO", "ACTION", "OUTCOME", "CODE", "TARGET"],
            &rows,
            Some(4),
        );
        if !next.is_empty() {
            println!("{}", self.dim(&format!("next page: --page-token {next}")));
        }
    }

    /// One event: a JSON line per event in `--json` mode (a stream), else one aligned line.
    pub fn event(&self, e: &pb::Event) {
        if self.json {
            println!("{}", event_json(e));
            return;
        }
        let status = e
            .order
            .as_ref()
            .map_or(String::new(), |o| order_status(o.status));
        let refund = e.refund.as_ref().map_or(String::new(), |r| {
            format!(
                "  refund {} {}",
                r.refund_request_no,
                money(r.amount.as_ref())
            )
        });
        println!(
            "{}  {:<32}  {}  #{:<3}  {}{}",
            self.dim(&e.cursor),
            e.r#type,
            e.order_id,
            e.order_sequence,
            self.status(&status),
            refund
        );
    }
}

/// Exit codes by class of failure (also in `payctl --help`).
pub mod exit {
    pub const OK: u8 = 0;
    pub const OTHER: u8 = 1;
    pub const UNAVAILABLE: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const AUTH: u8 = 6;
    pub const RETRY: u8 = 7;
}

pub const EXIT_CODES_HELP: &str = "Exit codes: 0 ok; 1 other error (INTERNAL, UNKNOWN, …); 2 usage; \
3 payd unreachable or UNAVAILABLE / DEADLINE_EXCEEDED (retry later); 4 NOT_FOUND; \
5 refused (INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS, OUT_OF_RANGE); \
6 UNAUTHENTICATED / PERMISSION_DENIED; 7 ABORTED / RESOURCE_EXHAUSTED (retry).";

pub fn exit_code(code: tonic::Code) -> u8 {
    use tonic::Code as C;
    match code {
        C::Ok => exit::OK,
        C::Unavailable | C::DeadlineExceeded | C::Cancelled => exit::UNAVAILABLE,
        C::NotFound => exit::NOT_FOUND,
        C::InvalidArgument | C::FailedPrecondition | C::AlreadyExists | C::OutOfRange => {
            exit::REFUSED
        }
        C::Unauthenticated | C::PermissionDenied => exit::AUTH,
        C::Aborted | C::ResourceExhausted => exit::RETRY,
        C::Unknown | C::Internal | C::Unimplemented | C::DataLoss => exit::OTHER,
    }
}

/// The canonical name of a status code.
pub fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
        .chars()
        .enumerate()
        .fold(String::new(), |mut s, (i, c)| {
            if c.is_uppercase() && i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_uppercase());
            s
        })
}

pub fn recon_run_json(r: &pb::ReconciliationRun) -> Value {
    json!({
        "id": r.id, "channel": channel(r.channel), "day": r.day, "status": r.status,
        "requested_by": r.requested_by, "started_at": ts_json(r.started_at.as_ref()),
        "finished_at": ts_json(r.finished_at.as_ref()), "lines_read": r.lines_read,
        "discrepancies": r.discrepancies, "repaired": r.repaired,
        "payment_count": r.payment_count, "refund_count": r.refund_count, "error": r.error,
        "expected_lines": r.expected_lines,
    })
}

pub fn discrepancy_json(d: &pb::Discrepancy) -> Value {
    json!({
        "id": d.id, "run_id": d.run_id, "channel": channel(d.channel), "day": d.day,
        "kind": d.kind, "out_trade_no": d.out_trade_no, "out_refund_no": d.out_refund_no,
        "channel_amount_minor": d.channel_amount_minor, "local_amount_minor": d.local_amount_minor,
        "source_line": d.source_line, "status": d.status, "resolution": d.resolution,
        "note": d.note, "resolved_by": d.resolved_by, "created_at": ts_json(d.created_at.as_ref()),
        "resolved_at": ts_json(d.resolved_at.as_ref()),
    })
}

impl Out {
    /// Progress of a RUNNING run: a bar on a terminal, plain lines on stderr otherwise.
    pub fn recon_progress(&self) -> ReconProgress {
        ReconProgress::new(!self.json && self.tty && std::io::stderr().is_terminal())
    }

    pub fn recon_run(&self, r: &pb::ReconciliationRun) {
        if self.json {
            return self.json(&json!({ "run": recon_run_json(r) }));
        }
        let status = match r.status.as_str() {
            "COMPLETED" => self.paint("32", &r.status),
            "FAILED" => self.paint("31", &r.status),
            _ => self.paint("33", &r.status),
        };
        self.kv(
            "Reconciliation run",
            &[
                ("id", r.id.clone()),
                ("channel", channel(r.channel)),
                ("day", r.day.clone()),
                ("status", status),
                ("requested_by", r.requested_by.clone()),
                ("lines_read", r.lines_read.to_string()),
                ("expected_lines", r.expected_lines.to_string()),
                ("payments", r.payment_count.to_string()),
                ("refunds", r.refund_count.to_string()),
                ("discrepancies", r.discrepancies.to_string()),
                ("repaired", r.repaired.to_string()),
                ("started_at", ts(r.started_at.as_ref())),
                ("finished_at", ts(r.finished_at.as_ref())),
                ("error", r.error.clone()),
            ],
        );
    }

    pub fn discrepancies(&self, ds: &[pb::Discrepancy], next: &str) {
        if self.json {
            return self.json(&json!({
                "discrepancies": ds.iter().map(discrepancy_json).collect::<Vec<_>>(),
                "next_cursor": next,
            }));
        }
        let amount = |a: Option<i64>| a.map(|v| fmt_minor(v, "CNY")).unwrap_or_default();
        let rows: Vec<Vec<String>> = ds
            .iter()
            .map(|d| {
                vec![
                    d.id.clone(),
                    d.kind.clone(),
                    d.status.clone(),
                    channel(d.channel),
                    d.day.clone(),
                    d.out_trade_no.clone(),
                    d.out_refund_no.clone(),
                    amount(d.channel_amount_minor),
                    amount(d.local_amount_minor),
                    d.resolved_by.clone(),
                ]
            })
            .collect();
        self.table(
            &[
                "ID",
                "KIND",
                "STATUS",
                "CHANNEL",
                "DAY",
                "OUT TRADE NO",
                "OUT REFUND NO",
                "AT CHANNEL",
                "LOCAL",
                "BY",
            ],
            &rows,
            None,
        );
        if !next.is_empty() {
            println!("{}", self.dim(&format!("next page: --cursor {next}")));
        }
    }
}

/// How a run's progress is shown while payctl follows it (polling GetReconciliationRun): an
/// indicatif bar of lines read against the lines the run expects (the day's local successes;
/// the bar grows when the statement has more), or, when stdout is not a terminal or `--json`
/// was asked for, a plain line on stderr at each tenth of the way (and at least every 10 s), so
/// logs and pipes get readable progress and stdout stays the result alone.
pub enum ReconProgress {
    Bar(indicatif::ProgressBar),
    Lines {
        last_lines: u64,
        last_at: std::time::Instant,
    },
}

impl ReconProgress {
    fn new(bar: bool) -> Self {
        if !bar {
            return Self::Lines {
                last_lines: u64::MAX,
                last_at: std::time::Instant::now(),
            };
        }
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{wide_bar}] {human_pos}/{human_len} lines ({per_sec}, {elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        Self::Bar(pb)
    }

    /// Shows the run as last read.
    pub fn update(&mut self, r: &pb::ReconciliationRun) {
        let len = r.expected_lines.max(r.lines_read);
        // Lines stop growing once the statement is read; the comparison and repairs follow.
        let phase = if r.expected_lines > 0 && r.lines_read >= r.expected_lines {
            "comparing"
        } else {
            "reading"
        };
        let what = format!("{} {} {phase}", channel(r.channel), r.day);
        match self {
            Self::Bar(pb) => {
                pb.set_length(len);
                pb.set_position(r.lines_read);
                pb.set_message(what);
            }
            Self::Lines {
                last_lines,
                last_at,
            } => {
                let step = (len / 10).max(1);
                let moved = *last_lines == u64::MAX
                    || r.lines_read >= last_lines.saturating_add(step)
                    || last_at.elapsed() >= std::time::Duration::from_secs(10);
                if moved {
                    eprintln!("{} {what}: {}/{len} lines read", r.status, r.lines_read);
                    *last_lines = r.lines_read;
                    *last_at = std::time::Instant::now();
                }
            }
        }
    }

    /// Ends the display with the run's outcome.
    pub fn finish(self, r: &pb::ReconciliationRun) {
        match self {
            Self::Bar(pb) => {
                pb.set_length(r.lines_read.max(1));
                pb.set_position(r.lines_read);
                pb.finish_with_message(format!("{} {} {}", channel(r.channel), r.day, r.status));
            }
            Self::Lines { .. } => eprintln!(
                "{} {} {}: {} lines read, {} discrepancies, {} repaired",
                r.status,
                channel(r.channel),
                r.day,
                r.lines_read,
                r.discrepancies,
                r.repaired
            ),
        }
    }
}
