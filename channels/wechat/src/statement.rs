//! The trade bill (`bill_type=ALL`) parsed into statement lines: comma-separated rows whose every
//! value carries a leading backtick, amounts in yuan with two decimals, times in Beijing time. Columns
//! are found by their header names, so the ALL, SUCCESS and REFUND layouts all parse.
use channel_kit::pb;
use chrono::{DateTime, NaiveDateTime, TimeZone as _, Utc};

/// A bill that cannot be read; reconciliation must not run on a guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillError {
    #[error("bill line {0} is not UTF-8")]
    Utf8(usize),
    #[error("bill has no header line")]
    NoHeader,
    #[error("bill header lacks column {0}")]
    MissingColumn(&'static str),
    #[error("bill line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("bill is truncated: it ends at line {0} without the summary (总交易单数) row")]
    Truncated(usize),
    #[error("bill summary at line {line} does not add up: {reason}")]
    Summary { line: usize, reason: String },
    #[error("reading the bill: {0}")]
    Io(String),
    #[error("{0}")]
    Stopped(String),
}

impl From<BillError> for channel_kit::ChannelError {
    fn from(e: BillError) -> Self {
        match e {
            BillError::Stopped(m) => channel_kit::ChannelError::Unavailable(m),
            BillError::Io(m) => channel_kit::ChannelError::Internal(m),
            other => channel_kit::ChannelError::BadStatement(other.to_string()),
        }
    }
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

/// Parses a bill as a stream, line by line, handing each statement line to `emit` as soon as it
/// is read; checks the summary row against the rows read (count, 应结订单总金额, 退款总金额) and
/// that nothing but blank lines follows it. Returns the totals.
///
/// # Errors
/// [`BillError`] naming the line for a file that is not a trade bill, a row that does not read
/// exactly (or has another number of fields than the header), a missing or wrong summary.
pub fn parse_trade_bill<R: std::io::BufRead>(
    mut reader: R,
    mut emit: impl FnMut(pb::StatementLine) -> Result<(), channel_kit::statement::Gone>,
) -> Result<pb::StatementTotals, BillError> {
    let mut raw = Vec::new();
    let mut number = 0usize;
    // The next non-blank line, trimmed of its line end (and of a BOM on the first line).
    let mut next_line = |raw: &mut Vec<u8>| -> Result<Option<(usize, String)>, BillError> {
        loop {
            raw.clear();
            if reader
                .read_until(b'\n', raw)
                .map_err(|e| BillError::Io(e.to_string()))?
                == 0
            {
                return Ok(None);
            }
            number += 1;
            let text = std::str::from_utf8(raw).map_err(|_| BillError::Utf8(number))?;
            let text = text.trim_end_matches(['\r', '\n']);
            let text = if number == 1 {
                text.strip_prefix('\u{feff}').unwrap_or(text)
            } else {
                text
            };
            if !text.trim().is_empty() {
                return Ok(Some((number, text.to_owned())));
            }
        }
    };
    let header: Vec<String> = match next_line(&mut raw)? {
        Some((_, l)) => l.split(',').map(|h| h.trim().to_owned()).collect(),
        None => return Err(BillError::NoHeader),
    };
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let cols = Columns::find(&header_refs)?;
    let settle_col = header_refs.iter().position(|h| *h == "应结订单金额");
    let mut tally = channel_kit::statement::Tally::default();
    let mut settled_sum = 0i64;
    let mut last = 1usize;
    let summary = loop {
        let Some((index, line)) = next_line(&mut raw)? else {
            return Err(BillError::Truncated(last));
        };
        last = index;
        // The summary block (header without backticks, then one totals row) ends the details.
        if line.starts_with("总交易单数") {
            let Some((row_index, row)) = next_line(&mut raw)? else {
                return Err(BillError::Truncated(index));
            };
            break (row_index, row);
        }
        let row = split_row(&line);
        let bad = |reason: String| BillError::Line {
            line: index,
            reason,
        };
        if row.len() != header.len() {
            return Err(bad(format!(
                "{} fields, the header has {}",
                row.len(),
                header.len()
            )));
        }
        let field = |i: usize| row.get(i).copied().unwrap_or("");
        let at = parse_beijing(field(cols.time))
            .ok_or_else(|| bad(format!("bad 交易时间 {:?}", field(cols.time))))?;
        let currency = match field(cols.currency) {
            "" => "CNY",
            c => c,
        };
        if let Some(c) = settle_col {
            settled_sum +=
                parse_bill_yuan(field(c)).map_err(|e| bad(format!("应结订单金额: {e}")))?;
        }
        let out_refund_no = cols.out_refund_no.map(field).unwrap_or("");
        let state = field(cols.trade_state);
        if field(cols.out_trade_no).is_empty() {
            return Err(bad("empty 商户订单号".to_owned()));
        }
        let mut line = pb::StatementLine {
            out_trade_no: field(cols.out_trade_no).to_owned(),
            channel_trade_no: field(cols.transaction_id).to_owned(),
            at: Some(channel_kit::time::timestamp(at)),
            source_line: index as u64,
            ..Default::default()
        };
        if state == "REFUND" && !out_refund_no.is_empty() {
            let amount_col = cols
                .refund_amount
                .ok_or(BillError::MissingColumn("退款金额"))?;
            let amount =
                parse_bill_yuan(field(amount_col)).map_err(|e| bad(format!("退款金额: {e}")))?;
            line.out_refund_no = out_refund_no.to_owned();
            line.refund_state = refund_state(cols.refund_state.map(field).unwrap_or("")) as i32;
            line.amount = Some(pb::Money {
                amount_minor: amount,
                currency: currency.to_owned(),
            });
        } else {
            let amount = parse_bill_yuan(field(cols.order_amount))
                .map_err(|e| bad(format!("订单金额: {e}")))?;
            line.trade_state = crate::adapter::trade_state(state) as i32;
            line.amount = Some(pb::Money {
                amount_minor: amount,
                currency: currency.to_owned(),
            });
        }
        tally.add(&line);
        emit(line).map_err(|e| BillError::Stopped(e.to_string()))?;
    };
    let (summary_line, summary_text) = summary;
    let values = split_row(&summary_text);
    let bad = |reason: String| BillError::Summary {
        line: summary_line,
        reason,
    };
    if values.len() < 3 {
        return Err(bad(format!("{} fields, expected 7", values.len())));
    }
    let count: u64 = values[0]
        .parse()
        .map_err(|_| bad(format!("总交易单数 {:?} is not a number", values[0])))?;
    let settled = parse_bill_yuan(values[1]).map_err(|e| bad(format!("应结订单总金额: {e}")))?;
    let refunded = parse_bill_yuan(values[2]).map_err(|e| bad(format!("退款总金额: {e}")))?;
    if count != tally.lines {
        return Err(bad(format!(
            "总交易单数 is {count}, the bill has {} rows",
            tally.lines
        )));
    }
    if settle_col.is_some() && settled != settled_sum {
        return Err(bad(format!(
            "应结订单总金额 is {} fen, the rows add up to {settled_sum}",
            settled
        )));
    }
    if cols.refund_amount.is_some() && refunded != tally.refund_minor {
        return Err(bad(format!(
            "退款总金额 is {refunded} fen, the refund rows add up to {}",
            tally.refund_minor
        )));
    }
    if let Some((index, _)) = next_line(&mut raw)? {
        return Err(BillError::Line {
            line: index,
            reason: "text after the summary row".to_owned(),
        });
    }
    Ok(tally.totals(
        "CNY",
        format!("总交易单数,应结订单总金额,退款总金额… {summary_text}"),
    ))
}

/// Parses a whole bill in memory (tests and tools).
///
/// # Errors
/// As [`parse_trade_bill`].
pub fn parse_trade_bill_bytes(
    file: &[u8],
) -> Result<(Vec<pb::StatementLine>, pb::StatementTotals), BillError> {
    let mut lines = Vec::new();
    let totals = parse_trade_bill(file, |l| {
        lines.push(l);
        Ok(())
    })?;
    Ok((lines, totals))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const ALL_BILL: &str = "\u{feff}交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n\
`2021-01-28 17:07:11,`wx81be3101902f7cb2,`1601959334,`0,`,`4200000925202101284997714292,`S20210128170702357723,`ofyak5qR_1wYsC99CsWA6R9MJazA,`NATIVE,`SUCCESS,`OTHERS,`CNY,`0.01,`0.00,`0,`0,`0.00,`0.00,`,`,`for testing,`cipher code,`0.00000,`1.00%,`0.01,`0.00,`\r\n\
`2021-01-29 10:00:00,`wx81be3101902f7cb2,`1601959334,`0,`,`4200000925202101284997714292,`S20210128170702357723,`ofyak5qR_1wYsC99CsWA6R9MJazA,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50000000382019052709732678859,`R1,`0.01,`0.00,`ORIGINAL,`SUCCESS,`for testing,`cipher code,`-0.00000,`1.00%,`0.01,`0.01,`\r\n\
总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n\
`2,`0.01,`0.01,`0.00,`0.00000,`0.01,`0.01\r\n";

    #[test]
    fn an_all_bill_parses_payments_and_refunds_in_fen() {
        let (lines, totals) = parse_trade_bill_bytes(ALL_BILL.as_bytes()).unwrap();
        assert_eq!(totals.line_count, 2);
        assert_eq!(totals.payment_count, 1);
        assert_eq!(totals.refund_count, 1);
        assert_eq!(lines[0].source_line, 2);
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
            parse_trade_bill_bytes("a,b,c\n".as_bytes()),
            Err(BillError::MissingColumn("交易时间"))
        );
    }
}

