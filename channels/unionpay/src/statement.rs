//! The reconciliation file (`txnType=76`, `fileType=00`): `fileContent` is Base64 of a
//! zlib-compressed ZIP whose `…ZM_<merId>` entry lists the day's transactions in fixed-width GBK
//! lines (41 fields, one space apart). Only ASCII fields are read, by byte offset, so the GBK
//! text fields never need decoding.
use std::collections::BTreeMap;
use std::io::{Cursor, Read as _};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use channel_kit::pb;
use chrono::{Datelike as _, NaiveDate, NaiveDateTime, TimeZone as _, Utc};

use crate::signature::{SIGN_METHOD_RSA, VERSION};
use crate::wire::format_txn_time;

/// Widths of the 41 ZM fields, from the official demo (`Form_6_6_FileTransfer.php`).
const ZM_WIDTHS: [usize; 41] = [
    3, 11, 11, 6, 10, 19, 12, 4, 2, 21, 2, 32, 2, 6, 10, 13, 13, 4, 15, 2, 2, 6, 2, 4, 32, 1, 21,
    15, 1, 15, 32, 13, 13, 8, 32, 13, 13, 12, 2, 1, 131,
];

/// 1-based field numbers read here.
const F_TIME: usize = 5;
const F_AMOUNT: usize = 7;
const F_QUERY_ID: usize = 10;
const F_ORDER_ID: usize = 12;
const F_TXN_TYPE: usize = 20;
const F_ORIG_QUERY_ID: usize = 27;
const F_REQ_RESERVED: usize = 35;

/// A file that cannot be read; reconciliation must not run on a guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("fileContent is not Base64")]
    Base64,
    #[error("fileContent does not inflate: {0}")]
    Inflate(String),
    #[error("reconciliation archive is unreadable: {0}")]
    Archive(String),
    #[error("no ZM entry in the reconciliation archive")]
    NoDetail,
    #[error("ZM line {line}: {reason}")]
    Line { line: usize, reason: String },
}

