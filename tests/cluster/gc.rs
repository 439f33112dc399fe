//! Garbage collection and generations across the cluster (design section 2, "GC" and "Restart
//! and join"): idle keys are deleted everywhere and late frames from before the GC resurrect
//! nothing; and what a node that serves before it holds the cluster's state does to a key (the
//! lockout the bootstrap prevents).
//!
//! Late and stale states are sent by hand over a raw peer stream, as a slow peer would send
//! them; the node acknowledges a Delta only after merging it, so the Ack is the moment to look.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate::bucket::{generation_at, BucketState, Limit, GEN_PERIOD_NS};
use tollgate::clock::{Clock, ManualClock};
use tollgate::replication::proto::frame::Kind;
use tollgate::replication::proto::replication_client::ReplicationClient;
use tollgate::replication::proto::{Ack, Delta, Frame};
use tollgate::replication::DeltaBuilder;
use tollgate::settings::Settings;
use tollgate::store::KeyId;

use crate::common::*;
use crate::membership::hello;

const SEC: i64 = 1_000_000_000;

/// These tests move every clock by seconds or minutes at once. Pings in flight across such a
/// step measure the step as an offset and would quarantine a peer for a moment; clock skew is
/// not what is tested here.
fn steps_clocks(s: &mut Settings) {
    s.max_clock_offset = Duration::from_secs(3600);
}

fn set_clocks<'a>(nodes: impl IntoIterator<Item = &'a Node>, t: i64) {
    for n in nodes {
        n.clock.set(t);
    }
}

/// The one key a node holds, with its limit and state.
fn only_key(node: &Node) -> (KeyId, Limit, BucketState) {
    let mut all = Vec::new();
    node.server
        .limiter
        .store()
        .for_each(|k, l, s| all.push((k, *l, s.clone())));
    assert_eq!(all.len(), 1, "{} holds one key", node.name);
    all.pop().expect("one key")
}

/// A Delta carrying `state` for `key` as `node` sends it, encoded by the node's own codec:
/// slots name their replicas by (node, incarnation) through `node`'s replica table.
fn delta(node: &Node, seq: u64, key: KeyId, limit: &Limit, state: &BucketState) -> Frame {
    let mut b = DeltaBuilder::new(&node.server.replicas);
    b.push(key, limit, state);
    Frame {
        kind: Some(Kind::Delta(Delta { seq, ..b.delta })),
    }
}

