//! The integration tests: one binary (one link), a module per subject. Each starts the real
//! `bindgate` binary with its own certificates, servers and clients (`harness`).

mod harness;

mod answers;
mod balance;
mod claims;
mod config;
mod core;
mod dpop;
mod enforcement;
mod fuzz;
mod hostile;
mod image;
mod introspection;
mod live;
mod logs;
mod operations;
mod paths;
mod policy;
mod pool;
mod provider;
mod readme;
mod redis;
mod state;
mod structure;
mod telemetry;
mod tokens;
