//! One newtype per identifier, each parsed once at the edge with the rules of its field.
use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use super::validation::FieldError;

/// Server-assigned order id: a UUIDv7, so ids sort roughly by creation time across replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(Uuid);

impl OrderId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Parses the API's textual form (hyphenated UUID).
    pub fn parse(field: &'static str, s: &str) -> Result<Self, FieldError> {
        Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| FieldError::new(field, "must be an order id (a UUID)"))
    }
}

impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for OrderId {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse("order_id", s)
    }
}

/// Defines a string id newtype with a length range and an allowed character class.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr, $allowed:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const MIN_LEN: usize = $min;
            pub const MAX_LEN: usize = $max;

            /// # Errors
            /// A [`FieldError`] naming `field` when the length or a character is out of bounds.
            pub fn parse(field: &'static str, s: &str) -> Result<Self, FieldError> {
                let len = s.chars().count();
                if !($min..=$max).contains(&len) {
                    return Err(FieldError::new(
                        field,
                        format!("must be {}..={} characters, got {}", $min, $max, len),
                    ));
                }
                if !s.chars().all($allowed) {
                    return Err(FieldError::new(field, format!("may only contain {}", $what)));
                }
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// The calling app, from the `x-app-id` metadata.
    AppId,
    1,
    64,
    |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-',
    "lower-case letters, digits, '_' and '-'"
);

string_id!(
    /// The app's own order number. The character set is the intersection of what WeChat
    /// (`out_trade_no`: letters, digits, `_-|*`), Alipay and UnionPay accept, so the number can be
    /// shown at any channel.
    MerchantOrderNo,
    6,
    64,
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '|' | '*'),
    "ASCII letters, digits and '_', '-', '|', '*'"
);

string_id!(
    /// A caller-chosen idempotency key (Stripe-style): printable ASCII without spaces.
    IdempotencyKey,
    1,
    255,
    |c: char| c.is_ascii_graphic(),
    "printable ASCII characters without spaces"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merchant_order_no_bounds_and_charset() {
        assert!(MerchantOrderNo::parse("m", "ORD-2026_11|22*a").is_ok());
        assert!(MerchantOrderNo::parse("m", "short").is_err());
        assert!(MerchantOrderNo::parse("m", &"x".repeat(65)).is_err());
        assert!(MerchantOrderNo::parse("m", "has space1").is_err());
        assert!(MerchantOrderNo::parse("m", "订单号码一二三").is_err());
    }

    #[test]
    fn app_id_is_lower_case() {
        assert!(AppId::parse("x-app-id", "shop-1").is_ok());
        assert!(AppId::parse("x-app-id", "Shop").is_err());
        assert!(AppId::parse("x-app-id", "").is_err());
    }

    #[test]
    fn order_id_round_trips() -> Result<(), FieldError> {
        let id = OrderId::new();
        assert_eq!(id.to_string().parse::<OrderId>()?, id);
        assert!("nope".parse::<OrderId>().is_err());
        Ok(())
    }
}
