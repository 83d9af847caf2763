#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn error_bodies_match_the_documented_shape() {
    let body = ErrorBody::new(ErrorCode::ParamError, "参数错误").with_detail(ErrorDetail {
        field: "/amount/currency".into(),
        value: "XYZ".into(),
        issue: "Currency code is invalid".into(),
        location: "body".into(),
    });
    assert_eq!(
        body.to_json().unwrap(),
        r#"{"code":"PARAM_ERROR","message":"参数错误","detail":{"field":"/amount/currency","value":"XYZ","issue":"Currency code is invalid","location":"body"}}"#
    );
    assert_eq!(body.http_status(), 400);
    let plain = ErrorBody::new(ErrorCode::SignError, "签名信息错误，验签失败");
    assert_eq!(
        plain.to_json().unwrap(),
        r#"{"code":"SIGN_ERROR","message":"签名信息错误，验签失败"}"#
    );
    let rejection = RequestRejection::SignatureMismatch.error_body();
    assert_eq!(rejection.http_status(), 401);
    assert_eq!(
        ErrorBody::new(ErrorCode::RateLimitExceeded, "")
            .to_json()
            .unwrap(),
        r#"{"code":"RATELIMIT_EXCEEDED","message":""}"#
    );
}
