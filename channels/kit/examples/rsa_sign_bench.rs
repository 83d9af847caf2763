//! RSA-2048 `SHA256withRSA` signing: the `rsa` crate against aws-lc-rs, same key, same message,
//! 300 signatures each (the figure behind the RUSTSEC-2023-0071 entry in docs/DECISIONS.md).
//! A bench binary rather than a timed test, so CI never depends on the machine's load.
//!
//! `cargo run --release -p channel-kit --example rsa_sign_bench [-- N]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use channel_kit::crypto::RsaSigningKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::EncodePrivateKey as _;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use sha2::Sha256;

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N must be a number"))
        .unwrap_or(300);
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let message = br#"POST
/v3/pay/transactions/jsapi
1700000000
5K8264ILTKCH16CQ2502SI8ZNMTM67VS
{"appid":"wxd678efh567hg6787","mchid":"1234567891","amount":{"total":100,"currency":"CNY"}}
"#;
    let rsa_signer = SigningKey::<Sha256>::new(key.clone());
    let aws = RsaSigningKey::from_pkcs8_der(key.to_pkcs8_der().unwrap().as_bytes()).unwrap();
    // Same bytes from both, or the comparison means nothing.
    assert_eq!(
        rsa_signer.sign(message).to_vec(),
        aws.sign_sha256(message).unwrap()
    );

    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(rsa_signer.sign(std::hint::black_box(message)));
    }
    let rsa_ms = started.elapsed().as_secs_f64() * 1e3 / f64::from(n);

    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(aws.sign_sha256(std::hint::black_box(message)).unwrap());
    }
    let aws_ms = started.elapsed().as_secs_f64() * 1e3 / f64::from(n);

    println!("RSA-2048 PKCS#1 v1.5 SHA-256 sign, {n} signatures each, one thread");
    println!("rsa 0.9      {rsa_ms:8.3} ms/signature");
    println!("aws-lc-rs    {aws_ms:8.3} ms/signature");
    println!("speed-up     {:8.2}x", rsa_ms / aws_ms);

    // Verification: what the adapters do with every platform answer and callback.
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    use rsa::signature::Verifier as _;
    let signature = aws.sign_sha256(message).unwrap();
    let public = key.to_public_key();
    let rsa_verifier = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(public.clone());
    let rsa_sig = rsa::pkcs1v15::Signature::try_from(signature.as_slice()).unwrap();
    let aws_verifier = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
    );
    let started = Instant::now();
    for _ in 0..n {
        rsa_verifier
            .verify(std::hint::black_box(message), &rsa_sig)
            .unwrap();
    }
    let rsa_v = started.elapsed().as_secs_f64() * 1e3 / f64::from(n);
    let started = Instant::now();
    for _ in 0..n {
        aws_verifier
            .verify(std::hint::black_box(message), &signature)
            .unwrap();
    }
    let aws_v = started.elapsed().as_secs_f64() * 1e3 / f64::from(n);
    println!("RSA-2048 PKCS#1 v1.5 SHA-256 verify, {n} verifications each, one thread");
    println!("rsa 0.9      {rsa_v:8.3} ms/verification");
    println!("aws-lc-rs    {aws_v:8.3} ms/verification");
    println!("speed-up     {:8.2}x", rsa_v / aws_v);
}
