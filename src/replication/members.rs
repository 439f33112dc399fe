//! Who the peers are: the static `--peers` list plus, with `--peer-dns`, every address the name
//! resolves to (a Kubernetes headless Service lists every pod, ready or not), re-resolved every
//! few seconds so members come and go. A link whose address disappears is stopped; this node's
//! own address is recognised from the peer's answer and ignored.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Shared;

const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a learned peer may stay silent before it is dropped from the members.
const LEARNED_GRACE: Duration = Duration::from_secs(60);

async fn desired(shared: &Shared) -> HashSet<String> {
    let mut out: HashSet<String> = shared.settings.peers.iter().cloned().collect();
    if let Some(name) = &shared.settings.peer_dns {
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(addrs) => out.extend(addrs.map(|a| a.to_string())),
            Err(e) => {
                warn!(%name, error = %e, "cannot resolve --peer-dns; keeping the current peers")
            }
        }
    }
    out
}

/// Bring the set of links in line with the desired members.
pub(crate) async fn update(shared: &Arc<Shared>, stop: &CancellationToken) {
    let want = desired(shared).await;
    if shared.settings.peer_dns.is_some() && want.is_empty() {
        // A failed or empty lookup must not tear down every link.
        return;
    }
    let mut links = shared.links.lock();
    let now = std::time::Instant::now();
    links.retain(|addr, l| {
        // A peer learned from a Hello is kept while it is heard from (a learned member that
        // leaves for good says Leave, or falls silent for LEARNED_GRACE).
        let keep = want.contains(addr) || (l.learned && l.alive(now, LEARNED_GRACE));
        if !keep {
            info!(%addr, "peer left");
            l.stop.cancel();
        }
        keep
    });
    for addr in want {
        shared.add_link(&mut links, &addr, false, stop);
    }
}

pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(RESOLVE_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => update(&shared, &stop).await,
        }
    }
}
