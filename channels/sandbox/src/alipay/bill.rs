//! The Alipay trade bill: a ZIP named `<pid>0156_<yyyyMMdd>.csv.zip` holding the detail CSV
//! (`…_业务明细.csv`) and the summary CSV (`…_业务明细(汇总).csv`), GBK-encoded as at Alipay
//! (names too, without the UTF-8 flag), with `#` banner lines and the 合计 footer. The ZIP's
//! entries are stored (uncompressed), which every unzip reads. Written as a stream into a file.

use std::io::{Seek, Write};

use chrono::NaiveDate;

use super::protocol::{format_timestamp, format_yuan};
use crate::ledger::Trade;
use crate::statements::{BillLine, DayStatement, LineKind, StoredZipWriter};

const DETAIL_HEADER: &str = "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注";

fn beijing_date(instant: chrono::DateTime<chrono::Utc>) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(&format_timestamp(instant)[..10], "%Y-%m-%d").ok()
}

fn signed_yuan(fen: u64, negative: bool) -> String {
    if negative {
        format!("-{}", format_yuan(fen))
    } else {
        format_yuan(fen)
    }
}

fn gbk(text: &str) -> Vec<u8> {
    encoding_rs::GBK.encode(text).0.into_owned()
}

/// The ledger's lines of `date` (Beijing time): payments by payment time, succeeded refunds by
/// refund time.
pub fn ledger_lines(trades: &[&Trade], date: NaiveDate) -> Vec<BillLine> {
    let mut out = Vec::new();
    for trade in trades {
        if let Some(paid_at) = trade.paid_at.filter(|p| beijing_date(*p) == Some(date)) {
            out.push(BillLine {
                kind: LineKind::Payment,
                out_trade_no: trade.out_trade_no.clone(),
                channel_trade_no: trade.channel_trade_no.clone(),
                amount_minor: trade.amount_minor,
                trade_amount_minor: trade.amount_minor,
                at: paid_at,
                created_at: trade.created_at,
                subject: trade.subject.clone(),
                ..Default::default()
            });
        }
        for refund in trade
            .refunds
            .iter()
            .filter(|r| r.state == crate::ledger::RefundState::Succeeded)
            .filter(|r| beijing_date(r.settled_at.unwrap_or(r.created_at)) == Some(date))
        {
            out.push(BillLine {
                kind: LineKind::Refund,
                out_trade_no: trade.out_trade_no.clone(),
                channel_trade_no: trade.channel_trade_no.clone(),
                out_refund_no: refund.out_refund_no.clone(),
                amount_minor: refund.amount_minor,
                trade_amount_minor: trade.amount_minor,
                at: refund.settled_at.unwrap_or(refund.created_at),
                created_at: trade.created_at,
                subject: trade.subject.clone(),
                ..Default::default()
            });
        }
    }
    out
}

/// The bill's file name.
pub fn file_name(pid: &str, date: NaiveDate) -> String {
    format!("{pid}0156_{}.csv.zip", date.format("%Y%m%d"))
}

/// Writes the bill ZIP of `statement` into `out`.
///
/// # Errors
/// I/O errors of `out`.
pub fn write_trade_bill_zip<W: Write + Seek>(
    out: W,
    pid: &str,
    statement: &DayStatement,
) -> std::io::Result<W> {
    let date = statement.day;
    let base = format!("{pid}0156_{}", date.format("%Y%m%d"));
    let mut zip = StoredZipWriter::new(out);
    zip.start_entry(&gbk(&format!("{base}_业务明细.csv")))?;
    {
        let mut w = std::io::BufWriter::new(&mut zip);
        for banner in [
            "#支付宝业务明细查询".to_owned(),
            format!("#账号：[{pid}0156]"),
            format!(
                "#起始日期：[{} 00:00:00]   终止日期：[{} 00:00:00]",
                date,
                date.succ_opt().unwrap_or(date)
            ),
            "#-----------------------------------------业务明细列表----------------------------------------".to_owned(),
            DETAIL_HEADER.to_owned(),
        ] {
            w.write_all(&gbk(&banner))?;
            w.write_all(b"\r\n")?;
        }
        let (mut pay_count, mut pay_sum, mut refund_count, mut refund_sum) = (0u64, 0, 0u64, 0);
        statement.for_each(|line| {
            let (kind, negative, request_no) = match line.kind {
                LineKind::Payment => ("交易", false, ""),
                LineKind::Refund => ("退款", true, line.out_refund_no.as_str()),
            };
            let amount = signed_yuan(line.amount_minor, negative);
            let row = [
                format!("{}\t", line.channel_trade_no),
                format!("{}\t", line.out_trade_no),
                kind.to_owned(),
                line.subject.replace(',', " "),
                format_timestamp(line.created_at),
                format_timestamp(line.at),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                "sandbox***@alipay.com".to_owned(),
                amount.clone(),
                amount,
                "0.00".to_owned(),
                "0.00".to_owned(),
                "0.00".to_owned(),
                "0.00".to_owned(),
                "0.00".to_owned(),
                String::new(),
                "0.00".to_owned(),
                "0.00".to_owned(),
                if request_no.is_empty() {
                    String::new()
                } else {
                    format!("{request_no}\t")
                },
                "0.00".to_owned(),
                "0.00".to_owned(),
                String::new(),
            ]
            .join(",");
            w.write_all(&gbk(&row))?;
            w.write_all(b"\r\n")?;
            match line.kind {
                LineKind::Payment => {
                    pay_count += 1;
                    pay_sum += line.amount_minor;
                }
                LineKind::Refund => {
                    refund_count += 1;
                    refund_sum += line.amount_minor;
                }
            }
            Ok::<(), std::io::Error>(())
        })?;
        let stated_pay_count = pay_count + u64::from(statement.corrupt_summary);
        for footer in [
            "#-----------------------------------------业务明细列表结束------------------------------------".to_owned(),
            format!(
                "#交易合计：{stated_pay_count}笔，商家实收共{}元",
                format_yuan(pay_sum)
            ),
            format!(
                "#退款合计：{refund_count}笔，商家实收共{}元",
                signed_yuan(refund_sum, refund_sum > 0)
            ),
        ] {
            w.write_all(&gbk(&footer))?;
            w.write_all(b"\r\n")?;
        }
        w.flush()?;
        let summary = [
            "#支付宝业务汇总查询".to_owned(),
            format!("#账号：[{pid}0156]"),
            "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）"
                .to_owned(),
            format!(
                "合计,,{pay_count},{refund_count},{},{}",
                format_yuan(pay_sum),
                if pay_sum >= refund_sum {
                    format_yuan(pay_sum - refund_sum)
                } else {
                    signed_yuan(refund_sum - pay_sum, true)
                }
            ),
        ];
        drop(w);
        zip.start_entry(&gbk(&format!("{base}_业务明细(汇总).csv")))?;
        for l in summary {
            zip.write_all(&gbk(&l))?;
            zip.write_all(b"\r\n")?;
        }
    }
    zip.finish()
}
