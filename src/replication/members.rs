//! The seeds: the static `--peers` list plus, with `--peer-dns`, every address the name
//! resolves to (a Kubernetes headless Service lists every pod, ready or not), re-resolved every
//! few seconds. A seed is only where to start: who the members are is the membership
//! protocol's answer (see `membership`), learned from any one seed. A seed link whose address
//! disappears is stopped; links to members learned from gossip are closed when the member is
//! declared dead (`member_links`); this node's own address is recognised from the peer's
//! answer and ignored.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Shared;

const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

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
    shared.links.edit(|links| {
        links.retain(|addr, l| {
            // A link to a member learned from gossip is the membership's to close.
            let keep = want.contains(addr) || l.learned;
            if !keep {
                info!(%addr, "peer left");
                l.stop.cancel();
            }
            keep
        });
        for addr in want {
            shared.add_link(links, &addr, false, stop);
        }
    });
    // A seed that went away may have been how a member was reached: dial it at its own address.
    shared.reconcile_links();
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
