//! The reply cache: whole inference replies kept under the exact request that produced them,
//! answered in front of the router.
//!
//! [`App`] wraps the HTTP router. A `POST` to an inference path (`/v2/models/…/infer`) whose
//! body is not compressed (no `Content-Encoding`) has its body read and is looked up before
//! any routing, path decoding or parsing: a request that matches a stored one byte for byte
//! (same corridor, path, routing-key header, `Inference-Header-Content-Length` header, body
//! and serving generation) gets the stored reply, once the serving core's guard pipeline has
//! admitted it (and it is observed like every other answer: [`InferenceService::stored_reply`]).
//! Replies with binary tensors (Triton's extension, `tritonclient`'s default) are kept and
//! answered the same way as JSON ones, with their header length. Anything else goes to the
//! router unchanged (with the body already read), where [`crate::http::v2`] decodes and runs
//! it and stores the reply for the next identical request.
//!
//! The lookup key is a seeded, non-cryptographic 128-bit hash (`foldhash`) of the request,
//! which is cheap enough for the hot path; it only finds a candidate, and a hit also compares
//! the stored request byte for byte, so a hash collision can never serve another request's
//! reply.

use crate::http::{metadata_of, read_body, AppState, CORRIDOR_HEADER, ROUTING_KEY_HEADER};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::Router;
use futures_util::future::{BoxFuture, Either};
use futures_util::FutureExt;
use invariant_serving::InferenceService;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use tower::{Service, ServiceExt};

/// `x-corridor` as a header name, so the hot path never parses it.
const CORRIDOR_NAME: HeaderName = HeaderName::from_static(CORRIDOR_HEADER);

/// `x-routing-key` as a header name.
const ROUTING_KEY_NAME: HeaderName = HeaderName::from_static(ROUTING_KEY_HEADER);

/// The last 16 bytes of every reply-cache key: keeps reply entries apart from the inference
/// cache's blake3 keys in the same corridor cache.
const KEY_TAG: [u8; 16] = *b"invariant/reply\0";

/// Two independently seeded hashers (one process-wide random seed each): 128 bits of key.
static SEEDS: LazyLock<[foldhash::quality::RandomState; 2]> = LazyLock::new(Default::default);

/// When the server started handling a request the front passed on, so the router's handler
/// measures its deadline from the same instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started(pub(crate) tokio::time::Instant);

/// The HTTP application: the reply cache in front of the router.
#[derive(Clone)]
pub struct App {
    state: AppState,
    router: Router,
}

impl App {
    /// `router` behind the reply cache of `state`.
    pub fn new(state: AppState, router: Router) -> Self {
        Self { state, router }
    }
}

impl Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<RouteFuture<Infallible>, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let plain = !request.headers().contains_key(axum::http::header::CONTENT_ENCODING);
        if request.method() != Method::POST || !plain || !is_infer_path(request.uri().path()) {
            return Either::Left(self.router.call(request));
        }
        let state = self.state.clone();
        let router = self.router.clone();
        Either::Right(Box::pin(async move {
            // The router has its own panic guard; this one covers the lookup in front of it.
            let answered = AssertUnwindSafe(answer(&state, request)).catch_unwind().await;
            match answered {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(request)) => router.oneshot(request).await,
                Err(panic) => Ok(crate::http::panic_response(panic)),
            }
        }))
    }
}

/// `/v2/models/{model}/infer` or `/v2/models/{model}/versions/{version}/infer` (and paths of
/// that shape the router will refuse: they can never hit, since only served replies are stored).
fn is_infer_path(path: &str) -> bool {
    path.starts_with("/v2/models/") && path.ends_with("/infer")
}

