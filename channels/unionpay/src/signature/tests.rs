//! Vectors C-V1 and C-V2 of CHANNEL_PROTOCOLS.md (yansongda/pay tests, UnionPay's published test
//! signing key and a real test-environment answer), the independent Python vectors, and negative
//! cases.

use chrono::TimeZone as _;
use serde_json::Value;

use super::*;
use crate::status::{TransactionStatus, notify_status, query_status};
use crate::wire::{TransactionResult, parse_notify_form, parse_sync_response};

const MERCHANT_KEY: &str =
    include_str!("../../tests/fixtures/unionpay_acp_test_sign_private_key_pkcs8.pem");
const C_V2_CERT: &str =
    include_str!("../../tests/fixtures/unionpay_test_sign_pub_key_cert_expired_2025.pem");
const INDEPENDENT: &str = include_str!("../../tests/fixtures/independent_vectors.json");

fn merchant() -> MerchantSigner {
    MerchantSigner::from_pkcs8_pem(MERCHANT_KEY, "69903319369").unwrap()
}

fn fields_of(content: &str) -> BTreeMap<String, String> {
    content
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn at(year: i32, month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, month, day, 0, 0, 0).unwrap()
}

fn independent() -> Value {
    serde_json::from_str(INDEPENDENT).unwrap()
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

/// The older independent vectors have a one-CA hierarchy: that self-signed CA is both the root
/// and the middle of the path (leaf → CA → CA).
fn independent_verifier(v: &Value) -> PlatformVerifier {
    let mut verifier = PlatformVerifier::new();
    let ca = v["ca_certificate_pem"].as_str().unwrap();
    verifier.add_root_pem(ca).unwrap();
    verifier.add_middle_pem(ca).unwrap();
    verifier
}

// ---------------------------------------------------------------- C-V1: request signing

const C_V1_CONTENT: &str = "accessType=0&backUrl=https://yansongda.cn/unipay/notify&bizType=000201&certId=69903319369&channelType=07&currencyCode=156&encoding=utf-8&frontUrl=https://yansongda.cn/unipay/return&merId=777290058167151&orderId=yansongda20220903065448&signMethod=01&txnAmt=1&txnSubType=01&txnTime=20220903065448&txnType=01&version=5.1.0";
const C_V1_SIGNATURE: &str = "CJ0Hh6WC0YldYMi2cIi7rjOvV4IJyzhqgj8KKNeRWZz+2csPVlDcnP1f4YfykVww6NDimsl2zE+oQAm7lH8qiU5f8ojVH+P62uMe1yqb2WoNlIM45REg6bhfUPvATgecVplnKIPdFUGdRZ97va+ZVbla75HwtskZnDykmr9rkYaSg7PcGuilEwHcb2rV+BNkCi3bi4fYELjYlE1a7Imv/cSLRyXkPS1jzF0HUIUiVA6P98DYh0GbsgqRZqPYsGocFJs9jZoAlu44RygzDKjK/n8iwhHNH61IFaADdGp+uLQsol6kR/DRpF1pZgO7lsuK0YuaL6pfN6dtkJO9prbu6Q==";

#[test]
fn c_v1_yansongda_request_signature() {
    let mut fields = fields_of(C_V1_CONTENT);
    fields.remove("certId");
    fields.insert("reqReserved".into(), String::new());
    fields.insert("signature".into(), "stale".into());
    merchant().sign(&mut fields).unwrap();
    assert_eq!(fields["certId"], "69903319369");
    assert_eq!(signing_string(&fields), C_V1_CONTENT);
    assert_eq!(
        signing_digest_hex(&fields),
        "ed98378474101f21eae704450b15b9495ba5ed4b23afd59e6c9ce2ca9ce9419d"
    );
    assert_eq!(fields["signature"], C_V1_SIGNATURE);
}

#[test]
fn signing_refuses_other_versions_and_methods() {
    let mut fields = fields_of(C_V1_CONTENT);
    fields.insert("version".into(), "5.0.0".into());
    assert_eq!(
        merchant().sign(&mut fields),
        Err(SignError::Version("5.0.0".into()))
    );
    fields.insert("version".into(), "5.1.0".into());
    fields.insert("signMethod".into(), "11".into());
    assert_eq!(
        merchant().sign(&mut fields),
        Err(SignError::SignMethod("11".into()))
    );
}

// ---------------------------------------------------------------- C-V2: answer with signPubKeyCert

fn c_v2_pem_crlf() -> String {
    C_V2_CERT.trim_end().replace('\n', "\r\n")
}

fn c_v2_fields() -> BTreeMap<String, String> {
    let mut fields = fields_of(
        "accessType=0&bizType=000000&currencyCode=156&encoding=utf-8&issuerIdentifyMode=0&merId=777290058167151&orderId=pay20220911041647&origRespCode=00&origRespMsg=成功[0000000]&queryId=512209110416475616528&respCode=00&respMsg=成功[0000000]&settleAmt=1&settleCurrencyCode=156&settleDate=0911&signMethod=01&traceNo=561652&traceTime=0911041647&txnAmt=1&txnSubType=01&txnTime=20220911041647&txnType=01&version=5.1.0",
    );
    fields.insert(
        "accNo".into(),
        "dZRvehtDtCcBPbPBVJk+ezkyeXkF07UnbKwr8/012R5XSsDLE4RqpHSLis7WCItKIf6SYUcXCLHYpV9deIfnJfziDGpUdQXnlPfejrw5pKglzjKI/pRYg0ApNomryVBIoUIdTwlpELh048ITEojRgJwzaazWdLaB5iZPeN22E2KP7JkfwsYHEclVpLY4tYEc35IjMpWCs0i8U5KY4qAJ3zXpCFIur4x+9z4gyK89Mwf+csowScvfDbFBsqTpClQlNRJ6lLWOrISNnlCdc1ONK4QVhabDTTWsemM7PSuya2e3imeZFfRYDmSv6W1eMIs0gbRo8BxOr3suUhb2ukPL7w==".into(),
    );
    fields.insert("signPubKeyCert".into(), c_v2_pem_crlf());
    fields.insert(
        "signature".into(),
        "b59zh7aztBFNDNmCBOR4189VeG3Vypvuf7H3izqA4etA0AtsjtzV7RXigEFlNXaIHSTSkbAUfPXevY3nX18umwQSFsSphF5C+DiMzBmEJNo9vNiX1kpaeQPlXQfXTDQqmDjdQ4lyeNw/aDx6MHww2D8wpkUem+50cyWOeO1/brHDxwt8N/R2LMRC8QTFIg48N+9UZu6QDIUybQYBAoVS6F0emMxFTpAhVi85RVqIDofStiGhHZw7UocW0hw96+JSExyhc6WXEvmLW41DI3PqRxVu+HacjZqeU+siH7V9pdTPV7Yi3ATznzRhmufvN7r1LJmf/4GkGI1ayM3WLubZjg==".into(),
    );
    fields
}

#[test]
fn c_v2_signing_string_and_digest() {
    let fields = c_v2_fields();
    // The doc calls this "2375 bytes"; it is 2375 characters, 2383 UTF-8 bytes ("成功" twice).
    assert_eq!(signing_string(&fields).chars().count(), 2375);
    assert_eq!(signing_string(&fields).len(), 2383);
    assert_eq!(
        signing_digest_hex(&fields),
        "7b6809ce5c74c1aa97952673ec10b78abc891e04d71dc2a7948acdb642a33e4b"
    );
}

#[test]
fn c_v2_certificate_reads_and_the_signature_verifies() {
    let cert = SigningCertificate::from_pem(&c_v2_pem_crlf()).unwrap();
    assert_eq!(cert.cert_id(), "69678957876");
    assert_eq!(
        cert.subject_cn(),
        Some("041@8310000000083040@中国银联股份有限公司@00016495")
    );
    assert!(cert.has_unionpay_subject(false));
    assert!(cert.is_valid_at(at(2024, 1, 1)));
    assert!(!cert.is_valid_at(at(2025, 8, 1)));
    // Replaying the vector: the certificate expired on 2025-07-31, so verify with its key directly.
    cert.verify_fields(&c_v2_fields()).unwrap();
}

#[test]
fn c_v2_verifies_through_the_platform_verifier_when_pinned_and_in_date() {
    let mut verifier = PlatformVerifier::new();
    assert_eq!(
        verifier.add_pinned_certificate_pem(C_V2_CERT).unwrap(),
        "69678957876"
    );
    let verified = verifier.verify(&c_v2_fields(), at(2024, 1, 1)).unwrap();
    assert_eq!(verified.cert_id, "69678957876");

    let result = TransactionResult::from_fields(&c_v2_fields()).unwrap();
    assert_eq!(
        query_status(&result.resp_code, result.orig_resp_code.as_deref()),
        TransactionStatus::Succeeded
    );
    assert_eq!(result.txn_amt_fen, Some(1));

    assert_eq!(
        verifier.verify(&c_v2_fields(), at(2025, 8, 1)),
        Err(VerifyError::OutsideValidity {
            serial: "69678957876".into(),
            at: at(2025, 8, 1)
        })
    );
}

#[test]
fn c_v2_is_untrusted_without_an_issuer_or_pin() {
    let outcome = PlatformVerifier::new().verify(&c_v2_fields(), at(2024, 1, 1));
    assert!(
        matches!(&outcome, Err(VerifyError::UntrustedCertificate(why)) if why.starts_with("69678957876")),
        "{outcome:?}"
    );
}

#[test]
fn c_v2_tampered_fields_do_not_verify() {
    let mut fields = c_v2_fields();
    fields.insert("txnAmt".into(), "100".into());
    let cert = SigningCertificate::from_pem(&c_v2_pem_crlf()).unwrap();
    assert_eq!(cert.verify_fields(&fields), Err(VerifyError::BadSignature));
    // The certificate text is signed too: LF instead of CRLF changes the digest.
    let mut fields = c_v2_fields();
    fields.insert("signPubKeyCert".into(), C_V2_CERT.trim_end().to_owned());
    assert_eq!(cert.verify_fields(&fields), Err(VerifyError::BadSignature));
}

// ---------------------------------------------------------------- independent Python vectors

#[test]
fn independent_request_signatures_are_byte_identical() {
    let v = independent();
    for case in v["request_signatures"].as_array().unwrap() {
        let mut fields = string_map(&case["fields"]);
        assert_eq!(signing_string(&fields), case["content"].as_str().unwrap());
        assert_eq!(
            signing_digest_hex(&fields),
            case["sha256_hex"].as_str().unwrap()
        );
        merchant().sign(&mut fields).unwrap();
        assert_eq!(fields["signature"], case["signature"].as_str().unwrap());
    }
}

#[test]
fn independent_answers_parse_and_verify_according_to_their_certificate() {
    let v = independent();
    let verifier = independent_verifier(&v);
    let now = at(2026, 1, 1);
    for case in v["responses"].as_array().unwrap() {
        let fields = parse_sync_response(case["raw_body"].as_str().unwrap()).unwrap();
        assert_eq!(fields, string_map(&case["fields"]));
        assert_eq!(
            signing_digest_hex(&fields),
            case["sha256_hex"].as_str().unwrap()
        );
        let name = case["certificate"].as_str().unwrap();
        let serial = v["certificates"][name]["serial_decimal"]
            .as_str()
            .unwrap()
            .to_owned();
        let outcome = verifier.verify(&fields, now);
        match name {
            "good" | "sha1_signed" => {
                assert_eq!(outcome, Ok(VerifiedBy { cert_id: serial }), "{name}")
            }
            "wrong_cn" => assert!(
                matches!(outcome, Err(VerifyError::WrongSubject(_))),
                "{name}: {outcome:?}"
            ),
            "expired" => assert!(
                matches!(outcome, Err(VerifyError::OutsideValidity { .. })),
                "{name}: {outcome:?}"
            ),
            "self_signed" => assert!(
                matches!(&outcome, Err(VerifyError::UntrustedCertificate(why)) if why.starts_with(&serial)),
                "{name}: {outcome:?}"
            ),
            other => panic!("unexpected certificate {other}"),
        }
    }
}

#[test]
fn independent_query_answer_maps_to_success_with_its_bracketed_field() {
    let v = independent();
    let fields = parse_sync_response(v["responses"][0]["raw_body"].as_str().unwrap()).unwrap();
    independent_verifier(&v)
        .verify(&fields, at(2026, 1, 1))
        .unwrap();
    let result = TransactionResult::from_fields(&fields).unwrap();
    assert_eq!(result.req_reserved.as_deref(), Some("{a=1&b=2}"));
    assert_eq!(result.txn_amt_fen, Some(8888));
    assert_eq!(
        query_status(&result.resp_code, result.orig_resp_code.as_deref()),
        TransactionStatus::Succeeded
    );
}

#[test]
fn independent_notify_verifies_from_its_form_body() {
    let v = independent();
    let fields = parse_notify_form(v["notify"]["form_body"].as_str().unwrap()).unwrap();
    assert_eq!(fields, string_map(&v["notify"]["fields"]));
    assert_eq!(
        signing_string(&fields),
        v["notify"]["content"].as_str().unwrap()
    );
    independent_verifier(&v)
        .verify(&fields, at(2026, 1, 1))
        .unwrap();
    let result = TransactionResult::from_fields(&fields).unwrap();
    assert_eq!(
        notify_status(&result.resp_code),
        TransactionStatus::Succeeded
    );
}

#[test]
fn test_environment_subjects_are_refused_unless_allowed() {
    let v = independent();
    let cert = SigningCertificate::from_pem(v["certificates"]["wrong_cn"]["pem"].as_str().unwrap())
        .unwrap();
    assert!(!cert.has_unionpay_subject(true));
    let good =
        SigningCertificate::from_pem(v["certificates"]["good"]["pem"].as_str().unwrap()).unwrap();
    assert!(good.has_unionpay_subject(false));
}

// ---------------------------------------------------------------- negative cases

fn good_answer(v: &Value) -> BTreeMap<String, String> {
    parse_sync_response(v["responses"][0]["raw_body"].as_str().unwrap()).unwrap()
}

#[test]
fn a_tampered_answer_is_a_bad_signature() {
    let v = independent();
    let mut fields = good_answer(&v);
    fields.insert("origRespCode".into(), "01".into());
    assert_eq!(
        independent_verifier(&v).verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::BadSignature)
    );
    // Adding a field changes the signed string too.
    let mut fields = good_answer(&v);
    fields.insert("extra".into(), "1".into());
    assert_eq!(
        independent_verifier(&v).verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn a_signature_by_another_key_is_a_bad_signature() {
    let v = independent();
    let mut fields = good_answer(&v);
    let forged = merchant()
        .sign_digest_hex(&signing_digest_hex(&fields))
        .unwrap();
    fields.insert("signature".into(), forged);
    assert_eq!(
        independent_verifier(&v).verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::BadSignature)
    );
    fields.insert("signature".into(), "bm90IGEgc2lnbmF0dXJl".into());
    assert_eq!(
        independent_verifier(&v).verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn a_cert_id_that_does_not_name_the_shipped_certificate_is_refused() {
    let v = independent();
    let mut fields = good_answer(&v);
    fields.insert("certId".into(), "69903319369".into());
    assert_eq!(
        independent_verifier(&v).verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::CertIdMismatch {
            cert_id: "69903319369".into(),
            serial: "73588229205".into()
        })
    );
}

#[test]
fn without_a_shipped_certificate_the_cert_id_must_be_pinned() {
    let v = independent();
    let mut fields = good_answer(&v);
    fields.remove("signPubKeyCert");
    // The signature covered signPubKeyCert, so re-sign without it as a 5.0.0-style sender would.
    let platform_key =
        include_str!("../../tests/fixtures/independent_test_unionpay_platform_private_key.pem");
    let platform = MerchantSigner::from_pkcs8_pem(platform_key, "73588229205").unwrap();
    platform.sign(&mut fields).unwrap();

    let mut verifier = independent_verifier(&v);
    assert_eq!(
        verifier.verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::UnknownCertId("73588229205".into()))
    );
    verifier
        .add_pinned_certificate_pem(v["certificates"]["good"]["pem"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        verifier.verify(&fields, at(2026, 1, 1)),
        Ok(VerifiedBy {
            cert_id: "73588229205".into()
        })
    );

    fields.insert("certId".into(), "1".into());
    assert_eq!(
        verifier.verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::UnknownCertId("1".into()))
    );
    fields.remove("certId");
    assert_eq!(
        verifier.verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::MissingCertificate)
    );
}

