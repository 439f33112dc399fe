//! The RateLimitRequest a key index becomes.
//!
//! Descriptor scheme (one entry per descriptor, every descriptor of a request carries the same
//! key index, so all of a request's buckets see the same hits and "admitted per key" is simply
//! "requests of that key answered OK"):
//!
//! ```text
//! descriptor i = [ (NAME_i, "TAG-INDEX") ]
//! NAME_i       = names[i] while i < names.len(), then names[i % len] + (i / len)
//!                default names: user, path  ->  user, path, user1, path1, user2, ...
//! ```
//!
//! so `--descriptors 2 --keys uniform:1000` sends `[user=TAG-417] [path=TAG-417]`. `TAG` keeps
//! runs apart: by default a fresh one per run, so every run starts on full buckets.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::{Entry, RateLimitOverride},
    RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::UInt64Value;

use crate::accuracy::LimitSpec;

pub const DEFAULT_DESCRIPTOR_KEYS: [&str; 2] = ["user", "path"];

/// Everything about a request except its key: fixed for a run.
#[derive(Debug, Clone)]
pub struct RequestShape {
    pub domain: String,
    /// Entry key of each descriptor, already expanded to the descriptor count.
    names: Vec<String>,
    pub key_tag: String,
    /// Request-level `hits_addend`; `None` leaves the field unset (Envoy: 1 hit).
    pub hits_addend: Option<u32>,
    /// Sent as each descriptor's `limit` when set.
    pub override_limit: Option<LimitSpec>,
}

impl RequestShape {
    /// `names` may be shorter than `descriptors` (it cycles, see the module doc); both must be
    /// non-empty.
    pub fn new(
        domain: &str,
        descriptors: usize,
        names: &[String],
        key_tag: &str,
        hits_addend: Option<u32>,
        override_limit: Option<LimitSpec>,
    ) -> RequestShape {
        let names: Vec<String> = if names.is_empty() {
            DEFAULT_DESCRIPTOR_KEYS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            names.to_vec()
        };
        let len = names.len();
        let expanded = (0..descriptors.max(1))
            .map(|i| {
                let base = &names[i % len];
                if i < len {
                    base.clone()
                } else {
                    format!("{base}{}", i / len)
                }
            })
            .collect();
        RequestShape {
            domain: domain.to_string(),
            names: expanded,
            key_tag: key_tag.to_string(),
            hits_addend,
            override_limit,
        }
    }

    pub fn descriptor_names(&self) -> &[String] {
        &self.names
    }

    /// Hits one request consumes: `hits_addend`, where 0 or unset means 1 (Envoy's rule).
    pub fn hits_per_request(&self) -> u64 {
        u64::from(self.hits_addend.unwrap_or(1).max(1))
    }

    /// The descriptor value of key `index`.
    pub fn key_value(&self, index: u64) -> String {
        format!("{}-{}", self.key_tag, index)
    }

    /// The request for key `index` with every descriptor's own `hits_addend` set to `hits`:
    /// 0 is a pre-check that consumes nothing (the request-level field would read 0 as 1).
    pub fn build_with_hits(&self, index: u64, hits: u64) -> RateLimitRequest {
        let mut req = self.build(index);
        for d in &mut req.descriptors {
            d.hits_addend = Some(UInt64Value { value: hits });
        }
        req
    }

    pub fn build(&self, index: u64) -> RateLimitRequest {
        let value = self.key_value(index);
        let limit = self.override_limit.map(|l| RateLimitOverride {
            requests_per_unit: l.requests_per_unit,
            unit: l.unit.to_proto(),
        });
        let descriptors = self
            .names
            .iter()
            .map(|name| RateLimitDescriptor {
                entries: vec![Entry {
                    key: name.clone(),
                    value: value.clone(),
                }],
                limit,
                hits_addend: None,
                is_negative_hits: false,
            })
            .collect();
        RateLimitRequest {
            domain: self.domain.clone(),
            descriptors,
            hits_addend: self.hits_addend.unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_user_then_path_then_numbered() {
        let shape = RequestShape::new("d", 5, &[], "t", None, None);
        assert_eq!(
            shape.descriptor_names(),
            ["user", "path", "user1", "path1", "user2"]
        );
    }

    #[test]
    fn every_descriptor_carries_the_same_key() {
        let shape = RequestShape::new("edge", 2, &[], "run7", Some(3), None);
        let req = shape.build(42);
        assert_eq!(req.domain, "edge");
        assert_eq!(req.hits_addend, 3);
        assert_eq!(shape.hits_per_request(), 3);
        let entries: Vec<(&str, &str)> = req
            .descriptors
            .iter()
            .map(|d| (d.entries[0].key.as_str(), d.entries[0].value.as_str()))
            .collect();
        assert_eq!(entries, [("user", "run7-42"), ("path", "run7-42")]);
    }

    #[test]
    fn a_usage_request_sets_every_descriptors_own_hits() {
        let shape = RequestShape::new("d", 2, &[], "t", None, None);
        let check = shape.build_with_hits(1, 0);
        assert_eq!(check.hits_addend, 0);
        assert!(check
            .descriptors
            .iter()
            .all(|d| d.hits_addend == Some(UInt64Value { value: 0 })));
        let report = shape.build_with_hits(1, 812);
        assert!(report
            .descriptors
            .iter()
            .all(|d| d.hits_addend == Some(UInt64Value { value: 812 })));
    }

    #[test]
    fn override_is_sent_on_every_descriptor() {
        let limit: LimitSpec = "50/minute".parse().expect("valid");
        let shape = RequestShape::new("d", 2, &["api".into()], "t", None, Some(limit));
        let req = shape.build(0);
        assert_eq!(req.hits_addend, 0);
        assert_eq!(shape.hits_per_request(), 1);
        for d in &req.descriptors {
            let o = d.limit.expect("override set");
            assert_eq!((o.requests_per_unit, o.unit), (50, 2));
        }
        assert_eq!(req.descriptors[1].entries[0].key, "api1");
    }
}
