//! The WeChat trade bill (`ALL`, `SUCCESS`, `REFUND`): detail header, back-ticked rows, summary
//! header and row, CRLF line ends, amounts in yuan. Fees are always zero in the sandbox. Written
//! as a stream (synthetic days may hold 10^6 lines).

use std::io::Write;

use chrono::NaiveDate;

use super::server::{beijing_time, yuan};
use crate::ledger::Trade;
use crate::statements::{BillLine, DayStatement, LineKind};

const ALL_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
const SUCCESS_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,商品名称,商户数据包,手续费,费率,订单金额,费率备注";
const REFUND_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
const SUMMARY_HEADER: &str =
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";

fn row(w: &mut impl Write, values: &[String]) -> std::io::Result<()> {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        w.write_all(b"`")?;
        w.write_all(v.replace(',', " ").as_bytes())?;
    }
    w.write_all(b"\r\n")
}

fn time(instant: chrono::DateTime<chrono::Utc>) -> String {
    beijing_time(instant)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn on_date(instant: chrono::DateTime<chrono::Utc>, date: NaiveDate) -> bool {
    beijing_time(instant).date_naive() == date
}

/// Whether WeChat knows this `bill_type`.
pub fn known_bill_type(bill_type: &str) -> bool {
    matches!(bill_type, "ALL" | "SUCCESS" | "REFUND")
}

/// The ledger's lines of `date` (Beijing time): payments dated by their success time, refunds by
/// their acceptance time, as WeChat does.
pub fn ledger_lines(trades: &[&Trade], date: NaiveDate) -> Vec<BillLine> {
    let mut out = Vec::new();
    for trade in trades {
        let mut extra = trade.extra.clone();
        extra.insert("method".to_owned(), trade.method.clone());
        if let Some(paid_at) = trade.paid_at.filter(|p| on_date(*p, date)) {
            out.push(BillLine {
                kind: LineKind::Payment,
                out_trade_no: trade.out_trade_no.clone(),
                channel_trade_no: trade.channel_trade_no.clone(),
                amount_minor: trade.amount_minor,
                trade_amount_minor: trade.amount_minor,
                at: paid_at,
                created_at: trade.created_at,
                subject: trade.subject.clone(),
                status: "SUCCESS".to_owned(),
                extra: extra.clone(),
                ..Default::default()
            });
        }
        for refund in trade.refunds.iter().filter(|r| on_date(r.created_at, date)) {
            out.push(BillLine {
                kind: LineKind::Refund,
                out_trade_no: trade.out_trade_no.clone(),
                channel_trade_no: trade.channel_trade_no.clone(),
                out_refund_no: refund.out_refund_no.clone(),
                channel_refund_no: refund.channel_refund_no.clone(),
                amount_minor: refund.amount_minor,
                trade_amount_minor: trade.amount_minor,
                at: refund.created_at,
                created_at: refund.created_at,
                subject: trade.subject.clone(),
                status: super::server::refund_status(refund).to_owned(),
                extra: extra.clone(),
            });
        }
    }
    out
}

fn get<'a>(line: &'a BillLine, key: &str) -> &'a str {
    line.extra.get(key).map_or("", String::as_str)
}

/// Writes the bill of `statement` for a known `bill_type`.
///
/// # Errors
/// I/O errors of `w`.
pub fn write_trade_bill(
    w: &mut impl Write,
    mchid: &str,
    statement: &DayStatement,
    bill_type: &str,
) -> std::io::Result<()> {
    let header = match bill_type {
        "SUCCESS" => SUCCESS_HEADER,
        "REFUND" => REFUND_HEADER,
        _ => ALL_HEADER,
    };
    w.write_all(header.as_bytes())?;
    w.write_all(b"\r\n")?;
    let (mut count, mut settled, mut refunded, mut ordered, mut requested) = (0u64, 0, 0, 0, 0);
    statement.for_each(|line| {
        let common = |at: String, state: &str, settle: u64| {
            vec![
                at,
                get(line, "appid").to_owned(),
                mchid.to_owned(),
                "0".to_owned(),
                String::new(),
                line.channel_trade_no.clone(),
                line.out_trade_no.clone(),
                get(line, "openid").to_owned(),
                if get(line, "method") == "jsapi" {
                    "JSAPI"
                } else {
                    "NATIVE"
                }
                .to_owned(),
                state.to_owned(),
                "OTHERS".to_owned(),
                "CNY".to_owned(),
                yuan(settle),
                "0.00".to_owned(),
            ]
        };
        match line.kind {
            LineKind::Payment if bill_type != "REFUND" => {
                let mut values = common(time(line.at), "SUCCESS", line.amount_minor);
                if bill_type == "ALL" {
                    values.extend(["0", "0", "0.00", "0.00", "", ""].map(str::to_owned));
                }
                values.extend([
                    line.subject.clone(),
                    get(line, "attach").to_owned(),
                    "0.00000".to_owned(),
                    "0.60%".to_owned(),
                    yuan(line.amount_minor),
                ]);
                if bill_type == "ALL" {
                    values.push("0.00".to_owned());
                }
                values.push(String::new());
                row(w, &values)?;
                count += 1;
                settled += line.amount_minor;
                ordered += line.amount_minor;
            }
            LineKind::Refund if bill_type != "SUCCESS" => {
                let mut values = common(time(line.at), "REFUND", 0);
                if bill_type == "REFUND" {
                    values.extend([time(line.at), time(line.at)]);
                }
                values.extend([
                    line.channel_refund_no.clone(),
                    line.out_refund_no.clone(),
                    yuan(line.amount_minor),
                    "0.00".to_owned(),
                    "ORIGINAL".to_owned(),
                    line.status.clone(),
                    line.subject.clone(),
                    get(line, "attach").to_owned(),
                    "0.00000".to_owned(),
                    "0.60%".to_owned(),
                    yuan(line.trade_amount_minor),
                    yuan(line.amount_minor),
                    String::new(),
                ]);
                row(w, &values)?;
                count += 1;
                refunded += line.amount_minor;
                requested += line.amount_minor;
            }
            _ => {}
        }
        Ok::<(), std::io::Error>(())
    })?;
    if statement.corrupt_summary {
        count += 1;
    }
    w.write_all(SUMMARY_HEADER.as_bytes())?;
    w.write_all(b"\r\n")?;
    row(
        w,
        &[
            count.to_string(),
            yuan(settled),
            yuan(refunded),
            "0.00".to_owned(),
            "0.00000".to_owned(),
            yuan(ordered),
            yuan(requested),
        ],
    )
}
