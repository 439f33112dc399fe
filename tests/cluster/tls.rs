//! Mutual TLS on the peer stream: nodes with certificates from the cluster's CA replicate; a
//! node whose certificate another CA signed, or one without TLS, is cut off at the handshake
//! and never merges, while the TLS node goes on serving its clients and its real peers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tollgate::clock::ManualClock;
use tollgate::settings::Settings;

use crate::common::*;

/// Long enough for dozens of sync intervals and several dial attempts on loopback: a link that
/// could connect would have merged by then.
const NO_MERGE_WINDOW: Duration = Duration::from_millis(700);

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        Ca(CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA"))
    }

    /// A node certificate for `sans`, for both ends of the stream, trusting the `trust` CAs.
    fn issue(&self, dir: &Path, node: &str, sans: &[&str], trust: &[&Ca]) -> NodeTls {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, node);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.0).expect("signed");
        let tls = NodeTls {
            cert: dir.join(format!("{node}.crt")),
            key: dir.join(format!("{node}.key")),
            ca: dir.join(format!("{node}-ca.crt")),
            server_name: None,
        };
        std::fs::write(&tls.cert, cert.pem()).expect("write");
        std::fs::write(&tls.key, key.serialize_pem()).expect("write");
        let bundle: String = trust.iter().map(|ca| ca.0.pem()).collect();
        std::fs::write(&tls.ca, bundle).expect("write");
        tls
    }
}

#[derive(Clone)]
struct NodeTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    server_name: Option<String>,
}

impl NodeTls {
    fn apply(self) -> impl FnOnce(&mut Settings) {
        move |s| {
            s.peer_tls_cert = Some(self.cert);
            s.peer_tls_key = Some(self.key);
            s.peer_tls_ca = Some(self.ca);
            s.peer_tls_server_name = self.server_name;
        }
    }
}

/// A temp dir with the rate limit config, and one for the certificates.
fn dirs() -> (tempfile::TempDir, tempfile::TempDir) {
    let config = tempfile::tempdir().expect("tmp");
    std::fs::write(config.path().join("c.yaml"), CONFIG).expect("config");
    (config, tempfile::tempdir().expect("tmp"))
}

async fn start(name: &str, dir: &Path, port: u16, peers: &[u16], tls: Option<NodeTls>) -> Node {
    let node = Node::start(name, dir, port, peers, ManualClock::new(T0), move |s| {
        if let Some(tls) = tls {
            tls.apply()(s);
        }
    })
    .await;
    eventually(&format!("{name} ready"), async || node.ready()).await;
    node
}

/// The nodes whose consumption `n` holds in any bucket.
fn consumers(n: &Node) -> BTreeSet<String> {
    n.view()
        .into_values()
        .flat_map(|(_, _, _, slots)| slots.into_iter().map(|(node, ..)| node))
        .collect()
}

/// Both nodes took from "k"; neither ever holds the other's consumption or counts the other as
/// connected.
async fn assert_apart(a: &mut Node, b: &mut Node) {
    assert!(a.take("k", 30).await.is_some(), "{} admits", a.name);
    assert!(b.take("k", 10).await.is_some(), "{} admits", b.name);
    tokio::time::sleep(NO_MERGE_WINDOW).await;
    for (n, other) in [(&*a, &*b), (&*b, &*a)] {
        assert_eq!(
            consumers(n),
            BTreeSet::from([n.name.clone()]),
            "{} merged nothing from {}",
            n.name,
            other.name
        );
        let m = n.metrics().await;
        assert_eq!(
            series(&m, "tollgate_peers_connected"),
            0.0,
            "{}: {m}",
            n.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_certificates_from_the_cluster_ca_converge() {
    let (config, pki) = dirs();
    let ca = Ca::new("cluster CA");
    let (pa, pb) = (free_port(), free_port());
    // Peers are dialed at 127.0.0.1 but verified as "localhost": --peer-tls-server-name.
    let tls = |node| NodeTls {
        server_name: Some("localhost".into()),
        ..ca.issue(pki.path(), node, &["localhost"], &[&ca])
    };
    let mut a = start("a", config.path(), pa, &[pb], Some(tls("a"))).await;
    let mut b = start("b", config.path(), pb, &[pa], Some(tls("b"))).await;
    assert!(a.take("k", 30).await.is_some());
    assert!(b.take("k", 20).await.is_some());
    let both = BTreeSet::from(["a".to_string(), "b".to_string()]);
    eventually("each holds the other's take", async || {
        consumers(&a) == both && a.view() == b.view()
    })
    .await;
    // The link gauges are refreshed every 50 ms: the states can converge before it says so.
    eventually("a counts its link to b as connected", async || {
        series(&a.metrics().await, "tollgate_peers_connected") == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certified_by_another_ca_is_refused_and_the_server_keeps_serving() {
    let (config, pki) = dirs();
    let ca = Ca::new("cluster CA");
    let other = Ca::new("other CA");
    let ips = ["127.0.0.1"];
    let (pa, pb, pr) = (free_port(), free_port(), free_port());
    let mut a = start(
        "a",
        config.path(),
        pa,
        &[pr],
        Some(ca.issue(pki.path(), "a", &ips, &[&ca])),
    )
    .await;
    // The rogue trusts the cluster CA, so only a's check of the rogue's client certificate
    // stands between them when the rogue dials.
    let mut rogue = start(
        "rogue",
        config.path(),
        pr,
        &[pa],
        Some(other.issue(pki.path(), "rogue", &ips, &[&ca, &other])),
    )
    .await;
    assert_apart(&mut a, &mut rogue).await;

    // After refusing the rogue's handshakes a still serves a real peer.
    let mut b = start(
        "b",
        config.path(),
        pb,
        &[pa],
        Some(ca.issue(pki.path(), "b", &ips, &[&ca])),
    )
    .await;
    assert!(b.take("k", 5).await.is_some());
    eventually("a holds b's take", async || consumers(&a).contains("b")).await;
    assert_eq!(series(&b.metrics().await, "tollgate_peers_connected"), 1.0);
    assert!(
        a.take("k", 1).await.is_some(),
        "a still answers its clients"
    );
    assert!(!consumers(&a).contains("rogue"));
    assert_eq!(consumers(&rogue), BTreeSet::from(["rogue".to_string()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_node_cannot_join_a_tls_node() {
    let (config, pki) = dirs();
    let ca = Ca::new("cluster CA");
    let (pa, pp) = (free_port(), free_port());
    let tls = ca.issue(pki.path(), "a", &["127.0.0.1"], &[&ca]);
    let mut a = start("a", config.path(), pa, &[pp], Some(tls)).await;
    let mut plain = start("plain", config.path(), pp, &[pa], None).await;
    assert_apart(&mut a, &mut plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_certificate_not_valid_for_the_dialed_name_is_refused() {
    let (config, pki) = dirs();
    let ca = Ca::new("cluster CA");
    let (pa, pb) = (free_port(), free_port());
    // Valid for localhost only, but dialed (and so verified) as 127.0.0.1.
    let tls = |node| ca.issue(pki.path(), node, &["localhost"], &[&ca]);
    let mut a = start("a", config.path(), pa, &[pb], Some(tls("a"))).await;
    let mut b = start("b", config.path(), pb, &[pa], Some(tls("b"))).await;
    assert_apart(&mut a, &mut b).await;
}
