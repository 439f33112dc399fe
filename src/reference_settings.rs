//! What envoyproxy/ratelimit users set in their container's environment, accepted as is.
//!
//! Two parts: tollgate's flags for the reference's switches (global shadow and quota mode,
//! response headers, dynamic metadata, merged domains), each with its `TOLLGATE_*` variable;
//! and the reference's own variable names as aliases (`RUNTIME_ROOT`, `GRPC_PORT`, `PORT`,
//! `SHADOW_MODE`, `LOG_LEVEL`, ...), so that its container spec works with only the image
//! changed. Precedence: flags > `TOLLGATE_*` > the reference's names > settings file >
//! defaults.

use clap::Args;

use crate::settings::SettingsError;

/// The reference's switches, as tollgate flags.
#[derive(Debug, Clone, Default, Args)]
pub struct ReferenceArgs {
    /// Global shadow mode: over-limit answers become OK (and are counted) [default: false]
    #[arg(long, env = "TOLLGATE_SHADOW_MODE", value_name = "BOOL")]
    pub shadow_mode: Option<bool>,
    /// Global quota mode: every limited descriptor is in quota mode [default: false]
    #[arg(long, env = "TOLLGATE_QUOTA_MODE", value_name = "BOOL")]
    pub quota_mode: Option<bool>,
    /// Add RateLimit-Limit/-Remaining/-Reset response headers, from the descriptor closest to
    /// its limit [default: false]
    #[arg(long, env = "TOLLGATE_RESPONSE_HEADERS", value_name = "BOOL")]
    pub response_headers: Option<bool>,
    /// Name of the limit header [default: RateLimit-Limit]
    #[arg(long, env = "TOLLGATE_LIMIT_HEADER", value_name = "NAME")]
    pub limit_header: Option<String>,
    /// Name of the remaining header [default: RateLimit-Remaining]
    #[arg(long, env = "TOLLGATE_REMAINING_HEADER", value_name = "NAME")]
    pub remaining_header: Option<String>,
    /// Name of the reset header [default: RateLimit-Reset]
    #[arg(long, env = "TOLLGATE_RESET_HEADER", value_name = "NAME")]
    pub reset_header: Option<String>,
    /// Add Retry-After (seconds until the request would fit) to rejected requests [default: false]
    #[arg(long, env = "TOLLGATE_RETRY_AFTER", value_name = "BOOL")]
    pub retry_after: Option<bool>,
    /// Fill the response's dynamic metadata (domain, descriptors, rules' metadata, the rule
    /// that tripped) for Envoy's access log [default: false]
    #[arg(long, env = "TOLLGATE_RESPONSE_DYNAMIC_METADATA", value_name = "BOOL")]
    pub response_dynamic_metadata: Option<bool>,
    /// Merge config files that name the same domain instead of refusing them [default: false]
    #[arg(long, env = "TOLLGATE_MERGE_DOMAIN_CONFIG", value_name = "BOOL")]
    pub merge_domain_config: Option<bool>,
}

impl ReferenceArgs {
    /// Settings keys and values given by these flags.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, Option<String>)> {
        let b = |v: Option<bool>| v.map(|b| b.to_string());
        vec![
            ("shadow_mode", b(self.shadow_mode)),
            ("quota_mode", b(self.quota_mode)),
            ("response_headers", b(self.response_headers)),
            ("limit_header", self.limit_header.clone()),
            ("remaining_header", self.remaining_header.clone()),
            ("reset_header", self.reset_header.clone()),
            ("retry_after", b(self.retry_after)),
            (
                "response_dynamic_metadata",
                b(self.response_dynamic_metadata),
            ),
            ("merge_domain_config", b(self.merge_domain_config)),
        ]
    }
}

/// The reference's variables that map one to one onto a tollgate setting.
const SAME: &[(&str, &str)] = &[
    ("SHADOW_MODE", "shadow_mode"),
    ("QUOTA_MODE", "quota_mode"),
    ("LIMIT_RESPONSE_HEADERS_ENABLED", "response_headers"),
    ("LIMIT_LIMIT_HEADER", "limit_header"),
    ("LIMIT_REMAINING_HEADER", "remaining_header"),
    ("LIMIT_RESET_HEADER", "reset_header"),
    ("RESPONSE_DYNAMIC_METADATA", "response_dynamic_metadata"),
    ("MERGE_DOMAIN_CONFIG", "merge_domain_config"),
    ("LOG_LEVEL", "log_level"),
    ("LOG_FORMAT", "log_format"),
    ("NEAR_LIMIT_RATIO", "near_limit_ratio"),
];