/// The unsigned file-transfer request for the settlement day `day` (sent as `settleDate=MMDD`).
pub fn request_fields(
    mer_id: &str,
    day: NaiveDate,
    now: chrono::DateTime<Utc>,
) -> BTreeMap<String, String> {
    [
        ("version", VERSION.to_owned()),
        ("encoding", "utf-8".to_owned()),
        ("signMethod", SIGN_METHOD_RSA.to_owned()),
        ("txnType", "76".to_owned()),
        ("txnSubType", "01".to_owned()),
        ("bizType", "000000".to_owned()),
        ("accessType", "0".to_owned()),
        ("merId", mer_id.to_owned()),
        ("txnTime", format_txn_time(now)),
        ("settleDate", day.format("%m%d").to_string()),
        ("fileType", "00".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Base64 → zlib inflate → ZIP bytes.
///
/// # Errors
/// [`FileError::Base64`] or [`FileError::Inflate`].
pub fn decode_file_content(file_content: &str) -> Result<Vec<u8>, FileError> {
    let compact: String = file_content.split_whitespace().collect();
    let deflated = BASE64.decode(compact).map_err(|_| FileError::Base64)?;
    let mut zip = Vec::new();
    flate2::read::ZlibDecoder::new(deflated.as_slice())
        .read_to_end(&mut zip)
        .map_err(|e| FileError::Inflate(e.to_string()))?;
    Ok(zip)
}

/// Field `n` (1-based) of a ZM line, trimmed; empty when the line is shorter.
fn zm_field(line: &[u8], n: usize) -> &str {
    let start: usize = ZM_WIDTHS[..n - 1].iter().sum::<usize>() + (n - 1);
    let end = (start + ZM_WIDTHS[n - 1]).min(line.len());
    line.get(start..end)
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::trim)
        .unwrap_or("")
}

/// `MMDDhhmmss` of a settlement day's file: the year is the settlement day's, or the one before
/// for a December transaction settled in January.
fn transaction_time(text: &str, day: NaiveDate) -> Option<prost_types::Timestamp> {
    let month: u32 = text.get(0..2)?.parse().ok()?;
    let year = if month > day.month() {
        day.year() - 1
    } else {
        day.year()
    };
    let naive = NaiveDateTime::parse_from_str(&format!("{year}{text}"), "%Y%m%d%H%M%S").ok()?;
    crate::adapter::BEIJING
        .from_local_datetime(&naive)
        .single()
        .map(|t| channel_kit::time::timestamp(t.with_timezone(&Utc)))
}

/// Parses the ZIP of one settlement day into statement lines: consumes (`01`) as payments,
/// refunds (`04`) as refunds; other transaction types (undo, pre-authorisation…) are not made by
/// this adapter and are skipped.
///
/// # Errors
/// [`FileError`] for an unreadable archive or a line whose ASCII fields do not read exactly.
pub fn parse_reconciliation_zip(
    zip_bytes: &[u8],
    day: NaiveDate,
) -> Result<Vec<pb::StatementLine>, FileError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(zip_bytes))
        .map_err(|e| FileError::Archive(e.to_string()))?;
    let mut detail = None;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| FileError::Archive(e.to_string()))?;
        // Names are ASCII (`INN…ZM_<merId>`); read raw so a GBK name elsewhere cannot fail this.
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        if name.contains("ZM_") && !name.contains("ZME_") {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| FileError::Archive(e.to_string()))?;
            detail = Some(bytes);
            break;
        }
    }
    let detail = detail.ok_or(FileError::NoDetail)?;
    let mut out = Vec::new();
    for (index, raw) in detail.split(|b| *b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |reason: String| FileError::Line {
            line: index + 1,
            reason,
        };
        let amount_text = zm_field(line, F_AMOUNT);
        if amount_text.is_empty() || !amount_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("交易金额 {amount_text:?} is not 12 digits")));
        }
        let amount: i64 = amount_text
            .parse()
            .map_err(|_| bad(format!("交易金额 {amount_text:?}")))?;
        let mut statement = pb::StatementLine {
            channel_trade_no: zm_field(line, F_QUERY_ID).to_owned(),
            amount: Some(pb::Money {
                amount_minor: amount,
                currency: "CNY".to_owned(),
            }),
            at: transaction_time(zm_field(line, F_TIME), day),
            ..Default::default()
        };
        match zm_field(line, F_TXN_TYPE) {
            "01" => {
                statement.out_trade_no = zm_field(line, F_ORDER_ID).to_owned();
                statement.trade_state = pb::TradeState::Succeeded as i32;
            }
            "04" => {
                // The refund's own orderId is the out_refund_no; the adapter sends the payment's
                // out_trade_no as reqReserved, which UnionPay echoes into this file.
                statement.out_refund_no = zm_field(line, F_ORDER_ID).to_owned();
                statement.out_trade_no = zm_field(line, F_REQ_RESERVED).to_owned();
                statement.channel_trade_no = zm_field(line, F_ORIG_QUERY_ID).to_owned();
                statement.refund_state = pb::RefundState::Succeeded as i32;
            }
            _ => continue,
        }
        out.push(statement);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn zm_line(fields: &[(usize, &str)]) -> Vec<u8> {
        let mut values: Vec<String> = ZM_WIDTHS.iter().map(|w| " ".repeat(*w)).collect();
        for (n, value) in fields {
            let width = ZM_WIDTHS[n - 1];
            values[n - 1] = format!("{value:<width$}");
        }
        values.join(" ").into_bytes()
    }

    fn file_content(entries: &[(&str, Vec<u8>)]) -> String {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in entries {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(bytes).unwrap();
        }
        let zip = writer.finish().unwrap().into_inner();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&zip).unwrap();
        BASE64.encode(z.finish().unwrap())
    }

    #[test]
    fn the_sample_line_layout_parses_payments_and_refunds() {
        let width: usize = ZM_WIDTHS.iter().sum::<usize>() + 40;
        assert_eq!(width, 607);
        let payment = zm_line(&[
            (1, "S56"),
            (5, "0906112203"),
            (7, "000000476800"),
            (10, "201509061122031906248"),
            (12, "10078087"),
            (20, "01"),
            (28, "802310048993424"),
        ]);
        assert_eq!(payment.len(), 607);
        let refund = zm_line(&[
            (5, "0907100000"),
            (7, "000000001000"),
            (10, "201509071000001906249"),
            (12, "R10078087"),
            (20, "04"),
            (27, "201509061122031906248"),
            (35, "10078087"),
        ]);
        let mut detail = payment;
        detail.extend_from_slice(b"\r\n");
        detail.extend_from_slice(&refund);
        detail.extend_from_slice(b"\r\n");
        let content = file_content(&[
            ("RD201015090501_802310048993424", b"summary".to_vec()),
            ("INN15090588ZM_802310048993424", detail),
        ]);
        let day = NaiveDate::from_ymd_opt(2015, 9, 7).unwrap();
        let lines = parse_reconciliation_zip(&decode_file_content(&content).unwrap(), day).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].out_trade_no, "10078087");
        assert_eq!(lines[0].channel_trade_no, "201509061122031906248");
        assert_eq!(lines[0].amount.as_ref().unwrap().amount_minor, 476_800);
        assert_eq!(lines[0].trade_state, pb::TradeState::Succeeded as i32);
        // 2015-09-06 11:22:03 Beijing.
        assert_eq!(lines[0].at.as_ref().unwrap().seconds, 1_441_509_723);
        assert_eq!(lines[1].out_refund_no, "R10078087");
        assert_eq!(lines[1].out_trade_no, "10078087");
        assert_eq!(lines[1].refund_state, pb::RefundState::Succeeded as i32);
    }

    #[test]
    fn december_transactions_in_a_january_file_belong_to_the_year_before() {
        let day = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
        let t = transaction_time("1231235959", day).unwrap();
        assert_eq!(t.seconds, 1_735_660_799);
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(decode_file_content("***"), Err(FileError::Base64));
        assert!(matches!(
            decode_file_content("aGVsbG8="),
            Err(FileError::Inflate(_))
        ));
    }
}
