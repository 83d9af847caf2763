//! The trade bill (`bill_type=ALL`) parsed into statement lines: comma-separated rows whose every
//! value carries a leading backtick, amounts in yuan with two decimals, times in Beijing time. Columns
//! are found by their header names, so the ALL, SUCCESS and REFUND layouts all parse.
use channel_kit::pb;
use chrono::{DateTime, NaiveDateTime, TimeZone as _, Utc};

/// A bill that cannot be read; reconciliation must not run on a guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillError {
    #[error("bill is not UTF-8")]
    Utf8,
    #[error("bill has no header line")]
    NoHeader,
    #[error("bill header lacks column {0}")]
    MissingColumn(&'static str),
    #[error("bill line {line}: {reason}")]
    Line { line: usize, reason: String },
}

/// Parses the bill's yuan amounts (`0.01`, `100.00`) into fen, exactly. Bill amounts are never
/// negative for the columns read here; more than two decimals would be a misread column.
///
/// # Errors
/// A message naming the text.
pub fn parse_bill_yuan(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a yuan amount");
    let (integer, fraction) = text.split_once('.').unwrap_or((text, ""));
    if integer.is_empty()
        || !integer.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 2
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let yuan: i64 = integer.parse().map_err(|_| bad())?;
    let cents: i64 = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<i64>().map_err(|_| bad())? * 10,
        _ => fraction.parse().map_err(|_| bad())?,
    };
    yuan.checked_mul(100)
        .and_then(|f| f.checked_add(cents))
        .ok_or_else(bad)
}

/// Beijing-time `yyyy-MM-dd HH:mm:ss` to a protobuf timestamp.
fn parse_beijing(text: &str) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").ok()?;
    crate::adapter::BEIJING
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

struct Columns {
    time: usize,
    transaction_id: usize,
    out_trade_no: usize,
    trade_state: usize,
    currency: usize,
    order_amount: usize,
    out_refund_no: Option<usize>,
    refund_amount: Option<usize>,
    refund_state: Option<usize>,
}

impl Columns {
    fn find(header: &[&str]) -> Result<Self, BillError> {
        let at = |name: &'static str| header.iter().position(|h| *h == name);
        let need = |name: &'static str| at(name).ok_or(BillError::MissingColumn(name));
        Ok(Self {
            time: need("交易时间")?,
            transaction_id: need("微信订单号")?,
            out_trade_no: need("商户订单号")?,
            trade_state: need("交易状态")?,
            currency: need("货币种类")?,
            order_amount: need("订单金额")?,
            out_refund_no: at("商户退款单号"),
            refund_amount: at("退款金额"),
            refund_state: at("退款状态"),
        })
    }
}

/// Splits a data row: values are separated by commas and each starts with a backtick, which is
/// stripped (it stops spreadsheets from mangling long numbers).
fn split_row(line: &str) -> Vec<&str> {
    line.split(',')
        .map(|v| v.strip_prefix('`').unwrap_or(v).trim())
        .collect()
}

fn refund_state(text: &str) -> pb::RefundState {
    match crate::status::RefundState::parse(text).refund_status() {
        crate::status::RefundStatus::Succeeded => pb::RefundState::Succeeded,
        crate::status::RefundStatus::Closed => pb::RefundState::Failed,
        crate::status::RefundStatus::Pending | crate::status::RefundStatus::Abnormal => {
            pb::RefundState::Processing
        }
        crate::status::RefundStatus::Unknown => pb::RefundState::Unknown,
    }
}