#[test]
fn a_pin_with_the_same_serial_but_another_key_does_not_vouch_for_a_shipped_certificate() {
    let v = independent();
    // The self-signed certificate shares the platform key but has its own serial; pin C-V2's
    // certificate instead, which has a different key, and ship the self-signed one.
    let mut verifier = PlatformVerifier::new();
    verifier.add_pinned_certificate_pem(C_V2_CERT).unwrap();
    let fields = parse_sync_response(v["responses"][4]["raw_body"].as_str().unwrap()).unwrap();
    assert!(matches!(
        verifier.verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::UntrustedCertificate(_))
    ));
}

#[test]
fn unsigned_or_foreign_version_answers_are_refused() {
    let v = independent();
    let verifier = independent_verifier(&v);
    let mut fields = good_answer(&v);
    fields.insert("version".into(), "5.0.0".into());
    assert_eq!(
        verifier.verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::Version("5.0.0".into()))
    );
    let mut fields = good_answer(&v);
    fields.insert("signMethod".into(), "12".into());
    assert_eq!(
        verifier.verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::SignMethod("12".into()))
    );
    let mut fields = good_answer(&v);
    fields.remove("signature");
    assert_eq!(
        verifier.verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::MissingSignature)
    );
    let mut fields = good_answer(&v);
    fields.insert(
        "signPubKeyCert".into(),
        "-----BEGIN CERTIFICATE-----\r\nAAAA\r\n-----END CERTIFICATE-----".into(),
    );
    assert!(matches!(
        verifier.verify(&fields, at(2026, 1, 1)),
        Err(VerifyError::Certificate(_))
    ));
}

