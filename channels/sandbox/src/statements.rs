//! What every platform's statement shares: the lines of one day (from the ledger, then the
//! control API's faults applied, then any synthetic lines), the faults themselves, temp-file
//! bills streamed out on download, and the stored ZIP writer the Alipay and UnionPay files use.
//!
//! Control API (same for the three platforms, see the README):
//! - `POST /sandbox/statements/faults` `{"drop": [no…], "alter": {no: amount_minor},
//!   "add": [{"out_trade_no", "amount_minor", "kind": "payment"|"refund", "out_refund_no"?,
//!   "channel_trade_no"?, "day"?}], "corrupt_summary": bool}` merges into the faults; `GET` shows
//!   them, `DELETE` clears them.
//! - `POST /sandbox/statements/synthetic` `{"day": "YYYY-MM-DD", "payments": N}`: that day's
//!   statement also holds N generated payment lines (no ledger trades; generated while the file
//!   is written, never held in memory). `payments: 0` removes them.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, SeekFrom, Write};

use chrono::{DateTime, Duration, NaiveDate, TimeZone as _, Utc};
use serde::{Deserialize, Serialize};

/// A statement line's kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineKind {
    #[default]
    Payment,
    Refund,
}

/// A line the platform reports though no ledger trade made it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddedLine {
    pub out_trade_no: String,
    pub amount_minor: u64,
    #[serde(default)]
    pub kind: LineKind,
    /// Refunds only; default `R` + out_trade_no.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_refund_no: Option<String>,
    /// Default: generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_trade_no: Option<String>,
    /// The statement day (Beijing) it appears in; default the day (Beijing) it was posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<NaiveDate>,
}

/// What the next statements get wrong, on purpose.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatementFaults {
    /// Lines left out: a payment line by its out_trade_no, a refund line by its out_refund_no.
    pub drop: BTreeSet<String>,
    /// Lines whose amount (fen) is reported differently, keyed the same way.
    pub alter: BTreeMap<String, u64>,
    /// Lines reported in addition.
    pub add: Vec<AddedLine>,
    /// The file's summary does not add up (WeChat: 总交易单数 one more; Alipay: 交易合计 one more;
    /// UnionPay, whose ZM file has no summary: the last line is cut short).
    pub corrupt_summary: bool,
    /// Synthetic payment lines per day.
    pub synthetic: BTreeMap<NaiveDate, u64>,
}

/// `POST /sandbox/statements/faults`: merged into [`StatementFaults`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementFaultsPatch {
    #[serde(default)]
    pub drop: Vec<String>,
    #[serde(default)]
    pub alter: BTreeMap<String, u64>,
    #[serde(default)]
    pub add: Vec<AddedLine>,
    #[serde(default)]
    pub corrupt_summary: Option<bool>,
}

/// `POST /sandbox/statements/synthetic`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticDay {
    pub day: NaiveDate,
    pub payments: u64,
}

/// Beijing (UTC+8) calendar day of an instant.
pub fn beijing_day(instant: DateTime<Utc>) -> NaiveDate {
    (instant + Duration::hours(8)).date_naive()
}

impl StatementFaults {
    pub fn apply(&mut self, patch: StatementFaultsPatch, now: DateTime<Utc>) {
        self.drop.extend(patch.drop);
        self.alter.extend(patch.alter);
        for mut add in patch.add {
            add.day.get_or_insert(beijing_day(now));
            self.add.push(add);
        }
        if let Some(c) = patch.corrupt_summary {
            self.corrupt_summary = c;
        }
    }

    pub fn set_synthetic(&mut self, s: SyntheticDay) {
        if s.payments == 0 {
            self.synthetic.remove(&s.day);
        } else {
            self.synthetic.insert(s.day, s.payments);
        }
    }
}

/// One line of a day's statement, whatever the platform.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BillLine {
    pub kind: LineKind,
    pub out_trade_no: String,
    pub channel_trade_no: String,
    pub out_refund_no: String,
    pub channel_refund_no: String,
    pub amount_minor: u64,
    /// The payment's total (for refund lines, the refunded payment's).
    pub trade_amount_minor: u64,
    pub at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub subject: String,
    /// The platform's status text where its file has one (WeChat 退款状态).
    pub status: String,
    /// The trade's platform fields (appid, openid, method, txnTime, reqReserved…).
    pub extra: BTreeMap<String, String>,
}

