//! `payctl`: the command-line client of payd's `payment.v1` API, for people (aligned tables,
//! colours on a terminal, QR codes for QR pay methods) and for scripts (`--json`, exit codes by
//! class of error). Every call is signed as the app (`--app` and its secret, `PAYCTL_SECRET` or
//! `PAYCTL_SECRET_FILE`; see `payproto::auth`) and names the person running it (`x-operator`,
//! `--operator` or `$USER`) for the audit log; mutating calls can carry an idempotency key.
mod out;

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use payproto::auth::{Signed, SignedChannel, SigningKeys};
use payproto::payment::v1 as pb;
use payproto::payment::v1::payment_service_client::PaymentServiceClient;

use out::Out;

#[derive(Parser)]
#[command(
    name = "payctl",
    about = "Call payd's payment.v1 API",
    after_help = out::EXIT_CODES_HELP
)]
struct Cli {
    /// Print JSON (one document per command; one JSON line per event for watch-events).
    #[arg(long, global = true)]
    json: bool,
    /// Colours: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, default_value = "auto", value_parser = ["auto", "always", "never"])]
    color: String,
    /// payd's gRPC endpoint.
    #[arg(
        long,
        env = "PAYCTL_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    /// The calling app (sent as `x-app-id`, and the app whose secret signs each call).
    #[arg(long, env = "PAYCTL_APP_ID", default_value = "demo-shop")]
    app: String,
    /// The app's secret. Prefer PAYCTL_SECRET_FILE: a command line is visible to other users.
    #[arg(long, env = "PAYCTL_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// A file holding the app's secret (one line; surrounding whitespace is ignored).
    #[arg(long, env = "PAYCTL_SECRET_FILE")]
    secret_file: Option<std::path::PathBuf>,
    /// The person running the command, for the audit log (`x-operator`; refunds and resolutions
    /// also carry it in the request). Defaults to $USER.
    #[arg(long, global = true, env = "PAYCTL_OPERATOR")]
    operator: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an order (or get the existing one with this merchant order number).
    CreateOrder {
        #[arg(long)]
        merchant_order_no: String,
        /// Amount in minor units (fen for CNY).
        #[arg(long)]
        amount: i64,
        #[arg(long, default_value = "CNY")]
        currency: String,
        #[arg(long)]
        subject: String,
        #[arg(long, default_value_t = 0)]
        expires_in_seconds: i64,
        /// key=value, repeatable.
        #[arg(long = "meta", value_parser = parse_kv)]
        metadata: Vec<(String, String)>,
        #[arg(long, default_value = "")]
        idempotency_key: String,
    },
    /// Get one order by id or by merchant order number.
    GetOrder {
        #[arg(long, conflicts_with = "merchant_order_no")]
        order_id: Option<String>,
        #[arg(long)]
        merchant_order_no: Option<String>,
    },
    /// List orders, newest first.
    ListOrders {
        /// PENDING, PAYING, PAID, PARTIALLY_REFUNDED, REFUNDED, CLOSED (repeatable).
        #[arg(long = "status")]
        statuses: Vec<String>,
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Start paying an order: prints the attempt and what the payer's device needs.
    Pay {
        #[arg(long)]
        order_id: String,
        /// wechat, alipay or unionpay.
        #[arg(long)]
        channel: String,
        /// wechat_native, wechat_jsapi, alipay_qr, alipay_page, alipay_app, unionpay_front.
        #[arg(long)]
        method: String,
        #[arg(long, default_value = "")]
        payer_id: String,
        #[arg(long, default_value = "")]
        client_ip: String,
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// Draw the QR code even when stdout is not a terminal.
        #[arg(long)]
        qr: bool,
    },
    /// Close an unpaid order.
    CloseOrder {
        #[arg(long)]
        order_id: String,
        #[arg(long, default_value = "")]
        idempotency_key: String,
    },
    /// Refund part or all of a paid order. The refund request number is the idempotency key:
    /// repeating the command with the same number returns the same refund.
    Refund {
        #[arg(long)]
        order_id: String,
        /// Amount in minor units (fen for CNY).
        #[arg(long)]
        amount: i64,
        #[arg(long, default_value = "CNY")]
        currency: String,
        #[arg(long)]
        refund_request_no: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Get one refund by id or by refund request number.
    GetRefund {
        #[arg(long, conflicts_with = "refund_request_no")]
        refund_id: Option<String>,
        #[arg(long)]
        refund_request_no: Option<String>,
    },
    /// Follow the app's events (WatchEvents) from a cursor, printing one line each with its
    /// cursor; resume later with `--cursor <the last one printed>`.
    WatchEvents {
        #[arg(long, default_value = "")]
        cursor: String,
        /// Stop after this many events (0: follow until interrupted).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Put the app's dead-lettered events (all, or the named ones) back into delivery.
    RedeliverEvents {
        #[arg(long = "event-id")]
        event_ids: Vec<String>,
    },
    /// Print a shell completion script: payctl completions bash > /etc/bash_completion.d/payctl
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Reconciliation of the channels' daily statements (admin).
    Recon {
        #[command(subcommand)]
        cmd: ReconCmd,
    },
    /// The audit log, newest first (needs the role audit.read).
    Audit {
        /// At or after this instant (RFC 3339, e.g. 2026-12-04T00:00:00+08:00).
        #[arg(long)]
        from: Option<String>,
        /// Before this instant (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Only this app's records.
        #[arg(long = "of-app", default_value = "")]
        of_app: String,
        /// Only this action (the full method, e.g. /payment.v1.PaymentService/CreateRefund).
        #[arg(long, default_value = "")]
        action: String,
        /// Only records about this order id, out_trade_no, refund id, run id or other target.
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// List refunds, newest first (of one order, or all of the app's).
    ListRefunds {
        #[arg(long, default_value = "")]
        order_id: String,
        /// PENDING, PROCESSING, SUCCEEDED, FAILED (repeatable).
        #[arg(long = "status")]
        statuses: Vec<String>,
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
}

#[derive(Subcommand)]
enum ReconCmd {
    /// Start (or join the running) reconciliation of a channel's Beijing day; shows progress
    /// until it finishes unless --no-wait.
    Run {
        /// wechat, alipay or unionpay.
        #[arg(long)]
        channel: String,
        /// YYYY-MM-DD, Beijing time.
        #[arg(long)]
        day: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// A run: status, lines read, discrepancies found and repaired.
    Show {
        id: String,
        /// Follow a RUNNING run with a progress bar until it ends.
        #[arg(long)]
        follow: bool,
    },
    /// Discrepancies, newest first.
    List {
        #[arg(long, default_value = "")]
        run: String,
        #[arg(long, default_value = "")]
        channel: String,
        #[arg(long, default_value = "")]
        day: String,
        /// MISSING_LOCALLY, MISSING_AT_CHANNEL, AMOUNT_MISMATCH, STATUS_MISMATCH, DUPLICATE, REFUND_…
        #[arg(long, default_value = "")]
        kind: String,
        /// OPEN, REPAIRED, RESOLVED.
        #[arg(long, default_value = "")]
        status: String,
        #[arg(long, default_value_t = 0)]
        page_size: u32,
        #[arg(long, default_value = "")]
        cursor: String,
    },
    /// Settle an OPEN discrepancy, recording who and why.
    Resolve {
        id: String,
        #[arg(long)]
        resolution: String,
        #[arg(long, default_value = "")]
        note: String,
    },
}

fn channel_arg(channel: &str) -> Result<i32, Failure> {
    if channel.is_empty() {
        return Ok(0);
    }
    payproto::channel::v1::Channel::from_str_name(&format!("CHANNEL_{}", channel.to_uppercase()))
        .map(|c| c as i32)
        .with_context(|| format!("unknown channel {channel}"))
        .map_err(|e| Failure::Local(out::exit::REFUSED, "INVALID_ARGUMENT", e))
}

async fn recon(transport: SignedChannel, app: &Who, cmd: ReconCmd, o: &Out) -> Result<(), Failure> {
    use payproto::payment::v1::reconciliation_service_client::ReconciliationServiceClient;
    let mut r = ReconciliationServiceClient::new(transport);
    match cmd {
        ReconCmd::Run {
            channel,
            day,
            no_wait,
        } => {
            let started = r
                .run_reconciliation(with_app(
                    app,
                    pb::RunReconciliationRequest {
                        channel: channel_arg(&channel)?,
                        day,
                    },
                )?)
                .await?
                .into_inner();
            let mut run = started.run.unwrap_or_default();
            if started.already_running && !o.json {
                eprintln!("{}", o.dim("already running: following that run"));
            }
            if !no_wait {
                run = follow_run(&mut r, app, run, o).await?;
            }
            o.recon_run(&run);
        }
        ReconCmd::Show { id, follow } => {
            let mut run = r
                .get_reconciliation_run(with_app(app, pb::GetReconciliationRunRequest { id })?)
                .await?
                .into_inner()
                .run
                .unwrap_or_default();
            if follow {
                run = follow_run(&mut r, app, run, o).await?;
            }
            o.recon_run(&run);
        }
        ReconCmd::List {
            run,
            channel,
            day,
            kind,
            status,
            page_size,
            cursor,
        } => {
            let page = r
                .list_discrepancies(with_app(
                    app,
                    pb::ListDiscrepanciesRequest {
                        run_id: run,
                        channel: channel_arg(&channel)?,
                        day,
                        kind: kind.to_uppercase(),
                        status: status.to_uppercase(),
                        page_size,
                        cursor,
                    },
                )?)
                .await?
                .into_inner();
            o.discrepancies(&page.discrepancies, &page.next_cursor);
        }
        ReconCmd::Resolve {
            id,
            resolution,
            note,
        } => {
            let operator = app.operator.clone();
            if operator.is_empty() {
                return Err(Failure::Local(
                    out::exit::REFUSED,
                    "INVALID_ARGUMENT",
                    anyhow::anyhow!("a resolution names the person: --operator (or $USER)"),
                ));
            }
            let d = r
                .resolve_discrepancy(with_app(
                    app,
                    pb::ResolveDiscrepancyRequest {
                        id,
                        resolution,
                        note,
                        operator,
                    },
                )?)
                .await?
                .into_inner()
                .discrepancy
                .unwrap_or_default();
            o.discrepancies(std::slice::from_ref(&d), "");
        }
    }
    Ok(())
}

/// Polls a run until it is no longer RUNNING, showing its progress (lines read against the
/// lines it expects) as it goes; returns it as it ended.
async fn follow_run(
    r: &mut payproto::payment::v1::reconciliation_service_client::ReconciliationServiceClient<
        SignedChannel,
    >,
    app: &Who,
    mut run: pb::ReconciliationRun,
    o: &Out,
) -> Result<pb::ReconciliationRun, Failure> {
    if run.status != "RUNNING" {
        return Ok(run);
    }
    let mut progress = o.recon_progress();
    while run.status == "RUNNING" {
        progress.update(&run);
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        run = r
            .get_reconciliation_run(with_app(
                app,
                pb::GetReconciliationRunRequest { id: run.id.clone() },
            )?)
            .await?
            .into_inner()
            .run
            .unwrap_or_default();
    }
    progress.finish(&run);
    Ok(run)
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// Who runs the command: the app the calls are signed as, and the person (audit log).
struct Who {
    app: String,
    operator: String,
}

/// A request from `who`: `x-app-id` (which the signing layer signs as) and `x-operator`.
fn with_app<T>(who: &Who, body: T) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-app-id", who.app.parse().context("app id")?);
    if !who.operator.is_empty() {
        r.metadata_mut().insert(
            "x-operator",
            who.operator
                .parse()
                .context("--operator must be printable ASCII")?,
        );
    }
    Ok(r)
}

/// The app's secret, from `--secret`/`PAYCTL_SECRET` or `--secret-file`/`PAYCTL_SECRET_FILE`.
fn secret_of(cli: &Cli) -> Result<String, Failure> {
    let refused = |e: anyhow::Error| Failure::Local(out::exit::REFUSED, "UNAUTHENTICATED", e);
    match (&cli.secret, &cli.secret_file) {
        (Some(s), None) => Ok(s.trim().to_owned()),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .with_context(|| format!("reading the secret file {}", path.display()))
            .map_err(refused),
        (Some(_), Some(_)) => Err(refused(anyhow::anyhow!(
            "give the secret once: --secret (PAYCTL_SECRET) or --secret-file (PAYCTL_SECRET_FILE)"
        ))),
        (None, None) => Err(refused(anyhow::anyhow!(
            "every call to payd is signed: set PAYCTL_SECRET_FILE (or PAYCTL_SECRET) to the \
             secret of app {}",
            cli.app
        ))),
    }
}

/// A signed connection to payd.
async fn connect(cli: &Cli) -> Result<SignedChannel, Failure> {
    let secret = secret_of(cli)?;
    let channel = tonic::transport::Endpoint::from_shared(cli.endpoint.clone())
        .map_err(|e| {
            Failure::Local(
                out::exit::REFUSED,
                "INVALID_ARGUMENT",
                anyhow::Error::new(e).context(format!("the endpoint {}", cli.endpoint)),
            )
        })?
        .connect()
        .await
        .map_err(|e| {
            Failure::Local(
                out::exit::UNAVAILABLE,
                "UNREACHABLE",
                anyhow::Error::new(e).context(format!("connecting to {}", cli.endpoint)),
            )
        })?;
    Ok(Signed::new(
        channel,
        SigningKeys::single(&cli.app, secret.as_bytes()),
    ))
}

/// A failed command: a gRPC status from payd, or a local problem (connection, arguments).
enum Failure {
    Status(tonic::Status),
    /// Exit code, a name for the class, the error.
    Local(u8, &'static str, anyhow::Error),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Status(s)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Local(out::exit::OTHER, "ERROR", e)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let o = Out::new(cli.json, &cli.color);
    match run(cli, o).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let (code, name, message) = match f {
                Failure::Status(s) => (
                    out::exit_code(s.code()),
                    out::code_name(s.code()),
                    s.message().to_owned(),
                ),
                Failure::Local(code, name, e) => (code, name.to_owned(), format!("{e:#}")),
            };
            if o.json {
                eprintln!(
                    "{}",
                    serde_json::json!({"error": {"code": name, "message": message, "exit": code}})
                );
            } else {
                let err = if o.color {
                    "\x1b[1;31merror\x1b[0m"
                } else {
                    "error"
                };
                eprintln!("{err}: {name}: {message}");
            }
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli, o: Out) -> Result<(), Failure> {
    if let Command::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "payctl", &mut script);
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
        return Ok(());
    }
    let transport = connect(&cli).await?;
    let who = Who {
        app: cli.app.clone(),
        operator: cli
            .operator
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_default(),
    };
    let app = &who;
    if let Command::Recon { cmd } = cli.command {
        return recon(transport, app, cmd, &o).await;
    }
    if let Command::Audit {
        from,
        to,
        of_app,
        action,
        target,
        page_size,
        page_token,
    } = cli.command
    {
        let instant = |v: Option<String>, what: &str| -> Result<_, Failure> {
            v.map(|t| {
                chrono::DateTime::parse_from_rfc3339(&t)
                    .map(|d| prost_types::Timestamp {
                        seconds: d.timestamp(),
                        nanos: i32::try_from(d.timestamp_subsec_nanos()).unwrap_or(0),
                    })
                    .with_context(|| format!("--{what} {t:?} is not an RFC 3339 instant"))
                    .map_err(|e| Failure::Local(out::exit::REFUSED, "INVALID_ARGUMENT", e))
            })
            .transpose()
        };
        let request = pb::ListAuditRecordsRequest {
            from: instant(from, "from")?,
            to: instant(to, "to")?,
            app_id: of_app,
            action,
            target,
            page_size,
            page_token,
        };
        let r = payproto::payment::v1::audit_service_client::AuditServiceClient::new(transport)
            .list_audit_records(with_app(app, request)?)
            .await?
            .into_inner();
        o.audit(&r.records, &r.next_page_token);
        return Ok(());
    }
    let mut client = PaymentServiceClient::new(transport);
    match cli.command {
        Command::Completions { .. } | Command::Recon { .. } | Command::Audit { .. } => {}
        Command::CreateOrder {
            merchant_order_no,
            amount,
            currency,
            subject,
            expires_in_seconds,
            metadata,
            idempotency_key,
        } => {
            let r = client
                .create_order(with_app(
                    app,
                    pb::CreateOrderRequest {
                        merchant_order_no,
                        amount: Some(pb::Money {
                            amount_minor: amount,
                            currency,
                        }),
                        subject,
                        expires_in_seconds,
                        metadata: metadata.into_iter().collect::<BTreeMap<_, _>>(),
                        idempotency_key,
                    },
                )?)
                .await?
                .into_inner();
            if let Some(order) = r.order {
                o.order(&order);
            }
        }
        Command::GetOrder {
            order_id,
            merchant_order_no,
        } => {
            use pb::get_order_request::Lookup;
            let lookup = order_id
                .map(Lookup::OrderId)
                .or(merchant_order_no.map(Lookup::MerchantOrderNo));
            let r = client
                .get_order(with_app(app, pb::GetOrderRequest { lookup })?)
                .await?
                .into_inner();
            if let Some(order) = r.order {
                o.order(&order);
            }
        }
        Command::ListOrders {
            statuses,
            page_size,
            page_token,
        } => {
            let statuses = statuses
                .iter()
                .map(|s| {
                    pb::OrderStatus::from_str_name(&format!("ORDER_STATUS_{}", s.to_uppercase()))
                        .map(|v| v as i32)
                        .with_context(|| format!("unknown status {s}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
                .map_err(|e| Failure::Local(out::exit::REFUSED, "INVALID_ARGUMENT", e))?;
            let r = client
                .list_orders(with_app(
                    app,
                    pb::ListOrdersRequest {
                        statuses,
                        page_size,
                        page_token,
                        ..Default::default()
                    },
                )?)
                .await?
                .into_inner();
            o.orders(&r.orders, &r.next_page_token);
        }
        Command::Pay {
            order_id,
            channel,
            method,
            payer_id,
            client_ip,
            idempotency_key,
            qr,
        } => {
            use payproto::channel::v1 as cpb;
            let channel =
                cpb::Channel::from_str_name(&format!("CHANNEL_{}", channel.to_uppercase()))
                    .with_context(|| format!("unknown channel {channel}"))
                    .map_err(|e| Failure::Local(out::exit::REFUSED, "INVALID_ARGUMENT", e))?;
            let method =
                cpb::PayMethod::from_str_name(&format!("PAY_METHOD_{}", method.to_uppercase()))
                    .with_context(|| format!("unknown method {method}"))
                    .map_err(|e| Failure::Local(out::exit::REFUSED, "INVALID_ARGUMENT", e))?;
            let r = client
                .pay(with_app(
                    app,
                    pb::PayRequest {
                        order_id,
                        channel: channel as i32,
                        method: method as i32,
                        payer: Some(pb::Payer {
                            payer_id,
                            client_ip,
                        }),
                        idempotency_key,
                    },
                )?)
                .await?
                .into_inner();
            o.pay(&r, qr);
        }
        Command::CloseOrder {
            order_id,
            idempotency_key,
        } => {
            let r = client
                .close_order(with_app(
                    app,
                    pb::CloseOrderRequest {
                        order_id,
                        idempotency_key,
                    },
                )?)
                .await?
                .into_inner();
            if let Some(order) = r.order {
                o.order(&order);
            }
        }
        Command::Refund {
            order_id,
            amount,
            currency,
            refund_request_no,
            reason,
        } => {
            let operator = who.operator.clone();
            let r = client
                .create_refund(with_app(
                    app,
                    pb::CreateRefundRequest {
                        order_id,
                        amount: Some(pb::Money {
                            amount_minor: amount,
                            currency,
                        }),
                        reason,
                        refund_request_no,
                        operator,
                    },
                )?)
                .await?
                .into_inner();
            if let Some(refund) = r.refund {
                o.refund(&refund);
            }
        }
        Command::GetRefund {
            refund_id,
            refund_request_no,
        } => {
            use pb::get_refund_request::Lookup;
            let lookup = refund_id
                .map(Lookup::RefundId)
                .or(refund_request_no.map(Lookup::RefundRequestNo));
            let r = client
                .get_refund(with_app(app, pb::GetRefundRequest { lookup })?)
                .await?
                .into_inner();
            if let Some(refund) = r.refund {
                o.refund(&refund);
            }
        }
        Command::WatchEvents { cursor, limit } => {
            let mut stream = client
                .watch_events(with_app(app, pb::WatchEventsRequest { cursor })?)
                .await?
                .into_inner();
            let mut seen = 0;
            while let Some(m) = stream.message().await? {
                let Some(e) = m.event else { continue };
                o.event(&e);
                seen += 1;
                if limit > 0 && seen >= limit {
                    break;
                }
            }
        }
        Command::RedeliverEvents { event_ids } => {
            let n = client
                .redeliver_events(with_app(app, pb::RedeliverEventsRequest { event_ids })?)
                .await?
                .into_inner()
                .requeued;
            if o.json {
                o.json(&serde_json::json!({ "requeued": n }));
            } else {
                println!("{n} events put back into delivery");
            }
        }
        Command::ListRefunds {
            order_id,
            statuses,
            page_size,
            page_token,
        } => {
            let statuses = statuses
                .iter()
                .map(|s| {
                    pb::RefundStatus::from_str_name(&format!("REFUND_STATUS_{}", s.to_uppercase()))
                        .map(|v| v as i32)
                        .with_context(|| format!("unknown refund status {s}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
                .map_err(|e| Failure::Local(out::exit::REFUSED, "INVALID_ARGUMENT", e))?;
            let r = client
                .list_refunds(with_app(
                    app,
                    pb::ListRefundsRequest {
                        order_id,
                        statuses,
                        page_size,
                        page_token,
                        ..Default::default()
                    },
                )?)
                .await?
                .into_inner();
            o.refunds(&r.refunds, &r.next_page_token);
        }
    }
    Ok(())
}
