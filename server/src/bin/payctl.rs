//! `payctl`: a small command-line client for payd's `payment.v1` API, for operators and for the
//! README's walkthrough. Every call sends `x-app-id`; mutating calls can carry an idempotency key.
use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Parser, Subcommand};
use payproto::payment::v1 as pb;
use payproto::payment::v1::payment_service_client::PaymentServiceClient;

#[derive(Parser)]
#[command(name = "payctl", about = "Call payd's payment.v1 API")]
struct Cli {
    /// payd's gRPC endpoint.
    #[arg(
        long,
        env = "PAYCTL_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    /// The calling app (sent as `x-app-id`).
    #[arg(long, env = "PAYCTL_APP_ID", default_value = "demo-shop")]
    app: String,
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
        /// Who asks, for the audit trail (defaults to $USER).
        #[arg(long, env = "USER", default_value = "")]
        operator: String,
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

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

fn with_app<T>(app: &str, body: T) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-app-id", app.parse().context("app id")?);
    Ok(r)
}

fn print_order(o: Option<pb::Order>) {
    let Some(o) = o else { return };
    let amount = o.amount.unwrap_or_default();
    let status = pb::OrderStatus::try_from(o.status)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("ORDER_STATUS_")
                .to_owned()
        })
        .unwrap_or_else(|_| o.status.to_string());
    println!(
        "order {}  no={}  {} {} (minor units)  status={}  version={}  subject={:?}",
        o.order_id,
        o.merchant_order_no,
        amount.amount_minor,
        amount.currency,
        status,
        o.version,
        o.subject
    );
}

fn print_refund(r: Option<pb::Refund>) {
    let Some(r) = r else { return };
    let amount = r.amount.unwrap_or_default();
    let status = pb::RefundStatus::try_from(r.status)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("REFUND_STATUS_")
                .to_owned()
        })
        .unwrap_or_else(|_| r.status.to_string());
    println!(
        "refund {}  no={}  order={}  {} {} (minor units)  status={}{}  out_refund_no={}{}",
        r.refund_id,
        r.refund_request_no,
        r.order_id,
        amount.amount_minor,
        amount.currency,
        status,
        if r.needs_attention {
            "  NEEDS ATTENTION"
        } else {
            ""
        },
        r.out_refund_no,
        if r.failure_reason.is_empty() {
            String::new()
        } else {
            format!("  failure={:?}", r.failure_reason)
        }
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut client = PaymentServiceClient::connect(cli.endpoint.clone())
        .await
        .with_context(|| format!("connecting to {}", cli.endpoint))?;
    let app = cli.app.as_str();
    let result = match cli.command {
        Command::CreateOrder {
            merchant_order_no,
            amount,
            currency,
            subject,
            expires_in_seconds,
            metadata,
            idempotency_key,
        } => client
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
            .await
            .map(|r| print_order(r.into_inner().order)),
        Command::GetOrder {
            order_id,
            merchant_order_no,
        } => {
            use pb::get_order_request::Lookup;
            let lookup = order_id
                .map(Lookup::OrderId)
                .or(merchant_order_no.map(Lookup::MerchantOrderNo));
            client
                .get_order(with_app(app, pb::GetOrderRequest { lookup })?)
                .await
                .map(|r| print_order(r.into_inner().order))
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
                .collect::<anyhow::Result<Vec<_>>>()?;
            client
                .list_orders(with_app(
                    app,
                    pb::ListOrdersRequest {
                        statuses,
                        page_size,
                        page_token,
                        ..Default::default()
                    },
                )?)
                .await
                .map(|r| {
                    let r = r.into_inner();
                    for o in r.orders {
                        print_order(Some(o));
                    }
                    if !r.next_page_token.is_empty() {
                        println!("next page: --page-token {}", r.next_page_token);
                    }
                })
        }
        Command::Pay {
            order_id,
            channel,
            method,
            payer_id,
            client_ip,
            idempotency_key,
        } => {
            use payproto::channel::v1 as cpb;
            let channel =
                cpb::Channel::from_str_name(&format!("CHANNEL_{}", channel.to_uppercase()))
                    .with_context(|| format!("unknown channel {channel}"))?;
            let method =
                cpb::PayMethod::from_str_name(&format!("PAY_METHOD_{}", method.to_uppercase()))
                    .with_context(|| format!("unknown method {method}"))?;
            client
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
                .await
                .map(|r| {
                    let r = r.into_inner();
                    print_order(r.order);
                    if let Some(a) = r.attempt {
                        println!("attempt {}  out_trade_no={}", a.attempt_id, a.out_trade_no);
                    }
                    for (k, v) in r.pay_params {
                        println!("  {k} = {v}");
                    }
                })
        }
        Command::CloseOrder {
            order_id,
            idempotency_key,
        } => client
            .close_order(with_app(
                app,
                pb::CloseOrderRequest {
                    order_id,
                    idempotency_key,
                },
            )?)
            .await
            .map(|r| print_order(r.into_inner().order)),
        Command::Refund {
            order_id,
            amount,
            currency,
            refund_request_no,
            reason,
            operator,
        } => client
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
            .await
            .map(|r| print_refund(r.into_inner().refund)),
        Command::GetRefund {
            refund_id,
            refund_request_no,
        } => {
            use pb::get_refund_request::Lookup;
            let lookup = refund_id
                .map(Lookup::RefundId)
                .or(refund_request_no.map(Lookup::RefundRequestNo));
            client
                .get_refund(with_app(app, pb::GetRefundRequest { lookup })?)
                .await
                .map(|r| print_refund(r.into_inner().refund))
        }
        Command::WatchEvents { cursor, limit } => {
            match client
                .watch_events(with_app(app, pb::WatchEventsRequest { cursor })?)
                .await
            {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    let mut seen = 0;
                    loop {
                        match stream.message().await {
                            Ok(Some(m)) => {
                                let Some(e) = m.event else { continue };
                                let status = e.order.as_ref().map_or(String::new(), |o| {
                                    pb::OrderStatus::try_from(o.status)
                                        .map(|s| {
                                            s.as_str_name()
                                                .trim_start_matches("ORDER_STATUS_")
                                                .to_owned()
                                        })
                                        .unwrap_or_default()
                                });
                                println!(
                                    "cursor={}  {}  order={} #{}  status={}  event={}{}",
                                    e.cursor,
                                    e.r#type,
                                    e.order_id,
                                    e.order_sequence,
                                    status,
                                    e.event_id,
                                    e.refund.as_ref().map_or(String::new(), |r| format!(
                                        "  refund={} {}",
                                        r.refund_request_no,
                                        r.amount.as_ref().map_or(0, |a| a.amount_minor)
                                    ))
                                );
                                seen += 1;
                                if limit > 0 && seen >= limit {
                                    break Ok(());
                                }
                            }
                            Ok(None) => break Ok(()),
                            Err(s) => break Err(s),
                        }
                    }
                }
                Err(s) => Err(s),
            }
        }
        Command::RedeliverEvents { event_ids } => client
            .redeliver_events(with_app(app, pb::RedeliverEventsRequest { event_ids })?)
            .await
            .map(|r| println!("{} events put back into delivery", r.into_inner().requeued)),
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
                .collect::<anyhow::Result<Vec<_>>>()?;
            client
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
                .await
                .map(|r| {
                    let r = r.into_inner();
                    for x in r.refunds {
                        print_refund(Some(x));
                    }
                    if !r.next_page_token.is_empty() {
                        println!("next page: --page-token {}", r.next_page_token);
                    }
                })
        }
    };
    result.map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
}
