use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_converge_to_identical_after_traffic_stops() {
    let mut c = Cluster::start(3).await;
    for round in 0..30u64 {
        for (i, n) in c.nodes.iter_mut().enumerate() {
            n.take(&format!("key{}", (round + i as u64) % 7), 1 + round % 3)
                .await;
        }
    }
    c.converged().await;
    // Everyone reads the same remaining tokens for every key.
    for k in 0..7 {
        let key = format!("key{k}");
        let first = c.nodes[0].remaining(&key).await;
        for n in c.nodes.iter_mut() {
            assert_eq!(n.remaining(&key).await, first, "{key} on {}", n.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_on_every_node_adds_up_to_one_limit() {
    let mut c = Cluster::start(3).await;
    for n in c.nodes.iter_mut() {
        assert!(n.take("shared", 30).await.is_some(), "on {}", n.name);
    }
    c.settled().await;
    for n in c.nodes.iter_mut() {
        assert_eq!(n.remaining("shared").await, 10, "on {}", n.name);
    }
    // The 10 left can be taken once, on any node, not three times.
    assert_eq!(c.nodes[1].take("shared", 10).await, Some(0));
    c.converged().await;
    assert_eq!(c.nodes[2].take("shared", 1).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_off_what_the_node_admitted() {
    let mut c = Cluster::start(3).await;
    let leaving = c.nodes.remove(0);
    let mut leaving = leaving;
    assert_eq!(leaving.take("handoff", 60).await, Some(40));
    // No waiting for the sync interval: shutdown itself pushes the change and waits for acks.
    leaving.server.shutdown().await.expect("clean shutdown");
    for n in c.nodes.iter_mut() {
        assert_eq!(n.remaining("handoff").await, 40, "on {}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_metrics_count_frames_keys_and_merges() {
    let mut c = Cluster::start(2).await;
    c.nodes[0].take("m", 5).await;
    c.converged().await;
    let m1 = c.nodes[1].metrics().await;
    assert!(
        series(&m1, "tollgate_replication_merges_total") >= 1.0,
        "{m1}"
    );
    assert!(
        series(&m1, "tollgate_replication_keys_received_total") >= 1.0,
        "{m1}"
    );
    assert_eq!(series(&m1, "tollgate_peers_connected"), 1.0, "{m1}");
    assert_eq!(series(&m1, "tollgate_peers "), 1.0, "{m1}");
    let m0 = c.nodes[0].metrics().await;
    assert!(
        series(&m0, "tollgate_replication_frames_sent_total") >= 1.0,
        "{m0}"
    );
    assert!(
        series(&m0, "tollgate_replication_bytes_sent_total") > 0.0,
        "{m0}"
    );
    assert_eq!(series(&m0, "tollgate_ready"), 1.0, "{m0}");
}
