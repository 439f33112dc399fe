//! What a config must pass before it may be served, beyond being valid YAML in the reference's
//! format: it must not be so large or so deeply nested that loading it freezes the service, and
//! it must not be empty by accident.
//!
//! An empty config (a deleted file in a directory, a ConfigMap with no keys) is valid in the
//! reference's format and would make every request pass: rate limiting switched off without a
//! word. So it is refused like an invalid config unless the operator asked for it
//! (`--allow-empty-config`).
//!
//! The nesting bound runs on the raw text before the YAML parser: libyaml's scanner handles
//! deeply nested flow collections in quadratic time, so the check must not
//! depend on the parser getting that far.

use super::error::{ConfigError, ConfigErrors};
use super::{BuildOptions, RateLimitConfig};

/// Deepest flow nesting (`[`/`{`) accepted. Real configs nest a few levels.
pub const MAX_FLOW_DEPTH: usize = 64;
/// Widest block indentation (spaces plus compact `- ` items) accepted, in columns: it bounds
/// block-style nesting the same way (a level costs at least one column).
pub const MAX_INDENT: usize = 512;

/// How a config read from disk is checked before it is served.
#[derive(Debug, Clone)]
pub struct LoadPolicy {
    /// Serve a config with no domains instead of refusing it.
    pub allow_empty: bool,
    /// Largest total size of the config files, in bytes.
    pub max_bytes: usize,
    /// The reference's `MERGE_DOMAIN_CONFIG`.
    pub build: BuildOptions,
}

impl Default for LoadPolicy {
    fn default() -> Self {
        LoadPolicy {
            allow_empty: false,
            max_bytes: 4 << 20,
            build: BuildOptions::default(),
        }
    }
}

impl LoadPolicy {
    /// Parse files read with `read_path_within`, refusing too-deep nesting and an empty
    /// result; every problem found is reported.
    pub fn parse(&self, files: &[(String, String)]) -> Result<RateLimitConfig, ConfigErrors> {
        let errors: Vec<ConfigError> = files
            .iter()
            .filter_map(|(name, text)| check_nesting(name, text).err())
            .collect();
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let config = RateLimitConfig::from_files_with(files, self.build)?;
        if config.domains().next().is_none() && !self.allow_empty {
            let what = if files.is_empty() {
                "no config files (*.yaml, *.yml) found".to_string()
            } else {
                format!("{} config file(s) define no domain", files.len())
            };
            let file = files.first().map(|f| f.0.as_str()).unwrap_or("config");
            return Err(ConfigErrors(vec![ConfigError::new(
                file,
                format!(
                    "{what}: an empty config would let every request pass, so it is refused \
                     (start with --allow-empty-config to serve no limits on purpose)"
                ),
            )]));
        }
        Ok(config)
    }
}

/// Refuse YAML nested deeper than the bounds above, naming the line.
pub fn check_nesting(file: &str, text: &str) -> Result<(), ConfigError> {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    for (i, line) in text.lines().enumerate() {
        let too_deep = |what: String| ConfigError {
            file: file.to_string(),
            line: Some(i + 1),
            message: what,
        };
        if quote.is_none() && depth == 0 {
            let indent = block_indent(line);
            if indent > MAX_INDENT {
                return Err(too_deep(format!(
                    "nesting too deep: indentation of {indent} columns (at most {MAX_INDENT})"
                )));
            }
        }
        let bytes = line.as_bytes();
        let mut prev = b' ';
        let mut j = 0;
        while j < bytes.len() {
            let c = bytes[j];
            match quote {
                Some(b'\'') if c == b'\'' => {
                    if bytes.get(j + 1) == Some(&b'\'') {
                        j += 1;
                    } else {
                        quote = None;
                    }
                }
                Some(b'"') if c == b'\\' => j += 1,
                Some(b'"') if c == b'"' => quote = None,
                Some(_) => {}
                None => match c {
                    b'#' if prev == b' ' || prev == b'\t' => break,
                    b'\'' | b'"' if matches!(prev, b' ' | b'\t' | b'[' | b'{' | b',' | b':') => {
                        quote = Some(c)
                    }
                    b'[' | b'{' => {
                        depth += 1;
                        if depth > MAX_FLOW_DEPTH {
                            return Err(too_deep(format!(
                                "nesting too deep: more than {MAX_FLOW_DEPTH} levels of [ or {{"
                            )));
                        }
                    }
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
            j += 1;
        }
    }
    Ok(())
}

/// Columns of indentation, counting compact sequence items (`- - - x`) as the columns they use.
fn block_indent(line: &str) -> usize {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' => i += 1,
            b'-' if matches!(bytes.get(i + 1), Some(b' ') | None) => i += 1,
            _ => break,
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str =
        "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n";

    fn files(list: &[&str]) -> Vec<(String, String)> {
        list.iter()
            .enumerate()
            .map(|(i, t)| (format!("f{i}.yaml"), t.to_string()))
            .collect()
    }

    #[test]
    fn no_files_at_all_are_refused_with_the_way_out() {
        let err = LoadPolicy::default().parse(&[]).unwrap_err().to_string();
        assert!(err.contains("no config files"), "{err}");
        assert!(err.contains("--allow-empty-config"), "{err}");
    }

    #[test]
    fn files_without_a_domain_are_refused() {
        let err = LoadPolicy::default()
            .parse(&files(&["", "# only a comment\n"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty domain"), "{err}");
    }

    #[test]
    fn an_empty_config_is_served_when_allowed() {
        let policy = LoadPolicy {
            allow_empty: true,
            ..LoadPolicy::default()
        };
        assert_eq!(policy.parse(&[]).expect("allowed").domains().count(), 0);
    }

    #[test]
    fn a_normal_config_passes() {
        assert!(LoadPolicy::default().parse(&files(&[ONE])).is_ok());
    }

    #[test]
    fn a_hundred_thousand_nested_brackets_are_refused_at_once_with_the_line() {
        let text = format!(
            "domain: a\ndescriptors:\n  - key: k\n    value: {}\n",
            "[".repeat(100_000)
        );
        let started = std::time::Instant::now();
        let err = LoadPolicy::default().parse(&files(&[&text])).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(err.0[0].line, Some(4), "{err}");
        assert!(err.0[0].message.contains("nesting too deep"), "{err}");
    }

    #[test]
    fn brackets_inside_quotes_and_comments_do_not_count() {
        let deep = "[".repeat(100);
        let text = format!("domain: a # {deep}\ndescriptors:\n  - key: k\n    value: '{deep}'\n    rate_limit: {{unit: second, requests_per_unit: 1}}\n");
        assert!(check_nesting("f", &text).is_ok());
    }

    #[test]
    fn deep_block_nesting_is_refused_too() {
        let text = format!("{}x\n", "- ".repeat(1000));
        let err = check_nesting("f", &text).unwrap_err();
        assert!(err.message.contains("indentation"), "{err}");
    }
}
