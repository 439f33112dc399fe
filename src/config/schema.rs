//! Which keys and values each level of a config file accepts, and the walk that finds every
//! problem of a document that serde refused.
//!
//! serde stops at the first unknown key or wrong-typed value of a document, so a file with
//! three mistakes would take three edit-and-retry rounds. When it does, the document is read
//! again as a plain YAML tree and walked: every unknown key and every value its field does not
//! take is reported (with its place and its line), dropped, and what is left is read as a
//! normal document so that the builder can report its other problems in the same pass. A
//! document read this way is always refused: the recovered root only serves to find more
//! errors.
//!
//! Which values a field takes is not written down twice: each value is tried against the
//! field's own struct in `model.rs` (fed a mapping holding only that field), so the walk
//! accepts exactly what serde accepts, `yaml11_bool` spellings included. The line of each
//! problem is asked of the YAML parser too (`locate`): the document is read once more and
//! stopped on purpose at that place, and the parser's error says where it was.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use std::fmt;

use super::error::ConfigError;
use super::model::{YamlDescriptor, YamlRateLimit, YamlReplaces, YamlRoot};

/// One level of the file: the keys it takes, and the struct that reads it, which says
/// whether a value fits (see `probe`).
struct Level {
    accepted: &'static [&'static str],
    probe: fn(Value) -> Result<(), serde_yaml_ng::Error>,
}

const ROOT: Level = Level {
    accepted: &["domain", "descriptors"],
    probe: probe::<YamlRoot>,
};
const DESCRIPTOR: Level = Level {
    accepted: &[
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
    ],
    probe: probe::<YamlDescriptor>,
};
const RATE_LIMIT: Level = Level {
    accepted: &[
        "requests_per_unit",
        "unit",
        "unlimited",
        "name",
        "replaces",
        "burst",
        "unit_multiplier",
        "charge_over_limit",
        "allow_refunds",
    ],
    probe: probe::<YamlRateLimit>,
};
const REPLACES: Level = Level {
    accepted: &["name"],
    probe: probe::<YamlReplaces>,
};
/// Fields the reference reads as strings whatever scalar is written (`value: 429`).
const STRINGS: &[&str] = &["domain", "key", "value", "unit", "name"];
/// Problems beyond this many in one document are still reported, without a line: finding a
/// line reads the document again, and a huge file full of mistakes must not take minutes.
const MAX_LOCATED: usize = 32;

/// Whether `T` reads `value`: the one rule for what each field takes.
fn probe<T: DeserializeOwned>(value: Value) -> Result<(), serde_yaml_ng::Error> {
    serde_yaml_ng::from_value::<T>(value).map(drop)
}

/// The level below a field, and whether the field holds a list of such mappings.
fn below(field: &str) -> Option<(&'static Level, bool)> {
    match field {
        "descriptors" => Some((&DESCRIPTOR, true)),
        "rate_limits" => Some((&RATE_LIMIT, true)),
        "replaces" => Some((&REPLACES, true)),
        "rate_limit" => Some((&RATE_LIMIT, false)),
        _ => None,
    }
}

/// One step of a place in the document: a mapping key or a list index.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// One problem the walk found: where, and what.
struct Problem {
    path: Vec<Step>,
    kind: Kind,
}

enum Kind {
    /// The last step of the path is a key its level does not list.
    UnknownKey { accepted: &'static [&'static str] },
    /// The value at the path is not what its field takes; serde's words for it.
    WrongType(String),
}

/// Re-reads document `index` of `contents` after serde refused it (its first error, with its
/// line, already in `errors`): adds an error for every further unknown key and wrong-typed
/// value and returns the document without them, or `None` when even that cannot be read (a
/// syntax error, a duplicate key, a root that is not a mapping).
pub(crate) fn recover(
    file: &str,
    contents: &str,
    index: usize,
    errors: &mut Vec<ConfigError>,
) -> Option<YamlRoot> {
    let document = serde_yaml_ng::Deserializer::from_str(contents).nth(index)?;
    let mut root = Value::deserialize(document).ok()?;
    let mut walk = Walk::default();
    walk.root(&mut root);
    let first_line = errors.last().and_then(|e| e.line);
    for (i, problem) in walk.problems.iter().enumerate() {
        let line = if i < MAX_LOCATED {
            locate(contents, index, problem)
        } else {
            None
        };
        // The first problem in document order is the one serde already reported (serde reads
        // in document order too); the line check keeps it when the two disagree.
        if i == 0 && (line == first_line || line.is_none() || first_line.is_none()) {
            continue;
        }
        errors.push(ConfigError {
            file: file.to_string(),
            line,
            message: problem.message(),
        });
    }
    serde_yaml_ng::from_value(root).ok()
}

