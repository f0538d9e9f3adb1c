//! The command line. Exit codes are documented in `--help` and README.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "changeover",
    version,
    about = "Zero-downtime rolling deploys of server fleets behind load balancers",
    after_help = "Exit codes: 0 done; 1 deploy failed or halted; 2 usage or config error; \
                  3 preflight no-go; 4 lock held by someone else; 130 interrupted."
)]
pub struct Cli {
    /// The config file.
    #[arg(
        long,
        global = true,
        default_value = "changeover.toml",
        env = "CHANGEOVER_CONFIG"
    )]
    pub config: PathBuf,

    /// NDJSON events on stdout (human output stays on stderr).
    #[arg(long, global = true)]
    pub json: bool,

    /// More detail (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings, errors and the summary.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config, resolve the fleet, reach every host and balancer: go/no-go.
    Check(TargetArgs),
    /// Print the waves and each step for a version; changes nothing.
    Plan {
        #[command(flatten)]
        target: TargetArgs,
        /// The version to plan for.
        #[arg(long)]
        version: String,
    },
    /// Roll a version across the fleet (or a target), unit by unit. Units
    /// already recorded on the version and serving are not touched (unless
    /// --redeploy); the pointer moves when every unit ends on it (not for a
    /// partial target).
    Deploy {
        #[command(flatten)]
        target: TargetArgs,
        /// The version to deploy (substituted as {version}).
        #[arg(long)]
        version: String,
        #[command(flatten)]
        run: RunArgs,
        /// Hosts that may be down or unreachable: skipped if unreachable,
        /// deployed without counting against the bound if already out, and
        /// left out of the `wait_for_all_healthy` gate.
        #[arg(long, value_delimiter = ',', value_name = "HOST,...")]
        force: Vec<String>,
        /// Deploy to units already recorded on this version too.
        #[arg(long)]
        redeploy: bool,
    },
    /// Deploy the target's previous version (skipping units already on it),
    /// then swap the pointer's current and previous.
    Rollback {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Bring every unit of the target to the pointer's current version
    /// (after partial deploys); moves no pointer.
    Unify {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Per unit: balancer state, a live health probe, the recorded version;
    /// the pointer, the lock, a deploy in progress. Changes nothing.
    Status(TargetArgs),
    /// Past runs, newest first. Changes nothing.
    History {
        #[command(flatten)]
        target: TargetArgs,
        /// How many entries.
        #[arg(short = 'n', long = "limit", default_value_t = 20)]
        n: usize,
    },
    /// After a crash: put every balancer member back as it was before the
    /// unfinished deploy where the unit is healthy, name those left out,
    /// close the journal, free the lock. Safe to run twice.
    Recover,
    /// Take, release or show a lock by hand (e.g. "nobody deploys during the
    /// migration"). A lock taken here stays until released.
    Lock {
        #[command(subcommand)]
        action: LockAction,
    },
    /// The whole job on embedded defaults, nothing to install: N demo app
    /// instances behind the embedded balancer, rolled v1 → v2 under steady
    /// traffic, with a summary of what the traffic saw.
    Demo(DemoArgs),
    /// Restart one demo instance with a version (the demo's deploy step).
    #[command(hide = true)]
    DemoCtl(DemoCtlArgs),
    /// The demo app (used by `changeover demo` and the tests).
    #[command(hide = true)]
    DemoApp(DemoAppArgs),
    /// Print a shell completion script (bash: `source <(changeover completions bash)`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `changeover man | man -l -`.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum LockAction {
    /// Take lock NAME (default "deploy") until `lock release`.
    Acquire {
        name: Option<String>,
        /// Why (shown to whoever is refused).
        #[arg(long, short)]
        message: Option<String>,
    },
    /// Release lock NAME; --force takes it from someone else.
    Release {
        name: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Who holds lock NAME (or every lock the config names).
    Status { name: Option<String> },
}

/// What every rolling command takes.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A message recorded in the history (required by targets with
    /// require_message = true).
    #[arg(long, short)]
    pub message: Option<String>,
    /// Wait up to this long for a held lock instead of exiting with 4
    /// (e.g. 60s, 10m).
    #[arg(long, value_name = "DURATION", value_parser = humantime_duration)]
    pub lock_wait: Option<std::time::Duration>,
    /// Write a self-contained HTML report of the run (timeline of every
    /// unit's phases, out-of-service count against the bound, the witness).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Send no [[notify]] notifications for this run.
    #[arg(long)]
    pub silent: bool,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// A target from [targets.NAME]; default: the whole fleet.
    pub target: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoAppArgs {
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    #[arg(long)]
    pub version: String,
    #[arg(long, default_value = "0ms", value_parser = humantime_duration)]
    pub boot_time: std::time::Duration,
    #[arg(long, default_value = "0ms", value_parser = humantime_duration)]
    pub think_time: std::time::Duration,
    #[arg(long)]
    pub unhealthy_file: Option<PathBuf>,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many app instances to run.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub instances: u16,
    /// Wave size: a count ("2") or a percentage ("33%").
    #[arg(long, default_value = "2")]
    pub batch: String,
    /// Requests per second the traffic witness sends through the balancer.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub rps: u32,
    /// How long an app instance takes to boot (it listens only after that).
    #[arg(long, default_value = "1s", value_parser = humantime_duration)]
    pub boot_time: std::time::Duration,
    /// Then restart the same instances without taking them out of the
    /// balancer, with the same witness, and show both results side by side.
    #[arg(long)]
    pub compare_naive: bool,
    /// Run the demo in DIR (new or empty) and keep it: the config it used,
    /// its state, journal and the app logs.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Where to write the HTML report of the rollout (default: report.html
    /// in the --keep DIR, else changeover-demo-report.html in the system's
    /// temp directory).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoCtlArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub port: u16,
    #[arg(long)]
    pub version: String,
    #[arg(long, default_value = "1s", value_parser = humantime_duration)]
    pub boot_time: std::time::Duration,
    #[arg(long, default_value = "20ms", value_parser = humantime_duration)]
    pub think_time: std::time::Duration,
}

fn humantime_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}
