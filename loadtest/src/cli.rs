//! Command line: `run`, `noop-server`, `scenario`, `make-h2load-body`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::accuracy::{Bucket, LimitSpec};
use crate::driver::{normalize_target, Pace, Plan, Stop};
use crate::keys::KeyDist;
use crate::request::RequestShape;
use crate::sizes::SizeDist;
use crate::usage::UsagePlan;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate-load",
    version,
    about = "Load generator for Envoy's rate limit gRPC API (ShouldRateLimit), and a no-op baseline server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drive ShouldRateLimit on one or several targets; report throughput, latency, decisions,
    /// errors and (with --limit) accuracy against an ideal token bucket.
    Run(RunArgs),
    /// Serve ShouldRateLimit answering OK to every descriptor, doing no work: the baseline for
    /// throughput ratios.
    NoopServer(NoopArgs),
    /// Traffic presets for the replication benchmarks (even-split, hot-node, cold-burst,
    /// partition).
    #[command(after_help = SCENARIO_HELP)]
    Scenario(ScenarioArgs),
    /// Write a gRPC-framed RateLimitRequest (5-byte header + protobuf) for `h2load -d`.
    MakeH2loadBody(H2loadBodyArgs),
    /// Usage-style traffic (AI token budgets): a 0-hit pre-check per call, then a usage report
    /// of a drawn size; reports tokens used and charged against the ideal budget C + r*T.
    Usage(UsageArgs),
}

#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    /// Where pre-checks go; repeat or comma-separate for several (call i goes to i % n).
    #[arg(
        long = "target",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8081"
    )]
    pub targets: Vec<String>,
    /// Where usage reports go (default: the pre-check targets); call i reports to i % n.
    #[arg(long = "report-target", value_name = "URL", value_delimiter = ',')]
    pub report_targets: Vec<String>,
    /// Calls in flight at once (each is a pre-check, then a report).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// How long to run (e.g. 10s). Default 10s unless --calls is given.
    #[arg(long, value_parser = parse_duration, conflicts_with = "calls")]
    pub duration: Option<Duration>,
    /// Run exactly this many calls.
    #[arg(long)]
    pub calls: Option<u64>,
    /// Client-side timeout per RPC.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Seed of the key and size RNGs (worker w uses seed + w).
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// Tokens each call uses: fixed:N, uniform:LO:HI or exp:MEAN[:MAX].
    #[arg(long, default_value = "exp:300")]
    pub size: SizeDist,
    /// Key distribution (hot, uniform:N, zipf:N:S): which user makes each call.
    #[arg(long, default_value = "hot")]
    pub keys: KeyDist,
    #[arg(long, default_value = "loadtest")]
    pub domain: String,
    /// Entry key of the descriptor(s).
    #[arg(long = "descriptor-key", value_name = "NAME", value_delimiter = ',', default_values_t = ["user".to_string()])]
    pub descriptor_keys: Vec<String>,
    /// Descriptors per request.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub descriptors: u32,
    /// TAG of the descriptor values (default: fresh per run).
    #[arg(long)]
    pub key_tag: Option<String>,
    /// The budget per key, as RPU/UNIT (e.g. 1000/minute).
    #[arg(long, value_name = "RPU/UNIT")]
    pub limit: LimitSpec,
    /// Budget capacity C (default: RPU).
    #[arg(long)]
    pub burst: Option<u32>,
    /// Send --limit as each descriptor's RateLimitOverride, so no service config is needed.
    #[arg(long = "override")]
    pub send_override: bool,
    /// Count every answered report as charged, OVER_LIMIT included: for a rule that charges
    /// usage into debt. Without it a report is charged only when answered OK (all or nothing).
    #[arg(long)]
    pub charge_over_limit: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl UsageArgs {
    pub fn plan(&self) -> UsagePlan {
        let key_tag = self.key_tag.clone().unwrap_or_else(fresh_key_tag);
        UsagePlan {
            targets: self.targets.iter().map(|t| normalize_target(t)).collect(),
            report_targets: self
                .report_targets
                .iter()
                .map(|t| normalize_target(t))
                .collect(),
            concurrency: self.concurrency as usize,
            stop: match (self.calls, self.duration) {
                (Some(n), _) => Stop::Requests(n),
                (None, Some(d)) => Stop::After(d),
                (None, None) => Stop::After(Duration::from_secs(10)),
            },
            timeout: self.timeout,
            shape: RequestShape::new(
                &self.domain,
                self.descriptors as usize,
                &self.descriptor_keys,
                &key_tag,
                None,
                self.send_override.then_some(self.limit),
            ),
            keys: self.keys,
            sizes: self.size,
            seed: self.seed,
            limit: self.limit,
            bucket: Bucket::new(self.limit, self.burst),
            charge_over_limit: self.charge_over_limit,
        }
    }
}