/// Settings keys and values from the reference's variable names, read with `env`.
///
/// - `RUNTIME_ROOT`/`RUNTIME_SUBDIRECTORY`/`RUNTIME_APPDIRECTORY` (default `config`): the
///   config is the directory `ROOT/SUBDIRECTORY/APPDIRECTORY`, where the reference reads it;
/// - `GRPC_HOST`:`GRPC_PORT` and `HOST`:`PORT` (hosts default to 0.0.0.0): the listeners;
/// - the names in [`SAME`] set the setting of the same meaning.
///
/// Booleans are read as the reference's Go parser reads them (`1`, `t`, `TRUE`, ...).
pub(crate) fn aliases(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(&'static str, String)>, SettingsError> {
    let mut out = Vec::new();
    if let Some(root) = env("RUNTIME_ROOT") {
        let mut path = std::path::PathBuf::from(root);
        if let Some(sub) = env("RUNTIME_SUBDIRECTORY") {
            path.push(sub);
        }
        path.push(env("RUNTIME_APPDIRECTORY").unwrap_or_else(|| "config".into()));
        out.push(("config", path.display().to_string()));
    }
    for (port, host, key) in [
        ("GRPC_PORT", "GRPC_HOST", "grpc_addr"),
        ("PORT", "HOST", "http_addr"),
    ] {
        if let Some(p) = env(port) {
            let p: u16 = p.trim().parse().map_err(|_| {
                SettingsError::Invalid(format!("{port} must be a port number, got '{p}'"))
            })?;
            let h = env(host).unwrap_or_else(|| "0.0.0.0".into());
            out.push((key, format!("{h}:{p}")));
        }
    }
    for (var, key) in SAME {
        let Some(v) = env(var) else { continue };
        let v = match *key {
            "shadow_mode"
            | "quota_mode"
            | "response_headers"
            | "response_dynamic_metadata"
            | "merge_domain_config" => go_bool(var, &v)?.to_string(),
            "log_format" => v.to_ascii_lowercase(),
            _ => v,
        };
        out.push((key, v));
    }
    Ok(out)
}

/// A boolean as Go's `strconv.ParseBool` reads it.
fn go_bool(var: &str, v: &str) -> Result<bool, SettingsError> {
    match v.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(SettingsError::Invalid(format!(
            "{var} must be a boolean (true/false, 1/0), got '{other}'"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Vec<(&'static str, String)> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        aliases(|k| map.get(k).cloned()).expect("valid")
    }

    #[test]
    fn the_runtime_variables_name_the_directory_the_reference_reads() {
        let out = from(&[
            ("RUNTIME_ROOT", "/data"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ]);
        assert_eq!(out, [("config", "/data/ratelimit/config".to_string())]);
    }

    #[test]
    fn ports_become_listen_addresses_on_every_interface_unless_a_host_is_given() {
        let out = from(&[
            ("GRPC_PORT", "9081"),
            ("PORT", "9080"),
            ("HOST", "127.0.0.1"),
        ]);
        assert_eq!(
            out,
            [
                ("grpc_addr", "0.0.0.0:9081".to_string()),
                ("http_addr", "127.0.0.1:9080".to_string())
            ]
        );
    }

    #[test]
    fn go_booleans_and_log_settings_are_translated() {
        let out = from(&[
            ("SHADOW_MODE", "1"),
            ("LOG_FORMAT", "JSON"),
            ("LOG_LEVEL", "DEBUG"),
        ]);
        assert!(
            out.contains(&("shadow_mode", "true".to_string())),
            "{out:?}"
        );
        assert!(out.contains(&("log_format", "json".to_string())), "{out:?}");
        assert!(out.contains(&("log_level", "DEBUG".to_string())), "{out:?}");
    }

    #[test]
    fn a_bad_port_or_boolean_names_the_variable() {
        let err = aliases(|k| (k == "GRPC_PORT").then(|| "http".to_string())).unwrap_err();
        assert!(err.to_string().contains("GRPC_PORT"), "{err}");
        let err = aliases(|k| (k == "SHADOW_MODE").then(|| "maybe".to_string())).unwrap_err();
        assert!(err.to_string().contains("SHADOW_MODE"), "{err}");
    }
}
