use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use tempfile::TempDir;
use tollgate::clock::ManualClock;
use tollgate::server::{self, Running};
use tollgate::settings::Settings;
use tonic::transport::Channel;

pub const T0: i64 = 1_700_000_000_000_000_000;

pub struct Harness {
    pub server: Running,
    pub clock: ManualClock,
    pub client: RateLimitServiceClient<Channel>,
    pub dir: TempDir,
}

impl Harness {
    /// A server with `yaml` as its only config file, on a manual clock.
    pub async fn start(yaml: &str) -> Harness {
        Self::start_with(yaml, |_| {}).await
    }

    pub async fn start_with(yaml: &str, tweak: impl FnOnce(&mut Settings)) -> Harness {
        let dir = tempfile::tempdir().expect("tmp dir");
        write(dir.path(), "config.yaml", yaml);
        let mut settings = Settings {
            config: Some(dir.path().to_path_buf()),
            grpc_addr: "127.0.0.1:0".parse().expect("addr"),
            http_addr: "127.0.0.1:0".parse().expect("addr"),
            reload_interval: Duration::from_millis(20),
            ..Settings::default()
        };
        tweak(&mut settings);
        let clock = ManualClock::new(T0);
        let server = server::start_with_clock(settings, Arc::new(clock.clone()))
            .await
            .expect("server starts");
        let client = RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr))
            .await
            .expect("connects");
        Harness {
            server,
            clock,
            client,
            dir,
        }
    }

    pub async fn ask(&mut self, req: RateLimitRequest) -> RateLimitResponse {
        self.client
            .should_rate_limit(req)
            .await
            .expect("answered")
            .into_inner()
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.server.http_addr, path)
    }

    /// The body of a GET on the HTTP port.
    pub async fn get_text(&self, path: &str) -> String {
        reqwest::get(self.http(path))
            .await
            .expect("answered")
            .text()
            .await
            .expect("body")
    }

    /// Tokens left for one descriptor, read with a query (hits 0) that consumes nothing.
    pub async fn remaining(&mut self, domain: &str, entries: &[(&str, &str)]) -> u32 {
        self.ask(request(domain, vec![with_hits(desc(entries), 0)]))
            .await
            .statuses[0]
            .limit_remaining
    }
}

pub fn write(dir: &Path, name: &str, contents: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).expect("write config");
    std::fs::rename(&tmp, dir.join(name)).expect("rename config");
}

pub fn desc(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

pub fn with_hits(mut d: RateLimitDescriptor, hits: u64) -> RateLimitDescriptor {
    d.hits_addend = Some(UInt64Value { value: hits });
    d
}

pub fn with_override(mut d: RateLimitDescriptor, rpu: u32, unit: i32) -> RateLimitDescriptor {
    d.limit = Some(RateLimitOverride {
        requests_per_unit: rpu,
        unit,
    });
    d
}

pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors,
        hits_addend: 0,
    }
}

/// Poll until `f` holds, for at most 5 s.
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// SIGTERM the binary and wait for it to exit, at most `within` (then it is killed and the
/// test fails): its status, and how long the shutdown took.
pub fn terminate(child: &mut Child, within: Duration) -> (ExitStatus, Duration) {
    let sent = Instant::now();
    let signalled = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return (s, sent.elapsed());
        }
        if sent.elapsed() > within {
            let _ = child.kill();
            panic!("did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
