use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tollgate::clock::ManualClock;
use tollgate::replication::proto::frame::Kind;
use tollgate::replication::proto::replication_client::ReplicationClient;
use tollgate::replication::proto::replication_server::{Replication, ReplicationServer};
use tollgate::replication::proto::{Delta, Frame, Hello, KeyState, Ping, ReceivingFrom, Slot};
use tonic::{Request, Response, Status, Streaming};

use crate::common::*;

fn config_hash(yaml: &str) -> u64 {
    tollgate::config::RateLimitConfig::from_files(&[("c.yaml".to_string(), yaml.to_string())])
        .expect("valid")
        .fingerprint()
}

pub fn hello(node: &str, yaml: &str) -> Frame {
    Frame {
        kind: Some(Kind::Hello(Hello {
            protocol_version: 1,
            cluster_id: "tollgate".into(),
            config_hash: config_hash(yaml),
            node: node.into(),
            incarnation: 42,
            wall_ns: T0,
            ..Default::default()
        })),
    }
}

/// A peer that answers the Hello and then says nothing: never dials back, never snapshots.
pub struct SilentPeer {
    pub port: u16,
}

struct Silent {
    hello: Frame,
}

#[tonic::async_trait]
impl Replication for Silent {
    type SyncStream = ReceiverStream<Result<Frame, Status>>;
    async fn sync(
        &self,
        req: Request<Streaming<Frame>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(self.hello.clone()))
            .await
            .map_err(|_| Status::internal("closed"))?;
        tokio::spawn(async move {
            // Keep the stream open, read and ignore everything.
            while let Ok(Some(_)) = inbound.message().await {}
            drop(tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl SilentPeer {
    pub async fn start(yaml: &str) -> SilentPeer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let svc = ReplicationServer::new(Silent {
            hello: hello("silent", yaml),
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        SilentPeer { port }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_knowing_one_member_and_gets_everything() {
    let mut c = Cluster::start(3).await;
    assert_eq!(c.nodes[2].take("before", 70).await, Some(30));
    c.converged().await;
    let port = free_port();
    let mut fourth = Node::start(
        "n3",
        c.dir.path(),
        port,
        &[c.ports[0]],
        ManualClock::new(T0),
        |_| {},
    )
    .await;
    eventually("joiner ready", async || fourth.ready()).await;
    eventually("joiner out of fair-share mode", async || {
        !fourth.fair_share()
    })
    .await;
    assert_eq!(
        fourth.remaining("before").await,
        30,
        "state from before it joined"
    );
    // What the joiner admits reaches members it was never told about (through n0).
    assert_eq!(fourth.take("after", 40).await, Some(60));
    c.nodes.push(fourth);
    c.converged().await;
    for n in c.nodes.iter_mut() {
        assert_eq!(n.remaining("after").await, 60, "on {}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_cluster_is_refused_and_counted() {
    let c = Cluster::start(1).await;
    let mut stranger = Node::start(
        "stranger",
        c.dir.path(),
        free_port(),
        &[c.ports[0]],
        ManualClock::new(T0),
        |s| {
            s.cluster_id = "elsewhere".into();
        },
    )
    .await;
    eventually("refusal counted", async || {
        series(
            &c.nodes[0].metrics().await,
            "tollgate_replication_frames_refused_total{reason=\"cluster_id\"}",
        ) >= 1.0
    })
    .await;
    // Both keep serving on their own.
    eventually("stranger ready alone", async || stranger.ready()).await;
    assert_eq!(stranger.take("s", 1).await, Some(99));
    assert!(
        c.nodes[0].view().is_empty(),
        "nothing merged from the stranger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_cluster_secret_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "hunter2\n").expect("secret");
    let other = dir.path().join("other");
    std::fs::write(&other, "letmein").expect("secret");
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    // Secrets live outside the config directory, so the config loader never sees them.
    let cfg_dir = tempfile::tempdir().expect("tmp");
    std::fs::write(cfg_dir.path().join("c.yaml"), CONFIG).expect("config");
    let s1 = secret.clone();
    let mut a = Node::start(
        "a",
        cfg_dir.path(),
        pa,
        &[pa, pb, pc],
        ManualClock::new(T0),
        move |s| s.cluster_secret_file = Some(s1),
    )
    .await;
    let s2 = secret.clone();
    let mut b = Node::start(
        "b",
        cfg_dir.path(),
        pb,
        &[pa, pb, pc],
        ManualClock::new(T0),
        move |s| s.cluster_secret_file = Some(s2),
    )
    .await;
    let _intruder = Node::start(
        "c",
        cfg_dir.path(),
        pc,
        &[pa, pb],
        ManualClock::new(T0),
        move |s| s.cluster_secret_file = Some(other),
    )
    .await;
    eventually("a and b ready", async || a.ready() && b.ready()).await;
    // The refused intruder is no member: a and b do not split the limit on its account.
    eventually("a and b out of fair-share mode", async || {
        !a.fair_share() && !b.fair_share()
    })
    .await;
    a.take("k", 10).await;
    eventually("b learns from a", async || b.view() == a.view()).await;
    eventually("the intruder is refused", async || {
        series(
            &a.metrics().await,
            "tollgate_replication_frames_refused_total{reason=\"auth\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!(b.remaining("k").await, 90);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_clock_is_off_is_quarantined_and_the_outlier_reports_not_ready() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("c.yaml"), CONFIG).expect("config");
    let ports = [free_port(), free_port(), free_port()];
    let mut nodes = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        // n2's clock is one second ahead.
        let clock = ManualClock::new(if i == 2 { T0 + 1_000_000_000 } else { T0 });
        nodes.push(Node::start(&format!("n{i}"), dir.path(), *p, &ports, clock, |_| {}).await);
    }
    // Pings go out every second.
    eventually("n0 and n1 quarantine n2", async || {
        series(&nodes[0].metrics().await, "tollgate_peers_quarantined") == 1.0
            && series(&nodes[1].metrics().await, "tollgate_peers_quarantined") == 1.0
    })
    .await;
    eventually("n2 sees itself as the outlier", async || {
        series(&nodes[2].metrics().await, "tollgate_peers_quarantined") == 2.0 && !nodes[2].ready()
    })
    .await;
    eventually("n0 and n1 stay ready", async || {
        nodes[0].ready() && nodes[1].ready()
    })
    .await;
    // What the outlier admits is not merged by the others.
    nodes[2].server.readiness.set_synced(true);
    nodes[2].take("skewed", 50).await;
    nodes[0].take("plain", 1).await;
    eventually("n1 has n0's change", async || nodes[1].view().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        nodes[1].remaining("skewed").await,
        100,
        "n2's state was not merged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_only_that_stream_and_is_counted() {
    let mut c = Cluster::start(2).await;
    let mut client = ReplicationClient::connect(format!("http://127.0.0.1:{}", c.ports[0]))
        .await
        .expect("connects");
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello("broken", CONFIG)).await.expect("send");
    tx.send(Frame {
        kind: Some(Kind::Delta(Delta {
            seq: 1,
            replicas: vec![],
            keys: vec![KeyState {
                capacity: 10,
                per_unit: 10,
                unit: 1,
                slots: vec![Slot {
                    replica: 9,
                    consumed: 1,
                    requested: 1,
                }],
                ..Default::default()
            }],
        })),
    })
    .await
    .expect("send");
    let mut inbound = client
        .sync(ReceiverStream::new(rx))
        .await
        .expect("accepted")
        .into_inner();
    let first = inbound.message().await.expect("hello back");
    assert!(matches!(
        first,
        Some(Frame {
            kind: Some(Kind::Hello(_))
        })
    ));
    let err = inbound
        .message()
        .await
        .expect_err("stream closed with an error");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("refers to replica 9"),
        "{}",
        err.message()
    );
    assert_eq!(
        series(
            &c.nodes[0].metrics().await,
            "tollgate_replication_frames_refused_total{reason=\"malformed\"}"
        ),
        1.0
    );
    // The node and its real peer carry on.
    c.nodes[1].take("after", 5).await;
    c.converged().await;
    assert_eq!(c.nodes[0].remaining("after").await, 95);
}

/// A peer's report of whom it hears from is bounded by the member bound: a longer list closes
/// that stream with a status that says so, and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_naming_more_nodes_than_the_member_bound_closes_only_that_stream() {
    let mut c = Cluster::start(2).await;
    let mut client = ReplicationClient::connect(format!("http://127.0.0.1:{}", c.ports[0]))
        .await
        .expect("connects");
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello("boastful", CONFIG)).await.expect("send");
    let nodes = (0..300).map(|i| format!("made-up-{i}")).collect();
    tx.send(Frame {
        kind: Some(Kind::Ping(Ping {
            wall_ns: T0,
            receiving_from: Some(ReceivingFrom { nodes }),
        })),
    })
    .await
    .expect("send");
    let mut inbound = client
        .sync(ReceiverStream::new(rx))
        .await
        .expect("accepted")
        .into_inner();
    let first = inbound.message().await.expect("hello back");
    assert!(matches!(
        first,
        Some(Frame {
            kind: Some(Kind::Hello(_))
        })
    ));
    let err = inbound
        .message()
        .await
        .expect_err("stream closed with an error");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("Ping reports 300 nodes, more than the member bound (256"),
        "{}",
        err.message()
    );
    assert_eq!(
        series(
            &c.nodes[0].metrics().await,
            "tollgate_replication_frames_refused_total{reason=\"malformed\"}"
        ),
        1.0
    );
    c.nodes[1].take("after", 5).await;
    c.converged().await;
    assert_eq!(c.nodes[0].remaining("after").await, 95);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_limit_is_refused_with_a_status_and_counted() {
    let mut c = Cluster::start(2).await;
    let mut client = ReplicationClient::connect(format!("http://127.0.0.1:{}", c.ports[0]))
        .await
        .expect("connects")
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello("huge", CONFIG)).await.expect("send");
    // Twice the 1 MiB frame budget is what the decoder takes; this one is about 4 MiB.
    let key = KeyState {
        key_lo: u64::MAX,
        key_hi: u64::MAX,
        base_lo: u64::MAX,
        forgiven_lo: u64::MAX,
        capacity: 10,
        per_unit: 10,
        unit: 1,
        ..Default::default()
    };
    tx.send(Frame {
        kind: Some(Kind::Delta(Delta {
            seq: 1,
            replicas: vec![],
            keys: vec![key; 90_000],
        })),
    })
    .await
    .expect("send");
    let mut inbound = client
        .sync(ReceiverStream::new(rx))
        .await
        .expect("accepted")
        .into_inner();
    let first = inbound.message().await.expect("hello back");
    assert!(matches!(
        first,
        Some(Frame {
            kind: Some(Kind::Hello(_))
        })
    ));
    let err = inbound
        .message()
        .await
        .expect_err("stream closed with an error");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("oversized frame"),
        "{}",
        err.message()
    );
    assert_eq!(
        series(
            &c.nodes[0].metrics().await,
            "tollgate_replication_frames_refused_total{reason=\"oversized\"}"
        ),
        1.0
    );
    c.nodes[1].take("after", 5).await;
    c.converged().await;
    assert_eq!(c.nodes[0].remaining("after").await, 95);
}
