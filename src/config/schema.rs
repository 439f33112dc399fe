//! Which keys each level of a config file accepts, and the walk that finds every unknown one.
//!
//! serde stops at the first unknown key of a document, so a file with three typos would take
//! three edit-and-retry rounds. When it does, the document is read again as a plain YAML tree:
//! every unknown key is reported (with its place and, found in the text, its line), the keys are
//! dropped, and what is left is read as a normal document so that the builder can report its
//! other problems in the same pass. A document read this way is always refused: the recovered
//! root only serves to find more errors.

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use super::error::ConfigError;
use super::model::YamlRoot;

const ROOT: &[&str] = &["domain", "descriptors"];
const DESCRIPTOR: &[&str] = &[
    "key",
    "value",
    "rate_limit",
    "rate_limits",
    "descriptors",
    "shadow_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "quota_mode",
    "metadata",
];
const RATE_LIMIT: &[&str] = &[
    "requests_per_unit",
    "unit",
    "unlimited",
    "name",
    "replaces",
    "burst",
    "unit_multiplier",
    "charge_over_limit",
    "allow_refunds",
];
const REPLACES: &[&str] = &["name"];
/// Fields the reference reads as strings whatever scalar is written (`value: 429`).
const STRINGS: &[&str] = &["domain", "key", "value", "unit", "name"];

/// One unknown key: where it is, its name, and what that level accepts.
struct Unknown {
    place: String,
    key: String,
    accepted: &'static [&'static str],
}

/// Re-reads document `index` of `contents` after serde refused its first unknown key (already
/// in `errors`, with its line): adds an error for every further unknown key and returns the
/// document without them, or `None` when even that cannot be read.
pub(crate) fn recover(
    file: &str,
    contents: &str,
    index: usize,
    errors: &mut Vec<ConfigError>,
) -> Option<YamlRoot> {
    let document = serde_yaml_ng::Deserializer::from_str(contents).nth(index)?;
    let mut root = Value::deserialize(document).ok()?;
    let mut unknown = Vec::new();
    if let Value::Mapping(m) = &mut root {
        clean(m, "the root".to_string(), ROOT, &mut unknown);
    }
    let mut cursor = errors.last().and_then(|e| e.line).unwrap_or(0);
    // The first unknown key in document order is the one serde already reported.
    for u in unknown.into_iter().skip(1) {
        let line = find_key_line(contents, &u.key, &mut cursor);
        let accepted: Vec<String> = u.accepted.iter().map(|k| format!("`{k}`")).collect();
        errors.push(ConfigError {
            file: file.to_string(),
            line,
            message: format!(
                "error loading config file: unknown field `{}` in {}, expected one of {}",
                u.key,
                u.place,
                accepted.join(", ")
            ),
        });
    }
    serde_yaml_ng::from_value(root).ok()
}

/// Removes the keys `accepted` does not list from `map` (recording them), then walks the
/// levels below it.
fn clean(
    map: &mut Mapping,
    place: String,
    accepted: &'static [&'static str],
    out: &mut Vec<Unknown>,
) {
    let keys: Vec<Value> = map.keys().cloned().collect();
    for key in keys {
        let name = match &key {
            Value::String(s) => s.clone(),
            other => serde_yaml_ng::to_string(other)
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        };
        if !matches!(&key, Value::String(s) if accepted.contains(&s.as_str())) {
            out.push(Unknown {
                place: place.clone(),
                key: name,
                accepted,
            });
            map.remove(&key);
            continue;
        }
        let Some(value) = map.get_mut(&key) else {
            continue;
        };
        if STRINGS.contains(&name.as_str()) {
            stringify_scalar(value);
        }
        match name.as_str() {
            "descriptors" => each_mapping(value, &place, "descriptors", DESCRIPTOR, out),
            "replaces" => each_mapping(value, &place, "replaces", REPLACES, out),
            "rate_limits" => each_mapping(value, &place, "rate_limits", RATE_LIMIT, out),
            "rate_limit" => {
                if let Value::Mapping(m) = value {
                    clean(m, join(&place, "rate_limit"), RATE_LIMIT, out);
                }
            }
            _ => {}
        }
    }
}

fn each_mapping(
    value: &mut Value,
    place: &str,
    field: &str,
    accepted: &'static [&'static str],
    out: &mut Vec<Unknown>,
) {
    if let Value::Sequence(items) = value {
        for (i, item) in items.iter_mut().enumerate() {
            if let Value::Mapping(m) = item {
                clean(m, format!("{}[{i}]", join(place, field)), accepted, out);
            }
        }
    }
}

fn join(place: &str, field: &str) -> String {
    if place == "the root" {
        field.to_string()
    } else {
        format!("{place}.{field}")
    }
}

/// A number or boolean where a string is read becomes that string, as the text reader does.
fn stringify_scalar(value: &mut Value) {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return,
    };
    *value = Value::String(text);
}

/// The first line after `cursor` (1-based) where `key` is written as a mapping key; moves the
/// cursor there. Unknown keys are found in document order, so each search starts after the
/// previous one.
fn find_key_line(contents: &str, key: &str, cursor: &mut usize) -> Option<usize> {
    let pattern = format!("{key}:");
    for (i, line) in contents.lines().enumerate().skip(*cursor) {
        let mut from = 0;
        while let Some(at) = line[from..].find(&pattern) {
            let start = from + at;
            let before = line[..start].chars().next_back();
            if before.is_none_or(|c| c.is_whitespace() || matches!(c, '{' | ',' | '-')) {
                *cursor = i + 1;
                return Some(i + 1);
            }
            from = start + pattern.len();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lines_are_found_in_order_and_not_inside_longer_names() {
        let text = "a: 1\nxbogus: 2\n  bogus: 3\n- {k: 1, bogus: 4}\n";
        let mut cursor = 0;
        assert_eq!(find_key_line(text, "bogus", &mut cursor), Some(3));
        assert_eq!(find_key_line(text, "bogus", &mut cursor), Some(4));
        assert_eq!(find_key_line(text, "bogus", &mut cursor), None);
    }
}
