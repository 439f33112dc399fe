//! tollgate: Envoy's global rate limit service on replicated token buckets.
//!
//! The layout follows the architecture: [`bucket`] is the pure CRDT, [`store`] holds millions of
//! them, [`config`] reads envoyproxy/ratelimit's YAML, [`limiter`] turns a request into decisions,
//! [`rls`] and [`http`] are thin adapters for gRPC and HTTP clients, [`server`] wires them.

pub mod bucket;
pub mod clock;
pub mod config;
pub mod fast_map;
pub mod http;
pub mod limiter;
pub mod listener;
pub mod metrics;
pub mod readiness;
pub mod reference_settings;
pub mod reload;
pub mod replication;
pub mod rls;
pub mod server;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod unit;