/// Send one Delta to the peer port `port` over a fresh stream, as peer `from` whose clock reads
/// `now`, and wait for its Ack: the node has merged it (and is still answering) by then.
async fn deliver(port: u16, yaml: &str, from: &str, now: i64, frame: Frame) {
    let seq = match &frame.kind {
        Some(Kind::Delta(d)) => d.seq,
        other => panic!("not a Delta: {other:?}"),
    };
    let mut greeting = hello(from, yaml);
    if let Some(Kind::Hello(h)) = &mut greeting.kind {
        h.wall_ns = now;
    }
    let mut client = ReplicationClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connects");
    let (tx, rx) = mpsc::channel(4);
    tx.send(greeting).await.expect("send");
    tx.send(frame).await.expect("send");
    let mut inbound = client
        .sync(ReceiverStream::new(rx))
        .await
        .expect("accepted")
        .into_inner();
    let first = inbound.message().await.expect("hello back");
    assert!(
        matches!(
            first,
            Some(Frame {
                kind: Some(Kind::Hello(_))
            })
        ),
        "{first:?}"
    );
    let ack = inbound
        .message()
        .await
        .expect("the stream stays open: the frame is well-formed");
    assert!(
        matches!(ack, Some(Frame { kind: Some(Kind::Ack(Ack { seq: s })) }) if s == seq),
        "{ack:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_with_late_old_frames_resurrects_nothing() {
    const HORIZON: i64 = 60 * SEC;
    let mut c = Cluster::start_with(3, |s| {
        s.gc_horizon = Duration::from_nanos(HORIZON as u64);
        steps_clocks(s);
    })
    .await;
    assert_eq!(c.nodes[0].take("idle", 5).await, Some(95));
    c.converged().await;
    let (key, limit, old) = only_key(&c.nodes[0]);
    // What a peer that fell behind still sends after the GC: the key's state from before it.
    let late = delta(&c.nodes[0], 1, key, &limit, &old);
    // 5 of 100 per hour come back in 180 s.
    let full_at = old.full_at_ns(&limit);
    assert_eq!(full_at, T0 + 180 * SEC);

    // A second short of the horizon every node keeps the key...
    set_clocks(&c.nodes, full_at + HORIZON - SEC);
    for n in &c.nodes {
        let store = n.server.limiter.store();
        store.gc(n.clock.now());
        assert!(store.get(key).is_some(), "{} kept the key", n.name);
    }
    // ... at the horizon every node deletes it.
    let t = full_at + HORIZON;
    set_clocks(&c.nodes, t);
    for n in &c.nodes {
        let store = n.server.limiter.store();
        store.gc(t);
        assert!(store.get(key).is_none(), "{} deleted the key", n.name);
        assert_eq!(store.live_keys(), 0, "on {}", n.name);
    }

    // The old state arrives late at every node. It reads as a full bucket: dropped, not stored.
    for (n, port) in c.nodes.iter_mut().zip(&c.ports) {
        deliver(*port, CONFIG, "straggler", t, late.clone()).await;
        {
            let store = n.server.limiter.store();
            assert!(store.get(key).is_none(), "{} resurrected the key", n.name);
            assert_eq!(store.live_keys(), 0, "on {}", n.name);
        }
        assert_eq!(
            n.remaining("idle").await,
            100,
            "{} reads a full bucket",
            n.name
        );
    }

    // Recreated, on another node than the one that consumed before, the key is of a newer
    // generation and starts from a full bucket...
    assert_eq!(c.nodes[1].take("idle", 3).await, Some(97));
    c.converged().await;
    let (_, _, fresh) = only_key(&c.nodes[1]);
    assert_eq!(fresh.gen(), generation_at(t));
    assert!(fresh.gen() > old.gen(), "{} > {}", fresh.gen(), old.gen());
    let before = c.nodes[0].view();
    // ... so the old frame arriving once more changes nothing: its 5 tokens (another replica's
    // slot, which an equal generation would add) are not summed with the new key's 3.
    for port in &c.ports {
        deliver(*port, CONFIG, "straggler", t, late.clone()).await;
    }
    for n in c.nodes.iter_mut() {
        assert_eq!(n.view(), before, "{}'s state changed", n.name);
        assert_eq!(n.remaining("idle").await, 97, "on {}", n.name);
    }
    // And the cluster still replicates.
    assert_eq!(c.nodes[2].take("idle", 7).await, Some(90));
    c.converged().await;
    assert_eq!(c.nodes[0].remaining("idle").await, 90);
}

/// 10 per second, burst 10: a key drained every second holds many tokens of counts quickly.
const FAST: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 10}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_serves_before_it_holds_the_cluster_state_locks_the_key_out_cluster_wide() {
    // Everything happens within one 30 s generation: a key the newcomer creates is then of the
    // same generation as the cluster's, and the missing bootstrap shows as a lockout.
    let start = (T0 / GEN_PERIOD_NS + 1) * GEN_PERIOD_NS;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("c.yaml"), FAST).expect("config");
    let ports = vec![free_port(), free_port()];
    let mut nodes = Vec::new();
    for (name, p) in ["n0", "n2"].iter().zip(&ports) {
        nodes.push(
            Node::start(
                name,
                dir.path(),
                *p,
                &ports,
                ManualClock::new(start),
                steps_clocks,
            )
            .await,
        );
    }
    let mut c = Cluster { dir, ports, nodes };
    eventually("ready, deciding on the shared bucket", async || {
        c.nodes.iter().all(|n| n.ready() && !n.fair_share())
    })
    .await;

    // The cluster drains the key every second for 20 s, n0 and n2 taking turns: 210 tokens of
    // counts on a refill floor B still at `start`.
    for i in 0..=20usize {
        if i > 0 {
            set_clocks(&c.nodes, start + i as i64 * SEC);
        }
        let n = &mut c.nodes[i % 2];
        assert_eq!(n.take("hot", 10).await, Some(0), "second {i} on {}", n.name);
        c.settled().await;
    }
    let (key, limit, old) = only_key(&c.nodes[0]);
    assert_eq!(old.slots().iter().map(|s| s.consumed).sum::<u64>(), 210);
    assert_eq!(old.full_at_ns(&limit), start + 21 * SEC);
    let t1 = start + 20 * SEC + SEC / 2;
    assert_eq!(generation_at(t1), old.gen());
    set_clocks(&c.nodes, t1);
    assert_eq!(
        c.nodes[0].remaining("hot").await,
        5,
        "what the cluster has left"
    );

    // With the bootstrap: n1 starts, waits for the snapshots, then serves exactly what is left.
    let p1 = free_port();
    let n1 = Node::start(
        "n1",
        c.dir.path(),
        p1,
        &c.ports,
        ManualClock::new(t1),
        steps_clocks,
    )
    .await;
    c.nodes.push(n1);
    eventually("n1 ready, nobody in fair-share mode", async || {
        c.nodes.iter().all(|n| n.ready() && !n.fair_share())
    })
    .await;
    assert_eq!(c.nodes[2].remaining("hot").await, 5);
    assert_eq!(c.nodes[2].take("hot", 1).await, Some(4));
    c.settled().await;
    for n in c.nodes.iter_mut() {
        assert_eq!(n.remaining("hot").await, 4, "on {}", n.name);
    }

    // Without it: n3's only peer is itself, so it has nobody to wait for and decides on the
    // shared bucket from an empty view. It sees a full bucket and rebases B to now.
    let p3 = free_port();
    let mut n3 = Node::start(
        "n3",
        c.dir.path(),
        p3,
        &[p3],
        ManualClock::new(t1),
        steps_clocks,
    )
    .await;
    eventually("n3 ready, deciding on the shared bucket", async || {
        n3.ready() && !n3.fair_share()
    })
    .await;
    assert_eq!(
        n3.remaining("hot").await,
        10,
        "an empty view reads a full bucket"
    );
    assert_eq!(n3.take("hot", 1).await, Some(9));
    let (_, _, rebased) = only_key(&n3);
    assert_eq!(rebased.full_at_ns(&limit), t1 + SEC / 10, "B rebased to t1");

    // n3 and the cluster meet: each one's state reaches the other, as their snapshots would.
    let (_, _, cluster_state) = only_key(&c.nodes[0]);
    let to_n3 = delta(&c.nodes[0], 1, key, &limit, &cluster_state);
    let to_cluster = delta(&n3, 1, key, &limit, &rebased);
    deliver(p3, FAST, "n0", t1, to_n3).await;
    deliver(c.ports[0], FAST, "n3", t1, to_cluster).await;
    c.converged().await;
    assert_eq!(
        n3.view(),
        c.nodes[0].view(),
        "both sides hold the same state"
    );

    // All 212 tokens ever counted now sit on top of B = t1: the key is 212 tokens deep, full
    // again only in 21.2 s, about sum(old counts) / r. Bootstrapped, n3's token would have left
    // 3 tokens and a bucket full 0.7 s later.
    let mut truth = cluster_state.clone();
    truth.join(&BucketState::from_parts(
        old.gen(),
        0,
        0,
        [tollgate::bucket::Slot {
            replica: tollgate::bucket::ReplicaId(u32::MAX),
            consumed: 1,
            requested: 1,
        }],
    ));
    assert_eq!(truth.tokens(&limit, t1), 3);
    for n in std::iter::once(&n3).chain(&c.nodes) {
        let (_, _, s) = only_key(n);
        assert_eq!(s.tokens(&limit, t1), 10 - 212, "on {}", n.name);
        assert_eq!(
            s.time_until_full(&limit, t1),
            21_200_000_000,
            "on {}",
            n.name
        );
    }
    for n in std::iter::once(&mut n3).chain(c.nodes.iter_mut()) {
        assert_eq!(n.remaining("hot").await, 0, "{} is locked out", n.name);
    }
    // A second later the true bucket is full again; every node still refuses.
    set_clocks(std::iter::once(&n3).chain(&c.nodes), t1 + SEC);
    assert!(truth.check(&limit, 10, t1 + SEC));
    for n in std::iter::once(&mut n3).chain(c.nodes.iter_mut()) {
        assert_eq!(n.take("hot", 1).await, None, "{} admitted", n.name);
    }
}
