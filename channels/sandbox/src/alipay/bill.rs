//! The Alipay trade bill: a ZIP named `<pid>0156_<yyyyMMdd>.csv.zip` holding the detail CSV
//! (`…_业务明细.csv`) and the summary CSV (`…_业务明细(汇总).csv`), with `#` banner lines.
//!
//! Deviation, on purpose: the CSV is UTF-8, not GBK as at Alipay, to avoid a GBK encoder
//! dependency; the ZIP entries are stored (uncompressed), which every unzip reads.

use chrono::NaiveDate;

use super::protocol::{format_timestamp, format_yuan};
use crate::ledger::Trade;

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

/// Builds the bill ZIP for `date` (Beijing time): payments by payment time, refunds by refund
/// time. Returns the file name and the ZIP bytes.
pub fn trade_bill_zip(pid: &str, trades: &[&Trade], date: NaiveDate) -> (String, Vec<u8>) {
    let day = date.format("%Y%m%d").to_string();
    let mut detail = vec![
        "#支付宝业务明细查询".to_owned(),
        format!("#账号：[{pid}0156]"),
        format!("#起始日期：[{} 00:00:00]   终止日期：[{} 00:00:00]", date, date.succ_opt().unwrap_or(date)),
        "#-----------------------------------------业务明细列表----------------------------------------".to_owned(),
        DETAIL_HEADER.to_owned(),
    ];
    let (mut pay_count, mut pay_sum, mut refund_count, mut refund_sum) = (0u64, 0u64, 0u64, 0u64);
    for trade in trades {
        let row = |kind: &str, fen: u64, negative: bool, finished: String, request_no: &str| {
            let amount = signed_yuan(fen, negative);
            [
                trade.channel_trade_no.clone(),
                trade.out_trade_no.clone(),
                kind.to_owned(),
                trade.subject.replace(',', " "),
                format_timestamp(trade.created_at),
                finished,
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
                request_no.to_owned(),
                "0.00".to_owned(),
                "0.00".to_owned(),
                String::new(),
            ]
            .join(",")
        };
        if let Some(paid_at) = trade.paid_at.filter(|p| beijing_date(*p) == Some(date)) {
            detail.push(row(
                "交易",
                trade.amount_minor,
                false,
                format_timestamp(paid_at),
                "",
            ));
            pay_count += 1;
            pay_sum += trade.amount_minor;
        }
        for refund in trade
            .refunds
            .iter()
            .filter(|r| r.state == crate::ledger::RefundState::Succeeded)
            .filter(|r| beijing_date(r.settled_at.unwrap_or(r.created_at)) == Some(date))
        {
            detail.push(row(
                "退款",
                refund.amount_minor,
                true,
                format_timestamp(refund.settled_at.unwrap_or(refund.created_at)),
                &refund.out_refund_no,
            ));
            refund_count += 1;
            refund_sum += refund.amount_minor;
        }
    }
    detail.push("#-----------------------------------------业务明细列表结束------------------------------------".to_owned());
    detail.push(format!(
        "#交易合计：{pay_count}笔，商家实收共{}元",
        format_yuan(pay_sum)
    ));
    detail.push(format!(
        "#退款合计：{refund_count}笔，商家实收共{}元",
        signed_yuan(refund_sum, refund_sum > 0)
    ));
    let summary = [
        "#支付宝业务汇总查询".to_owned(),
        format!("#账号：[{pid}0156]"),
        "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）".to_owned(),
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
    let base = format!("{pid}0156_{day}");
    let files = [
        (format!("{base}_业务明细.csv"), detail.join("\r\n") + "\r\n"),
        (
            format!("{base}_业务明细(汇总).csv"),
            summary.join("\r\n") + "\r\n",
        ),
    ];
    (format!("{base}.csv.zip"), stored_zip(&files))
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// A ZIP archive with every entry stored (method 0), UTF-8 names (flag bit 11).
fn stored_zip(files: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, content) in files {
        let offset = out.len() as u32;
        let data = content.as_bytes();
        let crc = crc32(data);
        let size = data.len() as u32;
        let name_bytes = name.as_bytes();
        let common = |buf: &mut Vec<u8>| {
            buf.extend_from_slice(&20u16.to_le_bytes()); // version needed
            buf.extend_from_slice(&0x0800u16.to_le_bytes()); // UTF-8 names
            buf.extend_from_slice(&0u16.to_le_bytes()); // stored
            buf.extend_from_slice(&0u16.to_le_bytes()); // time
            buf.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01
            buf.extend_from_slice(&crc.to_le_bytes());
            buf.extend_from_slice(&size.to_le_bytes());
            buf.extend_from_slice(&size.to_le_bytes());
            buf.extend_from_slice(&(name_bytes.len() as u16).to_le_bytes());
            buf.extend_from_slice(&0u16.to_le_bytes()); // extra length
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name_bytes);
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment length
        central.extend_from_slice(&0u16.to_le_bytes()); // disk number
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name_bytes);
    }
    let central_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn a_stored_zip_starts_and_ends_with_the_zip_signatures() {
        let zip = stored_zip(&[("a.csv".to_owned(), "x".to_owned())]);
        assert_eq!(&zip[..4], b"PK\x03\x04");
        assert_eq!(&zip[zip.len() - 22..zip.len() - 18], b"PK\x05\x06");
    }
}
