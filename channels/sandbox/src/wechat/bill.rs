//! The WeChat trade bill (`ALL`, `SUCCESS`, `REFUND`): detail header, back-ticked rows, summary
//! header and row, CRLF line ends, amounts in yuan. Fees are always zero in the sandbox.

use chrono::NaiveDate;

use super::server::{beijing_time, yuan};
use crate::ledger::Trade;

const ALL_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
const SUCCESS_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,商品名称,商户数据包,手续费,费率,订单金额,费率备注";
const REFUND_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
const SUMMARY_HEADER: &str =
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";

fn row(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("`{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn time(instant: chrono::DateTime<chrono::Utc>) -> String {
    beijing_time(instant)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn on_date(instant: chrono::DateTime<chrono::Utc>, date: NaiveDate) -> bool {
    beijing_time(instant).date_naive() == date
}

/// The bill for `date` (Beijing time), or `None` for an unknown `bill_type`. Payments are dated
/// by their success time, refunds by their acceptance time, as WeChat does.
pub fn trade_bill(
    mchid: &str,
    trades: &[&Trade],
    date: NaiveDate,
    bill_type: &str,
) -> Option<String> {
    let header = match bill_type {
        "ALL" => ALL_HEADER,
        "SUCCESS" => SUCCESS_HEADER,
        "REFUND" => REFUND_HEADER,
        _ => return None,
    };
    let mut lines = vec![header.to_owned()];
    let (mut count, mut settled, mut refunded, mut ordered, mut requested) = (0u64, 0, 0, 0, 0);
    for trade in trades {
        let common = |at: String, state: &str, settle: u64| {
            vec![
                at,
                trade.extra("appid").to_owned(),
                mchid.to_owned(),
                "0".to_owned(),
                String::new(),
                trade.channel_trade_no.clone(),
                trade.out_trade_no.clone(),
                trade.extra("openid").to_owned(),
                if trade.method == "jsapi" {
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
        if let Some(paid_at) = trade.paid_at.filter(|p| on_date(*p, date))
            && bill_type != "REFUND"
        {
            let mut values = common(time(paid_at), "SUCCESS", trade.amount_minor);
            if bill_type == "ALL" {
                values.extend(["0", "0", "0.00", "0.00", "", ""].map(str::to_owned));
            }
            values.extend([
                trade.subject.clone(),
                trade.extra("attach").to_owned(),
                "0.00000".to_owned(),
                "0.60%".to_owned(),
                yuan(trade.amount_minor),
            ]);
            if bill_type == "ALL" {
                values.push("0.00".to_owned());
            }
            values.push(String::new());
            lines.push(row(&values));
            count += 1;
            settled += trade.amount_minor;
            ordered += trade.amount_minor;
        }
        if bill_type == "SUCCESS" {
            continue;
        }
        for refund in trade.refunds.iter().filter(|r| on_date(r.created_at, date)) {
            let mut values = common(time(refund.created_at), "REFUND", 0);
            if bill_type == "REFUND" {
                values.extend([time(refund.created_at), time(refund.created_at)]);
            }
            values.extend([
                refund.channel_refund_no.clone(),
                refund.out_refund_no.clone(),
                yuan(refund.amount_minor),
                "0.00".to_owned(),
                "ORIGINAL".to_owned(),
                super::server::refund_status(refund).to_owned(),
                trade.subject.clone(),
                trade.extra("attach").to_owned(),
                "0.00000".to_owned(),
                "0.60%".to_owned(),
                yuan(trade.amount_minor),
                yuan(refund.amount_minor),
                String::new(),
            ]);
            lines.push(row(&values));
            count += 1;
            refunded += refund.amount_minor;
            requested += refund.amount_minor;
        }
    }
    lines.push(SUMMARY_HEADER.to_owned());
    lines.push(row(&[
        count.to_string(),
        yuan(settled),
        yuan(refunded),
        "0.00".to_owned(),
        "0.00000".to_owned(),
        yuan(ordered),
        yuan(requested),
    ]));
    Some(lines.join("\r\n") + "\r\n")
}