const SCENARIO_HELP: &str = "\
Presets:
  even-split  Round-robin every request across all --targets (as Envoy spreads calls over the
              rate limit cluster), with the traffic options below. Accuracy: admitted per key,
              summed over nodes, against C + r*T.
  hot-node    All traffic on one node (--node, default the first); the others receive nothing
              and only learn of the hits through replication.
  cold-burst  Each target receives --per-target requests for one fresh key (a new key tag),
              all released at the same instant over --connections connections per target, as
              fast as possible. Shows how much a cluster over-admits before replicas hear of
              each other: E = admitted - (C + r*T), T being the burst's duration.
  partition   The partition itself is made outside the tool (stop or firewall a node). This
              preset runs even-split traffic for --duration and reports decisions per target, so
              a node that lost its peers shows up in its own line.

Give --limit (and --override, or a matching service config) to get the accuracy figures.";

/// Traffic options shared by `run` and `scenario`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Traffic")]
pub struct TrafficArgs {
    /// Open loop: requests per second in total across all targets; latency is measured from
    /// each request's intended send time (coordinated omission corrected). Without it: closed
    /// loop, as fast as responses come back.
    #[arg(long, value_name = "REQ_PER_S")]
    pub rate: Option<f64>,
    /// HTTP/2 connections to each target.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Requests in flight on each connection (workers = connections x streams).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub streams: u32,
    /// How long to send (e.g. 10s, 500ms, 2m). Default 10s unless --requests is given.
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Send exactly this many requests instead of running for a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Client-side timeout per call; a call that exceeds it counts as DeadlineExceeded.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Seed of the key sampling RNGs (worker w uses seed + w).
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
}

/// What each request carries.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Requests")]
pub struct RequestArgs {
    /// Key distribution: hot (one key), uniform:N (N keys, equally likely) or zipf:N:S (N keys,
    /// rank k with probability ~ 1/k^S).
    #[arg(long, default_value = "hot")]
    pub keys: KeyDist,
    /// Descriptors per request.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub descriptors: u32,
    /// Domain of every request.
    #[arg(long, default_value = "loadtest")]
    pub domain: String,
    /// Entry keys of the descriptors, in order (repeat or comma-separate). Descriptor i is
    /// [(NAME_i, "TAG-INDEX")]; names cycle with a number appended when there are more
    /// descriptors than names: user, path, user1, path1, ... All descriptors of a request carry
    /// the same key INDEX.
    #[arg(long = "descriptor-key", value_name = "NAME", value_delimiter = ',', default_values_t = ["user".to_string(), "path".to_string()])]
    pub descriptor_keys: Vec<String>,
    /// Request hits_addend (unset: the field is not sent, and a request is 1 hit).
    #[arg(long)]
    pub hits_addend: Option<u32>,
    /// TAG of the descriptor values. Default: fresh for each run (r<unix-millis>), so every run
    /// starts on full buckets; set it to reuse keys across runs.
    #[arg(long)]
    pub key_tag: Option<String>,
}

/// The limit the service applies, for accuracy accounting.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Accuracy")]
pub struct LimitArgs {
    /// The limit the service applies to each key, as RPU/UNIT (e.g. 100/second, 6000/minute).
    /// Used to compute the ideal token bucket C + r*T; sent only with --override.
    #[arg(long, value_name = "RPU/UNIT")]
    pub limit: Option<LimitSpec>,
    /// Bucket capacity C for the accounting (default: RPU, one unit's worth).
    #[arg(long, requires = "limit")]
    pub burst: Option<u32>,
    /// Send --limit as each descriptor's RateLimitOverride, so no service config is needed.
    #[arg(long = "override", requires = "limit")]
    pub send_override: bool,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub no_progress: bool,
    /// Tokio worker threads of the load generator (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub traffic: TrafficArgs,
    #[command(flatten)]
    pub request: RequestArgs,
    #[command(flatten)]
    pub limit: LimitArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Rate limit service to call; repeat or comma-separate for several (requests round-robin).
    #[arg(
        long = "target",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8081"
    )]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Clone, Args)]
pub struct NoopArgs {
    /// Address to listen on (port 0: any free port, printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8091")]
    pub addr: SocketAddr,
    /// Stop after this long (default: until SIGINT/SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Tokio worker threads (default: one per core, as the service's default runtime).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// Round-robin across all targets.
    EvenSplit,
    /// All traffic on one target (--node).
    HotNode,
    /// --per-target requests on each target at the same instant, one fresh key.
    ColdBurst,
    /// Even-split traffic for --duration while a partition is made outside; per-target report.
    Partition,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::EvenSplit => "even-split",
            Preset::HotNode => "hot-node",
            Preset::ColdBurst => "cold-burst",
            Preset::Partition => "partition",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ScenarioArgs {
    /// The traffic shape (see Presets below).
    #[arg(value_enum)]
    pub preset: Preset,
    /// The cluster's nodes (repeat or comma-separate).
    #[arg(
        long = "targets",
        alias = "target",
        value_name = "URL",
        value_delimiter = ',',
        required = true
    )]
    pub targets: Vec<String>,
    /// hot-node: index (0-based) in --targets of the node that receives all traffic.
    #[arg(long, default_value_t = 0)]
    pub node: usize,
    /// cold-burst: requests each target receives at the same instant.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub per_target: u32,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Clone, Args)]