/// The parser on a bill in WeChat's real layout (`tests/fixtures/statements/tradebill_ALL_2021-01-28.csv`: BOM,
/// CRLF, backtick fields, a payment, a JSAPI payment with a Chinese subject, a refund, the
/// summary block) and on broken copies of it.
#[cfg(test)]
mod fixture_tests {
    use super::*;

    const FIXTURE: &[u8] =
        include_bytes!("../tests/fixtures/statements/tradebill_ALL_2021-01-28.csv");

    fn text() -> String {
        String::from_utf8(FIXTURE.to_vec()).unwrap()
    }

    fn message(bill: &[u8]) -> String {
        parse_trade_bill_bytes(bill).unwrap_err().to_string()
    }

    #[test]
    fn the_fixture_parses_with_its_summary_checked() {
        let (lines, totals) = parse_trade_bill_bytes(FIXTURE).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].out_trade_no, "S20210128183000000001");
        assert_eq!(lines[1].amount.as_ref().unwrap().amount_minor, 8888);
        assert_eq!(lines[1].source_line, 3);
        assert_eq!(lines[2].out_refund_no, "R20210128000001");
        assert_eq!(totals.line_count, 3);
        assert_eq!(totals.payment_count, 2);
        assert_eq!(totals.payment_amount.unwrap().amount_minor, 8889);
        assert_eq!(totals.refund_count, 1);
        assert_eq!(totals.refund_amount.unwrap().amount_minor, 1);
        assert!(totals.platform_summary.contains("`3,`88.89"));
    }

    #[test]
    fn a_truncated_bill_is_refused() {
        // Cut inside the last detail row: the summary never comes.
        let cut = text().find("总交易单数").unwrap() - 40;
        let m = message(&FIXTURE[..cut]);
        assert!(m.contains("line 4"), "{m}");
        // Cut after the summary header: no totals row.
        let cut = text().find("`3,`88.89").unwrap();
        let m = message(&FIXTURE[..cut]);
        assert!(m.contains("truncated"), "{m}");
    }

    #[test]
    fn bad_encoding_is_refused_naming_the_line() {
        let mut bill = FIXTURE.to_vec();
        let at = text().find("咖啡").unwrap();
        bill[at] = 0xFF;
        assert_eq!(message(&bill), "bill line 3 is not UTF-8");
    }

    #[test]
    fn a_row_with_a_missing_column_is_refused_naming_the_line() {
        let bill = text().replacen("`CMB_DEBIT,", "", 1);
        let m = message(bill.as_bytes());
        assert_eq!(m, "bill line 3: 26 fields, the header has 27");
    }

    #[test]
    fn a_summary_that_does_not_add_up_is_refused_naming_its_line() {
        let m = message(text().replace("`3,`88.89", "`4,`88.89").as_bytes());
        assert!(
            m.contains("summary at line 6") && m.contains("总交易单数 is 4"),
            "{m}"
        );
        let m = message(text().replace("`3,`88.89", "`3,`88.90").as_bytes());
        assert!(m.contains("应结订单总金额 is 8890 fen"), "{m}");
        let m = message(
            text()
                .replace("`0.01,`0.00,`0.53000", "`0.02,`0.00,`0.53000")
                .as_bytes(),
        );
        assert!(m.contains("退款总金额 is 2 fen"), "{m}");
    }

    #[test]
    fn a_bad_amount_names_its_line_and_column() {
        let m = message(text().replacen("`88.88,", "`88.8x,", 1).as_bytes());
        assert!(m.starts_with("bill line 3: 应结订单金额"), "{m}");
    }

    proptest::proptest! {
        /// Mutations of a valid bill (see `adapter::tests::fuzz` for the style): every line
        /// past the header reaches the column and amount parsers.
        #[test]
        fn fuzz_wechat_trade_bill_mutations(
            at in proptest::prelude::any::<usize>(),
            cut in 0usize..16,
            with in "[`, 0-9.\\-]{0,8}|\\r?\\n|[ -~]{0,6}",
        ) {
            let mut bytes = super::tests::ALL_BILL.as_bytes().to_vec();
            let at = at % (bytes.len() + 1);
            let end = (at + cut).min(bytes.len());
            bytes.splice(at..end, with.bytes());
            let _ = parse_trade_bill_bytes(&bytes);
        }
    }
}
