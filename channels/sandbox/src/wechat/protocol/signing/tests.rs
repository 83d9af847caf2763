#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn responses_signed_by_the_platform_verify_and_probes_do_not() {
    let key = keys::generate_rsa_2048().unwrap();
    let signer =
        PlatformSigner::new("PUB_KEY_ID_0000000000000024101100397200000006", key.clone()).unwrap();
    let body = br#"{"code_url":"weixin://wxpay/bizpayurl?pr=abc"}"#;
    let headers = signer.sign_with_fresh_nonce(1_700_000_000, body).unwrap();
    assert_eq!(headers.nonce.len(), 32);
    assert!(verify_platform_signature(&key.to_public_key(), &headers, body).is_ok());
    assert_eq!(
        verify_platform_signature(&key.to_public_key(), &headers, b"{}"),
        Err(RequestRejection::SignatureMismatch)
    );
    let empty = signer.sign(1_700_000_000, "n", b"").unwrap();
    assert!(verify_platform_signature(&key.to_public_key(), &empty, b"").is_ok());

    let probe = signer.probe(1_700_000_000, "n");
    assert!(probe.signature.starts_with(PROBE_SIGNATURE_PREFIX));
    assert!(verify_platform_signature(&key.to_public_key(), &probe, body).is_err());
    let pairs = headers.to_pairs();
    assert_eq!(pairs[3], ("Wechatpay-Serial", signer.serial().to_owned()));
    assert_eq!(pairs[4].1, SIGNATURE_SCHEME);
}
