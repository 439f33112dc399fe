//! Why a set of config files was refused.
//!
//! Every problem in every file is collected before giving up, so an operator fixing a broken
//! ConfigMap sees the whole list at once instead of one error per reload attempt.

use std::fmt;

/// One problem in one config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", .line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file as it was named to the loader (a path for `load_path`).
    pub file: String,
    /// 1-based line, when the YAML parser knows it (syntax, type and unknown-key errors).
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(file: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            line: None,
            message: message.into(),
        }
    }

    /// A YAML error: serde_yaml_ng appends " at line L column C" to its message; the line goes
    /// into its own field instead, so `Display` does not say it twice.
    pub(crate) fn from_yaml(file: &str, err: &serde_yaml_ng::Error) -> ConfigError {
        let mut message = err.to_string();
        let line = err.location().map(|loc| {
            let mark = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(stripped) = message.strip_suffix(&mark) {
                message = stripped.to_string();
            }
            loc.line()
        });
        // serde's words for a mapping key that is not a string (a sequence, a mapping).
        let message = message.replace("expected field identifier", "expected a string key");
        ConfigError {
            file: file.to_string(),
            line,
            message: format!("error loading config file: {message}"),
        }
    }
}

/// All the problems found; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_with_line_shows_file_line_and_message() {
        let err = ConfigError {
            file: "a.yaml".into(),
            line: Some(3),
            message: "bad".into(),
        };
        assert_eq!(err.to_string(), "a.yaml:3: bad");
    }

    #[test]
    fn error_without_line_shows_file_and_message() {
        assert_eq!(ConfigError::new("a.yaml", "bad").to_string(), "a.yaml: bad");
    }

    #[test]
    fn errors_display_one_per_line() {
        let errs = ConfigErrors(vec![
            ConfigError::new("a.yaml", "one"),
            ConfigError::new("b.yaml", "two"),
        ]);
        assert_eq!(errs.to_string(), "a.yaml: one\nb.yaml: two");
    }

    #[test]
    fn yaml_error_keeps_its_line_out_of_the_message() {
        let err = serde_yaml_ng::from_str::<serde_yaml_ng::Value>("a: [1\nb: 2\n").unwrap_err();
        let ce = ConfigError::from_yaml("f.yaml", &err);
        assert!(ce.line.is_some(), "{ce:?}");
        assert!(
            ce.message.starts_with("error loading config file: "),
            "{ce:?}"
        );
    }
}
