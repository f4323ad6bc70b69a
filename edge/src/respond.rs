//! The one place that turns a refusal or a failure into an HTTP answer.
//!
//! Status codes and bodies are decided here and nowhere else, so clients and
//! dashboards see one vocabulary. Answers are small JSON documents; they never echo
//! request bytes back (no reflected input).

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::ResponseBody;
use crate::conn::InflightGuard;
use crate::framing::FramingError;
use crate::route::RouteError;
use crate::upstream::UpstreamError;

/// Why the edge answered a request itself instead of forwarding it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Ambiguous or unsupported body framing (request smuggling risk).
    #[error("bad framing: {}", .0.reason())]
    Framing(FramingError),
    /// The request target is longer than the configured limit.
    #[error("request target too long")]
    UriTooLong,
    /// A method the edge does not proxy (CONNECT).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No provider can take the request now.
    #[error("{0}")]
    NoRoute(RouteError),
    /// The provider failed before a response started.
    #[error("{0}")]
    Upstream(UpstreamError),
    /// A request head the edge could not take (a field no header map holds).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// An unsafe method in TLS early data, which an attacker could replay.
    #[error("unsafe method in early data; retry after the handshake")]
    TooEarly,
}

impl Refusal {
    /// Status, machine-readable code, and whether the client connection must close
    /// (because the rest of its byte stream cannot be trusted).
    fn parts(&self) -> (StatusCode, &'static str, bool) {
        match self {
            Refusal::Framing(_) => (StatusCode::BAD_REQUEST, "bad_framing", true),
            Refusal::UriTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long", true),
            Refusal::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", true),
            Refusal::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", false),
            Refusal::NoRoute(RouteError::Denied { .. }) => {
                (StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS, "residency_denied", false)
            }
            Refusal::NoRoute(RouteError::NoCompliant { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "no_compliant_provider", false)
            }
            Refusal::Upstream(UpstreamError::ConnectTimeout | UpstreamError::ResponseTimeout) => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", false)
            }
            Refusal::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_failed", false),
            Refusal::TooEarly => (StatusCode::TOO_EARLY, "too_early", false),
        }
    }

    /// The answer to send.
    pub fn into_response(self, guard: Option<InflightGuard>) -> Response<ResponseBody> {
        let (status, code, close) = self.parts();
        let origin = match &self {
            Refusal::NoRoute(RouteError::Denied { origin } | RouteError::NoCompliant { origin, .. }) => {
                Some(origin.label())
            }
            _ => None,
        };
        let body = json_error_body(code, origin, &self.to_string());
        let mut resp = Response::new(ResponseBody::local(body, guard));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE, OPTIONS, PATCH"),
            );
        }
        if close {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// `{"error":CODE,"reason":TEXT}` with TEXT escaped; written by hand to keep the
/// edge's error path free of a JSON dependency.
fn json_error_body(code: &str, origin: Option<&str>, reason: &str) -> String {
    let mut out = String::with_capacity(48 + reason.len());
    out.push_str("{\"error\":\"");
    out.push_str(code);
    if let Some(o) = origin {
        // Origins are ISO codes or `unknown`: nothing to escape.
        out.push_str("\",\"origin\":\"");
        out.push_str(o);
    }
    out.push_str("\",\"reason\":\"");
    for c in reason.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push_str("\"}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_refusals_close_and_timeouts_are_504() {
        let r = Refusal::Framing(FramingError::LengthAndChunked).into_response(None);
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["connection"], "close");
        let r = Refusal::Upstream(UpstreamError::ResponseTimeout).into_response(None);
        assert_eq!(r.status(), 504);
        let r = Refusal::Upstream(UpstreamError::Connect("refused".into())).into_response(None);
        assert_eq!(r.status(), 502);
    }

    #[test]
    fn reason_is_escaped() {
        assert_eq!(
            json_error_body("x", None, "a\"b\n"),
            "{\"error\":\"x\",\"reason\":\"a\\\"b\\u000a\"}\n"
        );
    }
}
