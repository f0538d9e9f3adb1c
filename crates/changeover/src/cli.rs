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
    /// Roll a version across the fleet (or a target), unit by unit.
    Deploy {
        #[command(flatten)]
        target: TargetArgs,
        /// The version to deploy (substituted as {version}).
        #[arg(long)]
        version: String,
        /// A message recorded with the deploy.
        #[arg(long)]
        message: Option<String>,
        /// Hosts that may be down or unreachable: skipped if unreachable,
        /// deployed without counting against the bound if already out.
        #[arg(long, value_delimiter = ',', value_name = "HOST,...")]
        force: Vec<String>,
    },
    /// The demo app (used by `changeover demo` and the tests).
    #[command(hide = true)]
    DemoApp(DemoAppArgs),
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

fn humantime_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}
