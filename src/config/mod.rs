//! Rate limit rules, read from envoyproxy/ratelimit's YAML files unchanged.

mod error;
mod glob;

pub use error::{ConfigError, ConfigErrors};
