//! Command line and settings: flags > `TOLLGATE_*` environment > settings file > defaults.
//!
//! clap reads flags and their environment variables (so `--help` shows both); the `config`
//! crate layers them over an optional settings file (TOML, YAML or JSON) and the defaults, and
//! the result is one typed [`Settings`]. Unknown keys in the settings file are errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Deserializer};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Envoy's global rate limit service on replicated token buckets",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `tollgate` with no subcommand is `tollgate serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Validate config files offline: exit 0 when valid, else print every error and exit 1.
    CheckConfig {
        /// A YAML file or a directory of them.
        path: PathBuf,
        /// Merge files that name the same domain (as `serve --merge-domain-config`)
        #[arg(long, env = "TOLLGATE_MERGE_DOMAIN_CONFIG")]
        merge_domain_config: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Settings file (TOML, YAML or JSON) with any of the options below, by their long names
    /// with underscores (e.g. `grpc_addr = "0.0.0.0:8081"`).
    #[arg(long, env = "TOLLGATE_SETTINGS", value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// Rate limit config: one YAML file or a directory of them (envoyproxy/ratelimit format).
    /// Without it, an embedded example config is served.
    #[arg(long, env = "TOLLGATE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// gRPC listen address (ShouldRateLimit and grpc.health.v1) [default: 0.0.0.0:8081]
    #[arg(long, env = "TOLLGATE_GRPC_ADDR", value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP listen address (/healthz /readyz /metrics /json /rlconfig) [default: 0.0.0.0:8080]
    #[arg(long, env = "TOLLGATE_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Log format [default: text]
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level or tracing filter, e.g. `info` or `tollgate=debug` [default: info]
    #[arg(long, env = "TOLLGATE_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Most descriptors accepted in one request [default: 64]
    #[arg(long, env = "TOLLGATE_MAX_DESCRIPTORS", value_name = "N")]
    pub max_descriptors: Option<usize>,
    /// Most entries accepted in one descriptor [default: 32]
    #[arg(long, env = "TOLLGATE_MAX_ENTRIES", value_name = "N")]
    pub max_entries: Option<usize>,
    /// Longest domain, key or value accepted, in bytes [default: 1024]
    #[arg(long, env = "TOLLGATE_MAX_BYTES", value_name = "N")]
    pub max_bytes: Option<usize>,
    /// Live keys beyond which new keys share overflow buckets [default: 2000000]
    #[arg(long, env = "TOLLGATE_MAX_KEYS", value_name = "N")]
    pub max_keys: Option<usize>,
    /// A key whose bucket has been full this long is deleted [default: 60s]
    #[arg(long, env = "TOLLGATE_GC_HORIZON", value_name = "DURATION")]
    pub gc_horizon: Option<String>,
    /// How often the config path is checked for changes [default: 1s]
    #[arg(long, env = "TOLLGATE_RELOAD_INTERVAL", value_name = "DURATION")]
    pub reload_interval: Option<String>,
    /// Share of a bucket in use from which admitted hits count as near the limit [default: 0.8]
    #[arg(long, env = "TOLLGATE_NEAR_LIMIT_RATIO", value_name = "RATIO")]
    pub near_limit_ratio: Option<f64>,
    /// How long in-flight requests and the handoff to peers may take on SIGTERM [default: 10s]
    #[arg(long, env = "TOLLGATE_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// This node's name among its peers [default: the hostname]
    #[arg(long, env = "TOLLGATE_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// Listen address of the peer (replication) stream [default: 0.0.0.0:8082]
    #[arg(long, env = "TOLLGATE_PEER_ADDR", value_name = "ADDR")]
    pub peer_addr: Option<SocketAddr>,
    /// Peers' replication addresses, comma-separated (host:port,...); this node's own address
    /// may be in the list. With no peers and no --peer-dns, the node runs alone.
    #[arg(long, env = "TOLLGATE_PEERS", value_name = "ADDRS")]
    pub peers: Option<String>,
    /// DNS name whose addresses are the peers (a Kubernetes headless Service), as NAME:PORT;
    /// re-resolved every 5 s.
    #[arg(long, env = "TOLLGATE_PEER_DNS", value_name = "NAME:PORT")]
    pub peer_dns: Option<String>,
    /// How often changed buckets are sent to peers [default: 20ms]
    #[arg(long, env = "TOLLGATE_SYNC_INTERVAL", value_name = "DURATION")]
    pub sync_interval: Option<String>,
    /// How long a starting node waits for its peers' snapshots before serving anyway [default: 10s]
    #[arg(long, env = "TOLLGATE_SYNC_TIMEOUT", value_name = "DURATION")]
    pub sync_timeout: Option<String>,
    /// Cluster name; peers of another cluster are refused [default: tollgate]
    #[arg(long, env = "TOLLGATE_CLUSTER_ID", value_name = "NAME")]
    pub cluster_id: Option<String>,
    /// File holding the cluster secret; peers must sign their Hello with it
    #[arg(long, env = "TOLLGATE_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Peers whose clock is further off are quarantined [default: 100ms]
    #[arg(long, env = "TOLLGATE_MAX_CLOCK_OFFSET", value_name = "DURATION")]
    pub max_clock_offset: Option<String>,
    /// The peer address other nodes dial to reach this one, announced in its Hello so a new
    /// member needs to know only one node; "none" announces nothing [default: --peer-addr
    /// unless it is 0.0.0.0]
    #[arg(long, env = "TOLLGATE_PEER_ADVERTISE_ADDR", value_name = "HOST:PORT")]
    pub peer_advertise_addr: Option<String>,
    /// A peer not heard from for this long is treated as partitioned away: every limit is then
    /// split into fair shares until it is back [default: 500ms]
    #[arg(long, env = "TOLLGATE_PEER_TIMEOUT", value_name = "DURATION")]
    pub peer_timeout: Option<String>,
    /// A member unreachable this long is declared dead and forgotten: the others leave fair
    /// share and share the whole limit again [default: 30s]
    #[arg(long, env = "TOLLGATE_PEER_DEAD_AFTER", value_name = "DURATION")]
    pub peer_dead_after: Option<String>,
    /// Most cluster members (this node included) peers can introduce; replica slots are bounded
    /// to 64 times this [default: 256]
    #[arg(long, env = "TOLLGATE_MAX_MEMBERS", value_name = "N")]
    pub max_members: Option<usize>,
    /// Hold back own consumption peers have not acknowledged, so a synchronized burst cannot
    /// spend a bucket once per node [default: true]
    #[arg(long, env = "TOLLGATE_BURST_GUARD", value_name = "BOOL")]
    pub burst_guard: Option<bool>,
    /// This node's certificate (PEM chain) for mutual TLS on the peer stream; with
    /// --peer-tls-key and --peer-tls-ca
    #[arg(long, env = "TOLLGATE_PEER_TLS_CERT", value_name = "PATH")]
    pub peer_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --peer-tls-cert
    #[arg(long, env = "TOLLGATE_PEER_TLS_KEY", value_name = "PATH")]
    pub peer_tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that must sign every peer's certificate
    #[arg(long, env = "TOLLGATE_PEER_TLS_CA", value_name = "PATH")]
    pub peer_tls_ca: Option<PathBuf>,
    /// Name peers' certificates must be valid for [default: the host of the address dialed]
    #[arg(long, env = "TOLLGATE_PEER_TLS_SERVER_NAME", value_name = "NAME")]
    pub peer_tls_server_name: Option<String>,
    /// Open connections per port (gRPC, HTTP) beyond which new ones wait [default: 10000]
    #[arg(long, env = "TOLLGATE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// A client connection with no traffic for this long is closed [default: 5m]
    #[arg(long, env = "TOLLGATE_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// A request's headers must arrive within this [default: 10s]
    #[arg(long, env = "TOLLGATE_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    pub header_read_timeout: Option<String>,
    /// HTTP/2 streams one connection may have open at once [default: 200]
    #[arg(long, env = "TOLLGATE_MAX_CONCURRENT_STREAMS", value_name = "N")]
    pub max_concurrent_streams: Option<u32>,
    /// Serve a config with no domains (an empty directory) instead of refusing it [default: false]
    #[arg(long, env = "TOLLGATE_ALLOW_EMPTY_CONFIG", value_name = "BOOL")]
    pub allow_empty_config: Option<bool>,
    /// Largest rate limit config accepted, all files together, in bytes [default: 4194304]
    #[arg(long, env = "TOLLGATE_MAX_CONFIG_BYTES", value_name = "N")]
    pub max_config_bytes: Option<usize>,
    #[command(flatten)]
    pub serving_tls: crate::tls::settings::ServingTlsArgs,
    #[command(flatten)]
    pub telemetry: crate::telemetry::settings::TelemetryArgs,
    /// envoyproxy/ratelimit's switches (see `reference_settings`).
    #[command(flatten)]
    pub reference: crate::reference_settings::ReferenceArgs,
}

