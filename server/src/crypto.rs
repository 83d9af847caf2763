//! Encryption at rest of the fields that identify a person (refund reasons people type, operator
//! notes) and the keyed hash that replaces them where only equality is needed (the payer id).
//!
//! A sealed value is the text `<key id>:<base64(nonce ‖ AES-256-GCM ciphertext ‖ tag)>`, with a
//! fresh 96-bit random nonce per value and associated data naming its table, column and row, so
//! a ciphertext copied into another row or column does not open. Several keys are loaded at once
//! (the last one listed is the active one, used for every new value), so a rotation is: add the
//! new key everywhere, restart replicas one by one, run `payd reencrypt`, drop the old key.
use std::sync::{Arc, LazyLock, RwLock};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Why a key ring or a sealed value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("data key entry {0}: expected <id>:<base64 of 32 bytes>")]
    BadKeyEntry(usize),
    #[error("data key {0} is listed twice")]
    DuplicateKey(String),
    #[error("no data key is configured")]
    NoKeys,
    #[error("the lookup (HMAC) key must be base64 of at least 32 bytes")]
    BadHmacKey,
    #[error("sealed value is not <key id>:<base64>")]
    Malformed,
    #[error("sealed under key {0}, which is not loaded")]
    UnknownKey(String),
    #[error("sealed value does not open under key {0} (altered, or moved from another row)")]
    Rejected(String),
}

/// The loaded data keys (oldest first, the last one active) and the lookup key.
pub struct DataKeys {
    keys: Vec<(String, Aes256Gcm, [u8; 32])>,
    hmac_key: Vec<u8>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.0.as_str()).collect();
        f.debug_struct("DataKeys").field("ids", &ids).finish()
    }
}

/// The development key ring's bytes: public, so production mode refuses them.
fn development_bytes(label: &str) -> [u8; 32] {
    Sha256::digest(format!("payd development {label}; not a secret")).into()
}

/// The key id of the development data key.
pub const DEVELOPMENT_KEY_ID: &str = "dev";

impl DataKeys {
    /// Parses `id:base64,id:base64` (commas or newlines; the last entry is active) and the
    /// base64 lookup key.
    ///
    /// # Errors
    /// A malformed entry (numbered from 1), a key that is not 32 bytes, a repeated id.
    pub fn parse(keys: &str, hmac_key: &str) -> Result<Self, CryptoError> {
        let mut ring: Vec<(String, [u8; 32])> = Vec::new();
        for (i, entry) in keys
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (id, b64) = entry
                .split_once(':')
                .ok_or(CryptoError::BadKeyEntry(i + 1))?;
            let id = id.trim();
            let valid_id = !id.is_empty()
                && id.len() <= 16
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let bytes: [u8; 32] = B64
                .decode(b64.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .filter(|_| valid_id)
                .ok_or(CryptoError::BadKeyEntry(i + 1))?;
            if ring.iter().any(|(k, _)| k == id) {
                return Err(CryptoError::DuplicateKey(id.to_owned()));
            }
            ring.push((id.to_owned(), bytes));
        }
        let hmac_key = B64
            .decode(hmac_key.trim())
            .ok()
            .filter(|k| k.len() >= 32)
            .ok_or(CryptoError::BadHmacKey)?;
        Self::from_bytes(ring, hmac_key)
    }

    fn from_bytes(ring: Vec<(String, [u8; 32])>, hmac_key: Vec<u8>) -> Result<Self, CryptoError> {
        if ring.is_empty() {
            return Err(CryptoError::NoKeys);
        }
        let keys = ring
            .into_iter()
            .map(|(id, bytes)| {
                let cipher = <Aes256Gcm as KeyInit>::new(&bytes.into());
                (id, cipher, bytes)
            })
            .collect();
        Ok(Self { keys, hmac_key })
    }

    /// The ring a developer machine and the tests use when none is configured. Its keys are
    /// derived from public strings: production mode refuses it.
    pub fn development() -> Self {
        Self {
            keys: vec![(
                DEVELOPMENT_KEY_ID.to_owned(),
                <Aes256Gcm as KeyInit>::new(&development_bytes("data key").into()),
                development_bytes("data key"),
            )],
            hmac_key: development_bytes("lookup key").to_vec(),
        }
    }

