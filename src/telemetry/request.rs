//! The span of one ShouldRateLimit call: domain, the rules that matched, the outcome, as a
//! child of the caller's span when its request carries a W3C `traceparent`.
//!
//! Made with the OpenTelemetry API directly rather than through `tracing`: the parent comes
//! from the gRPC metadata, the attributes from the answer, and when tracing is off the handler
//! does not get here at all.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status as SpanStatus, Tracer as _};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Span, Tracer};
use tonic::metadata::MetadataMap;
use tonic::Status;

pub const SPAN_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

pub struct RequestTracer {
    tracer: Tracer,
    propagator: TraceContextPropagator,
}

/// A span begun when the call arrived; ended by [`RequestSpan::finish`].
pub struct RequestSpan(Span);

impl RequestTracer {
    pub fn new(tracer: Tracer) -> RequestTracer {
        RequestTracer {
            tracer,
            propagator: TraceContextPropagator::new(),
        }
    }

    /// Begin the span of a call with these headers.
    pub fn start(&self, headers: &MetadataMap) -> RequestSpan {
        let parent = self.propagator.extract(&Headers(headers));
        let span = self
            .tracer
            .span_builder(SPAN_NAME)
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        RequestSpan(span)
    }
}

impl RequestSpan {
    /// Record what was asked and answered, and end the span.
    pub fn finish(mut self, req: &RateLimitRequest, result: &Result<RateLimitResponse, Status>) {
        let span = &mut self.0;
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "envoy.service.ratelimit.v3.RateLimitService"),
                KeyValue::new("rpc.method", "ShouldRateLimit"),
                KeyValue::new("ratelimit.domain", req.domain.clone()),
                KeyValue::new("ratelimit.descriptors", req.descriptors.len() as i64),
            ]);
            match result {
                Ok(resp) => {
                    span.set_attribute(KeyValue::new(
                        "ratelimit.rules",
                        Value::Array(Array::String(matched_rules(req, resp))),
                    ));
                    span.set_attribute(KeyValue::new("ratelimit.outcome", outcome(resp)));
                    span.set_attribute(KeyValue::new("rpc.grpc.status_code", 0_i64));
                }
                Err(status) => {
                    span.set_attribute(KeyValue::new(
                        "ratelimit.outcome",
                        format!("{:?}", status.code()),
                    ));
                    span.set_attribute(KeyValue::new("rpc.grpc.status_code", status.code() as i64));
                    span.set_status(SpanStatus::error(status.message().to_string()));
                }
            }
        }
        span.end();
    }
}

/// `OK` or `OVER_LIMIT`, as Envoy sees the answer.
fn outcome(resp: &RateLimitResponse) -> &'static str {
    if resp.overall_code == Code::OverLimit as i32 {
        "OVER_LIMIT"
    } else {
        "OK"
    }
}

/// One name per descriptor that a limit applied to: the rule's `name`, or, for a rule without
/// one, its descriptor keys joined with `.` (as the reference service's stats keys), or
/// `_override` for a limit the request carried itself.
fn matched_rules(req: &RateLimitRequest, resp: &RateLimitResponse) -> Vec<StringValue> {
    resp.statuses
        .iter()
        .zip(&req.descriptors)
        .filter_map(|(status, d)| {
            let limit = status.current_limit.as_ref()?;
            Some(if d.limit.is_some() {
                StringValue::from("_override")
            } else if !limit.name.is_empty() {
                StringValue::from(limit.name.clone())
            } else {
                let keys: Vec<&str> = d.entries.iter().map(|e| e.key.as_str()).collect();
                StringValue::from(keys.join("."))
            })
        })
        .collect()
}

struct Headers<'a>(&'a MetadataMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
        DescriptorStatus, RateLimit,
    };

    fn descriptor(keys: &[&str], limit: Option<RateLimitOverride>) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: keys
                .iter()
                .map(|k| Entry {
                    key: k.to_string(),
                    value: "v".into(),
                })
                .collect(),
            limit,
            ..Default::default()
        }
    }

    fn status(name: Option<&str>) -> DescriptorStatus {
        DescriptorStatus {
            current_limit: name.map(|n| RateLimit {
                name: n.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn matched_rules_are_named_by_name_else_by_descriptor_keys_and_unmatched_are_left_out() {
        let req = RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![
                descriptor(&["user"], None),
                descriptor(&["tenant", "plan"], None),
                descriptor(&["nothing"], None),
                descriptor(&["user"], Some(RateLimitOverride::default())),
            ],
            hits_addend: 1,
        };
        let resp = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![
                status(Some("per-user")),
                status(Some("")),
                status(None),
                status(Some("")),
            ],
            ..Default::default()
        };
        let names: Vec<String> = matched_rules(&req, &resp)
            .into_iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(names, ["per-user", "tenant.plan", "_override"]);
        assert_eq!(outcome(&resp), "OVER_LIMIT");
        assert_eq!(outcome(&RateLimitResponse::default()), "OK");
    }
}