/// The resolved settings of `tollgate serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub config: Option<PathBuf>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub log_format: LogFormat,
    pub log_level: String,
    pub max_descriptors: usize,
    pub max_entries: usize,
    pub max_bytes: usize,
    pub max_keys: usize,
    #[serde(deserialize_with = "de_duration")]
    pub gc_horizon: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub reload_interval: Duration,
    pub near_limit_ratio: f64,
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    pub node_id: String,
    pub peer_addr: SocketAddr,
    #[serde(deserialize_with = "de_list")]
    pub peers: Vec<String>,
    pub peer_dns: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    pub sync_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub sync_timeout: Duration,
    pub cluster_id: String,
    pub cluster_secret_file: Option<PathBuf>,
    #[serde(deserialize_with = "de_duration")]
    pub max_clock_offset: Duration,
    pub peer_advertise_addr: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    pub peer_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub peer_dead_after: Duration,
    pub max_members: usize,
    pub burst_guard: bool,
    /// Injected network faults for in-process cluster tests; never set from flags or files.
    #[serde(skip)]
    pub faults: Option<std::sync::Arc<crate::replication::faults::Faults>>,
    /// Replication's liveness time, for in-process cluster tests; never set from flags or files.
    #[serde(skip)]
    pub liveness_clock: Option<crate::clock::SharedClock>,
    pub peer_tls_cert: Option<PathBuf>,
    pub peer_tls_key: Option<PathBuf>,
    pub peer_tls_ca: Option<PathBuf>,
    pub peer_tls_server_name: Option<String>,
    pub max_connections: usize,
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub allow_empty_config: bool,
    pub max_config_bytes: usize,
    pub grpc_tls_cert: Option<PathBuf>,
    pub grpc_tls_key: Option<PathBuf>,
    pub grpc_tls_client_ca: Option<PathBuf>,
    pub http_tls_cert: Option<PathBuf>,
    pub http_tls_key: Option<PathBuf>,
    pub http_tls_client_ca: Option<PathBuf>,
    pub otlp_endpoint: Option<String>,
    pub otlp_sampling_ratio: f64,
    pub otlp_metrics_endpoint: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    pub otlp_metrics_interval: Duration,
    // envoyproxy/ratelimit's switches (`reference_settings`).
    pub shadow_mode: bool,
    pub quota_mode: bool,
    pub response_headers: bool,
    pub limit_header: String,
    pub remaining_header: String,
    pub reset_header: String,
    pub retry_after: bool,
    pub response_dynamic_metadata: bool,
    pub merge_domain_config: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            config: None,
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 8081)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            max_descriptors: 64,
            max_entries: 32,
            max_bytes: 1024,
            max_keys: 2_000_000,
            gc_horizon: Duration::from_secs(60),
            reload_interval: Duration::from_secs(1),
            near_limit_ratio: 0.8,
            shutdown_timeout: Duration::from_secs(10),
            node_id: gethostname::gethostname().to_string_lossy().into_owned(),
            peer_addr: SocketAddr::from(([0, 0, 0, 0], 8082)),
            peers: Vec::new(),
            peer_dns: None,
            sync_interval: Duration::from_millis(20),
            sync_timeout: Duration::from_secs(10),
            cluster_id: "tollgate".into(),
            cluster_secret_file: None,
            max_clock_offset: Duration::from_millis(100),
            peer_advertise_addr: None,
            peer_timeout: Duration::from_millis(500),
            peer_dead_after: Duration::from_secs(30),
            max_members: 256,
            burst_guard: true,
            faults: None,
            liveness_clock: None,
            peer_tls_cert: None,
            peer_tls_key: None,
            peer_tls_ca: None,
            peer_tls_server_name: None,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(300),
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 200,
            allow_empty_config: false,
            max_config_bytes: 4 << 20,
            grpc_tls_cert: None,
            grpc_tls_key: None,
            grpc_tls_client_ca: None,
            http_tls_cert: None,
            http_tls_key: None,
            http_tls_client_ca: None,
            otlp_endpoint: None,
            otlp_sampling_ratio: 1.0,
            otlp_metrics_endpoint: None,
            otlp_metrics_interval: Duration::from_secs(60),
            shadow_mode: false,
            quota_mode: false,
            response_headers: false,
            limit_header: "RateLimit-Limit".into(),
            remaining_header: "RateLimit-Remaining".into(),
            reset_header: "RateLimit-Reset".into(),
            retry_after: false,
            response_dynamic_metadata: false,
            merge_domain_config: false,
        }
    }
}

