//! Replica identities. A bucket's slots name replicas by a compact [`ReplicaId`]; this table maps
//! them to (node, incarnation) and back. Index 0 is this process. A restarted node has a new
//! incarnation and so a new id: its old slot keeps its counts and is never reused, because a
//! reused slot's old, higher count would hide new consumption. The table is bounded: peers
//! cannot make a node remember more replicas than `limit` (a frame naming more is refused).

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::bucket::ReplicaId;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Replica {
    pub node: String,
    pub incarnation: u64,
}

pub struct ReplicaTable {
    inner: RwLock<Inner>,
    limit: usize,
}

struct Inner {
    by_id: Vec<Replica>,
    ids: HashMap<Replica, ReplicaId>,
}

impl ReplicaTable {
    /// A table with no practical bound (single node, tests).
    pub fn new(me: Replica) -> Self {
        Self::with_limit(me, u32::MAX as usize)
    }

    /// A table that admits at most `limit` replicas, this process included.
    pub fn with_limit(me: Replica, limit: usize) -> Self {
        let mut ids = HashMap::new();
        ids.insert(me.clone(), ReplicaId(0));
        ReplicaTable {
            inner: RwLock::new(Inner {
                by_id: vec![me],
                ids,
            }),
            limit: limit.max(1),
        }
    }

    /// The local id of a replica, registering it on first sight; `None` when the table is full.
    pub fn try_intern(&self, r: &Replica) -> Option<ReplicaId> {
        if let Some(id) = self.inner.read().ids.get(r) {
            return Some(*id);
        }
        if self.inner.read().by_id.len() >= self.limit {
            return None;
        }
        Some(self.intern(r))
    }

    pub fn me(&self) -> Replica {
        self.inner.read().by_id[0].clone()
    }

    /// The local id of a replica, registering it on first sight.
    pub fn intern(&self, r: &Replica) -> ReplicaId {
        if let Some(id) = self.inner.read().ids.get(r) {
            return *id;
        }
        let mut w = self.inner.write();
        if let Some(id) = w.ids.get(r) {
            return *id;
        }
        let id = ReplicaId(w.by_id.len() as u32);
        w.by_id.push(r.clone());
        w.ids.insert(r.clone(), id);
        id
    }

    pub fn get(&self, id: ReplicaId) -> Option<Replica> {
        self.inner.read().by_id.get(id.0 as usize).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(node: &str, inc: u64) -> Replica {
        Replica {
            node: node.into(),
            incarnation: inc,
        }
    }

    #[test]
    fn this_process_is_replica_zero() {
        let t = ReplicaTable::new(r("a", 1));
        assert_eq!(t.intern(&r("a", 1)), ReplicaId(0));
    }

    #[test]
    fn a_restarted_node_is_a_new_replica() {
        let t = ReplicaTable::new(r("a", 1));
        let b1 = t.intern(&r("b", 7));
        let b2 = t.intern(&r("b", 8));
        assert_ne!(b1, b2);
        assert_eq!(t.intern(&r("b", 7)), b1);
        assert_eq!(t.get(b2), Some(r("b", 8)));
    }

    #[test]
    fn a_full_table_refuses_new_replicas_and_keeps_the_known_ones() {
        let t = ReplicaTable::with_limit(r("a", 1), 2);
        let b = t.try_intern(&r("b", 1)).expect("room for one more");
        assert_eq!(t.try_intern(&r("c", 1)), None);
        assert_eq!(t.try_intern(&r("b", 1)), Some(b));
    }
}
