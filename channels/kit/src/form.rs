//! `application/x-www-form-urlencoded` as the adapters use it: encoding the requests sent to
//! Alipay's and UnionPay's gateways (and Alipay's page-pay URL and app `order_string`), decoding
//! both platforms' notifications. UnionPay's synchronous answers are `k=v&…` without URL-encoding
//! and are read by the UnionPay crate's own parser, not here. Signatures cover the decoded values,
//! so decoding is strict: exactly once, no bad escapes, no duplicate keys.
use std::collections::BTreeMap;

/// A form body that cannot be decoded unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("bad percent escape in {0:?}")]
    Escape(String),
    #[error("decoded form value is not UTF-8")]
    Utf8,
    /// Two values for one key would make the signed string ambiguous.
    #[error("duplicate form field {0:?}")]
    Duplicate(String),
}

/// Encodes signed parameters as a form body (or a query string): unreserved characters
/// `A-Za-z0-9-._*` as they are, space as `+`, everything else percent-escaped.
pub fn encode(params: &BTreeMap<String, String>) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

/// Decodes a form body exactly once (`+` is a space, `%2B` a plus).
///
/// # Errors
/// [`FormError`]: a malformed escape, non-UTF-8 bytes, or a key given twice. (The
/// `form_urlencoded` parser is lenient about all three, which is wrong for signed content.)
pub fn parse(body: &str) -> Result<BTreeMap<String, String>, FormError> {
    let mut params = BTreeMap::new();
    for pair in body.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key)?;
        let value = percent_decode(value)?;
        if params.contains_key(&key) {
            return Err(FormError::Duplicate(key));
        }
        params.insert(key, value);
    }
    Ok(params)
}

fn percent_decode(text: &str) -> Result<String, FormError> {
    let escape = || FormError::Escape(text.to_owned());
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(escape)?;
                let hex = std::str::from_utf8(hex).map_err(|_| escape())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| escape())?);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FormError::Utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_ambiguity() {
        let params: BTreeMap<String, String> = [
            ("a".to_owned(), "x y+z/测".to_owned()),
            ("b*-._".to_owned(), String::new()),
        ]
        .into();
        let body = encode(&params);
        assert_eq!(body, "a=x+y%2Bz%2F%E6%B5%8B&b*-._=");
        assert_eq!(parse(&body), Ok(params));
        assert_eq!(parse("a=1&a=2"), Err(FormError::Duplicate("a".into())));
        assert!(matches!(parse("a=%zz"), Err(FormError::Escape(_))));
        assert!(matches!(parse("a=%4"), Err(FormError::Escape(_))));
        assert_eq!(parse("a=%FF"), Err(FormError::Utf8));
    }
}
