//! The reconciliation file (`txnType=76`, `fileType=00`): `fileContent` is Base64 of a
//! zlib-compressed ZIP whose `…ZM_<merId>` entry lists the day's transactions in fixed-width GBK
//! lines (41 fields, one space apart). Only ASCII fields are read, by byte offset; every line is
//! checked to be GBK and exactly 607 bytes wide.
//!
//! Nothing is held whole: the answer is spooled to a temp file ([`SpooledAnswer`]), its
//! signature digest computed by streaming `fileContent` from there, then `fileContent` is
//! Base64-decoded and inflated as a stream into a second temp file (a ZIP needs seeking), whose
//! ZM entry is read line by line. The ZM file has no summary of its own; its completeness rests
//! on the zlib Adler-32, the ZIP CRC-32 and the fixed width.
use std::collections::BTreeMap;
use std::io::{BufRead as _, Read, Seek, SeekFrom, Write as _};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use channel_kit::pb;
use channel_kit::statement::{Gone, Tally};
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
    #[error("answer is not a form: {0}")]
    Answer(String),
    #[error("spooling the file: {0}")]
    Io(String),
    #[error("{0}")]
    Stopped(String),
}

impl From<FileError> for channel_kit::ChannelError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Stopped(m) => channel_kit::ChannelError::Unavailable(m),
            FileError::Io(m) => channel_kit::ChannelError::Internal(m),
            FileError::Answer(m) => channel_kit::ChannelError::BadResponse(m),
            other => channel_kit::ChannelError::BadStatement(other.to_string()),
        }
    }
}

fn io(e: std::io::Error) -> FileError {
    FileError::Io(e.to_string())
}

/// Largest answer field kept in memory (the certificate PEM is the largest besides
/// `fileContent`).
const MAX_FIELD: usize = 1 << 20;

/// A file-transfer answer spooled to disk: every field but `fileContent` in memory, and where
/// `fileContent` lies in the file.
pub struct SpooledAnswer {
    pub fields: BTreeMap<String, String>,
    content: Option<(u64, u64)>,
    file: std::fs::File,
}

impl SpooledAnswer {
    /// Scans an answer `k=v&…` (values raw, `{…}`/`[…]` values may hold `&`), keeping the fields
    /// and only the position of `fileContent`.
    ///
    /// # Errors
    /// [`FileError::Answer`] for a body that is not such a form.
    pub fn scan(mut file: std::fs::File) -> Result<Self, FileError> {
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut reader = std::io::BufReader::new(&mut file);
        let mut fields = BTreeMap::new();
        let mut content = None;
        let mut offset = 0u64;
        loop {
            let mut key = Vec::new();
            let n = reader.read_until(b'=', &mut key).map_err(io)?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            if key.last() != Some(&b'=') {
                // Trailing line end after the last field.
                if key.iter().all(u8::is_ascii_whitespace) {
                    break;
                }
                return Err(FileError::Answer(format!(
                    "a field without '=' at byte {offset}"
                )));
            }
            key.pop();
            let key = String::from_utf8(key).map_err(|_| {
                FileError::Answer(format!("a key that is not UTF-8 at byte {offset}"))
            })?;
            if key.is_empty() || key.contains('&') {
                return Err(FileError::Answer(format!(
                    "bad key {key:?} at byte {offset}"
                )));
            }
            if key == "fileContent" {
                // Base64 holds no '&': skip to the next one without keeping the value.
                let start = offset;
                let mut len = 0u64;
                loop {
                    let buf = reader.fill_buf().map_err(io)?;
                    if buf.is_empty() {
                        break;
                    }
                    match buf.iter().position(|b| *b == b'&') {
                        Some(i) => {
                            len += i as u64;
                            reader.consume(i + 1);
                            offset += i as u64 + 1;
                            break;
                        }
                        None => {
                            let l = buf.len();
                            len += l as u64;
                            offset += l as u64;
                            reader.consume(l);
                        }
                    }
                }
                // A final line end is not part of the value.
                content = Some((start, len));
                continue;
            }
            let mut value = Vec::new();
            let mut open: Option<(u8, u8, usize)> = None;
            let mut byte = [0u8; 1];
            loop {
                if reader.read(&mut byte).map_err(io)? == 0 {
                    break;
                }
                offset += 1;
                let c = byte[0];
                match open {
                    None if value.is_empty() && (c == b'{' || c == b'[') => {
                        open = Some((c, if c == b'{' { b'}' } else { b']' }, 1));
                    }
                    None if c == b'&' => break,
                    None => {}
                    Some((o, cl, depth)) => {
                        if c == o {
                            open = Some((o, cl, depth + 1));
                        } else if c == cl {
                            open = (depth > 1).then_some((o, cl, depth - 1));
                        }
                    }
                }
                value.push(c);
                if value.len() > MAX_FIELD {
                    return Err(FileError::Answer(format!(
                        "field {key} is larger than 1 MiB"
                    )));
                }
            }
            let value = String::from_utf8(value)
                .map_err(|_| FileError::Answer(format!("field {key} is not UTF-8")))?;
            let value = value.trim_end_matches(['\r', '\n']).to_owned();
            fields.insert(key, value);
        }
        drop(reader);
        let mut answer = Self {
            fields,
            content,
            file,
        };
        // Drop a trailing line end from fileContent when it was the last field.
        if let Some((start, len)) = answer.content {
            let mut trimmed = len;
            let mut byte = [0u8; 1];
            while trimmed > 0 {
                answer
                    .file
                    .seek(SeekFrom::Start(start + trimmed - 1))
                    .map_err(io)?;
                answer.file.read_exact(&mut byte).map_err(io)?;
                if byte[0] == b'\n' || byte[0] == b'\r' {
                    trimmed -= 1;
                } else {
                    break;
                }
            }
            answer.content = Some((start, trimmed));
        }
        Ok(answer)
    }