/// `host:port` (or `NAME:PORT`): the host is resolved later, only the port can be checked
/// now.
fn has_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .is_some()
}

/// A list given as "a,b,c" (flag, environment) or as a list (settings file).
fn de_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum L {
        One(String),
        Many(Vec<String>),
    }
    let items = match L::deserialize(d)? {
        L::One(s) => s.split(',').map(str::to_string).collect(),
        L::Many(v) => v,
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration \"{s}\": {e}")))
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings: {0}")]
    Config(#[from] config::ConfigError),
    #[error("settings: {0}")]
    Invalid(String),
}

impl ServeArgs {
    /// Resolve flags and environment over the settings file over the defaults.
    pub fn resolve(&self) -> Result<Settings, SettingsError> {
        self.resolve_with_env(|k| std::env::var(k).ok())
    }

    /// [`resolve`](Self::resolve), reading the reference's variable names with `env`.
    pub fn resolve_with_env(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, SettingsError> {
        let mut b = config::Config::builder();
        if let Some(path) = &self.settings {
            b = b.add_source(config::File::from(path.as_path()).required(true));
        }
        // The reference's names first: every flag and TOLLGATE_* variable set below wins.
        for (key, value) in crate::reference_settings::aliases(env)? {
            b = b.set_override(key, value)?;
        }
        for (key, value) in self.reference.overrides() {
            b = b.set_override_option(key, value)?;
        }
        let overrides: [(&str, Option<String>); 37] = [
            (
                "config",
                self.config.as_ref().map(|p| p.display().to_string()),
            ),
            ("grpc_addr", self.grpc_addr.map(|a| a.to_string())),
            ("http_addr", self.http_addr.map(|a| a.to_string())),
            (
                "log_format",
                self.log_format.map(|f| match f {
                    LogFormat::Text => "text".to_string(),
                    LogFormat::Json => "json".to_string(),
                }),
            ),
            ("log_level", self.log_level.clone()),
            (
                "max_descriptors",
                self.max_descriptors.map(|v| v.to_string()),
            ),
            ("max_entries", self.max_entries.map(|v| v.to_string())),
            ("max_bytes", self.max_bytes.map(|v| v.to_string())),
            ("max_keys", self.max_keys.map(|v| v.to_string())),
            ("gc_horizon", self.gc_horizon.clone()),
            ("reload_interval", self.reload_interval.clone()),
            (
                "near_limit_ratio",
                self.near_limit_ratio.map(|v| v.to_string()),
            ),
            ("shutdown_timeout", self.shutdown_timeout.clone()),
            ("node_id", self.node_id.clone()),
            ("peer_addr", self.peer_addr.map(|a| a.to_string())),
            ("peers", self.peers.clone()),
            ("peer_dns", self.peer_dns.clone()),
            ("sync_interval", self.sync_interval.clone()),
            ("sync_timeout", self.sync_timeout.clone()),
            ("cluster_id", self.cluster_id.clone()),
            (
                "cluster_secret_file",
                self.cluster_secret_file
                    .as_ref()
                    .map(|p| p.display().to_string()),
            ),
            ("max_clock_offset", self.max_clock_offset.clone()),
            ("peer_advertise_addr", self.peer_advertise_addr.clone()),
            ("peer_timeout", self.peer_timeout.clone()),
            ("peer_dead_after", self.peer_dead_after.clone()),
            ("max_members", self.max_members.map(|v| v.to_string())),
            ("burst_guard", self.burst_guard.map(|b| b.to_string())),
            ("peer_tls_cert", path(&self.peer_tls_cert)),
            ("peer_tls_key", path(&self.peer_tls_key)),
            ("peer_tls_ca", path(&self.peer_tls_ca)),
            ("peer_tls_server_name", self.peer_tls_server_name.clone()),
            (
                "max_connections",
                self.max_connections.map(|v| v.to_string()),
            ),
            ("idle_timeout", self.idle_timeout.clone()),
            ("header_read_timeout", self.header_read_timeout.clone()),
            (
                "max_concurrent_streams",
                self.max_concurrent_streams.map(|v| v.to_string()),
            ),
            (
                "allow_empty_config",
                self.allow_empty_config.map(|b| b.to_string()),
            ),
            (
                "max_config_bytes",
                self.max_config_bytes.map(|v| v.to_string()),
            ),
        ];
        for (key, value) in overrides {
            b = b.set_override_option(key, value)?;
        }
        for (key, value) in self.serving_tls.overrides() {
            b = b.set_override_option(key, value)?;
        }
        for (key, value) in self.telemetry.overrides() {
            b = b.set_override_option(key, value)?;
        }
        let s: Settings = b.build()?.try_deserialize()?;
        s.validate()?;
        Ok(s)
    }
}

fn path(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.display().to_string())
}

