//! `-v` / `-vv`: the adapters' `tracing` records on stderr. `-v` shows
//! every balancer call and answer, every SSH command with its exit and
//! timing, every store and Consul request (debug); `-vv` adds the wire
//! detail (trace). Without `-v`, only warnings. Secrets are never recorded
//! (the adapters log no token, password or webhook URL).

use tracing_subscriber::filter::LevelFilter;

pub fn init(verbose: u8) {
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    // Only changeover's own crates below WARN: a dependency's trace is noise.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::WARN)
        .with_target("changeover", level)
        .with_target("changeover_adapters", level)
        .with_target("changeover_core", level);
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(|| crate::progress::AboveBars(std::io::stderr()))
                .with_target(false)
                .with_ansi(false)
                .with_timer(tracing_subscriber::fmt::time::uptime()),
        )
        .with(filter)
        .try_init();
}
