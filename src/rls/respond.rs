//! Step four of a decision: the Envoy response. Statuses per descriptor, the overall code, and
//! what the reference can add: `RateLimit-*` response headers (`LIMIT_RESPONSE_HEADERS_ENABLED`),
//! a `Retry-After` on rejections, and dynamic metadata (`RESPONSE_DYNAMIC_METADATA`) that
//! Envoy's access log can show, including which rule tripped.

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{
    value::Kind, Duration as PbDuration, ListValue, Struct, Value,
};
use smallvec::SmallVec;

use crate::limiter::{Decision, LimitedOutcome, Outcome};

/// What the response carries beyond the statuses.
#[derive(Debug, Clone, Default)]
pub struct ResponseOptions {
    /// `LIMIT_RESPONSE_HEADERS_ENABLED`: add these three headers, for the descriptor closest to
    /// its limit.
    pub headers: Option<HeaderNames>,
    /// Add `Retry-After` (seconds) to rejected requests.
    pub retry_after: bool,
    /// `RESPONSE_DYNAMIC_METADATA`: fill `dynamic_metadata`.
    pub dynamic_metadata: bool,
}

/// Names of the service's own rate limit headers (the reference's `LIMIT_*_HEADER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    pub limit: String,
    pub remaining: String,
    pub reset: String,
}

impl Default for HeaderNames {
    fn default() -> Self {
        HeaderNames {
            limit: "RateLimit-Limit".into(),
            remaining: "RateLimit-Remaining".into(),
            reset: "RateLimit-Reset".into(),
        }
    }
}

/// The Envoy response for a decided request.
pub fn response(
    req: &RateLimitRequest,
    decision: &Decision<'_, '_>,
    options: &ResponseOptions,
) -> RateLimitResponse {
    let overall_code = if decision.rejected() {
        Code::OverLimit as i32
    } else {
        Code::Ok as i32
    };
    // Without headers, Retry-After or metadata nothing reads the outcomes but the statuses:
    // they are built as the outcomes come, not kept first (a few hundred bytes copied and
    // read again on every request otherwise).
    if options.headers.is_none() && !options.retry_after && !options.dynamic_metadata {
        return RateLimitResponse {
            overall_code,
            statuses: decision.outcomes().map(|o| status(&o)).collect(),
            ..Default::default()
        };
    }
    let outcomes: SmallVec<[Outcome<'_>; 4]> = decision.outcomes().collect();
    let mut resp = RateLimitResponse {
        overall_code,
        statuses: outcomes.iter().map(status).collect(),
        ..Default::default()
    };
    let tripped = decision.over.then(|| tripped(&outcomes)).flatten();
    if let Some(names) = &options.headers {
        if let Some((_, o)) = tripped.or_else(|| closest(&outcomes)) {
            resp.response_headers_to_add.extend([
                header(&names.limit, o.requests_per_unit.to_string()),
                header(&names.remaining, remaining(o).to_string()),
                header(&names.reset, ceil_seconds(o.reset_ns).to_string()),
            ]);
        }
    }
    if options.retry_after && decision.rejected() {
        if let Some((_, o)) = tripped {
            let seconds = ceil_seconds(o.retry_after_ns()).max(1);
            resp.response_headers_to_add
                .push(header("Retry-After", seconds.to_string()));
        }
    }
    if options.dynamic_metadata {
        resp.dynamic_metadata = Some(metadata(req, &outcomes, tripped));
    }
    resp
}

fn status(o: &Outcome<'_>) -> DescriptorStatus {
    match o {
        Outcome::NoLimit => DescriptorStatus {
            code: Code::Ok as i32,
            ..Default::default()
        },
        Outcome::Unlimited(_) => DescriptorStatus {
            code: Code::Ok as i32,
            limit_remaining: u32::MAX,
            ..Default::default()
        },
        Outcome::Limited(l) => DescriptorStatus {
            code: if l.over && !l.shadow {
                Code::OverLimit as i32
            } else {
                Code::Ok as i32
            },
            current_limit: Some(RateLimit {
                name: l.rule.and_then(|r| r.name.clone()).unwrap_or_default(),
                requests_per_unit: l.requests_per_unit,
                unit: l.unit.to_proto(),
            }),
            limit_remaining: remaining(l),
            duration_until_reset: Some(duration(l.reset_ns)),
            ..Default::default()
        },
    }
}

/// Tokens left as Envoy sees them: 0 when over, as in the reference (a 429 with a non-zero
/// `x-ratelimit-remaining` would contradict itself).
fn remaining(l: &LimitedOutcome<'_>) -> u32 {
    if l.over {
        0
    } else {
        l.remaining.min(u64::from(u32::MAX)) as u32
    }
}

/// The first descriptor whose being over makes the request over.
fn tripped<'o, 'a>(outcomes: &'o [Outcome<'a>]) -> Option<(usize, &'o LimitedOutcome<'a>)> {
    outcomes.iter().enumerate().find_map(|(i, o)| match o {
        Outcome::Limited(l) if l.over && !l.shadow => Some((i, l)),
        _ => None,
    })
}

