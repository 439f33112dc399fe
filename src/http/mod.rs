//! The HTTP side: health and readiness for Kubernetes, `/metrics` for Prometheus, `/json` for
//! clients that are not Envoy, `/rlconfig` to see what is being served.

pub mod json;
pub mod scrape;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

use crate::limiter::Limiter;
use crate::readiness::Readiness;
use crate::rls;

#[derive(Clone)]
pub struct HttpState {
    pub limiter: Arc<Limiter>,
    pub readiness: Arc<Readiness>,
    /// Shared with the OTLP metrics push, so the two never render at once.
    pub scrape: scrape::ScrapeGate,
}

pub fn router(state: HttpState) -> Router {
    let gate = state.scrape.clone();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(move |s| metrics(s, gate.clone())))
        .route("/json", post(json_decide))
        .route("/rlconfig", get(rlconfig))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "OK\n"
}

async fn readyz(State(s): State<HttpState>) -> Response {
    if s.readiness.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(s): State<HttpState>, gate: scrape::ScrapeGate) -> Response {
    let body = match gate.render(s.limiter.clone()).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn rlconfig(State(s): State<HttpState>) -> String {
    s.limiter.active().config.render()
}

/// 200 when every descriptor is within its limit, 429 when one is over, 400 on bad input,
/// 503 while not ready.
async fn json_decide(State(s): State<HttpState>, body: Bytes) -> Response {
    let req = match json::parse_request(&body) {
        Ok(r) => r,
        Err(msg) => return (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response(),
    };
    match rls::decide(&s.limiter, &s.readiness, &req) {
        Ok(resp) => {
            let status = if resp.overall_code == Code::OverLimit as i32 {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::OK
            };
            (status, Json(json::response_json(&resp))).into_response()
        }
        Err(e) if e.code() == tonic::Code::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", e.message()),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{}\n", e.message())).into_response(),
    }
}
