//! The reconciliation file of the file transfer (`txnType=76`, `fileType=00`): a ZIP holding the
//! ZM entry `INN<yyMMdd>88ZM_<merId>` (fixed-width lines, 41 fields one space apart, 607 bytes,
//! CRLF), an empty ZME entry and an RD summary report, zlib-compressed and Base64-encoded into
//! `fileContent`. The ZIP is written as a stream into a temp file.
//!
//! ASSUMPTIONS (not in the notes): refunds carry 交易代码 `S30` (consumes `S56`, as in the
//! sample); the settlement day is the Beijing calendar day of the payment or refund (the real
//! cut-off is 23:00 the day before); 商户自定义域 (field 35) echoes `reqReserved`.

use std::io::{Read, Seek, SeekFrom, Write};

use base64::Engine as _;
use chrono::NaiveDate;

use crate::ledger::{RefundState, Trade};
use crate::statements::{BillLine, DayStatement, LineKind, StoredZipWriter, beijing_day};

const ZM_WIDTHS: [usize; 41] = [
    3, 11, 11, 6, 10, 19, 12, 4, 2, 21, 2, 32, 2, 6, 10, 13, 13, 4, 15, 2, 2, 6, 2, 4, 32, 1, 21,
    15, 1, 15, 32, 13, 13, 8, 32, 13, 13, 12, 2, 1, 131,
];

/// The ledger's lines of `date`: consumes by payment time, succeeded refunds by settlement time.
pub fn ledger_lines(trades: &[&Trade], date: NaiveDate) -> Vec<BillLine> {
    let mut out = Vec::new();
    for trade in trades {
        if let Some(paid_at) = trade.paid_at.filter(|p| beijing_day(*p) == date) {
            out.push(BillLine {
                kind: LineKind::Payment,
                out_trade_no: trade.out_trade_no.clone(),
                channel_trade_no: trade.channel_trade_no.clone(),
                amount_minor: trade.amount_minor,
                trade_amount_minor: trade.amount_minor,
                at: paid_at,
                created_at: trade.created_at,
                extra: trade.extra.clone(),
                ..Default::default()
            });
        }
        for refund in trade.refunds.iter().filter(|r| {
            r.state == RefundState::Succeeded
                && beijing_day(r.settled_at.unwrap_or(r.created_at)) == date
        }) {
            out.push(BillLine {
                kind: LineKind::Refund,
                out_trade_no: trade.out_trade_no.clone(),
                channel_trade_no: trade.channel_trade_no.clone(),
                out_refund_no: refund.out_refund_no.clone(),
                channel_refund_no: refund.channel_refund_no.clone(),
                amount_minor: refund.amount_minor,
                trade_amount_minor: trade.amount_minor,
                at: refund.settled_at.unwrap_or(refund.created_at),
                created_at: refund.created_at,
                extra: refund.extra.clone(),
                ..Default::default()
            });
        }
    }
    out
}

fn zm_line(line: &BillLine, mer_id: &str) -> Vec<u8> {
    let time = match line.extra.get("txnTime") {
        Some(t) if t.len() == 14 => t[4..].to_owned(),
        _ => (line.at + chrono::Duration::hours(8))
            .format("%m%d%H%M%S")
            .to_string(),
    };
    let (code, order_id, query_id, txn_type, orig, reserved) = match line.kind {
        LineKind::Payment => (
            "S56",
            line.out_trade_no.as_str(),
            line.channel_trade_no.as_str(),
            "01",
            "",
            line.extra.get("reqReserved").map_or("", String::as_str),
        ),
        LineKind::Refund => (
            "S30",
            line.out_refund_no.as_str(),
            line.channel_refund_no.as_str(),
            "04",
            line.channel_trade_no.as_str(),
            line.extra
                .get("reqReserved")
                .filter(|r| !r.is_empty())
                .map_or(line.out_trade_no.as_str(), String::as_str),
        ),
    };
    let amount = format!("{:012}", line.amount_minor);
    let fields: [(usize, &str); 12] = [
        (1, code),
        (2, "88022900"),
        (3, "00049993"),
        (5, &time),
        (7, &amount),
        (10, query_id),
        (12, order_id),
        (20, txn_type),
        (22, "000201"),
        (27, orig),
        (28, mer_id),
        (35, reserved),
    ];
    let mut values: Vec<String> = ZM_WIDTHS.iter().map(|w| " ".repeat(*w)).collect();
    for (n, value) in fields {
        let width = ZM_WIDTHS[n - 1];
        let value: String = value.chars().take(width).collect();
        values[n - 1] = format!("{value:<width$}");
    }
    values[39] = "7".to_owned();
    let mut out = values.join(" ").into_bytes();
    out.extend_from_slice(b"\r\n");
    out
}

/// The file name the answer gives (`fileName`).
pub fn file_name(mer_id: &str, date: NaiveDate) -> String {
    format!("{mer_id}_{}.zip", date.format("%Y%m%d"))
}

/// Writes the ZIP of `statement` into a temp file and returns `fileContent` (Base64 of the
/// zlib-compressed ZIP).
///
/// # Errors
/// I/O errors.
pub fn file_content(mer_id: &str, statement: &DayStatement) -> std::io::Result<String> {
    let yymmdd = statement.day.format("%y%m%d").to_string();
    let file = tempfile::tempfile()?;
    let mut zip = StoredZipWriter::new(std::io::BufWriter::new(file));
    zip.start_entry(format!("INN{yymmdd}88ZM_{mer_id}").as_bytes())?;
    let (mut count, mut credit, mut refunds, mut debit) = (0u64, 0u64, 0u64, 0u64);
    let mut last: Option<Vec<u8>> = None;
    statement.for_each(|line| {
        if let Some(previous) = last.replace(zm_line(line, mer_id)) {
            zip.write_all(&previous)?;
        }
        match line.kind {
            LineKind::Payment => {
                count += 1;
                credit += line.amount_minor;
            }
            LineKind::Refund => {
                refunds += 1;
                debit += line.amount_minor;
            }
        }
        Ok::<(), std::io::Error>(())
    })?;
    if let Some(mut line) = last {
        if statement.corrupt_summary {
            // The ZM file has no summary to break: cut its last line short instead.
            line.truncate(300);
        }
        zip.write_all(&line)?;
    }
    zip.start_entry(format!("INN{yymmdd}88ZME_{mer_id}").as_bytes())?;
    zip.start_entry(format!("RD{yymmdd}01_{mer_id}").as_bytes())?;
    let report = format!(
        "全渠道商户交易汇总表\r\n清算日期：{}\r\n自助消费 {count} 笔 贷 {}.{:02}\r\n退货 {refunds} 笔 借 {}.{:02}\r\n",
        statement.day.format("%Y%m%d"),
        credit / 100,
        credit % 100,
        debit / 100,
        debit % 100
    );
    zip.write_all(&encoding_rs::GBK.encode(&report).0)?;
    let mut file = zip.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.seek(SeekFrom::Start(0))?;
    let mut z = flate2::read::ZlibEncoder::new(file, flate2::Compression::default());
    let mut deflated = Vec::new();
    z.read_to_end(&mut deflated)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(deflated))
}
