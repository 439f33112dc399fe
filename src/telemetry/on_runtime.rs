//! A span exporter that runs every export on a tokio runtime.
//!
//! `opentelemetry_sdk`'s batch processor calls `export` from its own OS thread and blocks on
//! the future there; tonic's channel needs a tokio reactor to make progress, which that thread
//! does not have ("there is no reactor running"). Spawning the export onto the runtime the
//! exporter was built on and waiting for its result works from any thread.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tokio::runtime::Handle;

#[derive(Debug)]
pub struct OnRuntime<E> {
    inner: Arc<E>,
    runtime: Handle,
}

impl<E: SpanExporter + 'static> OnRuntime<E> {
    /// Wrap `inner`; must be called on the runtime that will carry the exports.
    pub fn new(inner: E) -> OnRuntime<E> {
        OnRuntime {
            inner: Arc::new(inner),
            runtime: Handle::current(),
        }
    }
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        match self
            .runtime
            .spawn(async move { inner.export(batch).await })
            .await
        {
            Ok(r) => r,
            Err(e) => Err(OTelSdkError::InternalFailure(format!(
                "span export task failed: {e}"
            ))),
        }
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.shutdown_with_timeout(timeout),
            // An export is still in flight; the exporter goes when it ends.
            None => Ok(()),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any export shares the exporter.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
