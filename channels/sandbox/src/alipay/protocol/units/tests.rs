#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn yuan_strings_convert_exactly() {
    assert_eq!(format_yuan(1), "0.01");
    assert_eq!(format_yuan(8888), "88.88");
    assert_eq!(format_yuan(10_000_000_000), "100000000.00");
    assert_eq!(parse_yuan("0.01"), Ok(1));
    assert_eq!(parse_yuan("88.8"), Ok(8880));
    assert_eq!(parse_yuan("100"), Ok(10_000));
    assert_eq!(parse_yuan("0"), Ok(0));
    for bad in [
        "", ".5", "1.", "01", "-1", "+1", "1.234", "1e2", " 1", "1,00", "0x10", "1.-1",
    ] {
        assert_eq!(
            parse_yuan(bad),
            Err(AmountError::Syntax(bad.into())),
            "{bad}"
        );
    }
    assert!(matches!(
        parse_yuan("999999999999999999999"),
        Err(AmountError::Overflow(_))
    ));
    assert_eq!(parse_trade_amount("0.00"), Err(AmountError::OutOfRange(0)));
    assert_eq!(
        parse_trade_amount("100000000.01"),
        Err(AmountError::OutOfRange(10_000_000_001))
    );
    assert_eq!(parse_trade_amount("100000000"), Ok(MAX_TRADE_FEN));
    for fen in [0, 1, 9, 10, 99, 100, 101, 123_456] {
        assert_eq!(parse_yuan(&format_yuan(fen)), Ok(fen));
    }
}

#[test]
fn timestamps_are_rendered_in_beijing_time() {
    let instant = DateTime::parse_from_rfc3339("2023-12-21T06:54:37Z")
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(format_timestamp(instant), "2023-12-21 14:54:37");
    assert!(parse_timestamp("2023-12-21 14:54:37").is_some());
    assert!(parse_timestamp("2023-12-21").is_none());
}
