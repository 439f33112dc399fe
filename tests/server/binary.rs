//! The `tollgate` executable itself: subcommands, flags, environment, signals.

use crate::ports::free_port;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("ok.yaml");
    std::fs::write(&f, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n").expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&f)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_prints_every_error_with_its_file_and_fails() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("a.yaml"), "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n").expect("write");
    std::fs::write(
        dir.path().join("b.yaml"),
        "domain: e\ndescriptors:\n  - key: k\n    bogus: 1\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a.yaml") && err.contains("fortnight"), "{err}");
    assert!(err.contains("b.yaml") && err.contains("bogus"), "{err}");
}

#[test]
fn check_config_prints_every_type_error_of_a_file_with_its_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("types.yaml");
    std::fs::write(&f, "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: lots}\n  - key: b\n    shadow_mode: maybe\n").expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&f)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("types.yaml:4:")
            && err.contains("descriptors[0].rate_limit.requests_per_unit"),
        "{err}"
    );
    assert!(
        err.contains("types.yaml:6:") && err.contains("descriptors[1].shadow_mode"),
        "{err}"
    );
}

#[test]
fn serve_refuses_an_invalid_config_at_start_with_the_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("bad.yaml"), "domain: \"\"\n").expect("write");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("empty domain"),
        "{err}"
    );
}

#[test]
fn a_bad_flag_is_refused_with_a_usage_error() {
    let out = Command::new(BIN)
        .args(["serve", "--grpc-addr", "nowhere"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--grpc-addr"));
}

#[test]
fn serve_refuses_part_of_the_peer_tls_flags_naming_the_missing_one() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--peer-tls-cert",
            "node.crt",
            "--peer-tls-key",
            "node.key",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--peer-tls-ca missing"), "{err}");
}

#[test]
fn serve_refuses_to_start_with_an_unreadable_peer_tls_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let cert = dir.path().join("node.crt");
    std::fs::write(&cert, "not a certificate").expect("write");
    let missing = dir.path().join("missing.key");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--peer-tls-cert")
        .arg(&cert)
        .arg("--peer-tls-key")
        .arg(&missing)
        .arg("--peer-tls-ca")
        .arg(&cert)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read --peer-tls-key") && err.contains("missing.key"),
        "{err}"
    );
}

fn get(port: u16, path: &str) -> Option<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn serves_the_embedded_config_from_env_addresses_and_exits_cleanly_on_sigterm() {
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .env("TOLLGATE_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("TOLLGATE_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("TOLLGATE_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ready = false;
    while Instant::now() < deadline {
        if get(http, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !ready {
        let _ = child.kill();
        panic!("not ready within 10 s");
    }
    let config = get(http, "/rlconfig").expect("rlconfig");
    assert!(
        config.contains("edge_proxy"),
        "embedded example served: {config}"
    );
    // SIGTERM: graceful shutdown, exit 0.
    let (status, _) = crate::common::terminate(&mut child, Duration::from_secs(10));
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert!(status.success(), "exit {status}: {err}");
    assert!(err.contains("\"shutdown complete\""), "json logs: {err}");
}
