//! Request ids: every request gets one, from its `x-request-id` header when that is a
//! reasonable id (1–128 visible ASCII characters), else the trace id of its W3C
//! `traceparent`, else a generated one. The id is set on the request (so every layer and the
//! serving core read the same), on the reply (`x-request-id`, for HTTP and as gRPC initial
//! metadata), and on the `tracing` span every log line of the request is written in.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::atomic::{AtomicU64, Ordering};

/// `x-request-id`.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// `traceparent` (W3C Trace Context).
const TRACEPARENT: &str = "traceparent";

fn reasonable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The trace id of a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero).
fn trace_id(value: &str) -> Option<&str> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    (hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && nonzero(trace)
        && hex(parent, 16)
        && nonzero(parent)
        && hex(flags, 2))
    .then_some(trace)
}

/// A new id: 32 hex digits, unique within the process and random across processes.
pub fn generate() -> String {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    format!("{prefix:016x}{:016x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The id of a request with `headers`.
pub fn of(headers: &HeaderMap) -> String {
    if let Some(id) = headers
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| reasonable(v))
    {
        return id.to_string();
    }
    if let Some(trace) = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id)
    {
        return trace.to_string();
    }
    generate()
}

/// `id` as a header value (ids are visible ASCII, so this cannot fail; a generated id stands in
/// if it ever did).
pub fn value(id: &str) -> HeaderValue {
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn ids_come_from_the_header_the_traceparent_or_are_generated() {
        assert_eq!(of(&headers(&[("x-request-id", "req-42")])), "req-42");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(of(&headers(&[("traceparent", tp)])), "4bf92f3577b34da6a3ce929d0e0e4736");
        // An unreasonable x-request-id falls back to the traceparent, then to a new id.
        assert_eq!(
            of(&headers(&[("x-request-id", &"x".repeat(200)), ("traceparent", tp)])),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "nonsense",
        ] {
            let id = of(&headers(&[("traceparent", bad)]));
            assert_eq!(id.len(), 32, "{bad}: {id}");
            assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