    pub fn has_content(&self) -> bool {
        self.content.is_some()
    }

    fn content(&mut self) -> Result<std::io::Take<&mut std::fs::File>, FileError> {
        let (start, len) = self.content.ok_or(FileError::NoDetail)?;
        self.file.seek(SeekFrom::Start(start)).map_err(io)?;
        Ok((&mut self.file).take(len))
    }

    /// Lower-case hex SHA-256 of the verification string (every field but `signature`, sorted,
    /// empty values kept), `fileContent` streamed from the file.
    ///
    /// # Errors
    /// [`FileError::Io`].
    pub fn verification_digest_hex(&mut self) -> Result<String, FileError> {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        let mut first = true;
        let mut keys: Vec<String> = self.fields.keys().cloned().collect();
        if self.content.is_some() {
            keys.push("fileContent".to_owned());
            keys.sort();
        }
        for key in keys {
            if key == "signature" {
                continue;
            }
            if !first {
                hasher.update(b"&");
            }
            first = false;
            hasher.update(key.as_bytes());
            hasher.update(b"=");
            if key == "fileContent" {
                let mut reader = self.content()?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = reader.read(&mut buf).map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
            } else if let Some(v) = self.fields.get(&key) {
                hasher.update(v.as_bytes());
            }
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Base64 → zlib inflate, streamed into an anonymous temp file (the ZIP), rewound.
    ///
    /// # Errors
    /// [`FileError::Base64`] or [`FileError::Inflate`].
    pub fn inflate_to_temp(&mut self) -> Result<std::fs::File, FileError> {
        let base64 = base64::read::DecoderReader::new(self.content()?, &BASE64);
        let mut inflate = flate2::read::ZlibDecoder::new(base64);
        let mut zip = tempfile::tempfile().map_err(io)?;
        {
            let mut out = std::io::BufWriter::new(&mut zip);
            std::io::copy(&mut inflate, &mut out).map_err(|e| {
                if e.to_string().contains("byte") || e.to_string().contains("ase64") {
                    FileError::Base64
                } else {
                    FileError::Inflate(e.to_string())
                }
            })?;
            out.flush().map_err(io)?;
        }
        zip.seek(SeekFrom::Start(0)).map_err(io)?;
        Ok(zip)
    }
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

/// Base64 → zlib inflate → ZIP bytes, in memory (tests and tools).
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

/// Width of a ZM line: 41 fields and 40 separating spaces.
pub const ZM_LINE_WIDTH: usize = 607;

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

/// Parses the ZIP of one settlement day as a stream into `emit`: consumes (`01`) as payments,
/// refunds (`04`) as refunds; other transaction types (undo, pre-authorisation…) are not made by
/// this adapter and are skipped.
///
/// # Errors
/// [`FileError`] for an unreadable archive (a CRC that does not match included) or a line that
/// is not GBK, not 607 bytes wide, or whose ASCII fields do not read exactly.
pub fn parse_reconciliation_zip<R: Read + Seek>(
    zip_file: R,
    day: NaiveDate,
    mut emit: impl FnMut(pb::StatementLine) -> Result<(), Gone>,
) -> Result<pb::StatementTotals, FileError> {
    let mut archive =
        zip::ZipArchive::new(zip_file).map_err(|e| FileError::Archive(e.to_string()))?;
    let index = (0..archive.len())
        .find(|i| {
            archive
                .name_for_index(*i)
                .and_then(Result::ok)
                .is_some_and(|name| name.contains("ZM_") && !name.contains("ZME_"))
        })
        .ok_or(FileError::NoDetail)?;
    let entry = archive
        .by_index(index)
        .map_err(|e| FileError::Archive(e.to_string()))?;
    let mut reader = std::io::BufReader::new(entry);
    let mut raw = Vec::new();
    let mut tally = Tally::default();
    let mut number = 0usize;
    loop {
        raw.clear();
        let n = reader
            .read_until(b'\n', &mut raw)
            .map_err(|e| FileError::Archive(format!("after ZM line {number}: {e}")))?;
        if n == 0 {
            break;
        }
        number += 1;
        let index = number;
        let line = raw.strip_suffix(b"\n").unwrap_or(&raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |reason: String| FileError::Line {
            line: index,
            reason,
        };
        if encoding_rs::GBK
            .decode_without_bom_handling_and_without_replacement(line)
            .is_none()
        {
            return Err(bad("not GBK text".to_owned()));
        }
        if line.len() != ZM_LINE_WIDTH {
            return Err(bad(format!(
                "{} bytes wide, a ZM line is {ZM_LINE_WIDTH} (truncated, or a field missing)",
                line.len()
            )));
        }
        let amount_text = zm_field(line, F_AMOUNT);
        if amount_text.len() != 12 || !amount_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("交易金额 {amount_text:?} is not 12 digits")));
        }
        let amount: i64 = amount_text
            .parse()
            .map_err(|_| bad(format!("交易金额 {amount_text:?}")))?;
        let at = transaction_time(zm_field(line, F_TIME), day).ok_or_else(|| {
            bad(format!(
                "交易传输时间 {:?} is not MMDDhhmmss",
                zm_field(line, F_TIME)
            ))
        })?;
        let mut statement = pb::StatementLine {
            channel_trade_no: zm_field(line, F_QUERY_ID).to_owned(),
            amount: Some(pb::Money {
                amount_minor: amount,
                currency: "CNY".to_owned(),
            }),
            at: Some(at),
            source_line: index as u64,
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
        if statement.out_trade_no.is_empty() {
            return Err(bad(
                "empty 商户订单号 (or, for a refund, 商户自定义域)".to_owned()
            ));
        }
        tally.add(&statement);
        emit(statement).map_err(|e| FileError::Stopped(e.to_string()))?;
    }
    Ok(tally.totals("CNY", String::new()))
}

/// Parses a ZIP in memory (tests and tools).
///
/// # Errors
/// As [`parse_reconciliation_zip`].
pub fn parse_reconciliation_zip_bytes(
    zip_bytes: &[u8],
    day: NaiveDate,
) -> Result<Vec<pb::StatementLine>, FileError> {
    let mut lines = Vec::new();
    parse_reconciliation_zip(std::io::Cursor::new(zip_bytes), day, |l| {
        lines.push(l);
        Ok(())
    })?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write as _};

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
        let lines =
            parse_reconciliation_zip_bytes(&decode_file_content(&content).unwrap(), day).unwrap();
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

/// The streaming path on a day in UnionPay's real layout (`tests/fixtures/statements/802310048993424_20150905.zip`,
/// made by `tests/fixtures/statements/make_fixture.py`: ZM fixed-width GBK lines with a Chinese 二级商户简称, an
/// empty ZME entry, the RD report), wrapped in zlib and Base64 inside a signed-looking answer
/// form as the file transfer returns it; and broken copies.
#[cfg(test)]
mod fixture_tests {
    use std::io::{Cursor, Write as _};

    use super::*;

    const FIXTURE: &[u8] =
        include_bytes!("../tests/fixtures/statements/802310048993424_20150905.zip");

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2015, 9, 7).unwrap()
    }