/// The stored reply of `request`, or the request (body read) for the router.
async fn answer(state: &AppState, request: Request) -> Result<Response, Request> {
    let started = tokio::time::Instant::now();
    let (mut parts, body) = request.into_parts();
    let body = match read_body(body, state.config.server.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return Ok(e.into_response()),
    };
    if let Some((corridor, request)) = identify(state, parts.uri.path(), &parts.headers, &body) {
        let metadata = metadata_of(&parts.headers);
        let transport = crate::http::v2::transport_of(&parts.headers);
        let stored = state
            .stored_reply(
                corridor,
                &request.key(),
                |stored| request.matches(stored),
                &metadata,
                transport,
                started,
            )
            .await;
        match stored {
            Some(Ok(reply)) => return Ok(crate::http::v2::infer_reply(reply.bytes, reply.header_length)),
            Some(Err(e)) => return Ok(crate::http::error_response(e)),
            None => {}
        }
    }
    parts.extensions.insert(Started(started));
    Err(Request::from_parts(parts, Body::from(body)))
}

/// Where a computed reply is stored: the corridor whose cache holds it, the key and the exact
/// request it answers.
pub(crate) struct ReplySlot<'a> {
    /// The corridor (as declared).
    pub(crate) corridor: &'a str,
    /// The lookup key.
    pub(crate) key: invariant_cache::Key,
    /// The request's identity, stored with the reply and compared on every hit.
    pub(crate) request: Bytes,
}

/// The reply-cache slot of a request (see [`identify`]).
pub(crate) fn reply_slot<'a>(
    state: &'a AppState,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<ReplySlot<'a>> {
    let (corridor, request) = identify(state, path, headers, body)?;
    Some(ReplySlot {
        corridor,
        key: request.key(),
        request: request.to_bytes(),
    })
}

/// A request as the reply cache tells requests apart: the serving generation, the corridor,
/// the path (model and version), the routing-key header, the binary header length (Triton's
/// `Inference-Header-Content-Length`) and the raw body. The corridor is the
/// `x-corridor` header's, else the default; `None` (not cacheable) when neither names a declared
/// corridor. The server stores a reply only when the request resolved to that same corridor and
/// used no feature-store values, so a body naming another corridor in `parameters.corridor`,
/// or asking for enrichment, never hits.
fn identify<'a, 'r>(
    state: &'a InferenceService,
    path: &'r str,
    headers: &'r HeaderMap,
    body: &'r [u8],
) -> Option<(&'a str, Identity<'r>)>
where
    'a: 'r,
{
    // The header usually spells a corridor exactly as declared: one lookup; other spellings
    // (e.g. lower case) go through the configuration's parser first.
    let (corridor, _) = match headers.get(&CORRIDOR_NAME) {
        Some(v) => {
            let v = v.to_str().ok()?;
            match state.corridors.get_key_value(v) {
                Some(found) => found,
                None => state.corridors.get_key_value(state.config.corridor(v)?.id.as_str())?,
            }
        }
        None => state
            .corridors
            .get_key_value(state.config.server.default_corridor.as_ref()?.as_str())?,
    };
    let routing = headers.get(&ROUTING_KEY_NAME).map(|v| v.as_bytes());
    let header_length = headers.get(crate::http::binary::HEADER_LENGTH).map(|v| v.as_bytes());
    let identity = Identity {
        generation: state.generation().to_le_bytes(),
        corridor: corridor.as_bytes(),
        path: path.as_bytes(),
        routed: [u8::from(routing.is_some())],
        routing: routing.unwrap_or_default(),
        framed: [u8::from(header_length.is_some())],
        header_length: header_length.unwrap_or_default(),
        body,
        lengths: [
            corridor.len(),
            path.len(),
            routing.map_or(0, <[u8]>::len),
            header_length.map_or(0, <[u8]>::len),
            body.len(),
        ]
        .map(|n| (n as u64).to_le_bytes()),
    };
    Some((corridor.as_str(), identity))
}

/// The byte pieces that tell requests apart, each variable piece preceded by its length so
/// that the concatenation is unambiguous.
struct Identity<'r> {
    generation: [u8; 8],
    corridor: &'r [u8],
    path: &'r [u8],
    routed: [u8; 1],
    routing: &'r [u8],
    /// Whether the request had an `Inference-Header-Content-Length` header, and its value.
    framed: [u8; 1],
    header_length: &'r [u8],
    body: &'r [u8],
    lengths: [[u8; 8]; 5],
}

