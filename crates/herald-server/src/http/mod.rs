//! The HTTP surface (SPEC §5): server API, polling, operations, the demo page,
//! and the WebSocket upgrade, in one axum router.

mod admin;
pub(crate) mod api;
mod batch_body;
pub mod error;
mod extract;
pub(crate) mod ops;
pub(crate) mod origin;
pub(crate) mod poll;
mod poll_limit;
mod presence;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use herald_protocol::ErrorCode;
use tower_http::cors::{Any, CorsLayer};

use crate::node::Node;
use error::ApiError;

/// The OpenAPI description's fixed parts; `paths` and the schemas come from
/// the routes themselves (see [`router`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Herald's HTTP API (SPEC §5). Errors are `{\"error\":{\"code\",\"message\"}}` \
            with the protocol's codes. The server API takes the API key as \
            `Authorization: Bearer <api_key>`; polls take a client JWT the same way, or nothing \
            where the namespace is public (or in dev mode). Real-time delivery is the WebSocket \
            at `GET /ws` (SPEC §3); polling is its fallback.",
        license(name = "MIT OR Apache-2.0"),
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "server", description = "The server API: publishes and status, with the API key"),
        (name = "polling", description = "The polling fallback, with a client JWT"),
        (name = "presence", description = "Who is subscribed to a channel (API key or a client JWT that may subscribe), and whether a user is online (API key)"),
        (name = "operations", description = "Health, readiness, metrics, the demo page, this description; no auth"),
        (name = "websocket", description = "The real-time connection"),
        (name = "admin", description = "The admin dashboard and its API, with the API key; lists are of the node that answers"),
    ),
)]
struct ApiDoc;

/// The two credentials, both sent as `Authorization: Bearer …`.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of the server's API keys (`auth.api_keys`), for backends only",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "client_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A client token signed by the application (SPEC §4)"))
                    .build(),
            ),
        );
    }
}

/// The whole router, and its OpenAPI description: every route is added
/// through `routes!` from its handler's `#[utoipa::path]`, so a route can't
/// be served without being described (a test in this module refuses plain
/// `route` calls here).
pub fn router(node: Arc<Node>) -> Router {
    router_and_doc(node).0
}

/// [`router`] and the OpenAPI description it serves at `/api/openapi.json`.
pub fn router_and_doc(node: Arc<Node>) -> (Router, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
    use utoipa_axum::routes;

    // Browsers poll with a bearer token from other origins (the app's own
    // pages); tokens travel in headers, never cookies, so any origin may ask.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([header::RETRY_AFTER]);
    // Every request is bounded in time, body upload included: a client that
    // trickles a body, or an engine that stalls, can't hold a task forever.
    // Long polls get their longest `wait` on top. The WebSocket upgrade is
    // answered at once; the session after it has its own heartbeat bounds.
    let limits = &node.config().limits;
    let poll_limiter = Arc::new(poll_limit::PollLimiter::new(
        limits.poll_requests_per_second,
        limits.poll_burst,
        poll_limit::MAX_KEYS,
        node.metrics.poll_rate_keys.clone(),
        node.metrics.poll_rate_limited.clone(),
    ));
    let limit = limits.request_timeout;
    let short = from_fn_with_state(limit, deadline);
    let long = from_fn_with_state(limit + poll::MAX_WAIT, deadline);
    // Publishes bound their two phases themselves (body: 408; engine: 503
    // "outcome unknown", see api.rs); this is only a backstop behind both.
    let publish = from_fn_with_state(limit * 2 + Duration::from_secs(1), deadline);
    let ops = OpenApiRouter::new()
        .routes(routes!(ops::health))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::demo))
        .routes(routes!(ops::openapi))
        .route_layer(short.clone());
    // Two handlers on one path: each `routes!` adds its method to the path.
    let publishes = OpenApiRouter::new()
        .routes(routes!(api::status).layer(short.clone()))
        .routes(routes!(api::control).layer(publish.clone()))
        .routes(routes!(api::notify_user).layer(publish.clone()))
        .routes(routes!(api::batch).layer(publish.clone()));
    let admin = OpenApiRouter::new()
        .routes(routes!(admin::page))
        .routes(routes!(admin::overview))
        .routes(routes!(admin::channels))
        .routes(routes!(admin::channel))
        .routes(routes!(admin::user))
        .routes(routes!(admin::disconnect))
        .route_layer(short.clone());
    let polls = OpenApiRouter::new()
        .routes(routes!(poll::venue_updates))
        .routes(routes!(poll::venue))
        .routes(routes!(poll::vibe_checks))
        .routes(routes!(poll::promotions))
        .routes(routes!(poll::notifications))
        .route_layer(long.clone());
    let (routes, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(crate::transport::ws::upgrade))
        .routes(routes!(poll::channel).layer(long))
        .routes(routes!(poll::mark_read).layer(short.clone()))
        .routes(routes!(presence::presence).layer(short.clone()))
        .routes(routes!(presence::presence_stats).layer(short.clone()))
        .routes(routes!(presence::user_status).layer(short.clone()))
        .routes(routes!(api::publish_channel).layer(publish))
        .merge(ops)
        .merge(publishes)
        .merge(admin)
        .merge(polls)
        .split_for_parts();
    let json = ops::OpenApiJson(doc.to_json().unwrap_or_default().into());
    let router = routes
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadRequest,
                "method not allowed",
            )
        })
        .layer(axum::Extension(json))
        .layer(axum::Extension(poll_limiter))
        .layer(cors)
        // Outside the CORS layer, so a foreign page's preflight is refused too.
        .layer(from_fn_with_state(node.clone(), origin::dev_guard))
        // Outermost: every answer is logged, refusals included.
        .layer(axum::middleware::from_fn(access_log))
        .with_state(node);
    (router, doc)
}

