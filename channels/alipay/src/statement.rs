//! The trade bill (`bill_type=trade`) as statement lines. Alipay serves a ZIP holding a detail CSV
//! and a summary CSV, GBK-encoded, with `#` banner lines around the table; amounts are yuan strings
//! read with the crate's one conversion ([`crate::wire::parse_yuan`]).
use std::io::{BufRead, Read, Seek};

use channel_kit::pb;
use channel_kit::statement::{Gone, Tally};
use chrono::{NaiveDateTime, TimeZone as _, Utc};

use crate::wire::{BEIJING, parse_yuan};

/// A bill that cannot be read; reconciliation must not run on a guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillError {
    #[error("bill archive is unreadable: {0}")]
    Archive(String),
    #[error("bill line {0} is neither UTF-8 nor GBK text")]
    Encoding(usize),
    #[error("no detail table (header starting with 支付宝交易号) in the bill")]
    NoDetail,
    #[error("bill header lacks column {0}")]
    MissingColumn(&'static str),
    #[error("bill line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error(
        "bill is truncated: the detail ends at line {0} without 业务明细列表结束 and its 合计 footer"
    )]
    Truncated(usize),
    #[error("bill footer at line {line} does not add up: {reason}")]
    Summary { line: usize, reason: String },
    #[error("{0}")]
    Stopped(String),
}

impl From<BillError> for channel_kit::ChannelError {
    fn from(e: BillError) -> Self {
        match e {
            BillError::Stopped(m) => channel_kit::ChannelError::Unavailable(m),
            other => channel_kit::ChannelError::BadStatement(other.to_string()),
        }
    }
}

/// UTF-8 when it is (a BOM is dropped), else GBK, which is what Alipay writes.
fn decode_line(bytes: &[u8], line: usize) -> Result<String, BillError> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(text.strip_prefix('\u{feff}').unwrap_or(text).to_owned());
    }
    // GBK trail bytes are 0x40..=0xFE, so a 0x0A byte always ends a line.
    let (text, had_errors) = encoding_rs::GBK.decode_without_bom_handling(bytes);
    if had_errors {
        return Err(BillError::Encoding(line));
    }
    Ok(text.into_owned())
}

/// Reads lines one at a time, counting them.
struct Lines<R> {
    reader: R,
    raw: Vec<u8>,
    number: usize,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R) -> Self {
        Self {
            reader,
            raw: Vec::new(),
            number: 0,
        }
    }

    fn next(&mut self) -> Result<Option<(usize, String)>, BillError> {
        self.raw.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.raw)
            .map_err(|e| BillError::Archive(format!("reading after line {}: {e}", self.number)))?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        decode_line(&self.raw, self.number).map(|t| Some((self.number, t)))
    }
}

/// The number (or yuan amount) that follows `marker` in a footer line, up to `end`.
fn after<'a>(line: &'a str, marker: &str, end: char) -> Option<&'a str> {
    let rest = &line[line.find(marker)? + marker.len()..];
    Some(rest[..rest.find(end)?].trim())
}

/// What the detail's footer says: `#交易合计：N笔，商家实收共X元` and `#退款合计：N笔，商家实收共-X元`
/// (on one line or two).
#[derive(Default)]
struct Footer {
    end_marker: bool,
    payments: Option<(usize, u64, Option<i64>)>,
    refunds: Option<(usize, u64, Option<i64>)>,
    text: Vec<String>,
}

impl Footer {
    fn read(&mut self, index: usize, line: &str) -> Result<(), BillError> {
        if line.contains("业务明细列表结束") {
            self.end_marker = true;
            return Ok(());
        }
        let bad = |reason: String| BillError::Summary {
            line: index,
            reason,
        };
        for (marker, slot) in [
            ("交易合计：", &mut self.payments),
            ("退款合计：", &mut self.refunds),
        ] {
            let Some(count) = after(line, marker, '笔') else {
                continue;
            };
            let count: u64 = count
                .parse()
                .map_err(|_| bad(format!("{marker} {count:?} is not a number")))?;
            // The amount belongs to this marker when it comes before the next marker.
            let tail = &line[line.find(marker).unwrap_or(0)..];
            let tail = match tail[marker.len()..].find("合计：") {
                Some(n) => &tail[..marker.len() + n],
                None => tail,
            };
            let amount = match after(tail, "商家实收共", '元') {
                Some(text) => Some(
                    parse_signed_yuan(text).map_err(|e| bad(format!("{marker} 商家实收 {e}")))?,
                ),
                None => None,
            };
            *slot = Some((index, count, amount));
        }
        if self.end_marker {
            self.text.push(line.to_owned());
        }
        Ok(())
    }
}

