//! How Alipay writes amounts (yuan decimals, never rounded) and times (Beijing wall clock,
//! `yyyy-MM-dd HH:mm:ss`).

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};

/// `timestamp`, `notify_time`, `gmt_*`: `yyyy-MM-dd HH:mm:ss`, Beijing time.
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Parses `yyyy-MM-dd HH:mm:ss`.
pub fn parse_timestamp(text: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(text, TIMESTAMP_FORMAT).ok()
}

/// Renders an instant as Alipay does: Beijing wall-clock time, `yyyy-MM-dd HH:mm:ss`.
pub fn format_timestamp(instant: DateTime<Utc>) -> String {
    let beijing = FixedOffset::east_opt(8 * 3600).map(|tz| instant.with_timezone(&tz));
    match beijing {
        Some(local) => local.format(TIMESTAMP_FORMAT).to_string(),
        None => instant.format(TIMESTAMP_FORMAT).to_string(),
    }
}

/// Why a yuan string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmountError {
    /// Not `digits[.d[d]]` with no sign, no exponent and no superfluous leading zero.
    #[error("{0:?} is not a yuan amount with at most two decimals")]
    Syntax(String),
    /// Too large to count in fen.
    #[error("{0:?} overflows")]
    Overflow(String),
    /// Outside Alipay's trade range [0.01, 100000000].
    #[error("{0} fen is outside [0.01, 100000000] yuan")]
    OutOfRange(u64),
}

/// Largest trade amount Alipay accepts, in fen (100000000 yuan).
pub const MAX_TRADE_FEN: u64 = 10_000_000_000;

/// `12345` fen → `"123.45"`; always two decimals, as Alipay writes amounts.
pub fn format_yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// `"123.45"` / `"123.4"` / `"123"` → fen. No sign, exponent, spaces, or leading zeros
/// (`"0.5"` is fine, `"01"` is not); at most two decimals, never rounded.
///
/// # Errors
/// [`AmountError::Syntax`] or [`AmountError::Overflow`].
pub fn parse_yuan(text: &str) -> Result<u64, AmountError> {
    let syntax = || AmountError::Syntax(text.to_owned());
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let whole_ok = !whole.is_empty() && digits(whole) && (whole == "0" || !whole.starts_with('0'));
    let fraction_ok =
        digits(fraction) && fraction.len() <= 2 && (!fraction.is_empty() || !text.contains('.'));
    if !whole_ok || !fraction_ok {
        return Err(syntax());
    }
    let cents: u64 = match fraction.len() {
        0 => 0,
        1 => u64::from(fraction.as_bytes()[0] - b'0') * 10,
        _ => fraction.parse().map_err(|_| syntax())?,
    };
    whole
        .parse::<u64>()
        .ok()
        .and_then(|w| w.checked_mul(100))
        .and_then(|w| w.checked_add(cents))
        .ok_or_else(|| AmountError::Overflow(text.to_owned()))
}

/// [`parse_yuan`] plus Alipay's trade range [0.01, 100000000] yuan.
///
/// # Errors
/// As [`parse_yuan`], and [`AmountError::OutOfRange`].
pub fn parse_trade_amount(text: &str) -> Result<u64, AmountError> {
    let fen = parse_yuan(text)?;
    if fen == 0 || fen > MAX_TRADE_FEN {
        return Err(AmountError::OutOfRange(fen));
    }
    Ok(fen)
}

#[cfg(test)]
mod tests;
