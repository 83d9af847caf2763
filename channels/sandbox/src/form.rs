//! `application/x-www-form-urlencoded` for the Alipay and UnionPay stand-ins: decode a body or
//! query string exactly once into a sorted parameter map, and encode one back.
//!
//! Both platforms sign the *decoded* values sorted by key, so the map is a `BTreeMap` (byte order
//! of UTF-8 keys equals ASCII order for the ASCII keys these protocols use).

use std::collections::BTreeMap;

/// Decoded parameters, sorted by key.
pub type Params = BTreeMap<String, String>;

/// Why a form body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    /// A `%` not followed by two hex digits.
    #[error("bad percent escape at byte {position}")]
    BadEscape {
        /// Byte offset of the `%` in the input.
        position: usize,
    },
    /// The decoded bytes are not UTF-8 (both platforms use `charset=utf-8` here).
    #[error("decoded value is not UTF-8")]
    NotUtf8,
    /// The same key appeared twice; a signature over the sorted map would be ambiguous.
    #[error("parameter {0:?} appears more than once")]
    DuplicateKey(String),
    /// A pair with an empty key, such as `=x`.
    #[error("empty parameter name")]
    EmptyKey,
}

/// Decodes `a=1&b=x+y%2B` into a sorted map: `+` becomes a space and `%XX` a byte, once.
///
/// A pair without `=` decodes to an empty value. Empty segments (`a=1&&b=2`) are skipped.
///
/// # Errors
/// [`FormError`] for bad escapes, non-UTF-8 values, duplicate or empty keys.
pub fn decode(input: &str) -> Result<Params, FormError> {
    let mut params = Params::new();
    let mut offset = 0;
    for segment in input.split('&') {
        let segment_offset = offset;
        offset += segment.len() + 1;
        if segment.is_empty() {
            continue;
        }
        let (raw_key, raw_value) = segment.split_once('=').unwrap_or((segment, ""));
        let key = unescape(raw_key, segment_offset)?;
        if key.is_empty() {
            return Err(FormError::EmptyKey);
        }
        let value = unescape(raw_value, segment_offset + raw_key.len() + 1)?;
        if params.contains_key(&key) {
            return Err(FormError::DuplicateKey(key));
        }
        params.insert(key, value);
    }
    Ok(params)
}

fn unescape(raw: &str, base: usize) -> Result<String, FormError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16));
                let lo = bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => return Err(FormError::BadEscape { position: base + i }),
                }
                i += 3;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| FormError::NotUtf8)
}

/// Encodes pairs in the given order: unreserved bytes (`A-Z a-z 0-9 - . _ ~`) stay, a space
/// becomes `+`, everything else becomes `%XX` with upper-case hex.
pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (key, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        escape_into(key, &mut out);
        out.push('=');
        escape_into(value, &mut out);
    }
    out
}

fn escape_into(text: &str, out: &mut String) {
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn plus_and_percent_are_decoded_exactly_once() {
        let params =
            decode("subject=yansongda%2B%E6%B5%8B%E8%AF%95+-+1&t=2023-12-21+14%3A48%3A44").unwrap();
        assert_eq!(params["subject"], "yansongda+测试 - 1");
        assert_eq!(params["t"], "2023-12-21 14:48:44");
    }

    #[test]
    fn encoding_then_decoding_gives_the_same_map() {
        let mut params = Params::new();
        params.insert("biz_content".into(), r#"{"a":"b&c=d"}"#.into());
        params.insert("subject".into(), "x+y 测试%".into());
        let body = encode(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(decode(&body).unwrap(), params);
    }

    #[test]
    fn duplicates_bad_escapes_and_bad_utf8_are_refused() {
        assert_eq!(decode("a=1&a=2"), Err(FormError::DuplicateKey("a".into())));
        assert_eq!(decode("a=%4"), Err(FormError::BadEscape { position: 2 }));
        assert_eq!(decode("a=%FF"), Err(FormError::NotUtf8));
        assert_eq!(decode("=1"), Err(FormError::EmptyKey));
    }
}