fn parse_signed_yuan(text: &str) -> Result<i64, String> {
    match text.strip_prefix('-') {
        Some(t) => parse_yuan(t).map(|f| -f).map_err(|e| e.to_string()),
        None => parse_yuan(text).map_err(|e| e.to_string()),
    }
}

/// Parses one CSV entry as a stream. `Ok(None)` when the entry is not the detail table (its first
/// non-comment line is another header, e.g. the summary CSV).
fn parse_detail<R: BufRead>(
    reader: R,
    emit: &mut dyn FnMut(pb::StatementLine) -> Result<(), Gone>,
) -> Result<Option<pb::StatementTotals>, BillError> {
    let mut lines = Lines::new(reader);
    let header: Vec<String> = loop {
        match lines.next()? {
            Some((_, l)) if l.trim().is_empty() || l.trim_start().starts_with('#') => continue,
            Some((_, l)) if l.trim_start().starts_with("支付宝交易号") => {
                break l.split(',').map(|h| h.trim().to_owned()).collect();
            }
            Some(_) | None => return Ok(None),
        }
    };
    // Amount headers end in a full-width "（元）"; match on the name before it.
    let column = |name: &'static str| {
        header
            .iter()
            .position(|h| h == name || h.starts_with(&format!("{name}（")))
            .ok_or(BillError::MissingColumn(name))
    };
    let trade_no = column("支付宝交易号")?;
    let out_trade_no = column("商户订单号")?;
    let kind = column("业务类型")?;
    let finished = column("完成时间")?;
    let amount = column("订单金额")?;
    let received = column("商家实收")?;
    let request_no = column("退款批次号/请求号")?;
    let mut tally = Tally::default();
    let (mut received_payments, mut received_refunds) = (0i64, 0i64);
    let mut footer = Footer::default();
    let mut last = lines.number;
    while let Some((index, line)) = lines.next()? {
        last = index;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with('#') {
            footer.read(index, trimmed)?;
            continue;
        }
        let bad = |reason: String| BillError::Line {
            line: index,
            reason,
        };
        if footer.end_marker {
            return Err(bad("a detail row after 业务明细列表结束".to_owned()));
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != header.len() {
            return Err(bad(format!(
                "{} fields, the header has {}",
                fields.len(),
                header.len()
            )));
        }
        let field = |i: usize| fields.get(i).copied().unwrap_or("");
        let is_refund = match field(kind) {
            "交易" => false,
            "退款" => true,
            // Other business types (e.g. fee adjustments) are not attempts or refunds.
            _ => continue,
        };
        if field(out_trade_no).is_empty() {
            return Err(bad("empty 商户订单号".to_owned()));
        }
        // Refund rows carry negative amounts; the sign is what the business type already says.
        let text = field(amount);
        let fen = parse_yuan(text.strip_prefix('-').unwrap_or(text))
            .map_err(|e| bad(format!("订单金额: {e}")))?;
        let got = parse_signed_yuan(field(received)).map_err(|e| bad(format!("商家实收: {e}")))?;
        let at = NaiveDateTime::parse_from_str(field(finished), "%Y-%m-%d %H:%M:%S")
            .ok()
            .and_then(|t| BEIJING.from_local_datetime(&t).single())
            .map(|t| channel_kit::time::timestamp(t.with_timezone(&Utc)))
            .ok_or_else(|| bad(format!("bad 完成时间 {:?}", field(finished))))?;
        let mut line = pb::StatementLine {
            out_trade_no: field(out_trade_no).to_owned(),
            channel_trade_no: field(trade_no).to_owned(),
            amount: Some(pb::Money {
                amount_minor: fen,
                currency: "CNY".to_owned(),
            }),
            at: Some(at),
            source_line: index as u64,
            ..Default::default()
        };
        if is_refund {
            if field(request_no).is_empty() {
                return Err(bad("a refund row without 退款批次号/请求号".to_owned()));
            }
            line.out_refund_no = field(request_no).to_owned();
            line.refund_state = pb::RefundState::Succeeded as i32;
            received_refunds += got;
        } else {
            line.trade_state = pb::TradeState::Succeeded as i32;
            received_payments += got;
        }
        tally.add(&line);
        emit(line).map_err(|e| BillError::Stopped(e.to_string()))?;
    }
    let (Some(payments), Some(refunds), true) =
        (footer.payments, footer.refunds, footer.end_marker)
    else {
        return Err(BillError::Truncated(last));
    };
    for (what, (line, count, amount), counted, received) in [
        ("交易合计", payments, tally.payments, received_payments),
        ("退款合计", refunds, tally.refunds, received_refunds),
    ] {
        let bad = |reason: String| BillError::Summary { line, reason };
        if count != counted {
            return Err(bad(format!(
                "{what} says {count} rows, the bill has {counted}"
            )));
        }
        if let Some(amount) = amount
            && amount != received
        {
            return Err(bad(format!(
                "{what} says 商家实收 {amount} fen, the rows add up to {received}"
            )));
        }
    }
    Ok(Some(tally.totals("CNY", footer.text.join("\n"))))
}