impl Identity<'_> {
    fn pieces(&self) -> [&[u8]; 13] {
        let [corridor, path, routing, header_length, body] = &self.lengths;
        [
            &self.generation,
            corridor,
            self.corridor,
            path,
            self.path,
            &self.routed,
            routing,
            self.routing,
            &self.framed,
            header_length,
            self.header_length,
            body,
            self.body,
        ]
    }

    /// The lookup key: two seeded 64-bit hashes of the pieces, then [`KEY_TAG`].
    fn key(&self) -> invariant_cache::Key {
        let mut key = [0u8; 32];
        for (seed, out) in SEEDS.iter().zip(key.chunks_exact_mut(8)) {
            let mut h = seed.build_hasher();
            for piece in self.pieces() {
                h.write(piece);
            }
            out.copy_from_slice(&h.finish().to_le_bytes());
        }
        key[16..].copy_from_slice(&KEY_TAG);
        key
    }

    /// True when `stored` is this request's [`Identity::to_bytes`].
    fn matches(&self, stored: &[u8]) -> bool {
        let mut rest = stored;
        for piece in self.pieces() {
            match rest.strip_prefix(piece) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }

    /// The pieces, concatenated (a copy: it outlives the request's buffers).
    fn to_bytes(&self) -> Bytes {
        Bytes::from(self.pieces().concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed<'r>(
        path: &'r str,
        routing: Option<&'r [u8]>,
        header_length: Option<&'r [u8]>,
        body: &'r [u8],
    ) -> Identity<'r> {
        Identity {
            generation: 7u64.to_le_bytes(),
            corridor: b"UK-NG",
            path: path.as_bytes(),
            routed: [u8::from(routing.is_some())],
            routing: routing.unwrap_or_default(),
            framed: [u8::from(header_length.is_some())],
            header_length: header_length.unwrap_or_default(),
            body,
            lengths: [
                5,
                path.len(),
                routing.map_or(0, <[u8]>::len),
                header_length.map_or(0, <[u8]>::len),
                body.len(),
            ]
            .map(|n| (n as u64).to_le_bytes()),
        }
    }

    fn identity<'r>(path: &'r str, routing: Option<&'r [u8]>, body: &'r [u8]) -> Identity<'r> {
        framed(path, routing, None, body)
    }

    #[test]
    fn a_request_matches_only_its_own_bytes() {
        let a = identity("/v2/models/m/infer", None, b"{\"x\":1}");
        let stored = a.to_bytes();
        assert!(a.matches(&stored));
        assert_eq!(a.key(), identity("/v2/models/m/infer", None, b"{\"x\":1}").key());
        for other in [
            identity("/v2/models/m/infer", None, b"{\"x\":2}"),
            identity("/v2/models/n/infer", None, b"{\"x\":1}"),
            identity("/v2/models/m/infer", Some(b""), b"{\"x\":1}"),
            identity("/v2/models/m/infer", Some(b"user-1"), b"{\"x\":1}"),
            // The same bytes split differently between path and body.
            identity("/v2/models/m/infer{", None, b"\"x\":1}"),
            // The same body read as a binary request (a JSON header of 7 bytes, or of 3).
            framed("/v2/models/m/infer", None, Some(b"7"), b"{\"x\":1}"),
            framed("/v2/models/m/infer", None, Some(b"3"), b"{\"x\":1}"),
        ] {
            assert!(!other.matches(&stored), "{:?} matched", other.to_bytes());
            assert_ne!(other.key(), a.key());
        }
        assert!(!a.matches(&stored[..stored.len() - 1]));
        assert!(
            !a.matches(b""),
            "an inference-cache entry (empty request) never matches"
        );
        assert_eq!(a.key()[16..], KEY_TAG);
    }

    #[test]
    fn only_inference_paths_go_through_the_cache() {
        assert!(is_infer_path("/v2/models/price-advisor/infer"));
        assert!(is_infer_path("/v2/models/price-advisor/versions/1.0.0/infer"));
        assert!(!is_infer_path("/v2/models/price-advisor/ready"));
        assert!(!is_infer_path("/v2/health/live"));
        assert!(!is_infer_path("/v1/features/push"));
    }
}