impl Problem {
    fn message(&self) -> String {
        let what = match &self.kind {
            Kind::UnknownKey { accepted } => {
                let (container, key) = self.path.split_at(self.path.len() - 1);
                let key = match &key[0] {
                    Step::Key(k) => k.as_str(),
                    Step::Index(_) => "",
                };
                let accepted: Vec<String> = accepted.iter().map(|k| format!("`{k}`")).collect();
                format!(
                    "unknown field `{key}` in {}, expected one of {}",
                    place(container),
                    accepted.join(", ")
                )
            }
            Kind::WrongType(why) => format!("{}: {why}", place(&self.path)),
        };
        format!("error loading config file: {what}")
    }
}

/// A place as serde writes it: `descriptors[1].rate_limit`, or "the root".
fn place(path: &[Step]) -> String {
    if path.is_empty() {
        return "the root".to_string();
    }
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The walk over a recovered tree: records problems in document order, removing each
/// offending key (or list item) so that the rest reads as a normal document.
#[derive(Default)]
struct Walk {
    problems: Vec<Problem>,
    path: Vec<Step>,
}

impl Walk {
    fn root(&mut self, root: &mut Value) {
        match root {
            Value::Mapping(m) => self.clean(m, &ROOT),
            // Not a mapping: serde's first error already says so, and nothing is left to read.
            other => {
                self.check_item(other, &ROOT);
            }
        }
    }

    /// Removes from `map` the keys `level` does not list and the values their field does not
    /// take (recording both), and walks the levels below the others.
    fn clean(&mut self, map: &mut Mapping, level: &'static Level) {
        let keys: Vec<Value> = map.keys().cloned().collect();
        for key in keys {
            let name = key_name(&key);
            self.path.push(Step::Key(name.clone()));
            let known = matches!(&key, Value::String(s) if level.accepted.contains(&s.as_str()));
            let keep = match map.get_mut(&key) {
                Some(value) if known => self.check_field(level, &key, &name, value),
                _ => {
                    self.record(Kind::UnknownKey {
                        accepted: level.accepted,
                    });
                    false
                }
            };
            self.path.pop();
            if !keep {
                map.remove(&key);
            }
        }
    }

    /// Whether the value of field `name` fits; if it does, the levels below it are walked.
    fn check_field(&mut self, level: &Level, key: &Value, name: &str, value: &mut Value) -> bool {
        if STRINGS.contains(&name) {
            stringify_scalar(value);
        }
        let mut alone = Mapping::new();
        alone.insert(key.clone(), skeleton(value));
        if let Err(err) = (level.probe)(Value::Mapping(alone)) {
            self.record(Kind::WrongType(err.to_string()));
            return false;
        }
        match (below(name), value) {
            (Some((lower, true)), Value::Sequence(items)) => self.each(items, lower),
            (Some((lower, false)), Value::Mapping(m)) => {
                self.clean(m, lower);
                true
            }
            _ => true,
        }
    }

    /// Walks each mapping of a list; an item that is not one is recorded and removed. Returns
    /// false when that left the list empty, so that the field goes too (an empty `rate_limits`
    /// would be one more error, about a mistake already reported).
    fn each(&mut self, items: &mut Vec<Value>, level: &'static Level) -> bool {
        let mut bad = Vec::new();
        for (i, item) in items.iter_mut().enumerate() {
            self.path.push(Step::Index(i));
            match item {
                Value::Mapping(m) => self.clean(m, level),
                other => {
                    if !self.check_item(other, level) {
                        bad.push(i);
                    }
                }
            }
            self.path.pop();
        }
        let emptied = !bad.is_empty() && bad.len() == items.len();
        for i in bad.into_iter().rev() {
            items.remove(i);
        }
        !emptied
    }

    /// Whether a value that is not a mapping still reads as `level` (a null does).
    fn check_item(&mut self, item: &Value, level: &Level) -> bool {
        match (level.probe)(item.clone()) {
            Ok(()) => true,
            Err(err) => {
                self.record(Kind::WrongType(err.to_string()));
                false
            }
        }
    }

    fn record(&mut self, kind: Kind) {
        self.problems.push(Problem {
            path: self.path.clone(),
            kind,
        });
    }
}

/// A key as written: a string as is, another scalar as YAML writes it (`42`).
fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// What the probe of a field needs to see: an empty list or mapping stands for a full one
/// (its items are walked on their own), so a large subtree is not copied at every level.
fn skeleton(value: &Value) -> Value {
    match value {
        Value::Sequence(_) => Value::Sequence(Vec::new()),
        Value::Mapping(_) => Value::Mapping(Mapping::new()),
        other => other.clone(),
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

/// What the locator's deliberate error says, to tell it from a real one.
const HERE: &str = "tollgate: the place looked for";

/// The line of a problem, found by the YAML parser: document `index` is read again down the
/// problem's path and stopped there with an error, to which the parser adds its position (an
/// unknown key's own position, a wrong value's position). `None` if the path is not found.
fn locate(contents: &str, index: usize, problem: &Problem) -> Option<usize> {
    let document = serde_yaml_ng::Deserializer::from_str(contents).nth(index)?;
    let seek = Seek {
        rest: &problem.path,
        at_key: matches!(problem.kind, Kind::UnknownKey { .. }),
    };
    let err = seek.deserialize(document).err()?;
    if !err.to_string().contains(HERE) {
        return None;
    }
    err.location().map(|l| l.line())
}

/// Reads a value, following `rest` into it and failing where it ends; everything off the
/// path is skipped.
struct Seek<'a> {
    rest: &'a [Step],
    /// Fail on the last step's key rather than on its value.
    at_key: bool,
}

impl Seek<'_> {
    fn scalar<E: de::Error>(&self) -> Result<(), E> {
        if self.rest.is_empty() {
            Err(E::custom(HERE))
        } else {
            Ok(())
        }
    }
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Step::Key(want), rest)) = self.rest.split_first() else {
            return self.scalar();
        };
        let fail = rest.is_empty() && self.at_key;
        while let Some(hit) = map.next_key_seed(KeyIs { want, fail })? {
            if hit {
                let at_key = self.at_key;
                return map.next_value_seed(Seek { rest, at_key });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Step::Index(want), rest)) = self.rest.split_first() else {
            return self.scalar();
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        let at_key = self.at_key;
        seq.next_element_seed(Seek { rest, at_key }).map(drop)
    }
}

