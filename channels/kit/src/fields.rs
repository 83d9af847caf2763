//! Checks every adapter makes on the core's requests before talking to its platform.
use crate::{ChannelError, pb};

/// A required text field, or `InvalidArgument` naming it.
pub fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, ChannelError> {
    if value.is_empty() {
        Err(ChannelError::InvalidArgument(format!(
            "{field} is required"
        )))
    } else {
        Ok(value)
    }
}

/// A positive CNY amount in fen (the only currency these domestic channels take), or
/// `InvalidArgument` naming the field and the platform.
pub fn cny_fen(
    amount: Option<&pb::Money>,
    field: &str,
    platform: &str,
) -> Result<i64, ChannelError> {
    let amount =
        amount.ok_or_else(|| ChannelError::InvalidArgument(format!("{field} is required")))?;
    if amount.currency != "CNY" {
        return Err(ChannelError::InvalidArgument(format!(
            "{field}: {platform} takes only CNY here, not {:?}",
            amount.currency
        )));
    }
    if amount.amount_minor <= 0 {
        return Err(ChannelError::InvalidArgument(format!(
            "{field} must be positive"
        )));
    }
    Ok(amount.amount_minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_must_be_positive_cny() {
        let a = |m: i64, c: &str| pb::Money {
            amount_minor: m,
            currency: c.into(),
        };
        assert_eq!(cny_fen(Some(&a(1, "CNY")), "amount", "X").ok(), Some(1));
        assert!(cny_fen(Some(&a(0, "CNY")), "amount", "X").is_err());
        assert!(cny_fen(Some(&a(1, "USD")), "amount", "X").is_err());
        assert!(cny_fen(None, "amount", "X").is_err());
        assert!(required("", "f").is_err());
        assert_eq!(required("x", "f").ok(), Some("x"));
    }
}
