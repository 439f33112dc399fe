//! Certificates reloaded when their files change, as cert-manager rotates a Secret in place.
//!
//! Like the config reloader, this polls contents rather than watching inotify events: a
//! Kubernetes Secret volume is updated by swapping its `..data` symlink, so the watched paths
//! never change, only what they resolve to. Reading a few PEM files every interval sees that,
//! a rename or a plain rewrite all the same way.
//!
//! A change that does not make a usable identity (a key that does not match the certificate,
//! which happens between the two writes of a non-atomic update) is refused, logged and counted;
//! the identity in use stays, and the next change is tried again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Label};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::metrics::Metrics;

/// Something serving with certificates that can be re-read in place.
pub trait Reloadable: Send + Sync + 'static {
    /// `grpc`, `http` or `peer`: the `listener` label of the reload counter.
    fn name(&self) -> &'static str;
    /// The files to watch.
    fn paths(&self) -> Vec<PathBuf>;
    /// Re-read the files and use them for new connections; on error keep what is in use.
    fn reload(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

impl Reloadable for super::ServingTls {
    fn name(&self) -> &'static str {
        super::ServingTls::name(self)
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.files().paths()
    }

    fn reload(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        super::ServingTls::reload(self).map_err(Into::into)
    }
}

struct Watched {
    item: Arc<dyn Reloadable>,
    /// The files' contents at the last look (`None`: unreadable then).
    last: Vec<Option<Vec<u8>>>,
    ok: Counter,
    failed: Counter,
}

/// What one look at a watched item found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Reloaded,
    Refused,
}

pub struct CertWatcher {
    interval: Duration,
    watched: Vec<Watched>,
    metrics: Arc<Metrics>,
}

impl CertWatcher {
    pub fn new(interval: Duration, metrics: Arc<Metrics>) -> CertWatcher {
        CertWatcher {
            interval,
            watched: Vec::new(),
            metrics,
        }
    }

    /// Watch `item`'s files from their current contents on.
    pub fn watch(&mut self, item: Arc<dyn Reloadable>) {
        let counter = |result: &'static str| {
            self.metrics.counter(
                "tollgate_tls_reloads_total",
                vec![
                    Label::new("listener", item.name()),
                    Label::new("result", result),
                ],
            )
        };
        let (ok, failed) = (counter("ok"), counter("failed"));
        let last = contents(&item.paths());
        self.watched.push(Watched {
            item,
            last,
            ok,
            failed,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// Look once at every watched item (blocking file reads); one outcome per item.
    pub fn check(&mut self) -> Vec<Outcome> {
        self.watched.iter_mut().map(check_one).collect()
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut me = self;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    // File reads block; keep them off the request workers.
                    me = match tokio::task::spawn_blocking(move || { me.check(); me }).await {
                        Ok(m) => m,
                        Err(e) => {
                            error!(error = %e, "certificate watcher panicked; certificates are no longer reloaded");
                            return;
                        }
                    };
                }
            }
        }
    }
}

fn check_one(w: &mut Watched) -> Outcome {
    let now = contents(&w.item.paths());
    if now == w.last {
        return Outcome::Unchanged;
    }
    w.last = now;
    let _span = tracing::info_span!("tls_reload", listener = w.item.name()).entered();
    match w.item.reload() {
        Ok(()) => {
            w.ok.increment(1);
            info!(
                listener = w.item.name(),
                "certificates reloaded; new connections use them"
            );
            Outcome::Reloaded
        }
        Err(e) => {
            w.failed.increment(1);
            error!(listener = w.item.name(), error = %e, "certificate reload refused; still serving the previous certificates");
            Outcome::Refused
        }
    }
}

fn contents(paths: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    paths.iter().map(|p| std::fs::read(p).ok()).collect()
}
