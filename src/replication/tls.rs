//! Mutual TLS on the peer stream: every node presents a certificate signed by the cluster's CA
//! and accepts only peers that do, both when it dials and when it is dialed. A process without
//! such a certificate is cut off at the handshake, before it can send a single frame; the
//! cluster secret's HMAC on Hello is then a second, independent check.
//!
//! Everything is loaded and handed to rustls at startup: a missing file, a file with no PEM in
//! it, a key that does not belong to the certificate or a CA rustls cannot use stops the server
//! before it listens, with the flag and path to fix, instead of failing every handshake later.
//! After that the files are re-read when they change ([`crate::tls::reload`]): new streams, in
//! both directions, use the new certificate; streams already open carry on with the old one.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server};

use crate::tls::{Flags, ServingTls, Tls, TlsFiles, ALPN_H2};

/// A handshake not finished by then is dropped, so a peer that connects and stalls (or speaks
/// plaintext to a TLS port) does not hold a connection open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The PEM files behind `--peer-tls-cert`, `--peer-tls-key` and `--peer-tls-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// This node's certificate chain (leaf first); used as server and as client certificate.
    pub cert: PathBuf,
    /// The private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificate(s) that sign every peer's certificate.
    pub ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error("--peer-tls-server-name '{0}' is neither a DNS name nor an IP address")]
    ServerName(String),
    /// rustls refused the files together, e.g. a key that is not the certificate's.
    #[error(
        "--peer-tls-cert {}, --peer-tls-key {} and --peer-tls-ca {} cannot be used: {reason}",
        files.cert.display(), files.key.display(), files.ca.display()
    )]
    Unusable { files: PeerTlsFiles, reason: String },
    #[error(transparent)]
    Serving(#[from] crate::tls::TlsError),
}

const PEER_FLAGS: Flags = Flags {
    cert: "--peer-tls-cert",
    key: "--peer-tls-key",
    client_ca: "--peer-tls-ca",
};

/// This node's TLS identity and the CA its peers must be signed by, ready for both ends of the
/// peer stream, and swapped whole when the files change.
pub struct PeerTls {
    files: PeerTlsFiles,
    server_name: Option<String>,
    /// The accepting side: client certificates required, signed by the CA.
    server: Arc<ServingTls>,
    /// The dialing side.
    client: ArcSwap<ClientTlsConfig>,
}

/// Paths only: the private key must never end up in a log line.
impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("files", &self.files)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Read and check the three files. `server_name` is the name peers' certificates must be
    /// valid for; without it, the host part of the address dialed (a DNS name or an IP).
    pub fn load(files: &PeerTlsFiles, server_name: Option<&str>) -> Result<PeerTls, PeerTlsError> {
        let client = client_config(files, server_name)?;
        let server = ServingTls::load("peer", serving_files(files), PEER_FLAGS, ALPN_H2)?;
        Ok(PeerTls {
            files: files.clone(),
            server_name: server_name.map(str::to_string),
            server: Arc::new(server),
            client: ArcSwap::from_pointee(client),
        })
    }

    /// Re-read the files for the streams opened from now on; on error nothing changes.
    pub fn reload(&self) -> Result<(), PeerTlsError> {
        let client = client_config(&self.files, self.server_name.as_deref())?;
        self.server.reload()?;
        self.client.store(Arc::new(client));
        Ok(())
    }
}

impl crate::tls::reload::Reloadable for PeerTls {
    fn name(&self) -> &'static str {
        "peer"
    }

    fn paths(&self) -> Vec<PathBuf> {
        vec![
            self.files.cert.clone(),
            self.files.key.clone(),
            self.files.ca.clone(),
        ]
    }

    fn reload(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        PeerTls::reload(self).map_err(Into::into)
    }
}

fn serving_files(files: &PeerTlsFiles) -> TlsFiles {
    TlsFiles {
        cert: files.cert.clone(),
        key: files.key.clone(),
        client_ca: Some(files.ca.clone()),
    }
}

