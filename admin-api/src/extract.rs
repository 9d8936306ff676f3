//! Request extractors whose rejections use the API's one error shape and name the field at fault.
//! axum's own `Json`/`Query` rejections answer in plain text; these wrap the same parsing with
//! `serde_path_to_error` so a bad body says `scopes[1]: invalid type: integer, expected a string`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest JSON body accepted (usage batches are the biggest legitimate bodies).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A JSON body; rejections are in the API's error shape: 415 without a JSON content type, 413 over
/// the size limit, 400 naming the field for a body that does not fit the type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// Turns a serde error at a path into a 400 naming that field.
fn deserialize_error(path: String, inner: String) -> ApiError {
    // serde reports a missing field at the parent path with the name only in the message.
    let missing = inner
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned);
    let field = match (missing, path.as_str()) {
        (Some(name), "." | "") => name,
        (Some(name), parent) => format!("{parent}.{name}"),
        (None, "." | "") => String::new(),
        (None, p) => p.to_owned(),
    };
    let inner = inner.split(" at line ").next().unwrap_or(&inner).to_owned();
    if field.is_empty() {
        ApiError::bad_request(format!("invalid body: {inner}"))
    } else {
        let message = format!("{field}: {inner}");
        ApiError::field(field, message)
    }
}

/// Parses JSON bytes into `T`, with field-naming errors.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("body is not valid json: {inner}"))
        } else {
            deserialize_error(path, inner.to_string())
        }
    })
}

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let _ = state;
        require_json(req.headers())?;
        let body = read_limited(req, MAX_BODY_BYTES, "json body").await?;
        parse_json(&body).map(Json)
    }
}

/// 415 unless the request says its body is JSON (`application/json`, or a `+json` type): a body sent
/// as a form or text, or with no content type, is refused rather than read as JSON.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).map(|v| {
        v.to_str()
            .unwrap_or("(not ascii)")
            .trim()
            .to_ascii_lowercase()
    });
    match ct {
        Some(ct) if ct.starts_with("application/json") || ct.split(';').next().is_some_and(|t| t.ends_with("+json")) => Ok(()),
        Some(ct) => Err(ApiError::UnsupportedMediaType(format!(
            "content-type must be application/json, got {ct}: send the body as json with `content-type: application/json`"
        ))),
        None => Err(ApiError::UnsupportedMediaType(
            "content-type is missing: send the body as json with `content-type: application/json`".into(),
        )),
    }
}

/// Reads a whole body of at most `max` bytes: 413 when it is larger (said by `content-length` or found
/// while reading), 400 when it cannot be read.
pub async fn read_limited(req: Request, max: usize, what: &str) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::TooLarge(format!(
            "{what} is larger than {max} bytes, the most accepted"
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(req.into_body(), max)
        .await
        .map_err(|e| {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(err) = source {
                // http-body-util's LengthLimitError (a dev-dependency only here), by its text.
                if err.to_string() == "length limit exceeded" {
                    return too_large();
                }
                source = err.source();
            }
            ApiError::bad_request(format!("{what} is unreadable: {e}"))
        })
}

/// A query string; rejections are 400s naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        parse_form(query.as_bytes()).map(Query)
    }
}

/// Parses a urlencoded form or query string into `T`, with parameter-naming errors.
pub fn parse_form<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(bytes));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        deserialize_error(path, e.into_inner().to_string())
    })
}

/// Raw body bytes with the API's size limit; used by the form-encoded OAuth endpoints.
pub async fn body_bytes(req: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::bad_request(format!(
                "body is unreadable or larger than {MAX_BODY_BYTES} bytes"
            ))
        })
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// Checks an identifier that ends up in a token, the feed or a log line (a subject, a client id, a
/// revoked value): 1 to `max` bytes and no control character, so a NUL, CR or LF can never split a
/// header, a log line or a feed entry at the edge.
pub fn check_identifier(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > max {
        return Err(ApiError::field(
            field,
            format!("{field}: must be 1 to {max} characters"),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(ApiError::field(
            field,
            format!(
                "{field}: contains the control character U+{:04X}; identifiers are printable text",
                c as u32
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod identifier_tests {
    use super::check_identifier;

    #[test]
    fn identifiers_with_control_characters_are_refused() {
        for bad in [
            "carol\0",
            "carol\r\nx-admin: 1",
            "a\tb",
            "\u{7f}",
            "\u{85}next",
        ] {
            assert!(check_identifier("subject", bad, 512).is_err(), "{bad:?}");
        }
        assert!(check_identifier("subject", "", 512).is_err());
        assert!(check_identifier("subject", &"a".repeat(513), 512).is_err());
        for good in ["carol", "user@example.com", "Zoë Ω", "svc:billing/eu-1"] {
            assert!(check_identifier("subject", good, 512).is_ok(), "{good:?}");
        }
    }
}
