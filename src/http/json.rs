//! `RateLimitRequest` / `RateLimitResponse` in protobuf-JSON (the canonical proto3 mapping), for
//! clients that are not Envoy. The generated types have no serde support, so the mapping is
//! spelled out here: lowerCamelCase or original field names, enums by name or number, 64-bit
//! integers as numbers or strings, `Duration` as `"1.5s"`. Unknown fields are errors, as in
//! protobuf's own JSON parsers.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{Duration, UInt64Value};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};

use crate::unit::Unit;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    domain: String,
    #[serde(default)]
    descriptors: Vec<JsonDescriptor>,
    #[serde(
        default,
        alias = "hits_addend",
        rename = "hitsAddend",
        deserialize_with = "de_u32"
    )]
    hits_addend: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDescriptor {
    #[serde(default)]
    entries: Vec<JsonEntry>,
    #[serde(default)]
    limit: Option<JsonOverride>,
    #[serde(
        default,
        alias = "hits_addend",
        rename = "hitsAddend",
        deserialize_with = "de_opt_u64"
    )]
    hits_addend: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEntry {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonOverride {
    #[serde(
        alias = "requests_per_unit",
        rename = "requestsPerUnit",
        deserialize_with = "de_u32"
    )]
    requests_per_unit: u32,
    #[serde(deserialize_with = "de_unit")]
    unit: i32,
}

/// A number, or a string holding one (proto3 JSON allows both for integers).
fn de_int<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| D::Error::custom(format!("expected a non-negative integer, got {n}"))),
        Value::String(s) => s
            .parse()
            .map_err(|_| D::Error::custom(format!("expected a non-negative integer, got \"{s}\""))),
        other => Err(D::Error::custom(format!(
            "expected an integer, got {other}"
        ))),
    }
}

fn de_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = de_int(d)?;
    u32::try_from(v).map_err(|_| D::Error::custom(format!("{v} does not fit in uint32")))
}

fn de_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_int(d).map(Some)
}

fn de_unit<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s
            .parse::<Unit>()
            .map(Unit::to_proto)
            .map_err(|e| D::Error::custom(e.to_string())),
        Value::Number(n) => n
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| D::Error::custom(format!("invalid unit {n}"))),
        other => Err(D::Error::custom(format!("invalid unit {other}"))),
    }
}

/// Parse a protobuf-JSON `RateLimitRequest`; the error says what is wrong and where.
pub fn parse_request(body: &[u8]) -> Result<RateLimitRequest, String> {
    let r: JsonRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid RateLimitRequest JSON: {e}"))?;
    Ok(RateLimitRequest {
        domain: r.domain,
        hits_addend: r.hits_addend,
        descriptors: r
            .descriptors
            .into_iter()
            .map(|d| RateLimitDescriptor {
                entries: d
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        key: e.key,
                        value: e.value,
                    })
                    .collect(),
                limit: d.limit.map(|o| RateLimitOverride {
                    requests_per_unit: o.requests_per_unit,
                    unit: o.unit,
                }),
                hits_addend: d.hits_addend.map(|value| UInt64Value { value }),
                is_negative_hits: false,
            })
            .collect(),
    })
}

fn code_name(code: i32) -> &'static str {
    match Code::try_from(code) {
        Ok(Code::Ok) => "OK",
        Ok(Code::OverLimit) => "OVER_LIMIT",
        _ => "UNKNOWN",
    }
}

fn unit_name(unit: i32) -> String {
    Unit::from_proto(unit).map_or_else(|| "UNKNOWN".to_string(), |u| u.name().to_uppercase())
}

/// `Duration` as proto3 JSON: seconds with 0, 3, 6 or 9 fractional digits and an `s`.
pub fn duration_json(d: &Duration) -> String {
    let nanos = d.nanos.unsigned_abs();
    if nanos == 0 {
        format!("{}s", d.seconds)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}.{:03}s", d.seconds, nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}.{:06}s", d.seconds, nanos / 1_000)
    } else {
        format!("{}.{:09}s", d.seconds, nanos)
    }
}

fn status_json(s: &DescriptorStatus) -> Value {
    let mut m = Map::new();
    m.insert("code".into(), json!(code_name(s.code)));
    if let Some(l) = &s.current_limit {
        let mut cl = Map::new();
        if !l.name.is_empty() {
            cl.insert("name".into(), json!(l.name));
        }
        cl.insert("requestsPerUnit".into(), json!(l.requests_per_unit));
        cl.insert("unit".into(), json!(unit_name(l.unit)));
        m.insert("currentLimit".into(), Value::Object(cl));
    }
    m.insert("limitRemaining".into(), json!(s.limit_remaining));
    if let Some(d) = &s.duration_until_reset {
        m.insert("durationUntilReset".into(), json!(duration_json(d)));
    }
    Value::Object(m)
}

/// A `RateLimitResponse` as protobuf-JSON.
pub fn response_json(r: &RateLimitResponse) -> Value {
    json!({
        "overallCode": code_name(r.overall_code),
        "statuses": r.statuses.iter().map(status_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_camel_case_and_original_names() {
        let a = parse_request(br#"{"domain":"d","hitsAddend":2,"descriptors":[{"entries":[{"key":"k","value":"v"}],"hitsAddend":"0"}]}"#).expect("valid");
        let b = parse_request(br#"{"domain":"d","hits_addend":"2","descriptors":[{"entries":[{"key":"k","value":"v"}],"hits_addend":0}]}"#).expect("valid");
        assert_eq!(a, b);
        assert_eq!(a.hits_addend, 2);
        assert_eq!(a.descriptors[0].hits_addend, Some(UInt64Value { value: 0 }));
    }

    #[test]
    fn parses_a_limit_override_with_unit_by_name_or_number() {
        let a = parse_request(br#"{"domain":"d","descriptors":[{"entries":[{"key":"k"}],"limit":{"requestsPerUnit":5,"unit":"minute"}}]}"#).expect("valid");
        let b = parse_request(br#"{"domain":"d","descriptors":[{"entries":[{"key":"k"}],"limit":{"requests_per_unit":5,"unit":2}}]}"#).expect("valid");
        assert_eq!(a, b);
        assert_eq!(
            a.descriptors[0].limit,
            Some(RateLimitOverride {
                requests_per_unit: 5,
                unit: 2
            })
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let err = parse_request(br#"{"domain":"d","descriptor":[]}"#).unwrap_err();
        assert!(err.contains("unknown field `descriptor`"), "{err}");
    }

    #[test]
    fn malformed_json_says_where() {
        let err = parse_request(b"{\"domain\": ").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn negative_hits_are_refused() {
        let err = parse_request(br#"{"domain":"d","hitsAddend":-1}"#).unwrap_err();
        assert!(err.contains("non-negative"), "{err}");
    }

    #[test]
    fn durations_use_the_proto3_json_form() {
        assert_eq!(
            duration_json(&Duration {
                seconds: 3,
                nanos: 0
            }),
            "3s"
        );
        assert_eq!(
            duration_json(&Duration {
                seconds: 0,
                nanos: 350_000_000
            }),
            "0.350s"
        );
        assert_eq!(
            duration_json(&Duration {
                seconds: 1,
                nanos: 1_000
            }),
            "1.000001s"
        );
        assert_eq!(
            duration_json(&Duration {
                seconds: 1,
                nanos: 1
            }),
            "1.000000001s"
        );
    }
}
