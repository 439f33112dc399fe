//! The `/metrics` text, read back into families of typed samples.
//!
//! OTLP pushes the series `/metrics` serves, and the one place that knows all of them is the
//! rendered exposition: the exporter's registry is private, and the per-rule series and the
//! latency histogram are written by hand at scrape time (`Limiter::render_metrics`). Reading the text
//! tollgate itself just rendered keeps the two outputs identical by construction (same names,
//! labels, values, help), at the cost of a parse per push, off the request path.
//!
//! Only what tollgate's renderers write is accepted (`# HELP`, `# TYPE counter|gauge|histogram`,
//! `name{label="value",...} value`); anything else is an error naming the line, since it would
//! mean a renderer changed and the mapping with it must be checked.

use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("metrics exposition line {line}: {reason}")]
pub struct ExpositionError {
    pub line: usize,
    pub reason: String,
}

/// A sample's value: counters are integers in the exposition, gauges are floats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(u64),
    Float(f64),
}

pub type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: Number,
}

/// One histogram series: `bounds` are the finite `le` bounds in order, `counts` the
/// cumulative counts at each of them and then at `+Inf` (one longer than `bounds`).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSample {
    pub labels: Labels,
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Points {
    Counter(Vec<Sample>),
    Gauge(Vec<Sample>),
    Histogram(Vec<HistogramSample>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub points: Points,
}

/// Every family of an exposition, in the order they appear.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub families: Vec<Family>,
}

impl Snapshot {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A family being read: its samples as they come, typed once the family ends.
struct Open {
    /// Where its TYPE line is.
    line: usize,
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<(usize, String, Labels, String)>,
}

/// Parse an exposition as `Metrics::render` writes it.
pub fn parse(text: &str) -> Result<Snapshot, ExpositionError> {
    let mut families = Vec::new();
    let mut helps: HashMap<String, String> = HashMap::new();
    let mut open: Option<Open> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let err = |reason: String| ExpositionError { line: n, reason };
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            helps.insert(name.to_string(), unescape_help(help));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| err(format!("TYPE without a type: '{line}'")))?;
            let kind = match kind {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                other => return Err(err(format!("unsupported metric type '{other}'"))),
            };
            if let Some(f) = open.take() {
                families.push(close(f)?);
            }
            open = Some(Open {
                line: n,
                name: name.to_string(),
                help: helps.remove(name).unwrap_or_default(),
                kind,
                samples: Vec::new(),
            });
        } else if line.starts_with('#') {
            continue;
        } else {
            let (name, labels, value) = sample_line(line).map_err(err)?;
            let Some(f) = open.as_mut().filter(|f| belongs(f, &name)) else {
                return Err(err(format!("sample '{name}' outside its family's TYPE")));
            };
            f.samples.push((n, name, labels, value));
        }
    }
    if let Some(f) = open.take() {
        families.push(close(f)?);
    }
    Ok(Snapshot { families })
}

fn belongs(f: &Open, name: &str) -> bool {
    match f.kind {
        Kind::Counter | Kind::Gauge => name == f.name,
        Kind::Histogram => name
            .strip_prefix(f.name.as_str())
            .is_some_and(|s| matches!(s, "_bucket" | "_sum" | "_count")),
    }
}

fn close(f: Open) -> Result<Family, ExpositionError> {
    let points = match f.kind {
        Kind::Counter => Points::Counter(numbers(f.samples, true)?),
        Kind::Gauge => Points::Gauge(numbers(f.samples, false)?),
        Kind::Histogram => Points::Histogram(histograms(&f.name, f.line, f.samples)?),
    };
    Ok(Family {
        name: f.name,
        help: f.help,
        points,
    })
}