/// One line per HTTP request under the target `herald::access` (filter it
/// with `HERALD_LOG=info,herald::access=off`): method, path, status, time
/// and client address. Never the query string, the headers or the body:
/// they carry tokens (`Authorization`, a `token` someone put in a URL) and
/// API keys, which must not reach any log.
async fn access_log(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let client = request.extensions().get::<ClientIp>().map(|c| c.0);
    let response = next.run(request).await;
    tracing::info!(
        target: "herald::access",
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        client = ?client,
        "http"
    );
    response
}

/// The client address of a request as this server counts it: the TCP
/// peer's, or the forwarded one when the peer is in `limits.trusted_proxies`
/// (see [`crate::conns::forwarded`]). Put into every request the server
/// carries; usable as an extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ClientIp>()
                .map_or(Ipv4Addr::UNSPECIFIED.into(), |c| c.0),
        ))
    }
}

/// The client address of the request `parts` belong to (as [`ClientIp`]).
/// A request that did not come through the server's accept loop (a test
/// calling the router directly) has none: `0.0.0.0`.
pub fn client_ip(node: &Node, parts: &Parts) -> IpAddr {
    if let Some(ClientIp(ip)) = parts.extensions.get::<ClientIp>() {
        return *ip;
    }
    match parts.extensions.get::<crate::server::PeerAddr>() {
        Some(peer) => node.conns.client_ip(peer.0.ip(), &parts.headers),
        None => Ipv4Addr::UNSPECIFIED.into(),
    }
}

/// Answers 408 when the request is not done within `limit`.
async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::BadRequest,
            format!(
                "request not completed within {} (limits.request_timeout)",
                humantime::format_duration(limit)
            ),
        )
        .into_response(),
    }
}

/// The bearer credential of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, credential))
            if scheme.eq_ignore_ascii_case("bearer") && !credential.trim().is_empty() =>
        {
            Ok(Some(credential.trim()))
        }
        _ => Err(ApiError::unauthorized(
            "Authorization must be \"Bearer <credential>\"",
        )),
    }
}

/// Reads a JSON body: checks the content type and the size, then parses it.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = json_bytes(headers, body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("body is not valid JSON for this endpoint: {e}"))
    })
}

/// The bytes of a JSON body, unparsed: checks the content type and the size.
pub(crate) async fn json_bytes(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadRequest,
            "Content-Type must be application/json",
        ));
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::MessageTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    })
}

#[cfg(test)]
mod tests {
    /// Every route goes through `routes!`, which describes it: a plain
    /// `route` call in the router would serve an undocumented path.
    #[test]
    fn every_route_is_described() {
        let source = include_str!("mod.rs");
        let plain = concat!(".rou", "te(");
        assert!(
            !source.contains(plain),
            "add routes with .routes(routes!(handler)) and a #[utoipa::path] on the handler"
        );
        let nested = concat!(".ne", "st(");
        assert!(!source.contains(nested), "nest with OpenApiRouter::nest");
    }
}