    /// What makes this ring unfit for production, if anything: the public development keys, a
    /// key with few distinct bytes (a typed password, a repeated byte), or a lookup key that is
    /// also a data key.
    pub fn weakness(&self) -> Option<String> {
        let weak = |b: &[u8]| {
            let mut seen = [false; 256];
            b.iter().for_each(|x| seen[usize::from(*x)] = true);
            seen.iter().filter(|s| **s).count() < 16
        };
        for (id, _, bytes) in &self.keys {
            if *bytes == development_bytes("data key") {
                return Some(format!("data key {id} is the public development key"));
            }
            if weak(bytes) {
                return Some(format!(
                    "data key {id} has fewer than 16 distinct bytes (not random)"
                ));
            }
            if self.hmac_key == bytes {
                return Some(format!("the lookup key is the same as data key {id}"));
            }
        }
        if self.hmac_key == development_bytes("lookup key") {
            return Some("the lookup key is the public development key".to_owned());
        }
        if weak(&self.hmac_key) {
            return Some("the lookup key has fewer than 16 distinct bytes (not random)".to_owned());
        }
        None
    }

    /// The id of the key new values are sealed under.
    pub fn active_id(&self) -> &str {
        self.keys.last().map_or("", |k| k.0.as_str())
    }

    /// The loaded key ids, oldest first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.0.as_str()).collect()
    }

    /// Seals `plaintext` under the active key, bound to `aad` (see [`aad`]).
    ///
    /// # Errors
    /// Only if the plaintext exceeds AES-GCM's limit (64 GiB), which no field here can.
    pub fn seal(&self, aad: &[u8], plaintext: &str) -> Result<String, CryptoError> {
        let (id, cipher, _) = self.keys.last().ok_or(CryptoError::NoKeys)?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad,
                },
            )
            .map_err(|_| CryptoError::Rejected(id.clone()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("{id}:{}", B64.encode(out)))
    }

    /// Opens a value sealed under any loaded key.
    ///
    /// # Errors
    /// `Malformed`, `UnknownKey` (the key was dropped before its rows were re-encrypted),
    /// `Rejected` (altered, or bound to another row or column).
    pub fn open(&self, aad: &[u8], sealed: &str) -> Result<String, CryptoError> {
        let (id, b64) = sealed.split_once(':').ok_or(CryptoError::Malformed)?;
        let (_, cipher, _) = self
            .keys
            .iter()
            .find(|k| k.0 == id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        let raw = B64.decode(b64).map_err(|_| CryptoError::Malformed)?;
        if raw.len() < 12 + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = raw.split_at(12);
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| CryptoError::Rejected(id.to_owned()))?;
        String::from_utf8(plain).map_err(|_| CryptoError::Rejected(id.to_owned()))
    }

    /// A keyed hash for equality checks on personal data (HMAC-SHA256 under the lookup key,
    /// separated by `purpose`): unlike a plain SHA-256, it cannot be reversed by hashing every
    /// likely value (phone numbers, openids seen elsewhere) without the key.
    pub fn lookup_hash(&self, purpose: &str, value: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.hmac_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        let mut out = vec![LOOKUP_HASH_VERSION];
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }
}

/// First byte of every [`DataKeys::lookup_hash`]: tells it from the 32-byte plain SHA-256
/// digests written before keyed hashes (those are 32 bytes long, these 33).
pub const LOOKUP_HASH_VERSION: u8 = 1;

/// The key id a sealed value names, if it is one.
pub fn key_id(sealed: &str) -> Option<&str> {
    sealed.split_once(':').map(|(id, _)| id)
}

/// Associated data binding a sealed value to its table, column and row.
pub fn aad(table: &str, column: &str, row: &impl std::fmt::Display) -> Vec<u8> {
    format!("payd:{table}.{column}:{row}").into_bytes()
}

static INSTALLED: LazyLock<RwLock<Arc<DataKeys>>> =
    LazyLock::new(|| RwLock::new(Arc::new(DataKeys::development())));

/// Makes `keys` the process's key ring (at start, from the settings). Storage reads it when it
/// seals and opens values, like the process's one pool of connections, so no storage function
/// needs another parameter.
pub fn install(keys: Arc<DataKeys>) {
    match INSTALLED.write() {
        Ok(mut k) => *k = keys,
        Err(poisoned) => *poisoned.into_inner() = keys,
    }
}