fn numbers(
    samples: Vec<(usize, String, Labels, String)>,
    integers: bool,
) -> Result<Vec<Sample>, ExpositionError> {
    samples
        .into_iter()
        .map(|(line, _, labels, v)| {
            let value = match v.parse::<u64>() {
                Ok(i) if integers => Number::Int(i),
                _ => Number::Float(float(&v).map_err(|reason| ExpositionError { line, reason })?),
            };
            Ok(Sample { labels, value })
        })
        .collect()
}

/// Group `_bucket`, `_sum` and `_count` lines by their labels (less `le`).
fn histograms(
    name: &str,
    type_line: usize,
    samples: Vec<(usize, String, Labels, String)>,
) -> Result<Vec<HistogramSample>, ExpositionError> {
    let mut out: Vec<HistogramSample> = Vec::new();
    for (line, sample, mut labels, v) in samples {
        let err = |reason: String| ExpositionError { line, reason };
        let le = labels
            .iter()
            .position(|(k, _)| k == "le")
            .map(|i| labels.remove(i).1);
        let i = match out.iter().position(|h| h.labels == labels) {
            Some(i) => i,
            None => {
                out.push(HistogramSample {
                    labels,
                    bounds: Vec::new(),
                    counts: Vec::new(),
                    sum: 0.0,
                    count: 0,
                });
                out.len() - 1
            }
        };
        let h = &mut out[i];
        match &sample[name.len()..] {
            "_bucket" => {
                let le = le.ok_or_else(|| err("a _bucket line without 'le'".into()))?;
                let count = integer(&v).map_err(err)?;
                if le != "+Inf" {
                    h.bounds.push(float(&le).map_err(err)?);
                }
                h.counts.push(count);
            }
            "_sum" => h.sum = float(&v).map_err(err)?,
            _ => h.count = integer(&v).map_err(err)?,
        }
    }
    for h in &out {
        if h.counts.len() != h.bounds.len() + 1 {
            return Err(ExpositionError {
                line: type_line,
                reason: format!("histogram {name} has no '+Inf' bucket, or one not last"),
            });
        }
    }
    Ok(out)
}

fn float(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .map_err(|_| format!("'{v}' is not a number"))
}

fn integer(v: &str) -> Result<u64, String> {
    v.parse::<u64>()
        .map_err(|_| format!("'{v}' is not a count"))
}

/// `name{k="v",...} value`, or `name value`.
fn sample_line(line: &str) -> Result<(String, Labels, String), String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value in '{line}'"))?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(r)?;
        labels = parsed;
        rest = after;
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("no value in '{line}'"))?;
    Ok((name, labels, value.to_string()))
}

