//! The trade bill (`bill_type=trade`) as statement lines. Alipay serves a ZIP holding a detail CSV
//! and a summary CSV, GBK-encoded, with `#` banner lines around the table; amounts are yuan strings
//! read with the crate's one conversion ([`crate::wire::parse_yuan`]).
use std::io::{Cursor, Read as _};

use channel_kit::pb;
use chrono::{NaiveDateTime, TimeZone as _, Utc};

use crate::wire::{BEIJING, parse_yuan};

/// A bill that cannot be read; reconciliation must not run on a guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillError {
    #[error("bill archive is unreadable: {0}")]
    Archive(String),
    #[error("bill is neither UTF-8 nor GBK text")]
    Encoding,
    #[error("no detail table (header starting with 支付宝交易号) in the bill")]
    NoDetail,
    #[error("bill header lacks column {0}")]
    MissingColumn(&'static str),
    #[error("bill line {line}: {reason}")]
    Line { line: usize, reason: String },
}

/// UTF-8 when it is (a BOM is dropped), else GBK, which is what Alipay writes.
fn decode(bytes: &[u8]) -> Result<String, BillError> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(text.strip_prefix('\u{feff}').unwrap_or(text).to_owned());
    }
    let (text, had_errors) = encoding_rs::GBK.decode_without_bom_handling(bytes);
    if had_errors {
        return Err(BillError::Encoding);
    }
    Ok(text.into_owned())
}

fn is_detail(text: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().starts_with("支付宝交易号") && l.contains("业务类型"))
}

/// The detail CSV: from a ZIP (what Alipay serves), or the bytes themselves when they are already
/// the CSV.
fn detail_text(file: &[u8]) -> Result<String, BillError> {
    if !file.starts_with(b"PK") {
        let text = decode(file)?;
        return if is_detail(&text) {
            Ok(text)
        } else {
            Err(BillError::NoDetail)
        };
    }
    let mut archive =
        zip::ZipArchive::new(Cursor::new(file)).map_err(|e| BillError::Archive(e.to_string()))?;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| BillError::Archive(e.to_string()))?;
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| BillError::Archive(e.to_string()))?;
        // Entry names are GBK without the UTF-8 flag, so the content tells the files apart.
        let text = decode(&bytes)?;
        if is_detail(&text) {
            return Ok(text);
        }
    }
    Err(BillError::NoDetail)
}

/// Parses a whole bill file.
///
/// # Errors
/// [`BillError`] for a file that is not a trade bill or a row that does not read exactly.
pub fn parse_trade_bill(file: &[u8]) -> Result<Vec<pb::StatementLine>, BillError> {
    let text = detail_text(file)?;
    let mut rows = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let header: Vec<String> = loop {
        match rows.next() {
            Some((_, l)) if l.trim_start().starts_with("支付宝交易号") => {
                break l.split(',').map(|h| h.trim().to_owned()).collect();
            }
            Some(_) => continue,
            None => return Err(BillError::NoDetail),
        }
    };
    // Amount headers end in a full-width "（元）"; match on the name before it.
    let column = |name: &'static str| {
        header
            .iter()
            .position(|h| h == name || h.starts_with(&format!("{name}（")))
            .ok_or(BillError::MissingColumn(name))
    };
    let trade_no = column("支付宝交易号")?;
    let out_trade_no = column("商户订单号")?;
    let kind = column("业务类型")?;
    let finished = column("完成时间")?;
    let amount = column("订单金额")?;
    let request_no = column("退款批次号/请求号")?;
    let mut out = Vec::new();
    for (index, line) in rows {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("");
        let bad = |reason: String| BillError::Line {
            line: index + 1,
            reason,
        };
        let is_refund = match field(kind) {
            "交易" => false,
            "退款" => true,
            // Other business types (e.g. fee adjustments) are not attempts or refunds.
            _ => continue,
        };
        // Refund rows carry negative amounts; the sign is what the business type already says.
        let text = field(amount);
        let fen = parse_yuan(text.strip_prefix('-').unwrap_or(text))
            .map_err(|e| bad(format!("订单金额: {e}")))?;
        let at = NaiveDateTime::parse_from_str(field(finished), "%Y-%m-%d %H:%M:%S")
            .ok()
            .and_then(|t| BEIJING.from_local_datetime(&t).single())
            .map(|t| channel_kit::time::timestamp(t.with_timezone(&Utc)));
        let mut line = pb::StatementLine {
            out_trade_no: field(out_trade_no).to_owned(),
            channel_trade_no: field(trade_no).to_owned(),
            amount: Some(pb::Money {
                amount_minor: fen,
                currency: "CNY".to_owned(),
            }),
            at,
            ..Default::default()
        };
        if is_refund {
            line.out_refund_no = field(request_no).to_owned();
            line.refund_state = pb::RefundState::Succeeded as i32;
        } else {
            line.trade_state = pb::TradeState::Succeeded as i32;
        }
        out.push(line);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const DETAIL: &str = "#支付宝业务明细查询\n#账号：[20880000000000000156]\n#起始日期：[2024年01月01日 00:00:00]   终止日期：[2024年01月02日 00:00:00]\n支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注\n2024010122001499160501589436\t,T20240101000001\t,交易,coffee,2024-01-01 11:59:50,2024-01-01 12:00:00,,,,,buyer@example.com,88.88,88.88,0.00,0.00,0.00,0.00,0.00,,0.00,0.00,,-0.53,0.00,\n2024010122001499160501589436\t,T20240101000001\t,退款,coffee,2024-01-01 13:00:00,2024-01-01 13:00:01,,,,,buyer@example.com,-8.88,-8.88,0.00,0.00,0.00,0.00,0.00,,0.00,0.00,R20240101000001\t,0.05,0.00,\n#-----------------------------------------业务明细列表结束------------------------------------\n#交易合计：1笔，退款合计：1笔\n";

    fn zip_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in files {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn a_gbk_zip_bill_parses_payments_and_refunds_in_fen() {
        let (gbk, _, _) = encoding_rs::GBK.encode(DETAIL);
        let summary = encoding_rs::GBK
            .encode("#支付宝业务汇总查询\n门店编号,门店名称,交易订单总笔数\n")
            .0;
        let file = zip_of(&[
            (
                "20880000000000000156_20240101_summary.csv",
                summary.into_owned(),
            ),
            ("20880000000000000156_20240101_detail.csv", gbk.into_owned()),
        ]);
        let lines = parse_trade_bill(&file).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].out_trade_no, "T20240101000001");
        assert_eq!(lines[0].channel_trade_no, "2024010122001499160501589436");
        assert_eq!(lines[0].trade_state, pb::TradeState::Succeeded as i32);
        assert_eq!(lines[0].amount.as_ref().unwrap().amount_minor, 8888);
        assert_eq!(lines[0].at.as_ref().unwrap().seconds, 1_704_081_600);
        assert_eq!(lines[1].out_refund_no, "R20240101000001");
        assert_eq!(lines[1].refund_state, pb::RefundState::Succeeded as i32);
        assert_eq!(lines[1].amount.as_ref().unwrap().amount_minor, 888);
    }

    #[test]
    fn a_plain_csv_bill_parses_too_and_garbage_is_refused() {
        assert_eq!(parse_trade_bill(DETAIL.as_bytes()).unwrap().len(), 2);
        assert_eq!(parse_trade_bill(b"hello"), Err(BillError::NoDetail));
    }
}
