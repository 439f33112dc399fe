//! Where a change goes: straight from the node that made it to every member, relayed only to
//! members that cannot get it from its origin (a partial partition, a chain of reachability).

use crate::common::*;

/// Keys a node's links have sent, over all its peers.
async fn keys_sent(n: &Node) -> f64 {
    series(&n.metrics().await, "tollgate_replication_keys_sent_total")
}

/// `node`'s record of what `of` consumed, summed over `of`'s slots in every key.
fn consumed_by(node: &Node, of: &str) -> u64 {
    let mut total = 0;
    for (_, (_, _, _, slots)) in node.view() {
        total += slots
            .iter()
            .filter(|(n, ..)| n == of)
            .map(|(_, _, consumed, _)| consumed)
            .sum::<u64>();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_crosses_each_link_once_when_the_mesh_is_whole() {
    let mut c = Cluster::start(4).await;
    for _ in 0..5 {
        c.nodes[0].take("k", 1).await.expect("admitted");
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    c.settled().await;
    for n in &c.nodes {
        assert_eq!(consumed_by(n, "n0"), 5, "on {}", n.name);
    }
    // Only the origin sent the key: every other member got it from n0 and relayed nothing
    // (before, each forwarded every merged change to the two others).
    assert!(keys_sent(&c.nodes[0]).await >= 3.0);
    for n in &c.nodes[1..] {
        assert_eq!(keys_sent(n).await, 0.0, "{} relayed", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_partition_is_bridged_by_the_member_both_sides_reach() {
    let (mut c, net) = Cluster::start_faulty(3).await;
    // n0 and n1 cannot reach each other; both reach n2.
    net.cut("n0", "n1");
    eventually("n0 and n1 in fair-share mode", async || {
        c.nodes[0].fair_share() && c.nodes[1].fair_share()
    })
    .await;
    c.nodes[0].take("p", 10).await.expect("admitted");
    // n0's consumption reaches n1 while the cut lasts: n2 relays it, because n1 reported
    // that its stream from n0 is down.
    eventually("n1 holds n0's consumption", async || {
        consumed_by(&c.nodes[1], "n0") == 10
    })
    .await;

    // Over-admission: the nodes cut from each other decide on fair shares of what they see,
    // n2 on the shared bucket, which sees both: together they keep to the limit.
    let mut admitted = 10;
    for i in 0..2 {
        while c.nodes[i].take("p", 1).await.is_some() {
            admitted += 1;
            assert!(admitted <= 200, "never refused");
        }
    }
    let left = 100 - admitted;
    eventually("n2 sees every admission of the others", async || {
        c.nodes[2].remaining("p").await as u64 == left
    })
    .await;
    // n2 decides on the shared bucket with the burst guard: a refusal may only wait for its
    // peers' acknowledgements, so it takes until its view is empty.
    while c.nodes[2].remaining("p").await > 0 {
        if c.nodes[2].take("p", 1).await.is_some() {
            admitted += 1;
            assert!(admitted <= 200, "never refused");
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert_eq!(admitted, 100, "admitted across the partial partition");

    net.heal();
    c.settled().await;
    for n in c.nodes.iter_mut() {
        assert_eq!(n.remaining("p").await, 0, "on {}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_crosses_a_chain_of_relays_to_the_member_only_the_far_end_reaches() {
    let (mut c, net) = Cluster::start_faulty(4).await;
    // A line: n0 - n1 - n2 - n3.
    for (a, b) in [("n0", "n2"), ("n0", "n3"), ("n1", "n3")] {
        net.cut(a, b);
    }
    c.nodes[0].take("far", 7).await.expect("admitted");
    eventually("n3 holds n0's consumption, two relays away", async || {
        consumed_by(&c.nodes[3], "n0") == 7
    })
    .await;
    c.nodes[3].take("back", 4).await.expect("admitted");
    eventually("n0 holds n3's consumption", async || {
        consumed_by(&c.nodes[0], "n3") == 4
    })
    .await;
    net.heal();
    c.settled().await;
    assert!(c.nodes.iter().all(|n| n.view().len() == 2));
}