    fn zm() -> Vec<u8> {
        let mut archive = zip::ZipArchive::new(Cursor::new(FIXTURE)).unwrap();
        let mut bytes = Vec::new();
        archive
            .by_index(0)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    }

    fn zip_with_zm(zm: &[u8]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        writer
            .start_file(
                "INN15090588ZM_802310048993424",
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
        writer.write_all(zm).unwrap();
        writer.finish().unwrap().into_inner()
    }

    fn file_content(zip: &[u8]) -> String {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(zip).unwrap();
        BASE64.encode(z.finish().unwrap())
    }

    fn spooled(body: &str) -> SpooledAnswer {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(body.as_bytes()).unwrap();
        SpooledAnswer::scan(file).unwrap()
    }

    #[test]
    fn the_fixture_streams_through_every_layer() {
        let content = file_content(FIXTURE);
        let body = format!(
            "accessType=0&bizType=000000&fileContent={content}&fileName=802310048993424_20150905.zip&merId=802310048993424&reqReserved={{a=1&b=2}}&respCode=00&respMsg=成功[0000000]&signature=c2ln&version=5.1.0\r\n"
        );
        let mut answer = spooled(&body);
        assert_eq!(answer.fields.get("respCode").unwrap(), "00");
        assert_eq!(answer.fields.get("reqReserved").unwrap(), "{a=1&b=2}");
        assert!(!answer.fields.contains_key("fileContent"));
        // The streamed digest is the one over the whole answer held in memory.
        let mut whole = answer.fields.clone();
        whole.insert("fileContent".to_owned(), content);
        assert_eq!(
            answer.verification_digest_hex().unwrap(),
            crate::signature::verification_digest_hex(&whole)
        );
        let zip = answer.inflate_to_temp().unwrap();
        let mut lines = Vec::new();
        let totals = parse_reconciliation_zip(zip, day(), |l| {
            lines.push(l);
            Ok(())
        })
        .unwrap();
        // Two consumes and a refund; the undo (31) is skipped.
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].out_trade_no, "10078087");
        assert_eq!(lines[0].amount.as_ref().unwrap().amount_minor, 476_800);
        assert_eq!(lines[2].out_refund_no, "R10078087");
        assert_eq!(lines[2].out_trade_no, "10078087");
        assert_eq!(lines[2].source_line, 3);
        assert_eq!(totals.payment_count, 2);
        assert_eq!(totals.payment_amount.unwrap().amount_minor, 476_900);
        assert_eq!(totals.refund_amount.unwrap().amount_minor, 1000);
    }

    #[test]
    fn broken_layers_are_refused() {
        let content = file_content(FIXTURE);
        let mut cut = spooled(&format!(
            "fileContent={}&respCode=00",
            &content[..content.len() / 2]
        ));
        assert!(matches!(cut.inflate_to_temp(), Err(FileError::Inflate(_))));
        let mut bad = spooled("fileContent=****&respCode=00");
        assert!(bad.inflate_to_temp().is_err());
        let m = parse_reconciliation_zip_bytes(&FIXTURE[..FIXTURE.len() - 10], day())
            .unwrap_err()
            .to_string();
        assert!(m.starts_with("reconciliation archive is unreadable"), "{m}");
    }

    fn message(zm: &[u8]) -> String {
        parse_reconciliation_zip_bytes(&zip_with_zm(zm), day())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_truncated_zm_line_is_refused_naming_it() {
        let zm = zm();
        let m = message(&zm[..609 * 2 + 300]);
        assert_eq!(
            m,
            "ZM line 3: 300 bytes wide, a ZM line is 607 (truncated, or a field missing)"
        );
    }

    #[test]
    fn a_line_with_a_missing_field_is_refused_naming_it() {
        let mut zm = zm();
        // Drop field 8 (商户类别, 4 bytes and its space) from line 2.
        let start = 609 + ZM_WIDTHS[..7].iter().sum::<usize>() + 7;
        zm.drain(start..start + 5);
        assert!(message(&zm).starts_with("ZM line 2: 602 bytes wide"));
    }

    #[test]
    fn bad_gbk_is_refused_naming_the_line() {
        let mut zm = zm();
        let at = ZM_WIDTHS[..30].iter().sum::<usize>() + 30;
        zm[at] = 0xFF;
        assert_eq!(message(&zm), "ZM line 1: not GBK text");
    }

    #[test]
    fn a_bad_amount_is_refused_naming_the_line() {
        let mut zm = zm();
        let at = 609 + ZM_WIDTHS[..6].iter().sum::<usize>() + 6;
        zm[at] = b'x';
        assert!(message(&zm).starts_with("ZM line 2: 交易金额"));
    }
}
