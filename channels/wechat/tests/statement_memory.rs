//! Peak memory of the bill parser as the bill grows: an ignored test, run once per size in its
//! own process so that the process's peak (VmHWM) is this size's:
//!
//! ```text
//! STATEMENT_LINES=100000  cargo test -p channel-wechat --test statement_memory -- --ignored --nocapture
//! STATEMENT_LINES=1000000 cargo test -p channel-wechat --test statement_memory -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufWriter, Seek as _, Write as _};

use channel_kit::statement::{peak_rss_kib, reset_peak_rss, rss_kib};

const HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";

#[test]
#[ignore = "benchmark: run with STATEMENT_LINES=N -- --ignored --nocapture"]
fn parser_memory_is_flat_in_the_bill_size() {
    let n: u64 = std::env::var("STATEMENT_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut file = tempfile::tempfile().unwrap();
    {
        let mut w = BufWriter::new(&mut file);
        write!(w, "\u{feff}{HEADER}\r\n").unwrap();
        for i in 0..n {
            write!(w, "`2026-12-01 12:00:00,`wx81be3101902f7cb2,`1601959334,`0,`,`42000009252026120{i:011},`B{i:020},`ofyak5qR_1wYsC99CsWA6R9MJazA,`NATIVE,`SUCCESS,`OTHERS,`CNY,`1.23,`0.00,`0,`0,`0.00,`0.00,`,`,`synthetic,`,`0.00000,`0.60%,`1.23,`0.00,`\r\n").unwrap();
        }
        write!(w, "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n").unwrap();
        let total = n * 123;
        write!(
            w,
            "`{n},`{}.{:02},`0.00,`0.00,`0.00000,`{}.{:02},`0.00\r\n",
            total / 100,
            total % 100,
            total / 100,
            total % 100
        )
        .unwrap();
        w.flush().unwrap();
    }
    let size = file.stream_position().unwrap();
    file.rewind().unwrap();
    assert!(reset_peak_rss(), "cannot reset VmHWM");
    let before = rss_kib().unwrap();
    let mut seen = 0u64;
    let totals = channel_wechat::statement::parse_trade_bill(std::io::BufReader::new(file), |_| {
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(totals.line_count, n);
    assert_eq!(seen, n);
    println!(
        "wechat bill: lines={n} file_bytes={size} rss_before_parse_kib={before} peak_rss_during_parse_kib={}",
        peak_rss_kib().unwrap()
    );
}