/// Parses a bill as a stream: a ZIP (what Alipay serves: its entries are read one at a time as
/// streams, never extracted whole), or the detail CSV itself. Each statement line goes to `emit`
/// as soon as it is read; the footer's counts and sums are checked against the rows.
///
/// # Errors
/// [`BillError`] naming the line for a file that is not a trade bill, a row that does not read
/// exactly, a missing footer or one that does not add up, a bad archive.
pub fn parse_trade_bill<R: Read + Seek>(
    mut file: R,
    mut emit: impl FnMut(pb::StatementLine) -> Result<(), Gone>,
) -> Result<pb::StatementTotals, BillError> {
    let mut magic = [0u8; 2];
    let is_zip = file.read_exact(&mut magic).is_ok() && &magic == b"PK";
    file.rewind()
        .map_err(|e| BillError::Archive(e.to_string()))?;
    if !is_zip {
        return parse_detail(std::io::BufReader::new(file), &mut emit)?.ok_or(BillError::NoDetail);
    }
    let mut archive = zip::ZipArchive::new(file).map_err(|e| BillError::Archive(e.to_string()))?;
    for index in 0..archive.len() {
        let entry = archive
            .by_index(index)
            .map_err(|e| BillError::Archive(e.to_string()))?;
        // Entry names are GBK without the UTF-8 flag, so the content tells the files apart.
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let in_entry = |e: BillError| match e {
            BillError::Line { line, reason } => BillError::Line {
                line,
                reason: format!("{reason} (in {name})"),
            },
            other => other,
        };
        if let Some(totals) =
            parse_detail(std::io::BufReader::new(entry), &mut emit).map_err(in_entry)?
        {
            return Ok(totals);
        }
    }
    Err(BillError::NoDetail)
}

/// Parses a whole bill in memory (tests and tools).
///
/// # Errors
/// As [`parse_trade_bill`].
pub fn parse_trade_bill_bytes(
    file: &[u8],
) -> Result<(Vec<pb::StatementLine>, pb::StatementTotals), BillError> {
    let mut lines = Vec::new();
    let totals = parse_trade_bill(std::io::Cursor::new(file), |l| {
        lines.push(l);
        Ok(())
    })?;
    Ok((lines, totals))
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write as _};

    use super::*;

    const DETAIL: &str = "#支付宝业务明细查询\n#账号：[20880000000000000156]\n#起始日期：[2024年01月01日 00:00:00]   终止日期：[2024年01月02日 00:00:00]\n支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注\n2024010122001499160501589436\t,T20240101000001\t,交易,coffee,2024-01-01 11:59:50,2024-01-01 12:00:00,,,,,buyer@example.com,88.88,88.88,0.00,0.00,0.00,0.00,0.00,,0.00,0.00,,-0.53,0.00,\n2024010122001499160501589436\t,T20240101000001\t,退款,coffee,2024-01-01 13:00:00,2024-01-01 13:00:01,,,,,buyer@example.com,-8.88,-8.88,0.00,0.00,0.00,0.00,0.00,,0.00,0.00,R20240101000001\t,0.05,0.00,\n#-----------------------------------------业务明细列表结束------------------------------------\n#交易合计：1笔，退款合计：1笔\n";

    fn parse(file: &[u8]) -> Result<Vec<pb::StatementLine>, BillError> {
        parse_trade_bill_bytes(file).map(|(lines, _)| lines)
    }

    fn zip_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in files {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn a_gbk_zip_bill_parses_payments_and_refunds_in_fen() {
        let (gbk, _, _) = encoding_rs::GBK.encode(DETAIL);
        let summary = encoding_rs::GBK
            .encode("#支付宝业务汇总查询\n门店编号,门店名称,交易订单总笔数\n")
            .0;
        let file = zip_of(&[
            (
                "20880000000000000156_20240101_summary.csv",
                summary.into_owned(),
            ),
            ("20880000000000000156_20240101_detail.csv", gbk.into_owned()),
        ]);
        let lines = parse(&file).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].out_trade_no, "T20240101000001");
        assert_eq!(lines[0].channel_trade_no, "2024010122001499160501589436");
        assert_eq!(lines[0].trade_state, pb::TradeState::Succeeded as i32);
        assert_eq!(lines[0].amount.as_ref().unwrap().amount_minor, 8888);
        assert_eq!(lines[0].at.as_ref().unwrap().seconds, 1_704_081_600);
        assert_eq!(lines[1].out_refund_no, "R20240101000001");
        assert_eq!(lines[1].refund_state, pb::RefundState::Succeeded as i32);
        assert_eq!(lines[1].amount.as_ref().unwrap().amount_minor, 888);
    }

    #[test]
    fn a_plain_csv_bill_parses_too_and_garbage_is_refused() {
        assert_eq!(parse(DETAIL.as_bytes()).unwrap().len(), 2);
        assert_eq!(parse(b"hello"), Err(BillError::NoDetail));
    }
}

