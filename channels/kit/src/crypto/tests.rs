//! Cross-verification against the `rsa` crate (an independent implementation): PKCS#1 v1.5 is
//! deterministic, so both must produce the same bytes, and each must verify the other's.
#![allow(clippy::unwrap_used)]

use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
use rsa::signature::{SignatureEncoding as _, Signer as _, Verifier as _};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

use super::*;

fn rsa_key(bits: usize) -> RsaPrivateKey {
    RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).unwrap()
}

#[test]
fn aws_lc_and_the_rsa_crate_sign_the_same_bytes_and_verify_each_other() {
    let key = rsa_key(2048);
    let der = key.to_pkcs8_der().unwrap();
    let signer = RsaSigningKey::from_pkcs8_der(der.as_bytes()).unwrap();
    let verifier = VerifyingKey::<Sha256>::new(RsaPublicKey::from(&key));
    for message in [
        &b""[..],
        b"GET\n/v3/certificates\n1554208460\nNONCE\n\n",
        &[0xff; 5000],
    ] {
        let ours = signer.sign_sha256(message).unwrap();
        assert_eq!(ours.len(), 256);
        verifier
            .verify(message, &Signature::try_from(ours.as_slice()).unwrap())
            .unwrap();
        let theirs = SigningKey::<Sha256>::new(key.clone())
            .sign(message)
            .to_vec();
        assert_eq!(ours, theirs, "PKCS#1 v1.5 is deterministic");
        assert_eq!(
            signer.sign_sha256_base64(message).unwrap(),
            BASE64.encode(&theirs)
        );
    }
    let tampered = signer.sign_sha256(b"amount=1").unwrap();
    assert!(
        verifier
            .verify(
                b"amount=2",
                &Signature::try_from(tampered.as_slice()).unwrap()
            )
            .is_err()
    );
}

#[test]
fn pkcs8_and_pkcs1_pem_and_bare_base64_der_load_the_same_key() {
    let key = rsa_key(2048);
    let pkcs8 = key.to_pkcs8_pem(LineEnding::CRLF).unwrap();
    let pkcs1 = key.to_pkcs1_pem(LineEnding::LF).unwrap();
    let bare = BASE64.encode(key.to_pkcs1_der().unwrap().as_bytes());
    let wrapped: String = bare
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let expected = SigningKey::<Sha256>::new(key.clone()).sign(b"m").to_vec();
    for signer in [
        RsaSigningKey::from_pem(&pkcs8).unwrap(),
        RsaSigningKey::from_pem(&pkcs1).unwrap(),
        RsaSigningKey::from_base64_der(&wrapped).unwrap(),
    ] {
        assert_eq!(signer.sign_sha256(b"m").unwrap(), expected);
    }
    let public = rsa::pkcs1::EncodeRsaPublicKey::to_pkcs1_der(&RsaPublicKey::from(&key)).unwrap();
    assert_eq!(
        RsaSigningKey::from_pem(&pkcs8)
            .unwrap()
            .public_key_pkcs1_der(),
        public.as_bytes()
    );
}

#[test]
fn short_keys_and_non_keys_are_refused_with_a_reason() {
    let short = rsa_key(1024).to_pkcs8_der().unwrap();
    assert!(matches!(
        RsaSigningKey::from_pkcs8_der(short.as_bytes()),
        Err(KeyError::TooShort(1024)) | Err(KeyError::Rejected(_))
    ));
    assert_eq!(
        RsaSigningKey::from_pem("no armour here").unwrap_err(),
        KeyError::NoPemBlock
    );
    assert_eq!(
        RsaSigningKey::from_pem("-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----")
            .unwrap_err(),
        KeyError::Base64
    );
    assert!(matches!(
        RsaSigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"),
        Err(KeyError::Rejected(_))
    ));
    let debug = format!(
        "{:?}",
        RsaSigningKey::from_pkcs8_der(rsa_key(2048).to_pkcs8_der().unwrap().as_bytes()).unwrap()
    );
    assert_eq!(debug, "RsaSigningKey { bits: 2048, .. }");
}

#[test]
fn the_verifier_accepts_the_rsa_crates_signatures_from_either_key_encoding_and_nothing_else() {
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    use rsa::pkcs8::EncodePublicKey as _;
    let key = rsa_key(2048);
    let public = RsaPublicKey::from(&key);
    let message = b"1554208460\nNONCE\n{\"id\":\"EV-1\"}\n";
    let signature = SigningKey::<Sha256>::new(key.clone())
        .sign(message)
        .to_vec();
    for der in [
        public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
        public.to_public_key_der().unwrap().as_bytes().to_vec(),
    ] {
        let v = RsaVerifyingKey::from_der(&der).unwrap();
        assert_eq!(v.verify_sha256(message, &signature), Ok(()));
        assert_eq!(
            v.verify_sha256(b"1554208460\nNONCE\n{\"id\":\"EV-2\"}\n", &signature),
            Err(BadSignature)
        );
        let mut flipped = signature.clone();
        flipped[17] ^= 1;
        assert_eq!(v.verify_sha256(message, &flipped), Err(BadSignature));
        assert_eq!(v.verify_sha256(message, &signature[1..]), Err(BadSignature));
        assert_eq!(v.verify_sha256(message, &[]), Err(BadSignature));
    }
    // Another key's signature.
    let other = SigningKey::<Sha256>::new(rsa_key(2048))
        .sign(message)
        .to_vec();
    let v = RsaVerifyingKey::from_der(public.to_pkcs1_der().unwrap().as_bytes()).unwrap();
    assert_eq!(v.verify_sha256(message, &other), Err(BadSignature));
    assert!(RsaVerifyingKey::from_der(b"not a key").is_err());
}

#[test]
fn keys_below_2048_bits_never_verify() {
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    let key = rsa_key(1024);
    let message = b"m";
    let signature = SigningKey::<Sha256>::new(key.clone())
        .sign(message)
        .to_vec();
    let der = RsaPublicKey::from(&key).to_pkcs1_der().unwrap();
    if let Ok(v) = RsaVerifyingKey::from_der(der.as_bytes()) {
        assert_eq!(v.verify_sha256(message, &signature), Err(BadSignature));
    }
}
