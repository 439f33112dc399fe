//! `/metrics` rendering, kept off the request workers.
//!
//! Rendering the exposition walks every series: with thousands of rules it takes long enough
//! that doing it on a runtime worker stalls the gRPC requests queued behind it. So it runs on the blocking pool, one render at a
//! time: concurrent scrapers wait their turn (bounded), they do not multiply the work.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::limiter::Limiter;

/// How long a scrape waits for the render in progress before it is answered 503.
pub const SCRAPE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("another /metrics render is still running; try again")]
    Busy,
    #[error("the /metrics render failed")]
    Failed,
}

#[derive(Clone)]
pub struct ScrapeGate(Arc<Semaphore>);

impl Default for ScrapeGate {
    fn default() -> Self {
        ScrapeGate(Arc::new(Semaphore::new(1)))
    }
}

impl ScrapeGate {
    /// Refresh the gauges and render the exposition on the blocking pool.
    pub async fn render(&self, limiter: Arc<Limiter>) -> Result<String, ScrapeError> {
        let permit = tokio::time::timeout(SCRAPE_WAIT, self.0.clone().acquire_owned())
            .await
            .map_err(|_| ScrapeError::Busy)?
            .map_err(|_| ScrapeError::Failed)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            limiter.render_metrics()
        })
        .await
        .map_err(|_| ScrapeError::Failed)
    }
}
