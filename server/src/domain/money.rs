//! Money as an integer count of minor units plus an ISO 4217 currency. Arithmetic is checked and
//! refuses mixed currencies; there is no float anywhere near an amount.
use std::fmt;
use std::str::FromStr;

/// The currencies the platform accepts. Each knows its minor-unit exponent so channels that speak
/// decimal strings can convert exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Currency {
    Cny,
    Hkd,
    Usd,
    Eur,
    Gbp,
    Jpy,
    Sgd,
    Aud,
    Cad,
    Krw,
    Mop,
    Twd,
}

impl Currency {
    pub const ALL: [Currency; 12] = [
        Currency::Cny,
        Currency::Hkd,
        Currency::Usd,
        Currency::Eur,
        Currency::Gbp,
        Currency::Jpy,
        Currency::Sgd,
        Currency::Aud,
        Currency::Cad,
        Currency::Krw,
        Currency::Mop,
        Currency::Twd,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Currency::Cny => "CNY",
            Currency::Hkd => "HKD",
            Currency::Usd => "USD",
            Currency::Eur => "EUR",
            Currency::Gbp => "GBP",
            Currency::Jpy => "JPY",
            Currency::Sgd => "SGD",
            Currency::Aud => "AUD",
            Currency::Cad => "CAD",
            Currency::Krw => "KRW",
            Currency::Mop => "MOP",
            Currency::Twd => "TWD",
        }
    }

    /// Digits after the decimal point in the currency's major unit (ISO 4217 "minor unit").
    pub fn exponent(self) -> u32 {
        match self {
            Currency::Jpy | Currency::Krw => 0,
            Currency::Cny
            | Currency::Hkd
            | Currency::Usd
            | Currency::Eur
            | Currency::Gbp
            | Currency::Sgd
            | Currency::Aud
            | Currency::Cad
            | Currency::Mop
            | Currency::Twd => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported currency {0:?}: expected an upper-case ISO 4217 code the platform supports")]
pub struct UnsupportedCurrency(pub String);

impl FromStr for Currency {
    type Err = UnsupportedCurrency;

    /// Exact, upper-case match only: "cny" is refused rather than guessed at.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::ALL
            .into_iter()
            .find(|c| c.code() == s)
            .ok_or_else(|| UnsupportedCurrency(s.to_owned()))
    }
}

/// A non-negative amount in minor units of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("amount must not be negative")]
    Negative,
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount overflow")]
    Overflow,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if minor < 0 {
            return Err(MoneyError::Negative);
        }
        Ok(Self { minor, currency })
    }

    pub fn minor(self) -> i64 {
        self.minor
    }

    pub fn currency(self) -> Currency {
        self.currency
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, ..self })
    }

    /// Subtraction that refuses to go below zero: a refund can never exceed what remains.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Money::new(minor, self.currency)
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (minor units)", self.minor, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_round_trip() {
        for c in Currency::ALL {
            assert_eq!(c.code().parse::<Currency>(), Ok(c));
        }
    }

    #[test]
    fn lower_case_and_unknown_currencies_are_refused() {
        assert!("cny".parse::<Currency>().is_err());
        assert!("XXX".parse::<Currency>().is_err());
        assert!("".parse::<Currency>().is_err());
    }

    #[test]
    fn arithmetic_refuses_mixed_currencies_and_negative_results() -> Result<(), MoneyError> {
        let a = Money::new(100, Currency::Cny)?;
        let b = Money::new(30, Currency::Cny)?;
        assert_eq!(a.checked_sub(b)?.minor(), 70);
        assert_eq!(a.checked_add(b)?.minor(), 130);
        assert_eq!(b.checked_sub(a), Err(MoneyError::Negative));
        let usd = Money::new(1, Currency::Usd)?;
        assert_eq!(
            a.checked_add(usd),
            Err(MoneyError::CurrencyMismatch(Currency::Cny, Currency::Usd))
        );
        assert_eq!(Money::new(-1, Currency::Cny), Err(MoneyError::Negative));
        let max = Money::new(i64::MAX, Currency::Cny)?;
        assert_eq!(max.checked_add(b), Err(MoneyError::Overflow));
        Ok(())
    }
}
