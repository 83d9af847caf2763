//! Streaming a day's statement: the adapter's parser pushes lines one at a time into a
//! [`LineSink`] (a bounded channel, so a slow consumer slows the parser instead of filling
//! memory), and [`crate::grpc`] pages them out, ending with the [`pb::StatementTotals`] the
//! adapter returns. Downloads go to anonymous temp files ([`spool`]), never into memory whole.
use std::io::{Seek as _, SeekFrom};

use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use crate::{ChannelError, pb};

/// Lines per page when the request says 0.
pub const DEFAULT_PAGE_SIZE: usize = 1_000;
/// Total time allowed for a statement download (the platform timeout is for small answers;
/// a day of 10^6 lines is hundreds of MB).
pub const DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The most lines per page a request may ask for.
pub const MAX_PAGE_SIZE: usize = 10_000;

/// The page size a request asks for, defaulted and capped.
pub fn page_size(req: &pb::FetchStatementRequest) -> usize {
    match req.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => (n as usize).min(MAX_PAGE_SIZE),
    }
}

/// Where a parser puts the lines it read, in file order.
#[derive(Clone, Debug)]
pub struct LineSink {
    tx: mpsc::Sender<pb::StatementLine>,
}

/// The consumer is gone (the call was cancelled): stop parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the statement's consumer went away")]
pub struct Gone;

impl From<Gone> for ChannelError {
    fn from(e: Gone) -> Self {
        ChannelError::Unavailable(e.to_string())
    }
}

impl LineSink {
    /// A sink and the receiving end, holding at most `capacity` lines in flight.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<pb::StatementLine>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx }, rx)
    }

    /// Pushes a line from a blocking thread (parsers run in `spawn_blocking`), waiting while the
    /// channel is full.
    ///
    /// # Errors
    /// [`Gone`] when the receiver was dropped.
    pub fn blocking_push(&self, line: pb::StatementLine) -> Result<(), Gone> {
        self.tx.blocking_send(line).map_err(|_| Gone)
    }
}

/// Counts lines as they are streamed: the totals the core checks the stream against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub lines: u64,
    pub payments: u64,
    pub payment_minor: i64,
    pub refunds: u64,
    pub refund_minor: i64,
}

impl Tally {
    /// Counts one line: a refund when it names an `out_refund_no`, else a payment.
    pub fn add(&mut self, line: &pb::StatementLine) {
        let minor = line.amount.as_ref().map_or(0, |m| m.amount_minor);
        self.lines += 1;
        if line.out_refund_no.is_empty() {
            self.payments += 1;
            self.payment_minor = self.payment_minor.saturating_add(minor);
        } else {
            self.refunds += 1;
            self.refund_minor = self.refund_minor.saturating_add(minor);
        }
    }

    /// The totals message for these counts.
    pub fn totals(&self, currency: &str, platform_summary: String) -> pb::StatementTotals {
        let money = |amount_minor| {
            Some(pb::Money {
                amount_minor,
                currency: currency.to_owned(),
            })
        };
        pb::StatementTotals {
            line_count: self.lines,
            payment_count: self.payments,
            payment_amount: money(self.payment_minor),
            refund_count: self.refunds,
            refund_amount: money(self.refund_minor),
            platform_summary,
        }
    }
}

/// Writes a download to an anonymous temp file chunk by chunk, showing every chunk to `observe`
/// (e.g. a hash), and returns the file rewound to its start.
///
/// # Errors
/// Transport errors as usual (`Unavailable`/`Timeout`); `Internal` when the disk fails.
pub async fn spool(
    mut response: reqwest::Response,
    mut observe: impl FnMut(&[u8]),
) -> Result<(std::fs::File, u64), ChannelError> {
    let disk = |e: std::io::Error| ChannelError::Internal(format!("spooling a statement: {e}"));
    let file = tempfile::tempfile().map_err(disk)?;
    let mut out = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
    let mut size = 0u64;
    while let Some(chunk) = response.chunk().await? {
        observe(&chunk);
        size += chunk.len() as u64;
        out.write_all(&chunk).await.map_err(disk)?;
    }
    out.flush().await.map_err(disk)?;
    let mut file = out.into_inner().into_std().await;
    file.seek(SeekFrom::Start(0)).map_err(disk)?;
    Ok((file, size))
}

/// Peak resident memory of this process (`VmHWM` in `/proc/self/status`), in KiB; for the
/// statement benchmarks.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Current resident memory (`VmRSS`), in KiB.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets this process's peak resident memory to its current size (`5` to
/// `/proc/self/clear_refs`), so that a benchmark's [`peak_rss_kib`] covers only what follows.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