/// The dialing side's config, checked by building a connector once, so what rustls refuses
/// fails here rather than at every dial.
fn client_config(
    files: &PeerTlsFiles,
    server_name: Option<&str>,
) -> Result<ClientTlsConfig, PeerTlsError> {
    use crate::tls::files::{certificates, read};
    let cert = read("--peer-tls-cert", &files.cert)?;
    let key = read("--peer-tls-key", &files.key)?;
    let ca = read("--peer-tls-ca", &files.ca)?;
    certificates("--peer-tls-cert", &files.cert, &cert)?;
    PrivateKeyDer::from_pem_slice(&key).map_err(|e| crate::tls::TlsError::Parse {
        flag: "--peer-tls-key",
        path: files.key.clone(),
        what: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}"),
    })?;
    certificates("--peer-tls-ca", &files.ca, &ca)?;
    if let Some(name) = server_name {
        ServerName::try_from(name).map_err(|_| PeerTlsError::ServerName(name.to_string()))?;
    }
    let mut client = ClientTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .ca_certificate(Certificate::from_pem(ca))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(name) = server_name {
        client = client.domain_name(name);
    }
    Endpoint::from_static("https://peer.invalid")
        .tls_config(client.clone())
        .map_err(|e| PeerTlsError::Unusable {
            files: files.clone(),
            reason: chain(&e),
        })?;
    Ok(client)
}

/// The builder of the peer server (TLS, when configured, is in [`incoming`]).
pub(crate) fn server_builder(_tls: Option<&PeerTls>) -> Server {
    Server::builder()
}

/// The peer server's connections: after a handshake with the certificate current at that
/// moment when TLS is configured, plain TCP otherwise.
pub(crate) fn incoming(
    tls: Option<&PeerTls>,
    listener: crate::listener::Listener,
) -> impl tokio_stream::Stream<Item = std::io::Result<crate::tls::Bounded>> + Send + 'static {
    crate::tls::incoming(
        listener,
        tls.map(|t| Tls {
            serving: t.server.clone(),
            handshake_failures: metrics::Counter::noop(),
        }),
    )
}

/// The endpoint to dial a peer at `addr` (`host:port`): `https` with this node's certificate
/// when TLS is configured, `http` otherwise.
pub(crate) fn endpoint(
    tls: Option<&PeerTls>,
    addr: &str,
) -> Result<Endpoint, tonic::transport::Error> {
    match tls {
        Some(t) => Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config((*t.client.load_full()).clone()),
        None => Endpoint::from_shared(format!("http://{addr}")),
    }
}

/// tonic's transport error says only "transport error": the reason is in its sources.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut reasons = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        reasons.push(s.to_string());
        source = s.source();
    }
    if reasons.is_empty() {
        e.to_string()
    } else {
        reasons.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    /// A CA and a node certificate it signed, written to `dir` as ca.pem, cert.pem, key.pem.
    fn write_pki(dir: &std::path::Path) -> PeerTlsFiles {
        let mut ca = CertificateParams::new(Vec::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("ca");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("cert");
        let files = PeerTlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write");
        std::fs::write(&files.ca, ca.pem()).expect("write");
        files
    }

    #[test]
    fn a_ca_signed_identity_loads() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = write_pki(dir.path());
        PeerTls::load(&files, None).expect("loads");
        PeerTls::load(&files, Some("tollgate-peers.edge.svc.cluster.local")).expect("loads");
    }

    #[test]
    fn a_missing_file_names_its_flag_and_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut files = write_pki(dir.path());
        files.ca = dir.path().join("nope.pem");
        let err = PeerTls::load(&files, None).unwrap_err().to_string();
        assert!(err.starts_with("cannot read --peer-tls-ca"), "{err}");
        assert!(err.contains("nope.pem"), "{err}");
    }

    #[test]
    fn a_file_without_pem_names_its_flag_and_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = write_pki(dir.path());
        std::fs::write(&files.cert, "not a certificate").expect("write");
        let err = PeerTls::load(&files, None).unwrap_err().to_string();
        assert!(err.starts_with("--peer-tls-cert"), "{err}");
        assert!(
            err.contains("cert.pem") && err.contains("no PEM certificate"),
            "{err}"
        );

        let files = write_pki(dir.path());
        std::fs::write(&files.key, "").expect("write");
        let err = PeerTls::load(&files, None).unwrap_err().to_string();
        assert!(err.starts_with("--peer-tls-key"), "{err}");
        assert!(err.contains("key.pem"), "{err}");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = write_pki(dir.path());
        let other = KeyPair::generate().expect("key");
        std::fs::write(&files.key, other.serialize_pem()).expect("write");
        let err = PeerTls::load(&files, None).unwrap_err().to_string();
        assert!(err.contains("cannot be used"), "{err}");
        assert!(err.contains("key.pem"), "{err}");
    }

    #[test]
    fn an_invalid_server_name_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = write_pki(dir.path());
        let err = PeerTls::load(&files, Some("not a name"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--peer-tls-server-name"), "{err}");
    }

    #[test]
    fn debug_output_shows_paths_not_key_material() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = write_pki(dir.path());
        let tls = PeerTls::load(&files, None).expect("loads");
        let shown = format!("{tls:?}");
        assert!(shown.contains("key.pem"), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
}
