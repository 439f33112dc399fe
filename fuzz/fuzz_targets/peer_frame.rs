//! Any bytes as a peer stream frame: decoded, checked and merged into a store, or refused as
//! malformed; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tollgate::bucket::ReplicaId;
use tollgate::replication::proto::{frame::Kind, Frame};
use tollgate::replication::{decode_delta, Replica, ReplicaTable};
use tollgate::store::{Store, StoreConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::decode(data) else {
        return;
    };
    let Some(Kind::Delta(delta)) = frame.kind else {
        return;
    };
    let table = ReplicaTable::new(Replica {
        node: "me".to_string(),
        incarnation: 1,
    });
    let Ok(keys) = decode_delta(&delta, &table) else {
        return;
    };
    let store = Store::new(StoreConfig::default(), ReplicaId(0));
    let now = 1_700_000_000_000_000_000;
    for k in &keys {
        if k.partial {
            store.merge_partial(k.key, k.limit, &k.state, now);
        } else {
            store.merge(k.key, k.limit, &k.state, now);
        }
    }
});
