//! One listener's TLS identity, swappable while it serves: every new connection takes the
//! config current at its handshake, connections already open keep the one they started with.
//! This is what lets certificates be rotated without a restart and without failing a request.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;

use super::files::{server_config, Flags, Pem, TlsError, TlsFiles};

/// ALPN for gRPC: HTTP/2 only (tonic clients insist on it being negotiated).
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// ALPN for the HTTP listener, which speaks HTTP/1.1.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

pub struct ServingTls {
    /// Which listener, for logs and metric labels: `grpc`, `http` or `peer`.
    name: &'static str,
    files: TlsFiles,
    flags: Flags,
    alpn: &'static [&'static [u8]],
    config: ArcSwap<ServerConfig>,
}

/// Paths only: the private key must never end up in a log line.
impl fmt::Debug for ServingTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingTls")
            .field("name", &self.name)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServingTls {
    /// Read the files and build the config; anything wrong stops the server before it listens.
    pub fn load(
        name: &'static str,
        files: TlsFiles,
        flags: Flags,
        alpn: &'static [&'static [u8]],
    ) -> Result<ServingTls, TlsError> {
        let config = build(&files, flags, alpn)?;
        Ok(ServingTls {
            name,
            files,
            flags,
            alpn,
            config: ArcSwap::from_pointee(config),
        })
    }

    /// Re-read the files and, when they make a usable config, serve new connections with it.
    /// On error the config in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.files, self.flags, self.alpn)?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// The config a handshake starting now uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn build(
    files: &TlsFiles,
    flags: Flags,
    alpn: &'static [&'static [u8]],
) -> Result<ServerConfig, TlsError> {
    server_config(Pem::read(files, flags)?, alpn, flags, files)
}
