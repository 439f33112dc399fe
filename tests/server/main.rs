//! Integration tests: the real server on ephemeral loopback ports, called as clients call it.
//! One test binary (modules below) so the suite links once.

mod binary;
mod common;
mod decisions;
mod errors;
mod fidelity;
mod hostile;
mod http;
mod key_budget;
mod metrics;
#[path = "../support/ports.rs"]
mod ports;
#[path = "../support/raw_h2.rs"]
mod raw_h2;
mod reload;
mod token_budget;
