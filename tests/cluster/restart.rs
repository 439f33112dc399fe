use tollgate::clock::ManualClock;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_comes_back_with_the_cluster_state_not_a_full_bucket() {
    let mut c = Cluster::start(3).await;
    assert_eq!(c.nodes[0].take("hourly", 100).await, Some(0));
    c.converged().await;
    // n1 goes away and comes back as a new incarnation with an empty memory, a minute later
    // (so a key it created itself would be of a newer generation).
    let gone = c.nodes.remove(1);
    gone.server.shutdown().await.expect("shutdown");
    for n in &c.nodes {
        n.clock.advance(std::time::Duration::from_secs(60));
    }
    let mut back = Node::start(
        "n1",
        c.dir.path(),
        c.ports[1],
        &c.ports,
        ManualClock::new(T0 + 60_000_000_000),
        |_| {},
    )
    .await;
    eventually("restarted node ready", async || back.ready()).await;
    // 60 s of 100 per hour refilled one token, not the whole bucket.
    assert_eq!(
        back.remaining("hourly").await,
        1,
        "the drained hourly bucket stays drained"
    );
    assert_eq!(back.take("hourly", 1).await, Some(0));
    assert_eq!(back.take("hourly", 1).await, None);
    // And nobody else's view was reset by the newcomer.
    c.nodes.insert(1, back);
    c.converged().await;
    for n in c.nodes.iter_mut() {
        assert_eq!(n.remaining("hourly").await, 0, "on {}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_not_yet_synced_answers_unavailable_then_serves_its_fair_share_after_the_timeout() {
    let c = Cluster::start(1).await;
    // A peer that exists and answers, but whose snapshot never comes: the new node must wait
    // for it (up to the sync timeout) instead of deciding from an empty view.
    let silent = crate::membership::SilentPeer::start(CONFIG).await;
    let mut n = Node::start(
        "late",
        c.dir.path(),
        free_port(),
        &[silent.port],
        ManualClock::new(T0),
        |s| s.sync_timeout = std::time::Duration::from_secs(2),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!n.ready(), "ready before the snapshot");
    let status = n
        .client
        .should_rate_limit(req("x", 1))
        .await
        .expect_err("refused while syncing");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let readyz = reqwest::get(format!("http://{}/readyz", n.server.http_addr))
        .await
        .expect("readyz");
    assert_eq!(readyz.status().as_u16(), 503);
    eventually("ready after the sync timeout", async || n.ready()).await;
    // Serving without the silent member's state, it decides on its own half of the limit
    // (fair share) rather than on a bucket the other member may already have spent.
    assert!(n.fair_share());
    assert_eq!(n.take("x", 1).await, Some(49));
    assert_eq!(series(&n.metrics().await, "tollgate_fair_share_mode "), 1.0);
}
