//! bindgate: a sidecar reverse proxy on Pingora that enforces initial access tokens,
//! RFC 8705 certificate-bound tokens and the session-store API in front of an OpenID Connect
//! provider. The binary (`main.rs`) drives this library.

pub mod admin;
pub mod auth;
pub mod certificate;
pub mod config;
pub mod devcerts;
pub mod devtoken;
pub mod fuzzing;
pub mod gateway;
pub mod grants;
pub mod headers;
pub mod listeners;
pub mod logformat;
pub mod logwriter;
pub mod metrics;
pub mod notify;
pub mod readiness;
pub mod rejection;
pub mod reload;
pub mod request_id;
pub mod routing;
pub mod serve;
pub mod state;
pub mod target;
pub mod telemetry;
pub mod tls;