/// The limited descriptor with the fewest tokens left (the first of equals).
fn closest<'o, 'a>(outcomes: &'o [Outcome<'a>]) -> Option<(usize, &'o LimitedOutcome<'a>)> {
    outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Outcome::Limited(l) => Some((i, l)),
            _ => None,
        })
        .min_by_key(|(_, l)| remaining(l))
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_string(),
        value,
        ..Default::default()
    }
}

fn ceil_seconds(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

fn duration(ns: u64) -> PbDuration {
    PbDuration {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
    }
}

/// The reference's dynamic metadata (`domain`, `descriptors`, `hitsAddend`, the merged
/// `metadata` of the rules that passed), plus `trippedRule` and `trippedDescriptorIndex` when
/// the request is over: the rule's name (its stats key when unnamed, `_override` for a limit
/// override) and the descriptor's position in the request.
fn metadata(
    req: &RateLimitRequest,
    outcomes: &[Outcome<'_>],
    tripped: Option<(usize, &LimitedOutcome<'_>)>,
) -> Struct {
    let mut fields = Struct::default();
    put(&mut fields, "domain", string(&req.domain));
    let descriptors = req
        .descriptors
        .iter()
        .map(|d| {
            let mut s = Struct::default();
            let entries = d
                .entries
                .iter()
                .map(|e| string(&format!("{}={}", e.key, e.value)))
                .collect();
            put(&mut s, "entries", list(entries));
            if let Some(l) = &d.limit {
                let unit = crate::unit::Unit::from_proto(l.unit)
                    .map_or_else(|| l.unit.to_string(), |u| u.name().to_ascii_uppercase());
                let text = format!("requests_per_unit:{} unit:{unit}", l.requests_per_unit);
                put(&mut s, "limit", string(&text));
            }
            if let Some(h) = &d.hits_addend {
                put(&mut s, "hitsAddend", number(h.value as f64));
            }
            struct_value(s)
        })
        .collect();
    put(&mut fields, "descriptors", list(descriptors));
    if req.hits_addend != 0 {
        put(
            &mut fields,
            "hitsAddend",
            number(f64::from(req.hits_addend)),
        );
    }
    let mut merged = Struct::default();
    for o in outcomes {
        let rule = match o {
            Outcome::Limited(l) if !l.over => l.rule,
            Outcome::Unlimited(r) => Some(*r),
            _ => None,
        };
        if let Some(Kind::StructValue(m)) = rule
            .and_then(|r| r.metadata.as_deref())
            .map(json_to_value)
            .and_then(|v| v.kind)
        {
            merge(&mut merged, m);
        }
    }
    if !merged.fields.is_empty() {
        put(&mut fields, "metadata", struct_value(merged));
    }
    if let Some((index, l)) = tripped {
        let name = l
            .rule
            .map_or("_override", |r| r.name.as_deref().unwrap_or(&r.stats_key));
        put(&mut fields, "trippedRule", string(name));
        put(&mut fields, "trippedDescriptorIndex", number(index as f64));
    }
    fields
}

/// The reference's merge: structs merge recursively, otherwise the first value stays.
fn merge(dest: &mut Struct, src: Struct) {
    for (k, v) in src.fields {
        match dest.fields.get_mut(&k) {
            None => {
                dest.fields.insert(k, v);
            }
            Some(Value {
                kind: Some(Kind::StructValue(d)),
            }) => {
                if let Some(Kind::StructValue(s)) = v.kind {
                    merge(d, s);
                }
            }
            Some(_) => {}
        }
    }
}

fn json_to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn put(s: &mut Struct, key: &str, v: Value) {
    s.fields.insert(key.to_string(), v);
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

fn struct_value(s: Struct) -> Value {
    Value {
        kind: Some(Kind::StructValue(s)),
    }
}
