//! Cluster tests: several tollgate nodes replicating over loopback. In-process nodes have their
//! own manual clocks (deterministic time, clock skew on demand); the `processes` module runs the
//! real binary for what only processes can show (kill -9, accuracy under real load).

mod autoscale;
mod common;
mod dissemination;
mod fleet;
mod gc;
mod identity;
mod membership;
mod network;
#[path = "../support/ports.rs"]
mod ports;
mod processes;
// Only part of the raw HTTP/2 helpers is needed here.
#[allow(dead_code)]
#[path = "../support/raw_h2.rs"]
mod raw_h2;
mod restart;
mod sync;
mod tls;
mod token_budget;
