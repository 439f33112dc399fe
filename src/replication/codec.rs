//! Bucket states to and from the wire. Every received field is checked: a malformed frame is an
//! error that closes that one stream, never a panic and never a misread bucket.

use std::collections::HashMap;

use super::proto;
use super::replicas::{Replica, ReplicaTable};
use crate::bucket::{BucketState, Limit, Refund, ReplicaId, Slot};
use crate::store::KeyId;
use crate::unit::Unit;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("key {index}: limit has capacity {capacity}, per_unit {per_unit}, unit {unit}: not a valid limit")]
    BadLimit {
        index: usize,
        capacity: u32,
        per_unit: u32,
        unit: i32,
    },
    #[error("key {index}: slot refers to replica {replica}, but the frame lists {listed}")]
    BadReplica {
        index: usize,
        replica: u32,
        listed: usize,
    },
    #[error("frame names more replicas than this node admits (--max-members bounds them)")]
    TooManyReplicas,
    #[error("Ping reports {listed} nodes, more than the member bound ({max}, --max-members)")]
    TooManyNodes { listed: usize, max: usize },
    #[error("frame has no kind (empty oneof)")]
    Empty,
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
}

fn split(v: i128) -> (u64, i64) {
    (v as u64, (v >> 64) as i64)
}

fn join(lo: u64, hi: i64) -> i128 {
    ((hi as i128) << 64) | lo as i128
}

/// Builds one Delta: the replica table is local to the frame, so slot references stay small.
pub struct DeltaBuilder<'a> {
    replicas: &'a ReplicaTable,
    index: HashMap<ReplicaId, u32>,
    pub delta: proto::Delta,
    bytes: usize,
}

impl<'a> DeltaBuilder<'a> {
    pub fn new(replicas: &'a ReplicaTable) -> Self {
        DeltaBuilder {
            replicas,
            index: HashMap::new(),
            delta: proto::Delta::default(),
            bytes: 0,
        }
    }

    /// Encoded size so far (approximate to a few bytes), to cap frames.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.delta.keys.is_empty()
    }

    /// The frame's index of a replica, listing it on first use; `None` for an unknown replica.
    fn replica_index(&mut self, replica: ReplicaId) -> Option<u32> {
        if let Some(i) = self.index.get(&replica) {
            return Some(*i);
        }
        let r = self.replicas.get(replica)?;
        let next = self.index.len() as u32;
        let m = proto::Replica {
            node: r.node,
            incarnation: r.incarnation,
        };
        self.bytes += prost::Message::encoded_len(&m) + 2;
        self.delta.replicas.push(m);
        self.index.insert(replica, next);
        Some(next)
    }

    pub fn push(&mut self, key: KeyId, limit: &Limit, state: &BucketState) {
        self.push_slots(key, limit, state, None);
    }

    /// Only `own`'s slot and refund (with the floor, forgiveness and generation): a partial
    /// state, for a change this node made.
    pub fn push_own(&mut self, key: KeyId, limit: &Limit, state: &BucketState, own: ReplicaId) {
        self.push_slots(key, limit, state, Some(own));
    }

    fn push_slots(
        &mut self,
        key: KeyId,
        limit: &Limit,
        state: &BucketState,
        only: Option<ReplicaId>,
    ) {
        let keep = |r: ReplicaId| only.is_none_or(|o| o == r);
        let mut slots = Vec::with_capacity(if only.is_some() {
            1
        } else {
            state.slots().len()
        });
        for s in state.slots().iter().filter(|s| keep(s.replica)) {
            let Some(idx) = self.replica_index(s.replica) else {
                continue;
            };
            slots.push(proto::Slot {
                replica: idx,
                consumed: s.consumed,
                requested: s.requested,
            });
        }
        let refunds = state
            .refunds()
            .filter(|r| keep(r.replica))
            .filter_map(|r| {
                Some(proto::Refund {
                    replica: self.replica_index(r.replica)?,
                    refunded: r.refunded,
                })
            })
            .collect();
        let (base_lo, base_hi) = split(state.base());
        let (forgiven_lo, forgiven_hi) = split(state.forgiven());
        let k = proto::KeyState {
            key_lo: key.0 as u64,
            key_hi: (key.0 >> 64) as u64,
            capacity: limit.capacity(),
            per_unit: limit.per_unit(),
            unit: limit.unit().to_proto(),
            unit_multiplier: multiplier_on_wire(limit.multiplier()),
            gen: state.gen(),
            base_lo,
            base_hi,
            forgiven_lo,
            forgiven_hi,
            slots,
            refunds,
            partial: only.is_some(),
        };
        self.bytes += prost::Message::encoded_len(&k) + 3;
        self.delta.keys.push(k);
    }
}

