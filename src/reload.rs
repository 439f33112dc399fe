//! Hot reload: the config path is read every `interval` and, when its contents changed, parsed
//! and swapped in atomically.
//!
//! Polling contents rather than watching inotify events is deliberate: Kubernetes updates a
//! ConfigMap volume by swapping a `..data` symlink, editors write temp files and rename them, and
//! a directory may be replaced whole. Reading a few small files once a second sees all of these
//! the same way, and costs nothing next to the request load.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config;
use crate::limiter::Limiter;

pub struct Reloader {
    pub path: PathBuf,
    pub interval: Duration,
    pub limiter: Arc<Limiter>,
    /// The files as last seen (loaded or refused): a refused version is reported once, not
    /// every interval.
    pub last: Vec<(String, String)>,
}

impl Reloader {
    /// Check once; returns `Some(true)` when a new config was swapped in, `Some(false)` when a
    /// changed config was refused, `None` when nothing changed.
    pub fn check(&mut self) -> Option<bool> {
        let files = match config::read_path(&self.path) {
            Ok(f) => f,
            Err(e) => {
                // The path itself is unreadable (e.g. mid-swap): report once per change.
                let marker = vec![(
                    self.path.display().to_string(),
                    format!("\0unreadable: {e}"),
                )];
                if marker == self.last {
                    return None;
                }
                self.last = marker;
                self.limiter.metrics().config_loads_failed.increment(1);
                error!(path = %self.path.display(), error = %e, "config reload failed; still serving the previous config");
                return Some(false);
            }
        };
        if files == self.last {
            return None;
        }
        self.last = files;
        match self.limiter.build_config(&self.last) {
            Ok(c) => {
                let domains = c.domains().count();
                self.limiter.swap_config(c);
                self.limiter.metrics().config_loads_ok.increment(1);
                info!(path = %self.path.display(), domains, "config reloaded");
                Some(true)
            }
            Err(errors) => {
                self.limiter.metrics().config_loads_failed.increment(1);
                for e in &errors.0 {
                    error!(error = %e, "config reload refused; still serving the previous config");
                }
                Some(false)
            }
        }
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut me = self;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    // File reads block; they are small, but keep them off the request workers.
                    me = match tokio::task::spawn_blocking(move || {
                        me.check();
                        me
                    })
                    .await
                    {
                        Ok(me) => me,
                        Err(e) => {
                            error!(error = %e, "config reload task failed; hot reload stopped");
                            return;
                        }
                    };
                }
            }
        }
    }
}
