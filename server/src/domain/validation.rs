//! Validated request values. Parsing happens once, at the edge; everything downstream takes these
//! types and never re-validates.
use std::collections::BTreeMap;
use std::time::Duration;

use super::ids::MerchantOrderNo;
use super::money::{Currency, Money};

/// A request field that failed validation: the field's name and what was wrong, for an
/// `INVALID_ARGUMENT` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Limits that come from configuration.
#[derive(Debug, Clone, Copy)]
pub struct OrderLimits {
    /// Largest accepted order amount, in minor units of any currency.
    pub max_amount_minor: i64,
    pub default_expiry: Duration,
    pub min_expiry: Duration,
    pub max_expiry: Duration,
}

impl Default for OrderLimits {
    fn default() -> Self {
        Self {
            max_amount_minor: 10_000_000_000,
            default_expiry: Duration::from_secs(30 * 60),
            min_expiry: Duration::from_secs(60),
            max_expiry: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What the payer sees: 1..=128 characters, no control characters (they break channel signatures
/// and statement files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        if s.trim().is_empty() {
            return Err(FieldError::new("subject", "must not be empty"));
        }
        let n = s.chars().count();
        if n > Self::MAX_CHARS {
            return Err(FieldError::new(
                "subject",
                format!("must be at most {} characters, got {n}", Self::MAX_CHARS),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(FieldError::new(
                "subject",
                "must not contain control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub const METADATA_MAX_ENTRIES: usize = 16;
pub const METADATA_KEY_MAX: usize = 40;
pub const METADATA_VALUE_MAX: usize = 256;

/// Validates caller metadata: a small map of short, printable keys and values.
pub fn parse_metadata(
    m: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, FieldError> {
    if m.len() > METADATA_MAX_ENTRIES {
        return Err(FieldError::new(
            "metadata",
            format!("at most {METADATA_MAX_ENTRIES} entries, got {}", m.len()),
        ));
    }
    for (k, v) in m {
        let key_ok = !k.is_empty()
            && k.len() <= METADATA_KEY_MAX
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !key_ok {
            return Err(FieldError::new(
                "metadata",
                format!("key {k:?} must be 1..={METADATA_KEY_MAX} characters of [A-Za-z0-9_.-]"),
            ));
        }
        if v.chars().count() > METADATA_VALUE_MAX || v.chars().any(char::is_control) {
            return Err(FieldError::new(
                format!("metadata[{k}]"),
                format!(
                    "value must be at most {METADATA_VALUE_MAX} characters without control characters"
                ),
            ));
        }
    }
    Ok(m.clone())
}

/// A validated CreateOrder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub merchant_order_no: MerchantOrderNo,
    pub amount: Money,
    pub subject: Subject,
    pub expires_in: Duration,
    pub metadata: BTreeMap<String, String>,
}

/// The raw fields of a CreateOrder, as they arrive.
#[derive(Debug, Clone, Copy)]
pub struct RawNewOrder<'a> {
    pub merchant_order_no: &'a str,
    /// `None` when the request has no amount at all.
    pub amount: Option<(i64, &'a str)>,
    pub subject: &'a str,
    pub expires_in_seconds: i64,
    pub metadata: &'a BTreeMap<String, String>,
}

impl NewOrder {
    /// # Errors
    /// The first invalid field, named as in the API (`amount.amount_minor`, `subject`, …).
    pub fn parse(raw: RawNewOrder<'_>, limits: &OrderLimits) -> Result<Self, FieldError> {
        let merchant_order_no = MerchantOrderNo::parse("merchant_order_no", raw.merchant_order_no)?;
        let (minor, code) = raw
            .amount
            .ok_or_else(|| FieldError::new("amount", "is required"))?;
        if minor <= 0 {
            return Err(FieldError::new(
                "amount.amount_minor",
                format!("must be greater than 0, got {minor}"),
            ));
        }
        if minor > limits.max_amount_minor {
            return Err(FieldError::new(
                "amount.amount_minor",
                format!("must be at most {}, got {minor}", limits.max_amount_minor),
            ));
        }
        let currency: Currency = code
            .parse()
            .map_err(|e: super::money::UnsupportedCurrency| {
                FieldError::new("amount.currency", e.to_string())
            })?;
        let amount = Money::new(minor, currency)
            .map_err(|e| FieldError::new("amount.amount_minor", e.to_string()))?;
        let subject = Subject::parse(raw.subject)?;
        let expires_in = match raw.expires_in_seconds {
            0 => limits.default_expiry,
            s if s < 0 => {
                return Err(FieldError::new(
                    "expires_in_seconds",
                    format!("must not be negative, got {s}"),
                ));
            }
            s => {
                let d = Duration::from_secs(s.unsigned_abs());
                if d < limits.min_expiry || d > limits.max_expiry {
                    return Err(FieldError::new(
                        "expires_in_seconds",
                        format!(
                            "must be {}..={} (or 0 for the default), got {s}",
                            limits.min_expiry.as_secs(),
                            limits.max_expiry.as_secs()
                        ),
                    ));
                }
                d
            }
        };
        let metadata = parse_metadata(raw.metadata)?;
        Ok(Self {
            merchant_order_no,
            amount,
            subject,
            expires_in,
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(m: &'a BTreeMap<String, String>) -> RawNewOrder<'a> {
        RawNewOrder {
            merchant_order_no: "ORDER-0001",
            amount: Some((8888, "CNY")),
            subject: "coffee",
            expires_in_seconds: 0,
            metadata: m,
        }
    }

    #[test]
    fn a_valid_order_parses_with_the_default_expiry() -> Result<(), FieldError> {
        let m = BTreeMap::new();
        let o = NewOrder::parse(raw(&m), &OrderLimits::default())?;
        assert_eq!(o.amount.minor(), 8888);
        assert_eq!(o.expires_in, Duration::from_secs(1800));
        Ok(())
    }

    #[test]
    fn each_bad_field_is_named() {
        let m = BTreeMap::new();
        let l = OrderLimits::default();
        let cases: Vec<(RawNewOrder<'_>, &str)> = vec![
            (
                RawNewOrder {
                    amount: Some((0, "CNY")),
                    ..raw(&m)
                },
                "amount.amount_minor",
            ),
            (
                RawNewOrder {
                    amount: Some((i64::MAX, "CNY")),
                    ..raw(&m)
                },
                "amount.amount_minor",
            ),
            (
                RawNewOrder {
                    amount: Some((1, "cny")),
                    ..raw(&m)
                },
                "amount.currency",
            ),
            (
                RawNewOrder {
                    amount: None,
                    ..raw(&m)
                },
                "amount",
            ),
            (
                RawNewOrder {
                    subject: "\u{7}",
                    ..raw(&m)
                },
                "subject",
            ),
            (
                RawNewOrder {
                    expires_in_seconds: 59,
                    ..raw(&m)
                },
                "expires_in_seconds",
            ),
            (
                RawNewOrder {
                    expires_in_seconds: -5,
                    ..raw(&m)
                },
                "expires_in_seconds",
            ),
            (
                RawNewOrder {
                    merchant_order_no: "a b c d",
                    ..raw(&m)
                },
                "merchant_order_no",
            ),
        ];
        for (r, field) in cases {
            match NewOrder::parse(r, &l) {
                Err(e) => assert_eq!(e.field, field, "{e}"),
                Ok(o) => panic!("accepted {o:?}"),
            }
        }
    }
}
