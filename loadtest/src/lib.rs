//! tollgate-load: a load generator for Envoy's rate limit gRPC API, the no-op baseline server,
//! and the replication benchmark presets.
//!
//! - [`cli`]: the command line and how its flags become a run [`driver::Plan`].
//! - [`driver`]: connections, workers, open/closed loop pacing, the progress line.
//! - [`keys`]: key distributions (hot, uniform, zipf); [`request`]: key index -> RateLimitRequest.
//! - [`stats`]: per-worker recording; [`report`]: the summary and JSON;
//!   [`accuracy`]: admitted per key against an ideal token bucket.
//! - [`noop`]: the no-op ShouldRateLimit server; [`scenario`]: replication presets;
//!   [`h2load_body`]: a request body for h2load.
//! - [`usage`]: usage-style traffic (a pre-check, then a usage report of a size drawn from
//!   [`sizes`]), assessed against the ideal budget by [`budget`].

pub mod accuracy;
pub mod budget;
pub mod cli;
pub mod driver;
pub mod h2load_body;
pub mod keys;
pub mod noop;
pub mod report;
pub mod request;
pub mod scenario;
pub mod sizes;
pub mod stats;
pub mod usage;