/// Reads a mapping key: whether it is `want`, failing on it when `fail` (an unknown key's
/// own place). Keys that are not scalars never match.
struct KeyIs<'a> {
    want: &'a str,
    fail: bool,
}

impl KeyIs<'_> {
    fn matches<E: de::Error>(&self, key: &str) -> Result<bool, E> {
        match (key == self.want, self.fail) {
            (true, true) => Err(E::custom(HERE)),
            (hit, _) => Ok(hit),
        }
    }
}

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        self.matches(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.matches(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.matches(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.matches(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(path: Vec<Step>, kind: Kind) -> Problem {
        Problem { path, kind }
    }

    #[test]
    fn a_place_is_located_by_its_path_not_by_the_first_key_of_that_name() {
        let text = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: b\n    rate_limit:\n      unit: second\n      requests_per_unit: lots\n";
        let path = vec![
            Step::Key("descriptors".into()),
            Step::Index(1),
            Step::Key("rate_limit".into()),
            Step::Key("requests_per_unit".into()),
        ];
        let wrong = problem(path.clone(), Kind::WrongType(String::new()));
        assert_eq!(locate(text, 0, &wrong), Some(8));
        let unknown = problem(path[..3].to_vec(), Kind::UnknownKey { accepted: &[] });
        assert_eq!(locate(text, 0, &unknown), Some(6));
        let missing = problem(
            vec![Step::Key("nope".into())],
            Kind::WrongType(String::new()),
        );
        assert_eq!(locate(text, 0, &missing), None);
    }

    #[test]
    fn a_place_in_a_later_document_gets_its_line_in_the_file() {
        let text = "domain: a\n---\ndomain: b\ndescriptors: 5\n";
        let wrong = problem(
            vec![Step::Key("descriptors".into())],
            Kind::WrongType(String::new()),
        );
        assert_eq!(locate(text, 1, &wrong), Some(4));
    }

    #[test]
    fn places_are_written_as_serde_writes_them() {
        let path = [
            Step::Key("descriptors".into()),
            Step::Index(2),
            Step::Key("rate_limit".into()),
        ];
        assert_eq!(place(&path), "descriptors[2].rate_limit");
        assert_eq!(place(&[]), "the root");
    }
}