pub struct H2loadBodyArgs {
    /// Domain of the request.
    #[arg(long, default_value = "loadtest")]
    pub domain: String,
    /// Descriptors in the request.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub descriptors: u32,
    /// Entry keys of the descriptors (same scheme as `run`).
    #[arg(long = "descriptor-key", value_name = "NAME", value_delimiter = ',', default_values_t = ["user".to_string(), "path".to_string()])]
    pub descriptor_keys: Vec<String>,
    /// TAG of the descriptor values; the single key is TAG-0.
    #[arg(long, default_value = "h2load")]
    pub key_tag: String,
    /// Request hits_addend (unset: not sent).
    #[arg(long)]
    pub hits_addend: Option<u32>,
    /// Send this limit as each descriptor's RateLimitOverride.
    #[arg(long = "override", value_name = "RPU/UNIT")]
    pub override_limit: Option<LimitSpec>,
    /// File to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds (fractions allowed).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 10s, 500ms, 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3_600.0,
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {s:?}: use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("invalid duration {s:?}: must be >= 0 and finite"))
}

/// A tag no earlier run used (milliseconds since the epoch).
pub fn fresh_key_tag() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("r{ms}")
}

impl LoadArgs {
    /// The run plan for `targets` (already chosen by the command or preset).
    pub fn plan(&self, targets: &[String]) -> Plan {
        let t = &self.traffic;
        let r = &self.request;
        let key_tag = r.key_tag.clone().unwrap_or_else(fresh_key_tag);
        let override_limit = self.limit.limit.filter(|_| self.limit.send_override);
        Plan {
            targets: targets.iter().map(|t| normalize_target(t)).collect(),
            connections: t.connections as usize,
            streams: t.streams as usize,
            pace: match t.rate {
                Some(rate) => Pace::Open { rate },
                None => Pace::Closed,
            },
            stop: match (t.requests, t.duration) {
                (Some(n), _) => Stop::Requests(n),
                (None, Some(d)) => Stop::After(d),
                (None, None) => Stop::After(Duration::from_secs(10)),
            },
            timeout: t.timeout,
            shape: RequestShape::new(
                &r.domain,
                r.descriptors as usize,
                &r.descriptor_keys,
                &key_tag,
                r.hits_addend,
                override_limit,
            ),
            keys: r.keys,
            track_keys: self.limit.limit.is_some(),
            progress: !self.output.no_progress,
            seed: t.seed,
        }
    }

    /// The limit and its bucket, when accuracy is to be assessed.
    pub fn bucket(&self) -> Option<(LimitSpec, Bucket)> {
        self.limit
            .limit
            .map(|l| (l, Bucket::new(l, self.limit.burst)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_in_common_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn run_flags_become_a_plan() {
        let cli = Cli::try_parse_from([
            "tollgate-load",
            "run",
            "--target",
            "127.0.0.1:1,127.0.0.1:2",
            "--target",
            "http://127.0.0.1:3",
            "--rate",
            "200",
            "--requests",
            "50",
            "--keys",
            "uniform:10",
            "--limit",
            "10/s",
            "--override",
            "--key-tag",
            "t",
        ])
        .expect("valid flags");
        let Command::Run(run) = cli.command else {
            panic!("expected run");
        };
        let plan = run.load.plan(&run.targets);
        assert_eq!(
            plan.targets,
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:3"
            ]
        );
        assert_eq!(plan.pace, Pace::Open { rate: 200.0 });
        assert_eq!(plan.stop, Stop::Requests(50));
        assert!(plan.track_keys);
        assert!(plan.shape.override_limit.is_some());
        assert_eq!(plan.shape.key_value(3), "t-3");
    }

    #[test]
    fn usage_flags_become_a_plan() {
        let cli = Cli::try_parse_from([
            "tollgate-load",
            "usage",
            "--target",
            "127.0.0.1:1",
            "--report-target",
            "127.0.0.1:2",
            "--calls",
            "20",
            "--size",
            "uniform:100:500",
            "--limit",
            "1000/minute",
            "--override",
            "--charge-over-limit",
        ])
        .expect("valid flags");
        let Command::Usage(u) = cli.command else {
            panic!("expected usage");
        };
        let plan = u.plan();
        assert_eq!(plan.targets, ["http://127.0.0.1:1"]);
        assert_eq!(plan.report_targets, ["http://127.0.0.1:2"]);
        assert_eq!(plan.stop, Stop::Requests(20));
        assert_eq!(plan.sizes.max(), 500);
        assert!(plan.charge_over_limit);
        assert_eq!(plan.bucket.capacity, 1_000.0);
        assert!(plan.shape.override_limit.is_some());
        assert!(
            Cli::try_parse_from(["tollgate-load", "usage"]).is_err(),
            "--limit is required"
        );
    }

    #[test]
    fn duration_and_requests_are_exclusive() {
        let err = Cli::try_parse_from([
            "tollgate-load",
            "run",
            "--duration",
            "1s",
            "--requests",
            "5",
        ]);
        assert!(err.is_err());
    }
}
