//! The worker's HTTP endpoint on `http.listen`: `/metrics` (Prometheus text), `/healthz` (the process
//! is alive) and `/readyz` (200 only while the broker accepts our publishes; 503 with the reason),
//! plus the routes of the `http` ingress when it is on ([`super::ingress::http`]).

use crate::pulsar::Publisher;
use crate::shutdown::Shutdown;
use crate::telemetry::Health;
use crate::telemetry::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// How long a readiness probe may wait for the broker before answering 503.
const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
struct Probe {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Set once the worker has connected to the broker.
    publisher: Arc<OnceCell<Publisher>>,
    /// Topic whose producer readiness checks (the result topic: without it nothing can finish).
    topic: String,
}

/// Serves until `shutdown` is triggered.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    publisher: Arc<OnceCell<Publisher>>,
    topic: String,
    ingress: Option<Router>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(Probe {
            metrics,
            health,
            publisher,
            topic,
        });
    if let Some(ingress) = ingress {
        app = app.merge(ingress);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.triggered_owned())
        .await
}

async fn metrics_text(State(p): State<Probe>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        p.metrics.render(),
    )
}

async fn ready(State(p): State<Probe>) -> (StatusCode, String) {
    let Some(publisher) = p.publisher.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: connecting to the broker".into(),
        );
    };
    let failing = p.health.failing();
    if !failing.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: no working consumer for {}", failing.join(", ")),
        );
    }
    match tokio::time::timeout(READINESS_TIMEOUT, publisher.check(&p.topic)).await {
        Ok(Ok(())) => (StatusCode::OK, "ready".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the broker did not answer within {READINESS_TIMEOUT:?}"),
        ),
    }
}
