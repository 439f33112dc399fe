//! A `/metrics` snapshot as OTLP export requests: the same names, labels (as attributes),
//! values and help, typed as OTLP types them.
//!
//! - a counter is a monotonic cumulative `Sum` (integer points), started when pushing started;
//! - a gauge is a `Gauge` (double points);
//! - a histogram is an explicit-bucket `Histogram`, cumulative, with the same bounds, each
//!   bucket's own count (OTLP counts per bucket where Prometheus counts up to the bound), the
//!   sum and the count.
//!
//! Names are kept as `/metrics` spells them (`_total`, `_seconds` included), so a dashboard or
//! alert written against the scrape reads the pushed series too.
//!
//! Built from the `opentelemetry-proto` messages directly rather than through the SDK's
//! instruments: the SDK has no instrument that takes an already aggregated histogram, and the
//! request path keeps its own atomics rather than recording each request twice. A snapshot is
//! cut into requests of at most `max_points` points, so a node with thousands of rules stays
//! under a collector's message size limit (4 MiB by default on gRPC).

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::exposition::{Family, HistogramSample, Labels, Number, Points, Sample, Snapshot};

/// Points per export request: about 200 bytes each with tollgate's labels, so a request stays
/// well under 4 MiB.
pub const MAX_POINTS_PER_REQUEST: usize = 5_000;

/// When the series started counting, and when they were read (Unix nanoseconds).
#[derive(Debug, Clone, Copy)]
pub struct Times {
    pub start_ns: u64,
    pub now_ns: u64,
}

/// The snapshot as export requests, none larger than `max_points` points; empty when the
/// snapshot has no point.
pub fn export_requests(
    snapshot: &Snapshot,
    node_id: &str,
    times: Times,
    max_points: usize,
) -> Vec<ExportMetricsServiceRequest> {
    let max_points = max_points.max(1);
    let mut batches: Vec<(usize, Vec<Metric>)> = Vec::new();
    for family in &snapshot.families {
        for (points, metric) in pieces(family, times, max_points) {
            match batches.last_mut() {
                Some((n, metrics)) if *n + points <= max_points => {
                    *n += points;
                    metrics.push(metric);
                }
                _ => batches.push((points, vec![metric])),
            }
        }
    }
    batches
        .into_iter()
        .map(|(_, metrics)| request(node_id, metrics))
        .collect()
}