impl Settings {
    fn validate(&self) -> Result<(), SettingsError> {
        if !(0.0..=1.0).contains(&self.near_limit_ratio) {
            return Err(SettingsError::Invalid(format!(
                "near_limit_ratio must be between 0 and 1, got {}",
                self.near_limit_ratio
            )));
        }
        if self.reload_interval.is_zero() {
            return Err(SettingsError::Invalid("reload_interval must be > 0".into()));
        }
        if self.sync_interval.is_zero() {
            return Err(SettingsError::Invalid("sync_interval must be > 0".into()));
        }
        if self.peer_timeout < self.sync_interval * 2 {
            return Err(SettingsError::Invalid(format!(
                "peer_timeout ({:?}) must be at least twice sync_interval ({:?}): a peer is \
                 heard from about once per sync interval",
                self.peer_timeout, self.sync_interval
            )));
        }
        if self.peer_dead_after <= self.peer_timeout {
            return Err(SettingsError::Invalid(format!(
                "peer_dead_after ({:?}) must be longer than peer_timeout ({:?}): a member is \
                 suspected first, declared dead only if it stays unreachable",
                self.peer_dead_after, self.peer_timeout
            )));
        }
        if !(2..=MAX_MEMBERS_CEILING).contains(&self.max_members) {
            return Err(SettingsError::Invalid(format!(
                "max_members must be between 2 and {MAX_MEMBERS_CEILING}, got {}: it bounds \
                 what peers can make this node hold (members, and 64 replica slots each)",
                self.max_members
            )));
        }
        if self.node_id.is_empty() {
            return Err(SettingsError::Invalid("node_id must not be empty".into()));
        }
        if let Some(dns) = &self.peer_dns {
            if !has_port(dns) {
                return Err(SettingsError::Invalid(format!(
                    "peer_dns must be NAME:PORT, got '{dns}'"
                )));
            }
        }
        if let Some(a) = &self.peer_advertise_addr {
            if a != "none" && !has_port(a) {
                return Err(SettingsError::Invalid(format!(
                    "peer_advertise_addr must be host:port or \"none\", got '{a}'"
                )));
            }
        }
        for p in &self.peers {
            if !has_port(p) {
                return Err(SettingsError::Invalid(format!(
                    "peers must be host:port addresses, got '{p}'"
                )));
            }
        }
        if self.max_descriptors == 0 || self.max_entries == 0 || self.max_bytes == 0 {
            return Err(SettingsError::Invalid(
                "max_descriptors, max_entries and max_bytes must be > 0".into(),
            ));
        }
        self.validate_limits()?;
        self.validate_serving_tls()?;
        self.validate_telemetry()?;
        self.validate_peer_tls()
    }

