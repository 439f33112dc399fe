//! TLS on the serving ports and certificates reloaded in place, against in-process servers:
//! who is served (a client with a certificate the client CA signed), who is refused (another
//! CA's certificate, no certificate, plaintext), and rotation while requests flow.

mod pki;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::server::{self, Running};
use tollgate::settings::Settings;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use pki::{Ca, Leaf, SecretDir};

const CONFIG: &str = "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: second, requests_per_unit: 1000000}\n";
/// Bound on waiting for a rotation to be picked up (the watcher looks every 50 ms here).
const ROTATION_DEADLINE: Duration = Duration::from_secs(10);

struct Node {
    server: Running,
    _dir: tempfile::TempDir,
}

/// A server whose gRPC port serves TLS from `secret` (with client certificates required when
/// `client_ca`), plus whatever `tweak` sets.
async fn start(secret: &SecretDir, client_ca: bool, tweak: impl FnOnce(&mut Settings)) -> Node {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("config.yaml"), CONFIG).expect("write");
    let mut settings = Settings {
        config: Some(dir.path().to_path_buf()),
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        reload_interval: Duration::from_millis(50),
        grpc_tls_cert: Some(secret.cert()),
        grpc_tls_key: Some(secret.key()),
        grpc_tls_client_ca: client_ca.then(|| secret.ca()),
        ..Settings::default()
    };
    tweak(&mut settings);
    let server = server::start(settings).await.expect("server starts");
    Node { server, _dir: dir }
}

fn request() -> RateLimitRequest {
    RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "user".into(),
                value: "alice".into(),
            }],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

/// A gRPC client over TLS trusting `ca`, presenting `identity` when given.
async fn grpc_client(
    addr: std::net::SocketAddr,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Result<RateLimitServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some(l) = identity {
        tls = tls.identity(Identity::from_pem(&l.cert_pem, &l.key_pem));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(RateLimitServiceClient::new(channel))
}

/// The rustls client config of a raw TLS connection.
fn rustls_client(ca: &Ca, identity: Option<&Leaf>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("ca"))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(l) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(l.der.clone())],
                PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// Connect, handshake, and return the certificate the server presented (leaf, DER).
async fn presented_certificate(
    addr: std::net::SocketAddr,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(rustls_client(ca, identity, b"h2"));
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    let certs = tls.get_ref().1.peer_certificates().expect("certificates");
    certs[0].to_vec()
}