/// A day's lines: from the ledger with the faults applied, then added lines, then synthetic ones.
pub struct DayStatement {
    pub day: NaiveDate,
    pub lines: Vec<BillLine>,
    pub synthetic: u64,
    /// The drop and alter faults that name synthetic lines (`SYN<yyyyMMdd>…`): a benchmark's
    /// known mismatches inside a generated day.
    pub synthetic_drop: BTreeSet<String>,
    pub synthetic_alter: BTreeMap<String, u64>,
    pub corrupt_summary: bool,
}

fn noon(day: NaiveDate) -> DateTime<Utc> {
    let naive = day.and_hms_opt(4, 0, 0).unwrap_or_default();
    Utc.from_utc_datetime(&naive)
}

impl DayStatement {
    /// `ledger_lines` are the platform's own lines of `day`; the faults are applied here.
    pub fn new(day: NaiveDate, ledger_lines: Vec<BillLine>, faults: &StatementFaults) -> Self {
        let key = |l: &BillLine| match l.kind {
            LineKind::Payment => l.out_trade_no.clone(),
            LineKind::Refund => l.out_refund_no.clone(),
        };
        let mut lines: Vec<BillLine> = ledger_lines
            .into_iter()
            .filter(|l| !faults.drop.contains(&key(l)))
            .map(|mut l| {
                if let Some(a) = faults.alter.get(&key(&l)) {
                    l.amount_minor = *a;
                }
                l
            })
            .collect();
        for (i, add) in faults.add.iter().filter(|a| a.day == Some(day)).enumerate() {
            let at = noon(day) + Duration::seconds(i as i64);
            lines.push(BillLine {
                kind: add.kind,
                out_trade_no: add.out_trade_no.clone(),
                channel_trade_no: add
                    .channel_trade_no
                    .clone()
                    .unwrap_or_else(|| format!("9{}{:011}", day.format("%Y%m%d"), i)),
                out_refund_no: match add.kind {
                    LineKind::Payment => String::new(),
                    LineKind::Refund => add
                        .out_refund_no
                        .clone()
                        .unwrap_or_else(|| format!("R{}", add.out_trade_no)),
                },
                channel_refund_no: match add.kind {
                    LineKind::Payment => String::new(),
                    LineKind::Refund => format!("8{}{:011}", day.format("%Y%m%d"), i),
                },
                amount_minor: add.amount_minor,
                trade_amount_minor: add.amount_minor,
                at,
                created_at: at,
                subject: "added by the sandbox".to_owned(),
                status: "SUCCESS".to_owned(),
                extra: BTreeMap::new(),
            });
        }
        let prefix = format!("SYN{}", day.format("%Y%m%d"));
        Self {
            day,
            lines,
            synthetic: faults.synthetic.get(&day).copied().unwrap_or(0),
            synthetic_drop: faults
                .drop
                .iter()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect(),
            synthetic_alter: faults
                .alter
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            corrupt_summary: faults.corrupt_summary,
        }
    }

    /// Every line in order, synthetic ones generated one at a time.
    ///
    /// # Errors
    /// Whatever `f` returns.
    pub fn for_each<E>(&self, mut f: impl FnMut(&BillLine) -> Result<(), E>) -> Result<(), E> {
        for l in &self.lines {
            f(l)?;
        }
        let mut line = BillLine {
            subject: "synthetic".to_owned(),
            status: "SUCCESS".to_owned(),
            ..Default::default()
        };
        let day = self.day.format("%Y%m%d").to_string();
        for i in 0..self.synthetic {
            line.out_trade_no = format!("SYN{day}{i:012}");
            if self.synthetic_drop.contains(&line.out_trade_no) {
                continue;
            }
            line.channel_trade_no = format!("7{day}{i:012}");
            line.amount_minor = self
                .synthetic_alter
                .get(&line.out_trade_no)
                .copied()
                .unwrap_or(100 + i % 9_900);
            line.trade_amount_minor = line.amount_minor;
            line.at = noon(self.day) - Duration::hours(4) + Duration::seconds((i % 86_400) as i64);
            line.created_at = line.at;
            f(&line)?;
        }
        Ok(())
    }
}

/// A bill waiting on disk for its download; the file goes when the last holder drops it.
#[derive(Debug)]
pub struct SpooledBill {
    pub name: String,
    pub file: std::sync::Arc<tempfile::NamedTempFile>,
    pub expires: std::time::Instant,
}

/// What a bill file is written from: the same inputs write the same file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillInputs {
    pub day: NaiveDate,
    /// The platform's variant of the file (WeChat's `bill_type`).
    pub variant: String,
    pub ledger_lines: Vec<BillLine>,
    pub faults: StatementFaults,
}