fn request(node_id: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    attribute("service.name", "tollgate"),
                    attribute("service.instance.id", node_id),
                    attribute("service.version", env!("CARGO_PKG_VERSION")),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "tollgate".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// One family as metrics of at most `max_points` points each, with their point counts.
fn pieces(family: &Family, times: Times, max_points: usize) -> Vec<(usize, Metric)> {
    let metric = |data| Metric {
        name: family.name.clone(),
        description: family.help.clone(),
        data: Some(data),
        ..Default::default()
    };
    match &family.points {
        Points::Counter(samples) => samples
            .chunks(max_points)
            .map(|c| {
                let data = metric::Data::Sum(Sum {
                    data_points: c.iter().map(|s| number(s, times)).collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                });
                (c.len(), metric(data))
            })
            .collect(),
        Points::Gauge(samples) => samples
            .chunks(max_points)
            .map(|c| {
                let data = metric::Data::Gauge(Gauge {
                    data_points: c.iter().map(|s| number(s, times)).collect(),
                });
                (c.len(), metric(data))
            })
            .collect(),
        Points::Histogram(samples) => samples
            .chunks(max_points)
            .map(|c| {
                let data = metric::Data::Histogram(Histogram {
                    data_points: c.iter().map(|h| histogram(h, times)).collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                });
                (c.len(), metric(data))
            })
            .collect(),
    }
}

fn number(s: &Sample, times: Times) -> NumberDataPoint {
    let value = match s.value {
        Number::Int(i) => number_data_point::Value::AsInt(i64::try_from(i).unwrap_or(i64::MAX)),
        Number::Float(f) => number_data_point::Value::AsDouble(f),
    };
    NumberDataPoint {
        attributes: attributes(&s.labels),
        start_time_unix_nano: times.start_ns,
        time_unix_nano: times.now_ns,
        value: Some(value),
        ..Default::default()
    }
}

fn histogram(h: &HistogramSample, times: Times) -> HistogramDataPoint {
    let mut below = 0;
    let bucket_counts = h
        .counts
        .iter()
        .map(|&cumulative| {
            let own = cumulative.saturating_sub(below);
            below = cumulative;
            own
        })
        .collect();
    HistogramDataPoint {
        attributes: attributes(&h.labels),
        start_time_unix_nano: times.start_ns,
        time_unix_nano: times.now_ns,
        count: h.count,
        sum: Some(h.sum),
        bucket_counts,
        explicit_bounds: h.bounds.clone(),
        ..Default::default()
    }
}

fn attributes(labels: &Labels) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| attribute(k, v)).collect()
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::exposition::parse;

    const TIMES: Times = Times {
        start_ns: 1_700_000_000_000_000_000,
        now_ns: 1_700_000_060_000_000_000,
    };

    const EXPOSITION: &str = "\
# HELP tollgate_requests_total ShouldRateLimit calls answered, by gRPC code.
# TYPE tollgate_requests_total counter
tollgate_requests_total{code=\"OK\"} 12
tollgate_requests_total{code=\"Internal\"} 0

# HELP token_bucket_capacity The rule's bucket capacity C, in tokens.
# TYPE token_bucket_capacity gauge
token_bucket_capacity{domain=\"edge\",limit=\"user\"} 10

# HELP tollgate_request_duration_seconds Time to decide a ShouldRateLimit call, in seconds.
# TYPE tollgate_request_duration_seconds histogram
tollgate_request_duration_seconds_bucket{le=\"0.000025\"} 2
tollgate_request_duration_seconds_bucket{le=\"0.00005\"} 9
tollgate_request_duration_seconds_bucket{le=\"+Inf\"} 12
tollgate_request_duration_seconds_sum 0.0011
tollgate_request_duration_seconds_count 12
";

    fn only_request(snapshot: &Snapshot) -> ExportMetricsServiceRequest {
        let mut reqs = export_requests(snapshot, "node-a", TIMES, MAX_POINTS_PER_REQUEST);
        assert_eq!(reqs.len(), 1);
        reqs.remove(0)
    }

    fn metrics(req: &ExportMetricsServiceRequest) -> &[Metric] {
        &req.resource_metrics[0].scope_metrics[0].metrics
    }

    fn string(kv: &KeyValue) -> (&str, &str) {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => (kv.key.as_str(), s.as_str()),
            other => panic!("{} is not a string: {other:?}", kv.key),
        }
    }

    #[test]
    fn the_resource_names_tollgate_and_the_node() {
        let req = only_request(&parse(EXPOSITION).expect("parses"));
        let resource = req.resource_metrics[0].resource.as_ref().expect("resource");
        let attrs: Vec<_> = resource.attributes.iter().map(string).collect();
        assert!(attrs.contains(&("service.name", "tollgate")), "{attrs:?}");
        assert!(
            attrs.contains(&("service.instance.id", "node-a")),
            "{attrs:?}"
        );
    }

    #[test]
    fn a_counter_becomes_a_monotonic_cumulative_sum_with_its_labels_and_value() {
        let req = only_request(&parse(EXPOSITION).expect("parses"));
        let m = &metrics(&req)[0];
        assert_eq!(m.name, "tollgate_requests_total");
        assert_eq!(
            m.description,
            "ShouldRateLimit calls answered, by gRPC code."
        );
        let Some(metric::Data::Sum(sum)) = &m.data else {
            panic!("a sum: {m:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let ok = &sum.data_points[0];
        assert_eq!(
            ok.attributes.iter().map(string).collect::<Vec<_>>(),
            [("code", "OK")]
        );
        assert_eq!(ok.value, Some(number_data_point::Value::AsInt(12)));
        assert_eq!(ok.start_time_unix_nano, TIMES.start_ns);
        assert_eq!(ok.time_unix_nano, TIMES.now_ns);
        assert_eq!(sum.data_points.len(), 2);
    }

    #[test]
    fn a_gauge_keeps_its_rule_labels_and_double_value() {
        let req = only_request(&parse(EXPOSITION).expect("parses"));
        let m = &metrics(&req)[1];
        assert_eq!(m.name, "token_bucket_capacity");
        let Some(metric::Data::Gauge(g)) = &m.data else {
            panic!("a gauge: {m:?}")
        };
        let p = &g.data_points[0];
        assert_eq!(
            p.attributes.iter().map(string).collect::<Vec<_>>(),
            [("domain", "edge"), ("limit", "user")]
        );
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(10.0)));
    }

    #[test]
    fn a_histogram_counts_each_bucket_on_its_own_with_the_same_bounds() {
        let req = only_request(&parse(EXPOSITION).expect("parses"));
        let m = &metrics(&req)[2];
        assert_eq!(m.name, "tollgate_request_duration_seconds");
        let Some(metric::Data::Histogram(h)) = &m.data else {
            panic!("a histogram: {m:?}")
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, [0.000025, 0.00005]);
        assert_eq!(p.bucket_counts, [2, 7, 3]);
        assert_eq!(p.count, 12);
        assert_eq!(p.sum, Some(0.0011));
    }

    #[test]
    fn a_large_snapshot_is_cut_into_requests_of_bounded_points_losing_none() {
        let samples: Vec<Sample> = (0..7)
            .map(|i| Sample {
                labels: vec![("limit".into(), format!("r{i}"))],
                value: Number::Float(i as f64),
            })
            .collect();
        let snapshot = Snapshot {
            families: vec![
                Family {
                    name: "token_bucket_capacity".into(),
                    help: String::new(),
                    points: Points::Gauge(samples),
                },
                Family {
                    name: "tollgate_ready".into(),
                    help: String::new(),
                    points: Points::Gauge(vec![Sample {
                        labels: vec![],
                        value: Number::Float(1.0),
                    }]),
                },
            ],
        };
        let reqs = export_requests(&snapshot, "n", TIMES, 3);
        let points: Vec<usize> = reqs
            .iter()
            .map(|r| {
                metrics(r)
                    .iter()
                    .map(|m| match &m.data {
                        Some(metric::Data::Gauge(g)) => g.data_points.len(),
                        _ => 0,
                    })
                    .sum()
            })
            .collect();
        assert_eq!(points, [3, 3, 2], "7 capacity points and 1 ready point");
        assert!(export_requests(&Snapshot::default(), "n", TIMES, 3).is_empty());
    }
}