/// The labels after `{`, and what follows the closing `}`.
fn label_set(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s
            .find("=\"")
            .ok_or_else(|| format!("a label without a quoted value near '{s}'"))?;
        let key = s[..eq].to_string();
        let mut value = String::new();
        let mut chars = s[eq + 2..].char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break eq + 2 + i + 1,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("a label value ends in a lone backslash".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("label '{key}' has no closing quote")),
            }
        };
        labels.push((key, value));
        s = &s[end..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

fn unescape_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(c) => out.push(c),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn counters_and_gauges_keep_their_labels_help_and_values() {
        let text = "# HELP tollgate_requests_total ShouldRateLimit calls answered, by gRPC code.\n\
                    # TYPE tollgate_requests_total counter\n\
                    tollgate_requests_total{code=\"OK\"} 7\n\
                    tollgate_requests_total{code=\"Internal\"} 0\n\
                    \n\
                    # TYPE token_bucket_capacity gauge\n\
                    token_bucket_capacity{domain=\"edge\",limit=\"user\"} 10\n\
                    # TYPE tollgate_ready gauge\n\
                    tollgate_ready 0.5\n";
        let s = parse(text).expect("parses");
        assert_eq!(s.families.len(), 3);
        let requests = s.family("tollgate_requests_total").expect("present");
        assert_eq!(
            requests.help,
            "ShouldRateLimit calls answered, by gRPC code."
        );
        assert_eq!(
            requests.points,
            Points::Counter(vec![
                Sample {
                    labels: labels(&[("code", "OK")]),
                    value: Number::Int(7)
                },
                Sample {
                    labels: labels(&[("code", "Internal")]),
                    value: Number::Int(0)
                },
            ])
        );
        assert_eq!(
            s.family("token_bucket_capacity").expect("present").points,
            Points::Gauge(vec![Sample {
                labels: labels(&[("domain", "edge"), ("limit", "user")]),
                value: Number::Float(10.0)
            }])
        );
        assert_eq!(
            s.family("tollgate_ready").expect("present").points,
            Points::Gauge(vec![Sample {
                labels: vec![],
                value: Number::Float(0.5)
            }])
        );
    }

    #[test]
    fn escaped_label_values_are_read_back_as_written() {
        let text = "# TYPE x gauge\nx{path=\"a\\\"b\\\\c\\nd\",k=\"{,}\"} 1\n";
        let s = parse(text).expect("parses");
        let Points::Gauge(samples) = &s.families[0].points else {
            panic!("a gauge")
        };
        assert_eq!(
            samples[0].labels,
            labels(&[("path", "a\"b\\c\nd"), ("k", "{,}")])
        );
    }

    #[test]
    fn a_histogram_groups_its_buckets_sum_and_count() {
        let text = "# HELP h_seconds Time.\n# TYPE h_seconds histogram\n\
                    h_seconds_bucket{le=\"0.001\"} 2\n\
                    h_seconds_bucket{le=\"0.01\"} 3\n\
                    h_seconds_bucket{le=\"+Inf\"} 4\n\
                    h_seconds_sum 3.000735\n\
                    h_seconds_count 4\n";
        let s = parse(text).expect("parses");
        assert_eq!(
            s.families[0],
            Family {
                name: "h_seconds".into(),
                help: "Time.".into(),
                points: Points::Histogram(vec![HistogramSample {
                    labels: vec![],
                    bounds: vec![0.001, 0.01],
                    counts: vec![2, 3, 4],
                    sum: 3.000735,
                    count: 4,
                }]),
            }
        );
    }

    #[test]
    fn the_rendered_metrics_of_a_server_read_back_whole() {
        let m = crate::metrics::Metrics::new();
        m.request(crate::metrics::Answer::Ok);
        m.latency.record(std::time::Duration::from_micros(30));
        let limit = crate::bucket::Limit::new(10, 10, crate::unit::Unit::Minute).expect("valid");
        let rule = crate::metrics::RuleStats::new("d", "user", Some(limit));
        rule.record(1_000_000_000, 3, true, false, false);
        let mut series = crate::metrics::RuleSeries::default();
        rule.write(1_000_000_000, 0, &mut series);
        let mut text = m.render();
        series.write_to(&mut text);
        let s = parse(&text).expect("the renderers' own output parses");
        assert!(s.family("tollgate_hits_total").is_some(), "{text}");
        assert!(s.family("token_bucket_rejection_rate").is_some(), "{text}");
        assert!(matches!(
            s.family("tollgate_request_duration_seconds").map(|f| &f.points),
            Some(Points::Histogram(h)) if h[0].count == 1 && h[0].counts[1] == 1
        ));
        assert!(s.family("tollgate_build_info").is_some());
    }

    #[test]
    fn a_sample_before_any_type_line_is_refused_with_its_line() {
        let err = parse("\n# HELP a b\nstray 1\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.reason.contains("stray"), "{err}");
    }

    #[test]
    fn a_bad_value_or_an_unknown_type_is_refused() {
        let err = parse("# TYPE a counter\na{x=\"1\"} many\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.reason.contains("'many'"), "{err}");
        let err = parse("# TYPE a summary\n").unwrap_err();
        assert!(err.reason.contains("summary"), "{err}");
        let err = parse("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n").unwrap_err();
        assert!(err.reason.contains("+Inf"), "{err}");
    }
}