/// Parses a whole bill file.
///
/// # Errors
/// [`BillError`] for a file that is not a trade bill or a row that does not read exactly.
pub fn parse_trade_bill(file: &[u8]) -> Result<Vec<pb::StatementLine>, BillError> {
    let text = std::str::from_utf8(file).map_err(|_| BillError::Utf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r')).enumerate();
    let header: Vec<&str> = loop {
        match lines.next() {
            Some((_, l)) if l.trim().is_empty() => continue,
            Some((_, l)) => break l.split(',').map(str::trim).collect(),
            None => return Err(BillError::NoHeader),
        }
    };
    let cols = Columns::find(&header)?;
    let mut out = Vec::new();
    for (index, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        // The summary block (header without backticks, then one totals row) ends the details.
        if line.starts_with("总交易单数") {
            break;
        }
        let row = split_row(line);
        let bad = |reason: String| BillError::Line {
            line: index + 1,
            reason,
        };
        let field = |i: usize| row.get(i).copied().unwrap_or("");
        let at = parse_beijing(field(cols.time))
            .ok_or_else(|| bad(format!("bad 交易时间 {:?}", field(cols.time))))?;
        let currency = match field(cols.currency) {
            "" => "CNY",
            c => c,
        };
        let out_refund_no = cols.out_refund_no.map(field).unwrap_or("");
        let state = field(cols.trade_state);
        let mut line = pb::StatementLine {
            out_trade_no: field(cols.out_trade_no).to_owned(),
            channel_trade_no: field(cols.transaction_id).to_owned(),
            at: Some(channel_kit::time::timestamp(at)),
            ..Default::default()
        };
        if state == "REFUND" && !out_refund_no.is_empty() {
            let amount_col = cols
                .refund_amount
                .ok_or(BillError::MissingColumn("退款金额"))?;
            let amount = parse_bill_yuan(field(amount_col)).map_err(bad)?;
            line.out_refund_no = out_refund_no.to_owned();
            line.refund_state = refund_state(cols.refund_state.map(field).unwrap_or("")) as i32;
            line.amount = Some(pb::Money {
                amount_minor: amount,
                currency: currency.to_owned(),
            });
        } else {
            let amount = parse_bill_yuan(field(cols.order_amount)).map_err(bad)?;
            line.trade_state = crate::adapter::trade_state(state) as i32;
            line.amount = Some(pb::Money {
                amount_minor: amount,
                currency: currency.to_owned(),
            });
        }
        out.push(line);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_BILL: &str = "\u{feff}交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n\
`2021-01-28 17:07:11,`wx81be3101902f7cb2,`1601959334,`0,`,`4200000925202101284997714292,`S20210128170702357723,`ofyak5qR_1wYsC99CsWA6R9MJazA,`NATIVE,`SUCCESS,`OTHERS,`CNY,`0.01,`0.00,`0,`0,`0.00,`0.00,`,`,`for testing,`cipher code,`0.00000,`1.00%,`0.01,`0.00,`\r\n\
`2021-01-29 10:00:00,`wx81be3101902f7cb2,`1601959334,`0,`,`4200000925202101284997714292,`S20210128170702357723,`ofyak5qR_1wYsC99CsWA6R9MJazA,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50000000382019052709732678859,`R1,`0.01,`0.00,`ORIGINAL,`SUCCESS,`for testing,`cipher code,`-0.00000,`1.00%,`0.01,`0.01,`\r\n\
总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n\
`2,`0.01,`0.01,`0.00,`0.00000,`0.01,`0.01\r\n";

    #[test]
    fn an_all_bill_parses_payments_and_refunds_in_fen() {
        let lines = parse_trade_bill(ALL_BILL.as_bytes()).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].out_trade_no, "S20210128170702357723");
        assert_eq!(lines[0].trade_state, pb::TradeState::Succeeded as i32);
        assert_eq!(lines[0].amount.as_ref().unwrap().amount_minor, 1);
        // 17:07:11 Beijing is 09:07:11 UTC.
        assert_eq!(lines[0].at.as_ref().unwrap().seconds, 1_611_824_831);
        assert_eq!(lines[1].out_refund_no, "R1");
        assert_eq!(lines[1].refund_state, pb::RefundState::Succeeded as i32);
        assert_eq!(lines[1].amount.as_ref().unwrap().amount_minor, 1);
    }

    #[test]
    fn bill_yuan_is_exact() {
        assert_eq!(parse_bill_yuan("0.01"), Ok(1));
        assert_eq!(parse_bill_yuan("88.88"), Ok(8888));
        assert_eq!(parse_bill_yuan("1.5"), Ok(150));
        assert_eq!(parse_bill_yuan("100"), Ok(10_000));
        for bad in ["", "-1.00", "1.001", "1e2", ".5", "0.00000"] {
            assert!(parse_bill_yuan(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_bill_is_refused() {
        assert_eq!(
            parse_trade_bill("a,b,c\n".as_bytes()),
            Err(BillError::MissingColumn("交易时间"))
        );
    }
}
