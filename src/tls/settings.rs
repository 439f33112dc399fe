//! The serving-TLS flags: `--grpc-tls-*` and `--http-tls-*`, read like every other option
//! (flags > environment > settings file), checked together so a partial set is refused.

use std::path::PathBuf;

use clap::Args;

use super::{Flags, TlsFiles, GRPC_FLAGS, HTTP_FLAGS};
use crate::settings::{Settings, SettingsError};

#[derive(Debug, Clone, Default, Args)]
pub struct ServingTlsArgs {
    /// Certificate chain (PEM) the gRPC listener presents; with --grpc-tls-key, the RLS port
    /// serves TLS only
    #[arg(long, env = "TOLLGATE_GRPC_TLS_CERT", value_name = "PATH")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --grpc-tls-cert
    #[arg(long, env = "TOLLGATE_GRPC_TLS_KEY", value_name = "PATH")]
    pub grpc_tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that must sign every gRPC client's certificate (mutual TLS)
    #[arg(long, env = "TOLLGATE_GRPC_TLS_CLIENT_CA", value_name = "PATH")]
    pub grpc_tls_client_ca: Option<PathBuf>,
    /// Certificate chain (PEM) the HTTP listener presents; with --http-tls-key, HTTPS only
    #[arg(long, env = "TOLLGATE_HTTP_TLS_CERT", value_name = "PATH")]
    pub http_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --http-tls-cert
    #[arg(long, env = "TOLLGATE_HTTP_TLS_KEY", value_name = "PATH")]
    pub http_tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that must sign every HTTP client's certificate
    #[arg(long, env = "TOLLGATE_HTTP_TLS_CLIENT_CA", value_name = "PATH")]
    pub http_tls_client_ca: Option<PathBuf>,
}

impl ServingTlsArgs {
    /// The settings-file keys these flags override.
    pub fn overrides(&self) -> Vec<(&'static str, Option<String>)> {
        let p = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        vec![
            ("grpc_tls_cert", p(&self.grpc_tls_cert)),
            ("grpc_tls_key", p(&self.grpc_tls_key)),
            ("grpc_tls_client_ca", p(&self.grpc_tls_client_ca)),
            ("http_tls_cert", p(&self.http_tls_cert)),
            ("http_tls_key", p(&self.http_tls_key)),
            ("http_tls_client_ca", p(&self.http_tls_client_ca)),
        ]
    }
}

impl Settings {
    /// The gRPC listener's TLS files, when it serves TLS.
    pub fn grpc_tls_files(&self) -> Result<Option<TlsFiles>, SettingsError> {
        files(
            GRPC_FLAGS,
            &self.grpc_tls_cert,
            &self.grpc_tls_key,
            &self.grpc_tls_client_ca,
        )
    }

    /// The HTTP listener's TLS files, when it serves TLS.
    pub fn http_tls_files(&self) -> Result<Option<TlsFiles>, SettingsError> {
        files(
            HTTP_FLAGS,
            &self.http_tls_cert,
            &self.http_tls_key,
            &self.http_tls_client_ca,
        )
    }

    pub(crate) fn validate_serving_tls(&self) -> Result<(), SettingsError> {
        self.grpc_tls_files()?;
        self.http_tls_files()?;
        Ok(())
    }
}

/// A certificate without its key (or the reverse) would either serve plaintext silently or
/// fail every handshake; a client CA without both would require client certificates on a
/// port that does not speak TLS. All are refused, naming what is missing.
fn files(
    flags: Flags,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    client_ca: &Option<PathBuf>,
) -> Result<Option<TlsFiles>, SettingsError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.clone(),
        })),
        (None, None) if client_ca.is_none() => Ok(None),
        (None, None) => Err(SettingsError::Invalid(format!(
            "{} needs {} and {}",
            flags.client_ca, flags.cert, flags.key
        ))),
        (Some(_), None) => Err(SettingsError::Invalid(format!(
            "{} needs {}",
            flags.cert, flags.key
        ))),
        (None, Some(_)) => Err(SettingsError::Invalid(format!(
            "{} needs {}",
            flags.key, flags.cert
        ))),
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::Cli;
    use clap::Parser;

    fn resolve(a: &[&str]) -> Result<crate::settings::Settings, String> {
        let mut full = vec!["tollgate"];
        full.extend_from_slice(a);
        Cli::try_parse_from(full)
            .expect("parses")
            .serve
            .resolve()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn grpc_tls_needs_both_the_certificate_and_its_key() {
        let err = resolve(&["--grpc-tls-cert", "c.pem"]).unwrap_err();
        assert!(
            err.contains("--grpc-tls-cert needs --grpc-tls-key"),
            "{err}"
        );
        let err = resolve(&["--http-tls-key", "k.pem"]).unwrap_err();
        assert!(
            err.contains("--http-tls-key needs --http-tls-cert"),
            "{err}"
        );
    }

    #[test]
    fn a_client_ca_without_a_serving_certificate_is_refused() {
        let err = resolve(&["--grpc-tls-client-ca", "ca.pem"]).unwrap_err();
        assert!(
            err.contains("--grpc-tls-client-ca needs --grpc-tls-cert and --grpc-tls-key"),
            "{err}"
        );
    }

    #[test]
    fn serving_tls_files_come_from_flags() {
        let s = resolve(&[
            "--grpc-tls-cert",
            "c.pem",
            "--grpc-tls-key",
            "k.pem",
            "--grpc-tls-client-ca",
            "ca.pem",
        ])
        .expect("valid");
        let f = s.grpc_tls_files().expect("valid").expect("set");
        assert_eq!(f.cert.to_str(), Some("c.pem"));
        assert_eq!(
            f.client_ca.as_deref().and_then(|p| p.to_str()),
            Some("ca.pem")
        );
        assert!(s.http_tls_files().expect("valid").is_none());
    }
}
