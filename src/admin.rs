//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/config`. Plain HTTP without
//! authentication: it belongs on loopback or behind a network policy (`check` warns).

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::reload::Control;

pub struct AdminApp {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub control: Arc<Control>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", value.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let get = session.req_header().method == http::Method::GET;
        let path = session.req_header().uri.path().to_string();
        match (get, path.as_str()) {
            (true, "/healthz") => json(200, serde_json::json!({"status": "ok"})),
            (true, "/readyz") => match self.readiness.missing() {
                None => json(200, serde_json::json!({"status": "ready"})),
                Some(why) => json(
                    503,
                    serde_json::json!({"status": "not_ready", "reason": why}),
                ),
            },
            (true, "/metrics") => reply(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            (true, "/config") => json(200, self.control.describe()),
            (false, "/healthz" | "/readyz" | "/metrics" | "/config") => json(
                405,
                serde_json::json!({"error": "method_not_allowed", "error_description": "Use GET"}),
            ),
            _ => json(
                404,
                serde_json::json!({"error": "not_found", "error_description": "Try /healthz, /readyz, /metrics or /config"}),
            ),
        }
    }
}
