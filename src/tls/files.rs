//! Reading a certificate, its key and an optional CA from PEM files, and turning them into a
//! rustls server config. Every refusal names the flag and the path to fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// The flags a set of files came from, so that errors point at what the user typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub cert: &'static str,
    pub key: &'static str,
    pub client_ca: &'static str,
}

/// The PEM files of one TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain this listener presents (leaf first).
    pub cert: PathBuf,
    /// The private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate one of these CAs signed.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Every file whose change means the listener's identity or trust changed.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.cert.clone(), self.key.clone()];
        p.extend(self.client_ca.clone());
        p
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {}: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {}: {what}", path.display())]
    Parse {
        flag: &'static str,
        path: PathBuf,
        what: String,
    },
    /// rustls refused the files together, e.g. a key that is not the certificate's.
    #[error("{} {} and {} {} cannot be used: {reason}", flags.cert, files.cert.display(), flags.key, files.key.display())]
    Unusable {
        flags: Flags,
        files: Box<TlsFiles>,
        reason: String,
    },
}

/// The parsed contents of a [`TlsFiles`].
pub struct Pem {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub client_ca: Option<Vec<CertificateDer<'static>>>,
}

impl Pem {
    pub fn read(files: &TlsFiles, flags: Flags) -> Result<Pem, TlsError> {
        let certs = certificates(flags.cert, &files.cert, &read(flags.cert, &files.cert)?)?;
        let key_pem = read(flags.key, &files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Parse {
            flag: flags.key,
            path: files.key.clone(),
            what: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}"),
        })?;
        let client_ca = match &files.client_ca {
            None => None,
            Some(p) => Some(certificates(
                flags.client_ca,
                p,
                &read(flags.client_ca, p)?,
            )?),
        };
        Ok(Pem {
            certs,
            key,
            client_ca,
        })
    }
}

/// The rustls config of a listener: ring as the provider (as the peer stream: aws-lc would
/// need cmake), TLS 1.2 and 1.3, the given ALPN protocols, and client certificates required
/// exactly when a client CA is given.
pub fn server_config(
    pem: Pem,
    alpn: &[&[u8]],
    flags: Flags,
    files: &TlsFiles,
) -> Result<ServerConfig, TlsError> {
    let unusable = |reason: String| TlsError::Unusable {
        flags,
        files: Box::new(files.clone()),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(e.to_string()))?;
    let builder = match pem.client_ca {
        None => builder.with_no_client_auth(),
        Some(cas) => {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots.add(ca).map_err(|e| TlsError::Parse {
                    flag: flags.client_ca,
                    path: files.client_ca.clone().unwrap_or_default(),
                    what: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Parse {
                    flag: flags.client_ca,
                    path: files.client_ca.clone().unwrap_or_default(),
                    what: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(pem.certs, pem.key)
        .map_err(|e| unusable(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Also the peer stream's (`replication::tls`): one reading, one set of messages.
pub(crate) fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// At least one certificate, and every PEM certificate block well-formed.
pub(crate) fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let parse = |what: String| TlsError::Parse {
        flag,
        path: path.to_path_buf(),
        what,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse(format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(parse("no PEM certificate (BEGIN CERTIFICATE) in it".into()));
    }
    Ok(certs)
}