/// The parser on a bill in Alipay's real layout (`tests/fixtures/statements/20880000000000000156_20240101.csv.zip`,
/// made by `tests/fixtures/statements/make_fixture.py`: deflated entries with GBK names and no UTF-8 flag, GBK
/// CSVs, `#` banners, tab-padded ids, the 合计 footer) and on broken copies of it.
#[cfg(test)]
mod fixture_tests {
    use std::io::{Cursor, Write as _};

    use super::*;

    const FIXTURE: &[u8] =
        include_bytes!("../tests/fixtures/statements/20880000000000000156_20240101.csv.zip");

    /// The detail CSV of the fixture, decoded.
    fn detail() -> String {
        let mut archive = zip::ZipArchive::new(Cursor::new(FIXTURE)).unwrap();
        let mut bytes = Vec::new();
        archive
            .by_index(0)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        encoding_rs::GBK.decode(&bytes).0.into_owned()
    }

    fn gbk(text: &str) -> Vec<u8> {
        encoding_rs::GBK.encode(text).0.into_owned()
    }

    fn message(file: &[u8]) -> String {
        parse_trade_bill_bytes(file).unwrap_err().to_string()
    }

    #[test]
    fn the_fixture_zip_parses_with_its_footer_checked() {
        let (lines, totals) = parse_trade_bill_bytes(FIXTURE).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].out_trade_no, "T20240101000001");
        assert_eq!(lines[0].source_line, 6);
        assert_eq!(lines[1].amount.as_ref().unwrap().amount_minor, 1200);
        assert_eq!(lines[2].out_refund_no, "R20240101000001");
        assert_eq!(lines[2].amount.as_ref().unwrap().amount_minor, 888);
        assert_eq!(totals.payment_count, 2);
        assert_eq!(totals.payment_amount.unwrap().amount_minor, 10_088);
        assert_eq!(totals.refund_count, 1);
        assert_eq!(totals.refund_amount.unwrap().amount_minor, 888);
        assert!(
            totals.platform_summary.contains("交易合计：2笔"),
            "{}",
            totals.platform_summary
        );
    }

    #[test]
    fn a_truncated_or_corrupted_archive_is_refused() {
        let m = message(&FIXTURE[..FIXTURE.len() - 30]);
        assert!(m.starts_with("bill archive is unreadable"), "{m}");
        // Flip a byte inside the first entry's deflated data: inflate or the CRC fails.
        let mut bad = FIXTURE.to_vec();
        bad[120] ^= 0x55;
        assert!(parse_trade_bill_bytes(&bad).is_err());
    }

    #[test]
    fn a_detail_cut_before_its_footer_is_truncated() {
        let text = detail();
        let cut = text
            .find("#-----------------------------------------业务明细列表结束")
            .unwrap();
        let m = message(&gbk(&text[..cut]));
        assert!(m.contains("truncated") && m.contains("line 8"), "{m}");
    }

    #[test]
    fn bad_gbk_is_refused_naming_the_line() {
        let mut bytes = gbk(&detail());
        let at = bytes
            .windows(4)
            .position(|w| w == gbk("美式").as_slice())
            .unwrap();
        bytes[at] = 0xFF;
        assert_eq!(message(&bytes), "bill line 7 is neither UTF-8 nor GBK text");
    }

    #[test]
    fn a_row_with_a_missing_column_is_refused_naming_the_line() {
        let text = detail().replacen(",138****0000,", ",", 1);
        assert_eq!(
            message(&gbk(&text)),
            "bill line 7: 24 fields, the header has 25"
        );
    }

    #[test]
    fn a_footer_that_does_not_add_up_is_refused_naming_its_line() {
        let m = message(&gbk(&detail().replace("交易合计：2笔", "交易合计：3笔")));
        assert!(
            m.contains("footer at line 10") && m.contains("says 3 rows"),
            "{m}"
        );
        let m = message(&gbk(&detail().replace("共-8.88元", "共-9.88元")));
        assert!(m.contains("footer at line 11") && m.contains("-988"), "{m}");
    }

    #[test]
    fn the_same_bill_zipped_by_the_zip_crate_with_utf8_names_parses() {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        writer
            .start_file("x_业务明细.csv", zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(&gbk(&detail())).unwrap();
        let zip = writer.finish().unwrap().into_inner();
        assert_eq!(parse_trade_bill_bytes(&zip).unwrap().0.len(), 3);
    }
}
