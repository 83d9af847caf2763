//! Peak memory of the whole file-transfer path as the file grows (answer form spooled on disk →
//! scan → streamed signature digest → Base64 + inflate into a temp ZIP → ZM parse): an ignored
//! test, run once per size in its own process:
//!
//! ```text
//! STATEMENT_LINES=100000  cargo test -p channel-unionpay --test statement_memory -- --ignored --nocapture
//! STATEMENT_LINES=1000000 cargo test -p channel-unionpay --test statement_memory -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Seek as _, Write as _};

use channel_kit::statement::{peak_rss_kib, reset_peak_rss, rss_kib};
use channel_unionpay::statement::{SpooledAnswer, parse_reconciliation_zip};

const WIDTHS: [usize; 41] = [
    3, 11, 11, 6, 10, 19, 12, 4, 2, 21, 2, 32, 2, 6, 10, 13, 13, 4, 15, 2, 2, 6, 2, 4, 32, 1, 21,
    15, 1, 15, 32, 13, 13, 8, 32, 13, 13, 12, 2, 1, 131,
];

fn zm_line(i: u64) -> Vec<u8> {
    let time = "1201120000".to_owned();
    let amount = "000000000123".to_owned();
    let query = format!("2026120112{i:011}");
    let order = format!("B{i:020}");
    let mut values: Vec<String> = WIDTHS.iter().map(|w| " ".repeat(*w)).collect();
    for (n, v) in [
        (1, "S56".to_owned()),
        (5, time),
        (7, amount),
        (10, query),
        (12, order),
        (20, "01".to_owned()),
    ] {
        let w = WIDTHS[n - 1];
        values[n - 1] = format!("{v:<w$}");
    }
    let mut line = values.join(" ").into_bytes();
    line.extend_from_slice(b"\r\n");
    line
}

#[test]
#[ignore = "benchmark: run with STATEMENT_LINES=N -- --ignored --nocapture"]
fn file_transfer_memory_is_flat_in_the_file_size() {
    let n: u64 = std::env::var("STATEMENT_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // The ZIP, then the answer form with it zlib'd and Base64'd as fileContent, all on disk.
    let zip_file = tempfile::tempfile().unwrap();
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(zip_file));
    zip.start_file(
        "INN26120188ZM_777290058167151",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    for i in 0..n {
        zip.write_all(&zm_line(i)).unwrap();
    }
    let mut zip_file = zip.finish().unwrap().into_inner().unwrap();
    zip_file.rewind().unwrap();
    let mut answer = tempfile::tempfile().unwrap();
    {
        let mut out = std::io::BufWriter::new(&mut answer);
        out.write_all(b"bizType=000000&fileContent=").unwrap();
        {
            let b64 = base64::write::EncoderWriter::new(
                &mut out,
                &base64::engine::general_purpose::STANDARD,
            );
            let mut z = flate2::write::ZlibEncoder::new(b64, flate2::Compression::default());
            std::io::copy(&mut zip_file, &mut z).unwrap();
            z.finish().unwrap().finish().unwrap();
        }
        out.write_all(b"&respCode=00&respMsg=ok&signature=x&version=5.1.0")
            .unwrap();
        out.flush().unwrap();
    }
    let size = answer.stream_position().unwrap();
    drop(zip_file);
    assert!(reset_peak_rss(), "cannot reset VmHWM");
    let before = rss_kib().unwrap();
    let mut spooled = SpooledAnswer::scan(answer).unwrap();
    let digest = spooled.verification_digest_hex().unwrap();
    assert_eq!(digest.len(), 64);
    let zip = spooled.inflate_to_temp().unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    let mut seen = 0u64;
    let totals = parse_reconciliation_zip(zip, day, |_| {
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(totals.line_count, n);
    assert_eq!(seen, n);
    println!(
        "unionpay file transfer: lines={n} answer_bytes={size} rss_before_kib={before} peak_rss_during_kib={}",
        peak_rss_kib().unwrap()
    );
}