async fn wait_for_certificate(
    addr: std::net::SocketAddr,
    ca: &Ca,
    identity: Option<&Leaf>,
    want: &[u8],
) {
    let deadline = Instant::now() + ROTATION_DEADLINE;
    while presented_certificate(addr, ca, identity).await != want {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not presented within {ROTATION_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn handshake_failures(node: &Node) -> u64 {
    let metrics = node.server.limiter.metrics().render();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_tls_handshake_failures_total{listener=\"grpc\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn secret(dir: &Path, ca: &Ca) -> (SecretDir, Leaf) {
    let leaf = ca.leaf("tollgate");
    (SecretDir::new(&dir.join("secret"), &leaf, ca), leaf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_certificate_the_client_ca_signed_is_served() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("serving CA");
    let (secret, _) = secret(tmp.path(), &ca);
    let node = start(&secret, true, |_| {}).await;
    let client_leaf = ca.leaf("envoy");
    let mut client = grpc_client(node.server.grpc_addr, &ca, Some(&client_leaf))
        .await
        .expect("connects");
    let resp = client
        .should_rate_limit(request())
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(resp.overall_code, Code::Ok as i32);
    node.server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("serving CA");
    let (secret, _) = secret(tmp.path(), &ca);
    let node = start(&secret, true, |_| {}).await;
    let intruder = Ca::new("intruder CA").leaf("envoy");
    let refused = match grpc_client(node.server.grpc_addr, &ca, Some(&intruder)).await {
        Err(_) => true,
        // The handshake may complete on the client side before the server's alert arrives.
        Ok(mut c) => c.should_rate_limit(request()).await.is_err(),
    };
    assert!(refused, "a certificate another CA signed was accepted");
    // No certificate at all is refused just the same.
    let refused = match grpc_client(node.server.grpc_addr, &ca, None).await {
        Err(_) => true,
        Ok(mut c) => c.should_rate_limit(request()).await.is_err(),
    };
    assert!(refused, "a client without a certificate was accepted");
    // And the server goes on serving the right clients.
    let mut good = grpc_client(node.server.grpc_addr, &ca, Some(&ca.leaf("envoy")))
        .await
        .expect("connects");
    good.should_rate_limit(request()).await.expect("answered");
    // At least one refused handshake per refused client (tonic retries the connection).
    assert!(
        handshake_failures(&node) >= 2,
        "{}",
        node.server.limiter.metrics().render()
    );
    node.server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_refused_on_a_tls_port() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("serving CA");
    let (secret, _) = secret(tmp.path(), &ca);
    let node = start(&secret, false, |_| {}).await;
    let plain = async {
        let mut c =
            RateLimitServiceClient::connect(format!("http://{}", node.server.grpc_addr)).await?;
        c.should_rate_limit(request()).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("refused promptly, not hung");
    assert!(outcome.is_err(), "a plaintext call was answered");
    // Without a client CA, a TLS client needs no certificate of its own.
    let mut c = grpc_client(node.server.grpc_addr, &ca, None)
        .await
        .expect("connects");
    c.should_rate_limit(request()).await.expect("answered");
    node.server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_serves_https_when_given_a_certificate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("serving CA");
    let (secret, _) = secret(tmp.path(), &ca);
    let node = start(&secret, false, |s| {
        s.http_tls_cert = Some(secret.cert());
        s.http_tls_key = Some(secret.key());
    })
    .await;
    let tcp = TcpStream::connect(node.server.http_addr)
        .await
        .expect("connect");
    let connector = tokio_rustls::TlsConnector::from(rustls_client(&ca, None, b"http/1.1"));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let plain = reqwest::get(format!("http://{}/healthz", node.server.http_addr)).await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    node.server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_certificate_fails_no_request_and_new_connections_present_the_new_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("serving CA");
    let (mut secret, first) = secret(tmp.path(), &ca);
    let node = start(&secret, true, |_| {}).await;
    let addr = node.server.grpc_addr;
    let client_leaf = Arc::new(ca.leaf("envoy"));
    let ca = Arc::new(ca);
    assert_eq!(
        presented_certificate(addr, &ca, Some(&client_leaf)).await,
        first.der
    );

    // Requests flow on a long-lived connection and on a fresh connection every 10th call.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flow = tokio::spawn({
        let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
        let (ca, client_leaf) = (ca.clone(), client_leaf.clone());
        async move {
            let mut long_lived = grpc_client(addr, &ca, Some(&client_leaf))
                .await
                .expect("connects");
            let mut i = 0u64;
            // Bounded: the test stops it, and 20 000 calls is far more than it needs.
            while !stop.load(Ordering::Relaxed) && i < 20_000 {
                i += 1;
                let ok = if i.is_multiple_of(10) {
                    match grpc_client(addr, &ca, Some(&client_leaf)).await {
                        Ok(mut fresh) => fresh.should_rate_limit(request()).await.is_ok(),
                        Err(_) => false,
                    }
                } else {
                    long_lived.should_rate_limit(request()).await.is_ok()
                };
                let counter = if ok { &answered } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = ca.leaf("tollgate");
    secret.rotate(&second, &ca);
    wait_for_certificate(addr, &ca, Some(&client_leaf), &second.der).await;
    let before = answered.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while answered.load(Ordering::Relaxed) < before + 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    flow.await.expect("request loop");

    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during rotation"
    );
    assert!(
        answered.load(Ordering::Relaxed) >= before + 20,
        "requests stopped flowing after the rotation"
    );
    let metrics = node.server.limiter.metrics().render();
    assert!(
        metrics.contains("tollgate_tls_reloads_total{listener=\"grpc\",result=\"ok\"} 1"),
        "{metrics}"
    );
    node.server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_to_a_key_that_does_not_match_is_refused_and_the_old_certificate_stays() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("serving CA");
    let (mut secret, first) = secret(tmp.path(), &ca);
    let node = start(&secret, false, |_| {}).await;
    let addr = node.server.grpc_addr;
    let mut broken = ca.leaf("tollgate");
    broken.key_pem = ca.leaf("other").key_pem;
    secret.rotate(&broken, &ca);
    let deadline = Instant::now() + ROTATION_DEADLINE;
    let refused = "tollgate_tls_reloads_total{listener=\"grpc\",result=\"failed\"} 1";
    while !node.server.limiter.metrics().render().contains(refused) {
        assert!(
            Instant::now() < deadline,
            "the broken rotation was not seen"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(presented_certificate(addr, &ca, None).await, first.der);
    // The next good version is taken.
    let fixed = ca.leaf("tollgate");
    secret.rotate(&fixed, &ca);
    wait_for_certificate(addr, &ca, None, &fixed.der).await;
    node.server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_stream_presents_a_rotated_certificate_to_new_streams() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("cluster CA");
    let (serving, _) = secret(tmp.path(), &ca);
    let first = ca.leaf("node-a");
    let mut peer = SecretDir::new(&tmp.path().join("peer"), &first, &ca);
    let node = start(&serving, false, |s| {
        s.peer_addr = "127.0.0.1:0".parse().expect("addr");
        // A listed peer nobody answers for: replication is on, the node serves alone.
        s.peers = vec![format!("127.0.0.1:{}", support_port())];
        s.sync_timeout = Duration::from_millis(100);
        s.peer_tls_cert = Some(peer.cert());
        s.peer_tls_key = Some(peer.key());
        s.peer_tls_ca = Some(peer.ca());
        s.peer_tls_server_name = Some("localhost".into());
    })
    .await;
    let peer_addr = node.server.peer_addr.expect("replication on");
    let other_node = ca.leaf("node-b");
    assert_eq!(
        presented_certificate(peer_addr, &ca, Some(&other_node)).await,
        first.der
    );
    let second = ca.leaf("node-a");
    peer.rotate(&second, &ca);
    wait_for_certificate(peer_addr, &ca, Some(&other_node), &second.der).await;
    node.server.shutdown().await.expect("clean shutdown");
}

#[path = "../support/ports.rs"]
mod ports;

fn support_port() -> u16 {
    ports::free_port()
}
