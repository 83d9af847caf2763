#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn a_sealed_notification_opens_with_the_same_key_only() {
    let key = ApiV3Key::new(b"0123456789abcdef0123456789abcdef").unwrap();
    let draft = NotificationDraft {
        id: "EV-1",
        create_time: DateTime::parse_from_rfc3339("2024-01-01T12:00:05+08:00").unwrap(),
        event_type: EventType::RefundSuccess,
        summary: None,
        associated_data: "",
        nonce: "abcdefghijkl",
        plaintext: br#"{"refund_status":"SUCCESS"}"#,
    };
    let envelope = NotificationEnvelope::seal(&key, &draft).unwrap();
    assert_eq!(envelope.create_time, "2024-01-01T12:00:05+08:00");
    assert_eq!(envelope.summary, "退款成功");
    assert_eq!(envelope.resource.original_type, "refund");
    assert_eq!(envelope.open(&key).unwrap(), draft.plaintext);

    let other = ApiV3Key::new(b"0123456789abcdef0123456789abcdeX").unwrap();
    assert!(matches!(
        envelope.open(&other),
        Err(WechatProtocolError::Aead)
    ));
    let mut tampered = envelope.clone();
    tampered.resource.associated_data = "refund".into();
    assert!(matches!(
        tampered.open(&key),
        Err(WechatProtocolError::Aead)
    ));

    let body = envelope.to_body().unwrap();
    let reparsed: NotificationEnvelope = serde_json::from_str(&body).unwrap();
    assert_eq!(reparsed, envelope);
}

#[test]
fn keys_and_nonces_of_the_wrong_length_are_refused() {
    assert!(matches!(
        ApiV3Key::new(b"testAPIv3Key0000"),
        Err(WechatProtocolError::ApiV3KeyLength(16))
    ));
    let key = ApiV3Key::new(&[7; 32]).unwrap();
    assert!(matches!(
        key.seal("short", "", b"x"),
        Err(WechatProtocolError::NonceLength(5))
    ));
    assert!(matches!(
        key.open("abcdefghijkl", "", "not base64!"),
        Err(WechatProtocolError::CiphertextEncoding)
    ));
}
