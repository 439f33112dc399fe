//! The Hello each side of a peer stream sends first: who it is (node, incarnation, where it
//! can be reached), and what must match for two nodes to share buckets (protocol, cluster,
//! config, secret).

use super::{auth, proto, Shared, PROTOCOL_VERSION};

impl Shared {
    /// This node's Hello, signed.
    pub fn hello(&self) -> proto::Hello {
        let me = self.me();
        let mut h = proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: self.settings.cluster_id.clone(),
            config_hash: self.limiter.active().config.fingerprint(),
            node: me.node,
            incarnation: me.incarnation,
            wall_ns: self.now(),
            auth: Vec::new(),
            advertise_addr: self.settings.advertise_addr.clone(),
        };
        auth::sign(self.settings.secret.as_deref(), &mut h);
        h
    }

    /// Check a peer's Hello: same protocol, cluster, config and secret. The error names the
    /// reason (for the metric label) and says what differs.
    pub fn check_hello(&self, h: &proto::Hello) -> Result<(), (&'static str, String)> {
        if h.protocol_version != PROTOCOL_VERSION {
            return Err((
                "protocol_version",
                format!(
                    "peer {} speaks protocol version {}, this node {}",
                    h.node, h.protocol_version, PROTOCOL_VERSION
                ),
            ));
        }
        if h.cluster_id != self.settings.cluster_id {
            return Err((
                "cluster_id",
                format!(
                    "peer {} is in cluster '{}', this node in '{}'",
                    h.node, h.cluster_id, self.settings.cluster_id
                ),
            ));
        }
        auth::verify(self.settings.secret.as_deref(), h, self.now())
            .map_err(|e| ("auth", format!("peer {}: {e}", h.node)))?;
        let ours = self.limiter.active().config.fingerprint();
        if h.config_hash != ours {
            // Our hash stays out of the message: it goes back to the peer, and a forger would
            // need nothing else. This node's log has it (`config_hash` in the warning).
            return Err((
                "config_hash",
                format!(
                    "peer {} serves another rate limit config (its hash {:016x})",
                    h.node, h.config_hash
                ),
            ));
        }
        Ok(())
    }
}