    /// A zero bound would refuse every connection, stream or config: a typo, not a choice.
    fn validate_limits(&self) -> Result<(), SettingsError> {
        if self.max_connections == 0 || self.max_concurrent_streams == 0 {
            return Err(SettingsError::Invalid(
                "max_connections and max_concurrent_streams must be > 0".into(),
            ));
        }
        if self.idle_timeout.is_zero() || self.header_read_timeout.is_zero() {
            return Err(SettingsError::Invalid(
                "idle_timeout and header_read_timeout must be > 0".into(),
            ));
        }
        if self.max_config_bytes == 0 {
            return Err(SettingsError::Invalid(
                "max_config_bytes must be > 0".into(),
            ));
        }
        Ok(())
    }

    /// mTLS needs all three files: with only some of them a node would either not start TLS
    /// at all (silently plaintext) or fail every handshake, so a partial set is refused.
    fn validate_peer_tls(&self) -> Result<(), SettingsError> {
        let files = [
            ("--peer-tls-cert", self.peer_tls_cert.is_some()),
            ("--peer-tls-key", self.peer_tls_key.is_some()),
            ("--peer-tls-ca", self.peer_tls_ca.is_some()),
        ];
        let missing: Vec<&str> = files.iter().filter(|f| !f.1).map(|f| f.0).collect();
        if missing.len() == files.len() {
            if self.peer_tls_server_name.is_some() {
                return Err(SettingsError::Invalid(
                    "--peer-tls-server-name needs --peer-tls-cert, --peer-tls-key and \
                     --peer-tls-ca"
                        .into(),
                ));
            }
            return Ok(());
        }
        if !missing.is_empty() {
            return Err(SettingsError::Invalid(format!(
                "peer TLS needs --peer-tls-cert, --peer-tls-key and --peer-tls-ca together: \
                 {} missing",
                missing.join(" and ")
            )));
        }
        Ok(())
    }
}