/// The process's key ring (the development ring until [`install`] is called).
pub fn keys() -> Arc<DataKeys> {
    match INSTALLED.read() {
        Ok(k) => Arc::clone(&k),
        Err(poisoned) => Arc::clone(&poisoned.into_inner()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(byte_seed: u8) -> String {
        let bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7) ^ byte_seed).collect();
        B64.encode(bytes)
    }

    fn ring(spec: &[(&str, u8)]) -> DataKeys {
        let keys: Vec<String> = spec
            .iter()
            .map(|(id, s)| format!("{id}:{}", key(*s)))
            .collect();
        DataKeys::parse(&keys.join(","), &key(200)).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_and_holds_no_plaintext() {
        let k = ring(&[("k1", 1)]);
        let aad = aad("refunds", "reason", &"r-1");
        let sealed = k.seal(&aad, "call Li Lei at 13800138000").unwrap();
        assert!(sealed.starts_with("k1:"));
        assert!(!sealed.contains("13800138000"));
        assert_eq!(k.open(&aad, &sealed).unwrap(), "call Li Lei at 13800138000");
        // A fresh nonce every time: equal plaintexts do not give equal ciphertexts.
        assert_ne!(sealed, k.seal(&aad, "call Li Lei at 13800138000").unwrap());
    }

    #[test]
    fn a_value_moved_to_another_row_or_altered_does_not_open() {
        let k = ring(&[("k1", 1)]);
        let sealed = k.seal(&aad("refunds", "reason", &"r-1"), "x").unwrap();
        assert_eq!(
            k.open(&aad("refunds", "reason", &"r-2"), &sealed),
            Err(CryptoError::Rejected("k1".into()))
        );
        let mut raw = B64.decode(&sealed[3..]).unwrap();
        raw[20] ^= 1;
        let altered = format!("k1:{}", B64.encode(raw));
        assert!(k.open(&aad("refunds", "reason", &"r-1"), &altered).is_err());
    }

    #[test]
    fn old_keys_still_open_and_the_last_key_seals() {
        let old = ring(&[("k1", 1)]);
        let a = aad("t", "c", &1);
        let sealed = old.seal(&a, "v").unwrap();
        let both = ring(&[("k1", 1), ("k2", 2)]);
        assert_eq!(both.active_id(), "k2");
        assert_eq!(both.open(&a, &sealed).unwrap(), "v");
        assert!(both.seal(&a, "v").unwrap().starts_with("k2:"));
        let new = ring(&[("k2", 2)]);
        assert_eq!(
            new.open(&a, &sealed),
            Err(CryptoError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn bad_rings_are_refused_by_entry() {
        assert_eq!(
            DataKeys::parse("k1:short", &key(9)).unwrap_err(),
            CryptoError::BadKeyEntry(1)
        );
        let dup = format!("k1:{},k1:{}", key(1), key(2));
        assert_eq!(
            DataKeys::parse(&dup, &key(9)).unwrap_err(),
            CryptoError::DuplicateKey("k1".into())
        );
        assert_eq!(
            DataKeys::parse("", &key(9)).unwrap_err(),
            CryptoError::NoKeys
        );
        assert_eq!(
            DataKeys::parse(&format!("k1:{}", key(1)), "c2hvcnQ=").unwrap_err(),
            CryptoError::BadHmacKey
        );
    }

    #[test]
    fn weak_and_development_keys_are_named() {
        assert!(
            DataKeys::development()
                .weakness()
                .unwrap()
                .contains("development")
        );
        let zeros = B64.encode([0u8; 32]);
        let k = DataKeys::parse(&format!("k1:{zeros}"), &key(9)).unwrap();
        assert!(k.weakness().unwrap().contains("data key k1"));
        let same = DataKeys::parse(&format!("k1:{}", key(1)), &key(1)).unwrap();
        assert!(same.weakness().unwrap().contains("lookup key"));
        assert_eq!(ring(&[("k1", 1)]).weakness(), None);
    }

    #[test]
    fn the_lookup_hash_is_keyed_and_versioned() {
        let a = ring(&[("k1", 1)]);
        let h = a.lookup_hash("payer_id", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
        assert_eq!(h.len(), 33);
        assert_eq!(h[0], LOOKUP_HASH_VERSION);
        assert_ne!(
            &h[1..],
            Sha256::digest("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o").as_slice()
        );
        let other_key = DataKeys::parse(&format!("k1:{}", key(1)), &key(201)).unwrap();
        assert_ne!(
            h,
            other_key.lookup_hash("payer_id", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
        );
    }
}
