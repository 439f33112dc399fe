//! Membership by identity: a member known at several addresses counts once, members learned
//! transitively share the same view of who is in (so mixed views cannot over-admit), what
//! derives from membership follows it, and strangers cannot make themselves members.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate::clock::ManualClock;
use tollgate::replication::faults::Faults;
use tollgate::replication::proto::frame::Kind;
use tollgate::replication::proto::replication_client::ReplicationClient;
use tollgate::replication::proto::{Frame, Gossip, Hello};
use tollgate::replication::MemberId;

use crate::autoscale::Alias;
use crate::common::*;
use crate::membership::hello;

async fn take_until_refused(node: &mut Node, key: &str) -> u64 {
    let mut n = 0;
    while node.take(key, 1).await.is_some() {
        n += 1;
        assert!(n <= 1_000, "never refused");
    }
    n
}

async fn members(n: &Node) -> f64 {
    series(&n.metrics().await, "tollgate_cluster_members ")
}

/// Three nodes on one test network whose `--peers` name the others only through proxies
/// (aliases), while each advertises its own address: every member is known at two addresses.
async fn aliased_cluster(
    faults: &std::sync::Arc<Faults>,
) -> (Vec<Node>, Vec<Alias>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("c.yaml"), CONFIG).expect("config");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut aliases = Vec::new();
    for p in &ports {
        aliases.push(Alias::to(*p).await);
    }
    let mut nodes = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let seeds: Vec<u16> = (0..3)
            .filter(|j| *j != i)
            .map(|j| aliases[j].port)
            .collect();
        let f = faults.clone();
        nodes.push(
            Node::start(
                &format!("n{i}"),
                dir.path(),
                *p,
                &seeds,
                ManualClock::new(T0),
                move |s| s.faults = Some(f),
            )
            .await,
        );
    }
    eventually("every node ready and counting 3 members", async || {
        let mut ok = nodes.iter().all(|n| n.ready() && !n.fair_share());
        for n in &nodes {
            ok &= members(n).await == 3.0;
        }
        ok
    })
    .await;
    (nodes, aliases, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_known_at_two_addresses_is_counted_once() {
    let faults = std::sync::Arc::new(Faults::new());
    let (nodes, _aliases, _dir) = aliased_cluster(&faults).await;
    // Stable, not a passing moment: alias links stand by instead of counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in &nodes {
        assert_eq!(members(n).await, 3.0, "{}", n.name);
        assert!(!n.fair_share(), "{}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_with_peers_under_alias_addresses_keeps_to_the_allowance() {
    let faults = std::sync::Arc::new(Faults::new());
    let (mut nodes, _aliases, _dir) = aliased_cluster(&faults).await;
    assert_eq!(nodes[0].take("k", 40).await, Some(60));
    eventually("every node saw the 40", async || {
        let mut ok = true;
        for n in nodes.iter_mut() {
            ok &= n.remaining("k").await == 60;
        }
        ok
    })
    .await;
    faults.partition(&["n0"], &["n1", "n2"]);
    eventually("every node in fair-share mode", async || {
        nodes.iter().all(|n| n.fair_share())
    })
    .await;
    // A third of the 60 left on each node: the allowance, not 1/5 of it per node.
    let mut total = 0;
    for n in nodes.iter_mut() {
        let got = take_until_refused(n, "k").await;
        assert_eq!(got, 20, "on {}", n.name);
        total += got;
    }
    let err = (total as f64 - 60.0) / 60.0;
    assert!(err.abs() <= 0.05, "admitted {total} of an allowance of 60");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_dialed_a_lost_member_still_decides_on_its_share() {
    // n2 joins knowing only n0: n1 learns of it from gossip alone. When n2 is cut off, n1 must
    // split the limit like the others (today's main kept n1 on the whole bucket: over-admission).
    let faults = std::sync::Arc::new(Faults::new());
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("c.yaml"), CONFIG).expect("config");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let seeds = [vec![ports[1]], vec![ports[0]], vec![ports[0]]];
    let mut nodes = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let f = faults.clone();
        nodes.push(
            Node::start(
                &format!("n{i}"),
                dir.path(),
                *p,
                &seeds[i],
                ManualClock::new(T0),
                move |s| s.faults = Some(f),
            )
            .await,
        );
    }
    eventually("every node counts 3 members", async || {
        let mut ok = nodes.iter().all(|n| n.ready() && !n.fair_share());
        for n in &nodes {
            ok &= members(n).await == 3.0;
        }
        ok
    })
    .await;
    faults.partition(&["n2"], &["n0", "n1"]);
    eventually("every node in fair-share mode", async || {
        nodes.iter().all(|n| n.fair_share())
    })
    .await;
    let mut total = 0;
    for n in nodes.iter_mut() {
        total += take_until_refused(n, "k").await;
    }
    assert!(total <= 100, "mixed views admitted {total} of 100");
    // Each share is rounded down to whole tokens on its node: a few under, never over.
    assert!(total >= 85, "admitted only {total} of 100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debt_cap_follows_the_members_not_the_peers_flag() {
    // Four nodes that each know a single seed: --peers has one entry, the cluster has four.
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("c.yaml"), CONFIG).expect("config");
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let seed = if i == 0 { ports[1] } else { ports[0] };
        nodes.push(
            Node::start(
                &format!("n{i}"),
                dir.path(),
                *p,
                &[seed],
                ManualClock::new(T0),
                |_| {},
            )
            .await,
        );
    }
    eventually(
        "every node counts 4 members and caps debt at 4 capacities",
        async || {
            nodes
                .iter()
                .all(|n| n.server.limiter.store().debt_cap_capacities() == 4)
        },
    )
    .await;
    for n in &nodes {
        assert_eq!(members(n).await, 4.0, "{}", n.name);
    }
}