/// The largest `--max-members`: far above the 20-pod fleets this is built for, and small
/// enough that members x 64 replica slots stays a bounded amount of state per key.
const MAX_MEMBERS_CEILING: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn args(a: &[&str]) -> ServeArgs {
        let mut full = vec!["tollgate"];
        full.extend_from_slice(a);
        Cli::try_parse_from(full).expect("parses").serve
    }

    #[test]
    fn defaults_without_flags_or_file() {
        let s = args(&[]).resolve_with_env(|_| None).expect("valid");
        assert_eq!(s.grpc_addr.to_string(), "0.0.0.0:8081");
        assert_eq!(s.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(s.gc_horizon, Duration::from_secs(60));
    }

    #[test]
    fn flags_override_the_settings_file() {
        let mut f = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("tmp");
        writeln!(
            f,
            "grpc_addr = \"127.0.0.1:9001\"\nhttp_addr = \"127.0.0.1:9002\"\ngc_horizon = \"2m\""
        )
        .expect("write");
        let path = f.path().display().to_string();
        let s = args(&["--settings", &path, "--grpc-addr", "127.0.0.1:7001"])
            .resolve_with_env(|_| None)
            .expect("valid");
        assert_eq!(s.grpc_addr.to_string(), "127.0.0.1:7001", "flag wins");
        assert_eq!(
            s.http_addr.to_string(),
            "127.0.0.1:9002",
            "file beats default"
        );
        assert_eq!(s.gc_horizon, Duration::from_secs(120));
    }

    #[test]
    fn unknown_settings_keys_are_refused_by_name() {
        let mut f = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("tmp");
        writeln!(f, "grpc_adr = \"127.0.0.1:9001\"").expect("write");
        let path = f.path().display().to_string();
        let err = args(&["--settings", &path])
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("grpc_adr"), "{err}");
    }

    #[test]
    fn a_bad_duration_says_which_and_why() {
        let err = args(&["--gc-horizon", "soon"])
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"soon\""), "{err}");
    }

    #[test]
    fn a_bad_address_flag_is_refused_by_clap() {
        let err = Cli::try_parse_from(["tollgate", "--grpc-addr", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("--grpc-addr"), "{err}");
    }

    #[test]
    fn near_limit_ratio_must_be_a_ratio() {
        let err = args(&["--near-limit-ratio", "1.5"])
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("near_limit_ratio"), "{err}");
    }

    #[test]
    fn peer_dead_after_defaults_to_thirty_seconds_and_parses_durations() {
        let s = args(&[]).resolve_with_env(|_| None).expect("valid");
        assert_eq!(s.peer_dead_after, Duration::from_secs(30));
        let s = args(&["--peer-dead-after", "90s"])
            .resolve_with_env(|_| None)
            .expect("valid");
        assert_eq!(s.peer_dead_after, Duration::from_secs(90));
    }

    #[test]
    fn peer_dead_after_must_outlast_the_peer_timeout() {
        let err = args(&["--peer-timeout", "5s", "--peer-dead-after", "5s"])
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("peer_dead_after") && err.contains("peer_timeout"),
            "{err}"
        );
        let err = args(&["--peer-dead-after", "never"])
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"never\""), "{err}");
    }

    #[test]
    fn max_members_defaults_to_256_and_is_bounded_both_ways() {
        let s = args(&[]).resolve_with_env(|_| None).expect("valid");
        assert_eq!(s.max_members, 256);
        for bad in ["1", "0", "4097"] {
            let err = args(&["--max-members", bad])
                .resolve_with_env(|_| None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("max_members") && err.contains(bad),
                "{bad}: {err}"
            );
        }
        let s = args(&["--max-members", "4096"])
            .resolve_with_env(|_| None)
            .expect("the ceiling itself is allowed");
        assert_eq!(s.max_members, 4096);
        let err = Cli::try_parse_from(["tollgate", "--max-members", "many"]).unwrap_err();
        assert!(err.to_string().contains("--max-members"), "{err}");
    }

    #[test]
    fn peers_are_a_comma_separated_list() {
        let s = args(&["--peers", "a:8082, b:8082,,c:8082"])
            .resolve_with_env(|_| None)
            .expect("valid");
        assert_eq!(s.peers, vec!["a:8082", "b:8082", "c:8082"]);
    }

    #[test]
    fn an_advertised_address_needs_a_port_unless_it_is_none() {
        let err = args(&["--peer-advertise-addr", "10.0.0.1"])
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("peer_advertise_addr") && err.contains("'10.0.0.1'"),
            "{err}"
        );
        let s = args(&["--peer-advertise-addr", "none"])
            .resolve_with_env(|_| None)
            .expect("valid");
        assert_eq!(s.peer_advertise_addr.as_deref(), Some("none"));
    }

    #[test]
    fn a_peer_timeout_shorter_than_two_sync_intervals_is_refused() {
        let err = args(&["--sync-interval", "50ms", "--peer-timeout", "80ms"])
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("peer_timeout") && err.contains("sync_interval"),
            "{err}"
        );
        let s = args(&["--sync-interval", "50ms", "--peer-timeout", "100ms"])
            .resolve_with_env(|_| None)
            .expect("valid");
        assert_eq!(s.peer_timeout, Duration::from_millis(100));
    }

    #[test]
    fn the_burst_guard_is_on_by_default_and_can_be_turned_off() {
        assert!(
            args(&[])
                .resolve_with_env(|_| None)
                .expect("valid")
                .burst_guard
        );
        assert!(
            !args(&["--burst-guard", "false"])
                .resolve_with_env(|_| None)
                .expect("valid")
                .burst_guard
        );
        assert!(Cli::try_parse_from(["tollgate", "--burst-guard", "maybe"]).is_err());
    }

    #[test]
    fn a_peer_without_a_port_is_refused() {
        let err = args(&["--peers", "a:8082,b"])
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'b'"), "{err}");
        let err = args(&["--peer-dns", "tollgate-peers"])
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("NAME:PORT"), "{err}");
    }

    #[test]
    fn peer_tls_without_one_of_its_three_files_names_the_missing_one() {
        let err = args(&["--peer-tls-cert", "c.pem", "--peer-tls-ca", "ca.pem"])
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--peer-tls-key missing"), "{err}");
        let err = args(&["--peer-tls-key", "k.pem"])
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--peer-tls-cert and --peer-tls-ca missing"),
            "{err}"
        );
    }

    #[test]
    fn peer_tls_server_name_alone_is_refused() {
        let err = args(&["--peer-tls-server-name", "peers.local"])
            .resolve_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--peer-tls-server-name needs"), "{err}");
    }

    #[test]
    fn peer_tls_files_come_from_the_settings_file_too() {
        let mut f = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("tmp");
        writeln!(
            f,
            "peer_tls_cert = \"c.pem\"\npeer_tls_key = \"k.pem\"\npeer_tls_ca = \"ca.pem\""
        )
        .expect("write");
        let path = f.path().display().to_string();
        let s = args(&["--settings", &path, "--peer-tls-server-name", "peers.local"])
            .resolve_with_env(|_| None)
            .expect("valid");
        assert_eq!(s.peer_tls_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(s.peer_tls_key, Some(PathBuf::from("k.pem")));
        assert_eq!(s.peer_tls_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(s.peer_tls_server_name.as_deref(), Some("peers.local"));
    }

    #[test]
    fn the_reference_variables_are_aliases_that_tollgate_flags_override() {
        let env = |k: &str| match k {
            "GRPC_PORT" => Some("9081".to_string()),
            "SHADOW_MODE" => Some("true".to_string()),
            "LIMIT_RESPONSE_HEADERS_ENABLED" => Some("1".to_string()),
            "RUNTIME_ROOT" => Some("/srv/runtime".to_string()),
            _ => None,
        };
        let s = args(&[]).resolve_with_env(env).expect("valid");
        assert_eq!(s.grpc_addr.to_string(), "0.0.0.0:9081");
        assert!(s.shadow_mode && s.response_headers);
        assert_eq!(s.config, Some(PathBuf::from("/srv/runtime/config")));
        let s = args(&["--grpc-addr", "127.0.0.1:7001", "--shadow-mode", "false"])
            .resolve_with_env(env)
            .expect("valid");
        assert_eq!(s.grpc_addr.to_string(), "127.0.0.1:7001", "flag wins");
        assert!(!s.shadow_mode, "flag wins");
    }

    #[test]
    fn serve_is_the_default_subcommand() {
        let cli = Cli::try_parse_from(["tollgate", "--http-addr", "127.0.0.1:1"]).expect("parses");
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from(["tollgate", "check-config", "x.yaml"]).expect("parses");
        assert!(matches!(cli.command, Some(Command::CheckConfig { .. })));
    }
}
