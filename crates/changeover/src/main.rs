//! changeover: the binary. Thin: parse the command line, load the plan, wire
//! adapters into the engine, render events, map outcomes to exit codes.

mod cli;
mod commands;
mod logging;
mod plan_view;
mod progress;
mod report;
mod reporter;
mod witnessing;

use changeover_core::config::{self, ConfigErrors};
use cli::{Cli, Command};
use commands::Ctx;
use reporter::Reporter;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Exit codes (SPEC.md).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NO_GO: u8 = 3;
    pub const LOCKED: u8 = 4;
    pub const INTERRUPTED: u8 = 130;
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The demo writes and uses its own config: a --config given to it
    // would be silently ignored.
    if matches!(cli.command, Command::Demo(_))
        && matches.value_source("config") == Some(clap::parser::ValueSource::CommandLine)
    {
        eprintln!("error: demo writes and uses a config of its own; --config is not used (see --keep DIR to keep the one it wrote)");
        return ExitCode::from(exit::USAGE);
    }
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "changeover",
                &mut std::io::stdout(),
            );
            return ExitCode::from(exit::OK);
        }
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::from(exit::OK),
                Err(e) => {
                    eprintln!("error: cannot write the man page: {e}");
                    ExitCode::from(exit::FAILED)
                }
            };
        }
        _ => {}
    }
    logging::init(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    ExitCode::from(runtime.block_on(run(cli)))
}

async fn run(cli: Cli) -> u8 {
    match &cli.command {
        Command::DemoApp(args) => return demo_app(args).await,
        Command::DemoCtl(args) => return commands::demo::ctl(args),
        Command::Demo(args) => return commands::demo::run(args, cli.json, cli.quiet).await,
        _ => {}
    }
    let loaded = match config::load(&cli.config) {
        Ok(l) => l,
        Err(errors) => {
            report_config_errors(&cli, errors);
            return exit::USAGE;
        }
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
        if cli.json {
            println!(
                "{}",
                serde_json::json!({"schema": 1, "event": "config_warning", "key": w.key, "location": w.location, "message": w.message})
            );
        }
    }
    // Lock and history read the store only: no fleet needed.
    let needs_fleet = !matches!(cli.command, Command::Lock { .. } | Command::History { .. });
    let plan = if needs_fleet {
        match changeover_adapters::discovery::discover(loaded.plan).await {
            Ok(p) => p,
            Err(e) => {
                report_discovery_error(&cli, &e);
                return exit::USAGE;
            }
        }
    } else {
        loaded.plan
    };
    let ctx = Ctx {
        plan: Arc::new(plan),
        events: Arc::new(Reporter::new(cli.json, cli.quiet, cli.verbose)),
        json: cli.json,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Plan { target, version } => {
            commands::plan::run(&ctx, target.target, &version).await
        }
        Command::Check(target) => commands::check::run(&ctx, target.target).await,
        Command::Deploy {
            target,
            version,
            run,
            force,
            redeploy,
        } => commands::deploy::run(&ctx, target.target, version, run, force, redeploy).await,
        Command::Rollback { target, run } => {
            commands::rollback::run(&ctx, target.target, run).await
        }
        Command::Unify { target, run } => commands::unify::run(&ctx, target.target, run).await,
        Command::Status(target) => commands::status::run(&ctx, target.target).await,
        Command::History { target, n } => commands::history::run(&ctx, target.target, n).await,
        Command::Lock { action } => commands::lock::run(&ctx, action).await,
        Command::Recover => commands::recover::run(&ctx).await,
        Command::DemoApp(_)
        | Command::DemoCtl(_)
        | Command::Demo(_)
        | Command::Completions { .. }
        | Command::Man => {
            unreachable!("handled above")
        }
    }
}

/// First Ctrl-C or SIGTERM: stop starting units. Second: stop at once.
pub async fn watch_signals(stop: CancellationToken, abort: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let mut count = 0;
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        count += 1;
        if count == 1 {
            stop.cancel();
        } else {
            abort.cancel();
            return;
        }
    }
}

fn report_discovery_error(cli: &Cli, e: &changeover_core::discovery::DiscoveryError) {
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"schema": 1, "event": "discovery_error", "origin": e.origin, "message": e.message})
        );
    }
    eprintln!("error: cannot discover the fleet: {e}");
    eprintln!(
        "  check [discovery] in {}; nothing was touched",
        cli.config.display()
    );
}

fn report_config_errors(cli: &Cli, errors: ConfigErrors) {
    if cli.json {
        let list: Vec<_> = errors
            .errors
            .iter()
            .map(|e| serde_json::json!({"message": e.message, "location": e.location, "help": e.help}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"schema": 1, "event": "config_error", "errors": list})
        );
    }
    // One grep-able (and editor-clickable) line per problem, then the
    // rendered diagnostics with the source excerpt and the hint.
    for e in &errors.errors {
        eprintln!("error: {}: {}", e.location, e.message);
    }
    eprintln!("{:?}", miette::Report::new(errors));
}

async fn demo_app(args: &cli::DemoAppArgs) -> u8 {
    let opts = changeover_adapters::demo_app::DemoAppOptions {
        listen: args.listen,
        version: args.version.clone(),
        boot_time: args.boot_time,
        think_time: args.think_time,
        unhealthy_file: args.unhealthy_file.clone(),
        pid_file: args.pid_file.clone(),
    };
    match changeover_adapters::demo_app::serve(opts).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("demo app on {}: {e}", args.listen);
            exit::FAILED
        }
    }
}
