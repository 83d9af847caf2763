//! Peak memory of the bill parser as the bill grows: an ignored test, run once per size in its
//! own process so that the process's peak (VmHWM) is this size's:
//!
//! ```text
//! STATEMENT_LINES=100000  cargo test -p channel-alipay --test statement_memory -- --ignored --nocapture
//! STATEMENT_LINES=1000000 cargo test -p channel-alipay --test statement_memory -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Seek as _, Write as _};

use channel_kit::statement::{peak_rss_kib, reset_peak_rss, rss_kib};

const HEADER: &str = "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注";

fn gbk(text: &str) -> Vec<u8> {
    encoding_rs::GBK.encode(text).0.into_owned()
}

#[test]
#[ignore = "benchmark: run with STATEMENT_LINES=N -- --ignored --nocapture"]
fn parser_memory_is_flat_in_the_bill_size() {
    let n: u64 = std::env::var("STATEMENT_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let file = tempfile::tempfile().unwrap();
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    zip.start_file(
        "20880000000000000156_20261201_业务明细.csv",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    zip.write_all(&gbk(&format!("#支付宝业务明细查询\r\n{HEADER}\r\n")))
        .unwrap();
    let row_tail = gbk(
        ",交易,合成,2026-12-01 11:59:50,2026-12-01 12:00:00,,,,,buyer,1.23,1.23,0.00,0.00,0.00,0.00,0.00,,0.00,0.00,,0.00,0.00,\r\n",
    );
    for i in 0..n {
        write!(zip, "2026120122001499{i:012}\t,B{i:020}\t").unwrap();
        zip.write_all(&row_tail).unwrap();
    }
    let total = n * 123;
    zip.write_all(&gbk(&format!(
        "#-----业务明细列表结束-----\r\n#交易合计：{n}笔，商家实收共{}.{:02}元\r\n#退款合计：0笔，商家实收共0.00元\r\n",
        total / 100,
        total % 100
    )))
    .unwrap();
    let mut file = zip.finish().unwrap().into_inner().unwrap();
    let size = file.stream_position().unwrap();
    file.rewind().unwrap();
    assert!(reset_peak_rss(), "cannot reset VmHWM");
    let before = rss_kib().unwrap();
    let mut seen = 0u64;
    let totals = channel_alipay::statement::parse_trade_bill(file, |_| {
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(totals.line_count, n);
    assert_eq!(seen, n);
    println!(
        "alipay bill: lines={n} zip_bytes={size} rss_before_parse_kib={before} peak_rss_during_parse_kib={}",
        peak_rss_kib().unwrap()
    );
}
