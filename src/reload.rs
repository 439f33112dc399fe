//! Hot reload: the config path is read every `interval` and, when its contents changed and then
//! stayed the same for one more interval, parsed and swapped in atomically.
//!
//! Polling contents rather than watching inotify events is deliberate: Kubernetes updates a
//! ConfigMap volume by swapping a `..data` symlink, editors write temp files and rename them, and
//! a directory may be replaced whole. Reading a few small files once a second sees all of these
//! the same way, and costs nothing next to the request load.
//!
//! A change is acted on only once two reads an interval apart agree: `cp`, `scp` and many
//! editors write a file in place, in several writes, and a valid-looking first half must never
//! be served. An atomic swap (the ConfigMap symlink, a rename) simply waits one interval more.
//!
//! The loop runs on a thread of its own, not on the runtime: parsing a large config takes
//! a while, and neither request workers nor shutdown (which does not wait for this thread)
//! should wait on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{self, LoadPolicy};
use crate::limiter::Limiter;

/// What one read of the config path saw: the files, or why they could not be read.
type Seen = Result<Vec<(String, String)>, String>;

pub struct Reloader {
    pub path: PathBuf,
    pub interval: Duration,
    pub limiter: Arc<Limiter>,
    pub policy: LoadPolicy,
    /// The files as last acted on (loaded or refused): a refused version is reported once,
    /// not every interval.
    last: Seen,
    /// A change seen once, waiting for the next read to confirm it is complete.
    pending: Option<Seen>,
}

impl Reloader {
    /// `loaded`: the files the served config was built from.
    pub fn new(
        path: PathBuf,
        interval: Duration,
        limiter: Arc<Limiter>,
        policy: LoadPolicy,
        loaded: Vec<(String, String)>,
    ) -> Reloader {
        Reloader {
            path,
            interval,
            limiter,
            policy,
            last: Ok(loaded),
            pending: None,
        }
    }

    fn read(&self) -> Seen {
        config::read_path_within(&self.path, self.policy.max_bytes).map_err(|e| e.to_string())
    }

    /// Check once; returns `Some(true)` when a new config was swapped in, `Some(false)` when a
    /// changed config was refused, `None` when nothing changed or a change is still settling.
    pub fn check(&mut self) -> Option<bool> {
        let seen = self.read();
        if seen == self.last {
            self.pending = None;
            return None;
        }
        if self.pending.as_ref() != Some(&seen) {
            // New, or still changing: look again next interval.
            self.pending = Some(seen);
            return None;
        }
        self.pending = None;
        self.last = seen;
        Some(self.apply())
    }

    fn apply(&mut self) -> bool {
        let files = match &self.last {
            Ok(files) => files,
            Err(e) => {
                self.limiter.metrics().config_loads_failed.increment(1);
                error!(path = %self.path.display(), error = %e, "config reload failed; still serving the previous config");
                return false;
            }
        };
        let bytes: usize = files.iter().map(|(_, text)| text.len()).sum();
        info!(path = %self.path.display(), bytes, "config change settled; loading it");
        // A span per reload attempt, exported with --otlp-endpoint.
        let span = tracing::info_span!("config_reload", path = %self.path.display(), result = tracing::field::Empty);
        let _entered = span.enter();
        match self.policy.parse(files) {
            Ok(c) => {
                span.record("result", "ok");
                let domains = c.domains().count();
                self.limiter.swap_config(c);
                self.limiter.metrics().config_loads_ok.increment(1);
                info!(path = %self.path.display(), domains, "config reloaded");
                true
            }
            Err(errors) => {
                span.record("result", "refused");
                self.limiter.metrics().config_loads_failed.increment(1);
                for e in &errors.0 {
                    error!(error = %e, "config reload refused; still serving the previous config");
                }
                false
            }
        }
    }

    /// Poll until `stop`, on a thread of its own (see the module comment).
    pub fn spawn(mut self, stop: CancellationToken) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("config-reload".into())
            .spawn(move || {
                while !stop.is_cancelled() {
                    std::thread::sleep(self.interval);
                    if stop.is_cancelled() {
                        return;
                    }
                    self.check();
                }
            })
            .map(|_| ())
    }
}