/// The last bill written, kept for the next request of the same inputs.
///
/// A platform prepares a day's bill once, ahead of its download (WeChat's are ready from 10:00
/// the next day), and serves that file to every request; writing 10^6 lines on every request
/// was the sandbox's own cost inside reconciliation's timings. The sandbox still writes a new
/// file whenever its ledger or faults for the day changed, so it is never staler than the real
/// platform's.
#[derive(Debug, Default)]
pub struct PreparedBill {
    last: Option<(BillInputs, std::sync::Arc<tempfile::NamedTempFile>, String)>,
}

impl PreparedBill {
    /// The file and hash written earlier from exactly `inputs`, if any.
    pub fn get(
        &self,
        inputs: &BillInputs,
    ) -> Option<(std::sync::Arc<tempfile::NamedTempFile>, String)> {
        self.last
            .as_ref()
            .filter(|(k, _, _)| k == inputs)
            .map(|(_, f, h)| (f.clone(), h.clone()))
    }

    pub fn put(
        &mut self,
        inputs: BillInputs,
        file: std::sync::Arc<tempfile::NamedTempFile>,
        hash: String,
    ) {
        self.last = Some((inputs, file, hash));
    }
}

/// Streams a spooled file as an HTTP body.
pub async fn file_body(path: &std::path::Path) -> std::io::Result<axum::body::Body> {
    let file = tokio::fs::File::open(path).await?;
    Ok(axum::body::Body::from_stream(
        tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024),
    ))
}

/// Drops expired bills (their files with them).
pub fn purge(bills: &mut std::collections::HashMap<String, SpooledBill>) {
    let now = std::time::Instant::now();
    bills.retain(|_, b| b.expires > now);
}

/// A writer that also hashes (CRC-32 for ZIP entries) and counts what passes through.
pub struct Crc32 {
    crc: u32,
}

impl Default for Crc32 {
    fn default() -> Self {
        Self { crc: 0xFFFF_FFFF }
    }
}

impl Crc32 {
    pub fn update(&mut self, data: &[u8]) {
        for byte in data {
            self.crc ^= u32::from(*byte);
            for _ in 0..8 {
                let mask = (self.crc & 1).wrapping_neg();
                self.crc = (self.crc >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
    }

    pub fn finish(&self) -> u32 {
        !self.crc
    }
}

/// A ZIP archive written as a stream into a seekable file: entries stored (method 0), names as
/// given bytes (GBK for Alipay) with no UTF-8 flag, each local header patched with CRC and
/// sizes once its data is written.
pub struct StoredZipWriter<W: Write + Seek> {
    out: W,
    central: Vec<u8>,
    entries: u16,
    current: Option<(u64, Vec<u8>, Crc32, u64)>,
}

impl<W: Write + Seek> StoredZipWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            central: Vec::new(),
            entries: 0,
            current: None,
        }
    }