#[test]
fn a_failed_query_answer_is_not_a_failed_payment() {
    assert_eq!(query_status("00", Some("01")), TransactionStatus::Failed);
    assert_eq!(query_status("10", None), TransactionStatus::Unknown);
    assert!(!format!("{:?}", merchant()).contains("PRIVATE"));
}

// ---------------------------------------------------------------- trust path and empty fields

const CERT_PATH: &str = include_str!("../../tests/fixtures/cert_path_vectors.json");

fn cert_path() -> Value {
    serde_json::from_str(CERT_PATH).unwrap()
}

fn path_verifier(v: &Value, root: &str, middle: &str) -> PlatformVerifier {
    let mut verifier = PlatformVerifier::new();
    verifier.add_root_pem(v[root].as_str().unwrap()).unwrap();
    verifier
        .add_middle_pem(v[middle].as_str().unwrap())
        .unwrap();
    verifier
}

fn path_now(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v["verify_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn a_signing_certificate_is_trusted_through_its_middle_to_the_configured_root() {
    let v = cert_path();
    let answer = &v["answers"]["signing"];
    let fields = string_map(&answer["fields"]);
    let outcome = path_verifier(&v, "root_pem", "middle_pem").verify(&fields, path_now(&v));
    assert_eq!(
        outcome,
        Ok(VerifiedBy {
            cert_id: answer["serial_decimal"].as_str().unwrap().to_owned()
        })
    );
}

#[test]
fn an_expired_middle_a_wrong_root_and_another_cn_are_refused() {
    let v = cert_path();
    let now = path_now(&v);
    let signing = string_map(&v["answers"]["signing"]["fields"]);
    let expired = path_verifier(&v, "root_pem", "expired_middle_pem").verify(&signing, now);
    assert!(
        matches!(&expired, Err(VerifyError::OutsideValidity { serial, .. }) if serial.starts_with("middle")),
        "{expired:?}"
    );
    let wrong_root = path_verifier(&v, "wrong_root_pem", "middle_pem").verify(&signing, now);
    assert!(
        matches!(&wrong_root, Err(VerifyError::UntrustedCertificate(why)) if why.contains("root")),
        "{wrong_root:?}"
    );
    let other_cn = string_map(&v["answers"]["other_cn"]["fields"]);
    let outcome = path_verifier(&v, "root_pem", "middle_pem").verify(&other_cn, now);
    assert!(
        matches!(outcome, Err(VerifyError::WrongSubject(_))),
        "{outcome:?}"
    );
    // Without any middle, the signing certificate has no path at all.
    let mut root_only = PlatformVerifier::new();
    root_only
        .add_root_pem(v["root_pem"].as_str().unwrap())
        .unwrap();
    assert!(matches!(
        root_only.verify(&signing, now),
        Err(VerifyError::UntrustedCertificate(_))
    ));
    // A signing certificate is not a CA and cannot be configured as a middle or root.
    let leaf = signing["signPubKeyCert"].as_str();
    assert!(PlatformVerifier::new().add_middle_pem(leaf).is_err());
    assert!(PlatformVerifier::new().add_root_pem(leaf).is_err());
}

#[test]
fn answers_are_verified_with_their_empty_fields_kept() {
    let v = cert_path();
    let answer = &v["answers"]["signing"];
    let fields = string_map(&answer["fields"]);
    assert_eq!(fields["reqReserved"], "");
    assert_eq!(
        verification_string(&fields),
        answer["content"].as_str().unwrap()
    );
    assert!(verification_string(&fields).contains("&reqReserved=&"));
    assert_eq!(
        verification_digest_hex(&fields),
        answer["sha256_hex"].as_str().unwrap()
    );
    let verifier = path_verifier(&v, "root_pem", "middle_pem");
    assert!(verifier.verify(&fields, path_now(&v)).is_ok());
    // Dropping the blank field changes what was signed.
    let mut without = fields.clone();
    without.remove("reqReserved");
    assert_eq!(
        verifier.verify(&without, path_now(&v)),
        Err(VerifyError::BadSignature)
    );
    // Outgoing requests still drop blanks (C-V1 has no empty field; the independent request
    // vector with reqReserved="" is signed without it).
    assert!(!signing_string(&fields).contains("reqReserved"));
}