/// Open `n` peer streams to `port`, each starting with a Hello from a made-up node that
/// advertises an address nobody listens on; returns the streams' fates (kept open meanwhile).
async fn forge_hellos(port: u16, n: usize) -> (Vec<mpsc::Sender<Frame>>, Vec<tonic::Status>) {
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for i in 0..n {
        let mut client = ReplicationClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connects");
        let (tx, rx) = mpsc::channel(4);
        let mut h = hello(&format!("forged-{i}"), CONFIG);
        if let Some(Kind::Hello(Hello { advertise_addr, .. })) = &mut h.kind {
            *advertise_addr = "127.0.0.1:1".into();
        }
        tx.send(h).await.expect("send");
        match client.sync(ReceiverStream::new(rx)).await {
            Ok(_) => open.push(tx),
            Err(s) => refused.push(s),
        }
    }
    (open, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_hellos_do_not_make_members_nor_unbounded_series() {
    let mut c = Cluster::start_with(1, |s| s.max_members = 8).await;
    let (open, refused) = forge_hellos(c.ports[0], 100).await;
    assert!(refused.is_empty(), "no secret: the Hellos are accepted");
    // Well past the peer timeout: a forged member would have put the node in fair share.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = c.nodes[0].metrics().await;
    assert_eq!(series(&m, "tollgate_cluster_members "), 1.0, "{m}");
    assert!(!c.nodes[0].fair_share());
    assert_eq!(c.nodes[0].take("k", 100).await, Some(0), "the whole limit");
    // Node names label at most --max-members series per metric; the rest share "other".
    let series_count = m
        .lines()
        .filter(|l| l.starts_with("tollgate_replication_frames_received_total{"))
        .count();
    assert!(
        series_count <= 9,
        "{series_count} series for 100 node names"
    );
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_protected_cluster_refuses_every_forged_hello() {
    let dir = tempfile::tempdir().expect("tmp");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "hunter2\n").expect("secret");
    let mut c = Cluster::start_with(1, move |s| s.cluster_secret_file = Some(secret.clone())).await;
    let (open, refused) = forge_hellos(c.ports[0], 100).await;
    assert!(open.is_empty(), "{} forged Hellos accepted", open.len());
    assert_eq!(refused.len(), 100);
    assert!(refused
        .iter()
        .all(|s| s.code() == tonic::Code::Unauthenticated));
    let m = c.nodes[0].metrics().await;
    assert_eq!(
        series(
            &m,
            "tollgate_replication_frames_refused_total{reason=\"auth\"}"
        ),
        100.0
    );
    assert_eq!(series(&m, "tollgate_cluster_members "), 1.0);
    assert_eq!(c.nodes[0].take("k", 100).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_another_config_does_not_disclose_ours() {
    let c = Cluster::start(1).await;
    let ours = tollgate::config::RateLimitConfig::from_files(&[("c.yaml".into(), CONFIG.into())])
        .expect("valid")
        .fingerprint();
    let mut client = ReplicationClient::connect(format!("http://127.0.0.1:{}", c.ports[0]))
        .await
        .expect("connects");
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello("probe", "domain: other\ndescriptors: []\n"))
        .await
        .expect("send");
    let err = client
        .sync(ReceiverStream::new(rx))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("another rate limit config"),
        "{}",
        err.message()
    );
    assert!(
        !err.message().contains(&format!("{ours:016x}")),
        "our hash disclosed: {}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_cannot_introduce_more_members_than_the_bound() {
    let c = Cluster::start_with(1, |s| s.max_members = 5).await;
    let mut client = ReplicationClient::connect(format!("http://127.0.0.1:{}", c.ports[0]))
        .await
        .expect("connects");
    let (tx, rx) = mpsc::channel(64);
    tx.send(hello("forger", CONFIG)).await.expect("send");
    let _inbound = client
        .sync(ReceiverStream::new(rx))
        .await
        .expect("accepted");
    // Twenty made-up members announce themselves through the forger's stream.
    let target = MemberId {
        node: "n0".into(),
        incarnation: 0,
        started_ns: 0,
        addr: String::new(),
        generation: 0,
    };
    for i in 0..20u64 {
        let id = MemberId {
            node: format!("ghost-{i}"),
            incarnation: i,
            started_ns: 1,
            addr: "127.0.0.1:1".into(),
            generation: 0,
        };
        let mut foca = foca::Foca::new(
            id,
            foca::Config::new_lan(std::num::NonZeroU32::MIN),
            <rand010::rngs::SmallRng as rand010::SeedableRng>::seed_from_u64(i),
            foca::PostcardCodec,
        );
        let mut rt = foca::AccumulatingRuntime::new();
        foca.announce(target.clone(), &mut rt).expect("announce");
        while let Some((_, data)) = rt.to_send() {
            tx.send(Frame {
                kind: Some(Kind::Gossip(Gossip {
                    data: data.to_vec(),
                })),
            })
            .await
            .expect("send");
        }
    }
    eventually("the bound is hit and counted", async || {
        series(
            &c.nodes[0].metrics().await,
            "tollgate_cluster_limit_hits_total{limit=\"members\"}",
        ) >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = members(&c.nodes[0]).await;
    assert!(m <= 5.0, "{m} members past a bound of 5");
}