/// A plain unit is sent as 0 (the field's default, not encoded), so frames of rules without a
/// multiplier are byte for byte what they were before the field existed.
fn multiplier_on_wire(m: u16) -> u32 {
    if m == 1 {
        0
    } else {
        u32::from(m)
    }
}

/// `None` for a multiplier no limit can have (a `BadLimit` frame).
fn multiplier_off_wire(m: u32) -> Option<u16> {
    match m {
        0 => Some(1),
        m => u16::try_from(m).ok(),
    }
}

/// One key of a received Delta.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub key: KeyId,
    pub limit: Limit,
    pub state: BucketState,
    /// Only the sender's own slot (see `KeyState.partial`).
    pub partial: bool,
}

/// Decode a received Delta's keys, mapping its replicas to local ids.
pub fn decode_delta(
    delta: &proto::Delta,
    replicas: &ReplicaTable,
) -> Result<Vec<Decoded>, FrameError> {
    let ids: Vec<ReplicaId> = delta
        .replicas
        .iter()
        .map(|r| {
            replicas
                .try_intern(&Replica {
                    node: r.node.clone(),
                    incarnation: r.incarnation,
                })
                .ok_or(FrameError::TooManyReplicas)
        })
        .collect::<Result<_, _>>()?;
    delta
        .keys
        .iter()
        .enumerate()
        .map(|(index, k)| {
            let limit = Unit::from_proto(k.unit)
                .zip(multiplier_off_wire(k.unit_multiplier))
                .and_then(|(u, m)| Limit::over(k.capacity, k.per_unit, u, m))
                .ok_or(FrameError::BadLimit {
                    index,
                    capacity: k.capacity,
                    per_unit: k.per_unit,
                    unit: k.unit,
                })?;
            let replica_at = |replica: u32| {
                ids.get(replica as usize)
                    .copied()
                    .ok_or(FrameError::BadReplica {
                        index,
                        replica,
                        listed: ids.len(),
                    })
            };
            let refunds = k
                .refunds
                .iter()
                .map(|r| {
                    Ok(Refund {
                        replica: replica_at(r.replica)?,
                        refunded: r.refunded,
                    })
                })
                .collect::<Result<Vec<_>, FrameError>>()?;
            let slots = k
                .slots
                .iter()
                .map(|s| {
                    let replica = replica_at(s.replica)?;
                    Ok(Slot {
                        replica,
                        consumed: s.consumed,
                        requested: s.requested,
                    })
                })
                .collect::<Result<Vec<_>, FrameError>>()?;
            let state = BucketState::from_parts(
                k.gen,
                join(k.base_lo, k.base_hi),
                join(k.forgiven_lo, k.forgiven_hi),
                slots,
            )
            .with_refunds(refunds);
            Ok(Decoded {
                key: KeyId((k.key_hi as u128) << 64 | k.key_lo as u128),
                limit,
                state,
                partial: k.partial,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000_000_000;

    fn table(node: &str, inc: u64) -> ReplicaTable {
        ReplicaTable::new(Replica {
            node: node.into(),
            incarnation: inc,
        })
    }

    #[test]
    fn a_state_survives_the_round_trip_between_two_nodes() {
        let a = table("a", 1);
        let b = table("b", 2);
        let limit = Limit::new(10, 5, Unit::Minute).expect("valid");
        let mut s = BucketState::new(3);
        s.admit(&limit, ReplicaId(0), 4, T0, 10);
        let mut d = DeltaBuilder::new(&a);
        d.push(KeyId(u128::MAX - 5), &limit, &s);
        let got = decode_delta(&d.delta, &b).expect("valid");
        assert_eq!(got.len(), 1);
        let Decoded {
            key,
            limit: l,
            state,
            partial,
        } = &got[0];
        assert_eq!(*key, KeyId(u128::MAX - 5));
        assert_eq!(*l, limit);
        assert!(!partial);
        // Same bucket, seen from b: a's slot is b's replica 1.
        assert_eq!(state.tokens(l, T0), s.tokens(&limit, T0));
        assert_eq!(state.base(), s.base());
        assert_eq!(state.slots()[0].replica, ReplicaId(1));
        assert_eq!(b.get(ReplicaId(1)).map(|r| r.node), Some("a".to_string()));
    }

    #[test]
    fn an_own_change_carries_only_the_senders_slot_and_says_it_is_partial() {
        let a = table("a", 1);
        let b = table("b", 2);
        let c = a.intern(&Replica {
            node: "c".into(),
            incarnation: 3,
        });
        let limit = Limit::new(10, 10, Unit::Hour).expect("valid");
        let mut s = BucketState::new(3);
        s.admit(&limit, ReplicaId(0), 2, T0, 10);
        s.admit(&limit, c, 3, T0, 10);
        let mut whole = DeltaBuilder::new(&a);
        whole.push(KeyId(9), &limit, &s);
        let mut own = DeltaBuilder::new(&a);
        own.push_own(KeyId(9), &limit, &s, ReplicaId(0));
        assert!(own.bytes() < whole.bytes());
        let got = decode_delta(&own.delta, &b).expect("valid");
        assert!(got[0].partial);
        let slots: Vec<_> = got[0]
            .state
            .slots()
            .iter()
            .map(|x| (b.get(x.replica).map(|r| r.node), x.consumed))
            .collect();
        assert_eq!(slots, vec![(Some("a".to_string()), 2)]);
        assert_eq!(got[0].state.base(), s.base());
        assert_eq!(got[0].state.gen(), s.gen());
    }

    #[test]
    fn a_unit_multiplier_survives_the_round_trip_and_a_plain_unit_is_not_encoded() {
        let a = table("a", 1);
        let b = table("b", 2);
        let five_minutes = Limit::over(1000, 1000, Unit::Minute, 5).expect("valid");
        let mut d = DeltaBuilder::new(&a);
        d.push(KeyId(1), &five_minutes, &BucketState::new(3));
        assert_eq!(d.delta.keys[0].unit_multiplier, 5);
        let got = decode_delta(&d.delta, &b).expect("valid");
        assert_eq!(got[0].limit, five_minutes);
        let plain = Limit::new(10, 10, Unit::Minute).expect("valid");
        let mut d = DeltaBuilder::new(&a);
        d.push(KeyId(2), &plain, &BucketState::new(3));
        assert_eq!(d.delta.keys[0].unit_multiplier, 0);
        assert_eq!(decode_delta(&d.delta, &b).expect("valid")[0].limit, plain);
        d.delta.keys[0].unit_multiplier = 70_000;
        assert!(matches!(
            decode_delta(&d.delta, &b),
            Err(FrameError::BadLimit { .. })
        ));
    }

    #[test]
    fn refunds_survive_the_round_trip_even_from_a_replica_without_a_slot() {
        let a = table("a", 1);
        let b = table("b", 2);
        let other = a.intern(&Replica {
            node: "c".into(),
            incarnation: 3,
        });
        let limit = Limit::new(10, 10, Unit::Hour).expect("valid");
        let mut s = BucketState::new(3);
        s.charge_into_debt(&limit, ReplicaId(0), 6, T0, 10);
        s.refund(&limit, ReplicaId(0), 1, T0);
        // c gave back tokens it never charged (the stream ended on another node).
        s.refund(&limit, other, 2, T0);
        let mut d = DeltaBuilder::new(&a);
        d.push(KeyId(7), &limit, &s);
        let got = decode_delta(&d.delta, &b).expect("valid");
        let state = &got[0].state;
        assert_eq!(state.tokens(&limit, T0), 7);
        let seen: Vec<_> = state
            .refunds()
            .map(|r| (b.get(r.replica).map(|r| r.node), r.refunded))
            .collect();
        assert_eq!(
            seen,
            vec![(Some("a".to_string()), 1), (Some("c".to_string()), 2)]
        );
        // And encoded again from b, it is the same state seen from a.
        let mut back = DeltaBuilder::new(&b);
        back.push(KeyId(7), &limit, state);
        let again = decode_delta(&back.delta, &a).expect("valid");
        assert_eq!(again[0].state, s);
    }

    /// How a node from before refunds existed reads a key state: the same message without
    /// field 12.
    #[derive(Clone, PartialEq, prost::Message)]
    struct KeyStateBeforeRefunds {
        #[prost(fixed64, tag = "1")]
        key_lo: u64,
        #[prost(uint32, tag = "6")]
        gen: u32,
        #[prost(message, repeated, tag = "11")]
        slots: Vec<proto::Slot>,
    }

    #[test]
    fn a_node_without_refunds_reads_a_key_state_that_has_them() {
        let k = proto::KeyState {
            key_lo: 9,
            gen: 4,
            slots: vec![proto::Slot {
                replica: 0,
                consumed: 5,
                requested: 5,
            }],
            refunds: vec![proto::Refund {
                replica: 0,
                refunded: 2,
            }],
            ..Default::default()
        };
        let bytes = prost::Message::encode_to_vec(&k);
        let old: KeyStateBeforeRefunds =
            prost::Message::decode(bytes.as_slice()).expect("unknown fields are skipped");
        assert_eq!((old.key_lo, old.gen, old.slots), (9, 4, k.slots.clone()));
        // And a new node reads an old node's key state as one with no refunds.
        let old_bytes = prost::Message::encode_to_vec(&KeyStateBeforeRefunds {
            key_lo: 9,
            gen: 4,
            slots: k.slots.clone(),
        });
        let new: proto::KeyState = prost::Message::decode(old_bytes.as_slice()).expect("valid");
        assert!(new.refunds.is_empty());
    }

    #[test]
    fn a_refund_naming_an_unlisted_replica_is_refused() {
        let delta = proto::Delta {
            keys: vec![proto::KeyState {
                capacity: 1,
                per_unit: 1,
                unit: 1,
                refunds: vec![proto::Refund {
                    replica: 1,
                    refunded: 1,
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(
            decode_delta(&delta, &table("a", 1)),
            Err(FrameError::BadReplica { replica: 1, .. })
        ));
    }

    #[test]
    fn negative_and_huge_registers_round_trip() {
        for v in [i128::MIN, -1, 0, 1, i128::MAX, T0 as i128 * 1_000_000_000] {
            let (lo, hi) = split(v);
            assert_eq!(join(lo, hi), v);
        }
    }

    #[test]
    fn a_slot_naming_an_unlisted_replica_is_refused() {
        let delta = proto::Delta {
            seq: 1,
            replicas: vec![],
            keys: vec![proto::KeyState {
                capacity: 1,
                per_unit: 1,
                unit: 1,
                slots: vec![proto::Slot {
                    replica: 3,
                    consumed: 1,
                    requested: 1,
                }],
                ..Default::default()
            }],
        };
        let err = decode_delta(&delta, &table("a", 1)).unwrap_err();
        assert_eq!(
            err,
            FrameError::BadReplica {
                index: 0,
                replica: 3,
                listed: 0
            }
        );
    }

    #[test]
    fn an_invalid_limit_is_refused() {
        let delta = proto::Delta {
            seq: 1,
            replicas: vec![],
            keys: vec![proto::KeyState {
                capacity: 0,
                per_unit: 1,
                unit: 1,
                ..Default::default()
            }],
        };
        assert!(matches!(
            decode_delta(&delta, &table("a", 1)),
            Err(FrameError::BadLimit { .. })
        ));
        let delta = proto::Delta {
            keys: vec![proto::KeyState {
                capacity: 1,
                per_unit: 1,
                unit: 99,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(
            decode_delta(&delta, &table("a", 1)),
            Err(FrameError::BadLimit { .. })
        ));
    }
}
