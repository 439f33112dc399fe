//! The cluster under a controllable network: lost, duplicated, reordered and delayed frames,
//! partitions and heals, and a member that leaves for good.

use std::collections::BTreeMap;
use std::time::Duration;

use tollgate::clock::Clock;
use tollgate::replication::faults::Faults;

use crate::common::*;

/// Take single tokens of `key` on `node` until refused; returns how many were admitted.
async fn take_until_refused(node: &mut Node, key: &str) -> u64 {
    let mut n = 0;
    while node.take(key, 1).await.is_some() {
        n += 1;
        assert!(n <= 1_000, "never refused");
    }
    n
}

/// Whole tokens of every key on `node` at its clock's time (negative while in debt).
fn tokens(node: &Node) -> BTreeMap<u128, i128> {
    let now = node.clock.now();
    let mut out = BTreeMap::new();
    node.server.limiter.store().for_each(|k, l, s| {
        out.insert(k.0, s.tokens(l, now));
    });
    out
}

async fn all_in_fair_share(c: &Cluster, on: bool) {
    eventually(
        if on {
            "every node in fair-share mode"
        } else {
            "every node out of fair-share mode"
        },
        async || c.nodes.iter().all(|n| n.fair_share() == on),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_converge_through_dropped_duplicated_and_reordered_frames() {
    let (mut c, net) = Cluster::start_faulty(3).await;
    net.set_loss(250, 250, 250);
    let mut admitted: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..40u64 {
        for (i, n) in c.nodes.iter_mut().enumerate() {
            let key = format!("key{}", (round + i as u64) % 9);
            if n.take(&key, 1).await.is_some() {
                *admitted.entry(key).or_default() += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The losses stop; resends repair whatever was dropped.
    net.set_loss(0, 0, 0);
    c.converged().await;
    // Nothing counted twice, nothing lost: every node's view of every key holds exactly the
    // admissions made (duplicates merged by max, drops resent).
    for n in c.nodes.iter_mut() {
        for (key, count) in &admitted {
            assert_eq!(
                100 - n.remaining(key).await as u64,
                *count,
                "{key} on {}",
                n.name
            );
        }
    }
}

/// Three nodes take one token each in turn, as fast as the test can ask, while every frame
/// spends 150 ms on the wire: each node's view lags far behind the others' admissions.
async fn burst_with_slow_network(guard: bool) -> u64 {
    let faults = std::sync::Arc::new(Faults::new());
    let f = faults.clone();
    let mut c = Cluster::start_with(3, move |s| {
        s.faults = Some(f.clone());
        s.burst_guard = guard;
    })
    .await;
    faults.set_delay(Duration::from_millis(150));
    // Round robin for two and a half seconds: long enough for many ack round trips, so a
    // node the guard held back gets its next share.
    let mut admitted = 0;
    let end = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < end {
        for n in c.nodes.iter_mut() {
            if n.take("burst", 1).await.is_some() {
                admitted += 1;
            }
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_burst_guard_holds_a_cold_burst_on_a_slow_network_to_the_limit() {
    // q_min = ceil(r * A) + 1 = 2 tokens per node may be in flight beyond the shares.
    let guarded = burst_with_slow_network(true).await;
    eprintln!("guard on: admitted {guarded} of 100");
    assert!(
        (95..=106).contains(&guarded),
        "guard on: admitted {guarded} of 100"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_burst_guard_a_slow_network_over_admits() {
    // The negative: the same burst with the guard off spends the bucket about once per node.
    let unguarded = burst_with_slow_network(false).await;
    eprintln!("guard off: admitted {unguarded} of 100");
    // How far past the limit depends on how many requests fit in the lag, so only ask for
    // clearly more than the guard's worst case (106).
    assert!(unguarded > 125, "guard off: admitted {unguarded} of 100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_splits_every_limit_into_fair_shares_and_the_heal_leaves_no_debt() {
    let (mut c, net) = Cluster::start_faulty(3).await;
    assert_eq!(c.nodes[0].take("k", 40).await, Some(60));
    c.settled().await;

    net.partition(&["n0"], &["n1", "n2"]);
    all_in_fair_share(&c, true).await;
    let m = c.nodes[0].metrics().await;
    assert_eq!(series(&m, "tollgate_fair_share_mode "), 1.0, "{m}");
    // Every node, on either side, gets a third of the 60 left: the sides together keep to
    // the limit instead of spending it once each.
    for n in c.nodes.iter_mut() {
        assert_eq!(take_until_refused(n, "k").await, 20, "on {}", n.name);
    }

    net.heal();
    all_in_fair_share(&c, false).await;
    c.settled().await;
    // After the heal every node knows all 100 admissions, and none is owed: the bucket is
    // empty, not in debt, so it serves again as soon as it refills.
    for n in c.nodes.iter_mut() {
        assert_eq!(n.remaining("k").await, 0, "on {}", n.name);
        assert!(
            tokens(n).values().all(|t| *t == 0),
            "{}: {:?}",
            n.name,
            tokens(n)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_says_so_and_the_others_keep_the_whole_limit() {
    let mut c = Cluster::start(3).await;
    let leaving = c.nodes.remove(0);
    leaving.server.shutdown().await.expect("clean shutdown");
    // Well past the peer timeout: a silent member would have put the rest in fair share.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in c.nodes.iter_mut() {
        assert!(!n.fair_share(), "{} in fair-share mode", n.name);
        assert_eq!(series(&n.metrics().await, "tollgate_cluster_members"), 2.0);
        let key = format!("after-{}", n.name);
        assert_eq!(n.take(&key, 50).await, Some(50), "on {}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_connections_are_cut_mid_handshake_counts_as_partitioned_not_refused() {
    // What a partition looks like through a proxy or a dropping firewall: the TCP connection
    // opens and dies before any Hello. Only an explicit refusal of our Hello makes a peer a
    // non-member; this one must put the node in fair-share mode.
    let port = silent_seed().await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("c.yaml"), CONFIG).expect("config");
    let mut n = Node::start(
        "a",
        dir.path(),
        free_port(),
        &[port],
        tollgate::clock::ManualClock::new(T0),
        |s| s.sync_timeout = Duration::from_secs(1),
    )
    .await;
    eventually("ready", async || n.ready()).await;
    eventually("in fair-share mode", async || n.fair_share()).await;
    assert_eq!(series(&n.metrics().await, "tollgate_cluster_members"), 2.0);
    assert_eq!(take_until_refused(&mut n, "k").await, 50);
}

/// A seed that accepts connections and closes them before any Hello: never answers.
async fn silent_seed() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            drop(conn);
        }
    });
    port
}

/// A node whose liveness time is `liveness` (frozen until the test moves it), its seed silent.
async fn node_on_liveness_clock(
    dir: &std::path::Path,
    liveness: &tollgate::clock::ManualClock,
    tweak: impl FnOnce(&mut tollgate::settings::Settings),
) -> Node {
    std::fs::write(dir.join("c.yaml"), CONFIG).expect("config");
    let seed = silent_seed().await;
    let clock = tollgate::clock::SharedClock::new(liveness.clone());
    Node::start(
        "a",
        dir,
        free_port(),
        &[seed],
        tollgate::clock::ManualClock::new(T0),
        move |s| {
            s.liveness_clock = Some(clock);
            tweak(s);
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_seed_counts_as_unreachable_once_the_liveness_clock_passes_the_peer_timeout() {
    let dir = tempfile::tempdir().expect("tmp");
    let liveness = tollgate::clock::ManualClock::new(0);
    let n = node_on_liveness_clock(dir.path(), &liveness, |s| {
        s.sync_timeout = Duration::ZERO;
        s.peer_timeout = Duration::from_millis(200);
        s.peer_dead_after = Duration::from_secs(60);
    })
    .await;
    // Five peer timeouts of real time: with liveness on the system clock it would be in
    // fair-share mode by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!n.fair_share(), "no peer timeout has passed on its clock");
    liveness.advance(Duration::from_millis(200));
    eventually(
        "fair-share mode once its clock passed the peer timeout",
        async || n.fair_share(),
    )
    .await;
}
