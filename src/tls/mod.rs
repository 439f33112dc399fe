//! TLS on the serving ports (gRPC and HTTP) and the certificate reload shared with the peer
//! stream.
//!
//! rustls on ring, as the peer stream (aws-lc would need cmake). Certificates are read and
//! checked at start, so a missing or mismatched file stops the server with the flag and path
//! to fix; after that they are re-read whenever their files change ([`reload`]), and each new
//! connection uses the identity current at its handshake ([`ServingTls`]).

mod accept;
pub(crate) mod files;
pub mod reload;
mod serving;
pub mod settings;

pub use accept::{incoming, Bounded, Conn, Listener, Tls, HANDSHAKE_TIMEOUT};
pub use files::{Flags, TlsError, TlsFiles};
pub use serving::{ServingTls, ALPN_H2, ALPN_HTTP1};

/// The flags of the gRPC listener's files.
pub const GRPC_FLAGS: Flags = Flags {
    cert: "--grpc-tls-cert",
    key: "--grpc-tls-key",
    client_ca: "--grpc-tls-client-ca",
};

/// The flags of the HTTP listener's files.
pub const HTTP_FLAGS: Flags = Flags {
    cert: "--http-tls-cert",
    key: "--http-tls-key",
    client_ca: "--http-tls-client-ca",
};

use std::sync::Arc;
use std::time::Duration;

use metrics::Label;

use crate::metrics::Metrics;
use crate::settings::Settings;

/// The TLS of the two serving listeners, as the settings ask (`None`: plaintext).
pub struct ServingListeners {
    pub grpc: Option<Tls>,
    pub http: Option<Tls>,
}

impl ServingListeners {
    /// Load what the settings name; a bad file stops the server here, before it listens.
    pub fn load(settings: &Settings, metrics: &Metrics) -> anyhow::Result<ServingListeners> {
        let one = |name: &'static str, files: Option<TlsFiles>, flags, alpn| {
            files
                .map(|f| {
                    let serving = ServingTls::load(name, f, flags, alpn)?;
                    Ok::<_, TlsError>(Tls {
                        serving: Arc::new(serving),
                        handshake_failures: metrics.counter(
                            "tollgate_tls_handshake_failures_total",
                            vec![Label::new("listener", name)],
                        ),
                    })
                })
                .transpose()
        };
        Ok(ServingListeners {
            grpc: one("grpc", settings.grpc_tls_files()?, GRPC_FLAGS, ALPN_H2)?,
            http: one("http", settings.http_tls_files()?, HTTP_FLAGS, ALPN_HTTP1)?,
        })
    }

    /// A watcher that reloads these listeners' certificates, and `more` (the peer stream's),
    /// when their files change.
    pub fn watcher(
        &self,
        interval: Duration,
        metrics: Arc<Metrics>,
        more: impl IntoIterator<Item = Arc<dyn reload::Reloadable>>,
    ) -> reload::CertWatcher {
        let mut w = reload::CertWatcher::new(interval, metrics);
        for t in self.grpc.iter().chain(&self.http) {
            w.watch(t.serving.clone());
        }
        for r in more {
            w.watch(r);
        }
        w
    }
}