    fn header(buf: &mut Vec<u8>, name: &[u8], crc: u32, size: u32) {
        buf.extend_from_slice(&20u16.to_le_bytes()); // version needed
        buf.extend_from_slice(&0u16.to_le_bytes()); // flags: names are not UTF-8
        buf.extend_from_slice(&0u16.to_le_bytes()); // stored
        buf.extend_from_slice(&0u16.to_le_bytes()); // time
        buf.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&size.to_le_bytes());
        buf.extend_from_slice(&size.to_le_bytes());
        buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
        buf.extend_from_slice(&0u16.to_le_bytes()); // extra length
    }

    /// # Errors
    /// I/O errors.
    pub fn start_entry(&mut self, name: &[u8]) -> std::io::Result<()> {
        self.finish_entry()?;
        let offset = self.out.stream_position()?;
        let mut local = 0x0403_4b50u32.to_le_bytes().to_vec();
        Self::header(&mut local, name, 0, 0);
        local.extend_from_slice(name);
        self.out.write_all(&local)?;
        self.current = Some((offset, name.to_vec(), Crc32::default(), 0));
        Ok(())
    }

    fn finish_entry(&mut self) -> std::io::Result<()> {
        let Some((offset, name, crc, size)) = self.current.take() else {
            return Ok(());
        };
        let size = u32::try_from(size)
            .map_err(|_| std::io::Error::other("entry larger than 4 GiB (no ZIP64 here)"))?;
        let end = self.out.stream_position()?;
        self.out.seek(SeekFrom::Start(offset + 14))?;
        self.out.write_all(&crc.finish().to_le_bytes())?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.seek(SeekFrom::Start(end))?;
        self.central
            .extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        self.central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        Self::header(&mut self.central, &name, crc.finish(), size);
        self.central.extend_from_slice(&0u16.to_le_bytes()); // comment length
        self.central.extend_from_slice(&0u16.to_le_bytes()); // disk number
        self.central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        self.central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        self.central
            .extend_from_slice(&(offset as u32).to_le_bytes());
        self.central.extend_from_slice(&name);
        self.entries += 1;
        Ok(())
    }

    /// Writes the central directory and returns the underlying writer.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.finish_entry()?;
        let central_offset = self.out.stream_position()? as u32;
        let mut end = self.central.clone();
        end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&self.entries.to_le_bytes());
        end.extend_from_slice(&self.entries.to_le_bytes());
        end.extend_from_slice(&(self.central.len() as u32).to_le_bytes());
        end.extend_from_slice(&central_offset.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.out.write_all(&end)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write + Seek> Write for StoredZipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some((_, _, crc, size)) = self.current.as_mut() else {
            return Err(std::io::Error::other("no entry started"));
        };
        let n = self.out.write(buf)?;
        crc.update(&buf[..n]);
        *size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        let mut c = Crc32::default();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xCBF4_3926);
    }

    #[test]
    fn a_stored_zip_starts_and_ends_with_the_zip_signatures() {
        let mut w = StoredZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_entry(b"a.csv").unwrap();
        w.write_all(b"x").unwrap();
        let zip = w.finish().unwrap().into_inner();
        assert_eq!(&zip[..4], b"PK\x03\x04");
        assert_eq!(&zip[zip.len() - 22..zip.len() - 18], b"PK\x05\x06");
    }

    #[test]
    fn faults_drop_alter_and_add_lines() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let line = |no: &str| BillLine {
            out_trade_no: no.to_owned(),
            amount_minor: 100,
            ..Default::default()
        };
        let mut faults = StatementFaults::default();
        faults.apply(
            serde_json::from_value(serde_json::json!({
                "drop": ["A"], "alter": {"B": 5},
                "add": [{"out_trade_no": "X", "amount_minor": 7, "day": "2026-12-01"},
                        {"out_trade_no": "Y", "amount_minor": 7, "day": "2026-12-02"}]
            }))
            .unwrap(),
            Utc::now(),
        );
        faults.set_synthetic(SyntheticDay { day, payments: 3 });
        let s = DayStatement::new(day, vec![line("A"), line("B"), line("C")], &faults);
        let mut seen = Vec::new();
        s.for_each(|l| {
            seen.push((l.out_trade_no.clone(), l.amount_minor));
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[0], ("B".to_owned(), 5));
        assert_eq!(seen[1], ("C".to_owned(), 100));
        assert_eq!(seen[2], ("X".to_owned(), 7));
        assert_eq!(seen[3].0, "SYN20261201000000000000");

        // Synthetic lines take the drop and alter faults too.
        faults.apply(
            serde_json::from_value(serde_json::json!({
                "drop": ["SYN20261201000000000001"], "alter": {"SYN20261201000000000002": 9}
            }))
            .unwrap(),
            Utc::now(),
        );
        let s = DayStatement::new(day, vec![], &faults);
        let mut seen = Vec::new();
        s.for_each(|l| {
            seen.push((l.out_trade_no.clone(), l.amount_minor));
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                ("X".to_owned(), 7),
                ("SYN20261201000000000000".to_owned(), 100),
                ("SYN20261201000000000002".to_owned(), 9),
            ]
        );
    }

    #[test]
    fn a_prepared_bill_is_served_again_only_for_the_same_inputs() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let line = BillLine {
            out_trade_no: "A".into(),
            amount_minor: 5,
            ..Default::default()
        };
        let inputs = BillInputs {
            day,
            variant: "ALL".into(),
            ledger_lines: vec![line.clone()],
            faults: StatementFaults::default(),
        };
        let mut prepared = PreparedBill::default();
        assert!(prepared.get(&inputs).is_none());
        let file = std::sync::Arc::new(tempfile::NamedTempFile::new().unwrap());
        prepared.put(inputs.clone(), file.clone(), "h".into());
        let (again, hash) = prepared.get(&inputs).unwrap();
        assert_eq!((again.path(), hash.as_str()), (file.path(), "h"));

        // Another day, variant, ledger line or fault: a new file must be written.
        let mut other = inputs.clone();
        other.day = day.succ_opt().unwrap();
        assert!(prepared.get(&other).is_none());
        let mut other = inputs.clone();
        other.variant = "SUCCESS".into();
        assert!(prepared.get(&other).is_none());
        let mut other = inputs.clone();
        other.ledger_lines[0].amount_minor = 6;
        assert!(prepared.get(&other).is_none());
        let mut other = inputs.clone();
        other.faults.drop.insert("A".into());
        assert!(prepared.get(&other).is_none());
    }
}
