//! Bearer-token check for everything under `/v1`, in constant time.

use super::error::ApiError;
use axum::http::{header, HeaderMap};
use std::fmt;
use subtle::ConstantTimeEq;

/// The expected token, kept only as a digest.
///
/// Both sides are hashed before comparing so the comparison is over equal
/// lengths and leaks neither the token's bytes nor its length through timing.
#[derive(Clone)]
pub(crate) struct TokenCheck {
    expected: [u8; 32],
}

impl fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenCheck(<redacted>)")
    }
}

impl TokenCheck {
    /// `None` for an empty token: an empty token would let any empty bearer in.
    pub(crate) fn new(token: &str) -> Option<Self> {
        (!token.is_empty()).then(|| TokenCheck { expected: *blake3::hash(token.as_bytes()).as_bytes() })
    }

    /// Accepts `Authorization: Bearer <token>` (scheme case-insensitive, as
    /// RFC 6750 allows); anything else is a 401.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let value = headers.get(header::AUTHORIZATION).ok_or(ApiError::MissingToken)?;
        let value = value.to_str().map_err(|_| ApiError::BadToken)?;
        let (scheme, presented) = value.split_once(' ').ok_or(ApiError::BadToken)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::BadToken);
        }
        let presented = blake3::hash(presented.trim().as_bytes());
        if bool::from(presented.as_bytes().ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(ApiError::BadToken)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(v: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = v {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn accepts_only_the_exact_token() {
        let c = TokenCheck::new("s3cret").unwrap();
        assert!(c.check(&headers(Some("Bearer s3cret"))).is_ok());
        assert!(c.check(&headers(Some("bearer s3cret"))).is_ok());
        assert!(matches!(c.check(&headers(None)), Err(ApiError::MissingToken)));
        for bad in ["Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret", "Bearer ", "Bearer S3CRET"] {
            assert!(matches!(c.check(&headers(Some(bad))), Err(ApiError::BadToken)), "{bad}");
        }
    }

    #[test]
    fn empty_token_is_refused_and_debug_hides_it() {
        assert!(TokenCheck::new("").is_none());
        let c = TokenCheck::new("s3cret").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
