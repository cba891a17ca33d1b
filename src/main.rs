//! The `ci-worker` binary: configuration, logging and signals at the edge; the work is in the library.

use anyhow::{Context as _, Result};
use ci_worker::config::{Settings, CONFIG_FILE_ENV};
use ci_worker::shutdown::Shutdown;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

// Messages are allocated on one runtime thread and freed on another; glibc malloc spends a third of
// the completion path's CPU on that (docs/performance.md), mimalloc a fraction of it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ci-worker",
    version,
    about = "Pulsar/TDMQ ⇄ Tencent Cloud Infinite media-job worker"
)]
struct Cli {
    /// TOML configuration file; environment variables CI_WORKER__<SECTION>__<KEY> override it.
    #[arg(long, short = 'c', global = true, env = CONFIG_FILE_ENV)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume requests, submit CI jobs, turn completion events into results.
    Run,
    /// Serve a local Cloud Infinite job API that publishes completion events to Pulsar.
    #[cfg(feature = "emulator")]
    Emulator,
    /// Print the effective configuration (secrets redacted) and exit.
    Config,
    /// Measure throughput, latency and cost on the local stack (scripts/bench.sh runs it).
    #[cfg(feature = "bench")]
    Bench(Box<ci_worker::tools::bench::BenchOptions>),
    /// Publish a request (JSON file, `-` for stdin) and, with --wait, print its results as they arrive.
    Submit {
        file: PathBuf,
        /// Wait for the request's final result (and print every result for it).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Probe the worker's /readyz (or --url) once: exit 0 when ready, 1 with the reason otherwise.
    Health(ci_worker::tools::health::HealthOptions),
    /// Check every external dependency the configuration names (credentials, CI per bucket, the
    /// callback target, the Pulsar topics), read-only: one line per check, exit 0 only if none failed.
    Doctor {
        /// A bucket jobs are submitted for (`<name>-<APPID>`); repeat with --region, in pairs.
        #[arg(long = "bucket", value_name = "B")]
        buckets: Vec<String>,
        /// The region of the --bucket given at the same place (e.g. ap-guangzhou).
        #[arg(long = "region", value_name = "R")]
        regions: Vec<String>,
        /// One JSON document ({"passed", "checks": [{name, status, detail, fix}]}) instead of lines.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ci-worker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Command::Config = cli.command {
        print!("{}", settings.to_redacted_toml());
        return std::process::ExitCode::SUCCESS;
    }
    // A healthcheck prints one line of its own and needs neither logging nor a multi-thread runtime.
    if let Command::Health(options) = &cli.command {
        return ci_worker::tools::health::run(&settings, options);
    }
    // A CLI tool prints its results on stdout; keep the client's connection chatter out of the way.
    let quiet = match cli.command {
        Command::Submit { .. } | Command::Doctor { .. } => true,
        #[cfg(feature = "bench")]
        Command::Bench(_) => true,
        _ => false,
    };
    let log_writer = init_logging(&settings, quiet);
    for note in settings.notes() {
        tracing::warn!("configuration: {note}");
    }
    // Message handlers are polled inside their consume loop's task (see `worker::consume`), so one
    // poll runs the loop and a handler's whole call chain: debug builds, whose async frames are
    // large, overflow tokio's default 2 MiB. Only touched pages cost memory.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 * 1024 * 1024)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ci-worker: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(dispatch(cli.command, settings));
    // Tasks the libraries left behind (a producer's or consumer's close) get a moment, not a say
    // in when the process ends.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            // The log lines first, then the summary after them.
            drop(log_writer);
            eprintln!("ci-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, settings: Settings) -> Result<()> {
    match command {
        Command::Run => ci_worker::worker::run(settings, on_signal())
            .await
            .context("worker"),
        #[cfg(feature = "emulator")]
        Command::Emulator => ci_worker::emulator::run(settings, on_signal())
            .await
            .context("emulator"),
        Command::Submit {
            file,
            wait,
            timeout,
        } => {
            let payload = if file.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            ci_worker::tools::submit::submit_and_wait(
                &settings,
                payload,
                wait.then(|| std::time::Duration::from_secs(timeout)),
                on_signal(),
            )
            .await
        }
        #[cfg(feature = "bench")]
        Command::Bench(opts) => ci_worker::tools::bench::run(&settings, *opts).await,
        Command::Doctor {
            buckets,
            regions,
            json,
        } => doctor(&settings, &buckets, &regions, json).await,
        Command::Config | Command::Health(_) => unreachable!("handled before the runtime starts"),
    }
}

/// `ci-worker doctor`: the report on stdout; a failed check is an error (exit 1) after it.
async fn doctor(
    settings: &Settings,
    buckets: &[String],
    regions: &[String],
    json: bool,
) -> Result<()> {
    let targets = ci_worker::doctor::targets(buckets, regions)?;
    let vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    let report = ci_worker::doctor::run(settings, &targets, &vars).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_text());
    }
    if report.passed() {
        Ok(())
    } else {
        anyhow::bail!("doctor: some checks failed (the FAIL lines above say how to fix them)")
    }
}

/// The process's stop: triggered on SIGTERM or SIGINT.
fn on_signal() -> Shutdown {
    let shutdown = Shutdown::new();
    shutdown.trigger_on(shutdown_signal());
    shutdown
}

/// SIGTERM (Kubernetes, docker) or SIGINT (a terminal).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Logs go to stderr through a buffer written by a thread of its own, flushed whenever it has
/// written all lines queued: a line per event at info (the completion path logs every finished job)
/// written straight to stderr cost one `write` per line on the message path, a third of the
/// completion path's throughput. No line is dropped (a full queue makes the logger wait); the
/// returned guard flushes the rest when it is dropped, at exit.
fn init_logging(settings: &Settings, quiet: bool) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let default = if quiet {
        "warn,pulsar=error"
    } else {
        settings.log.level.as_str()
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("ci-worker-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colour codes only for a person at a terminal, not in files, pipes or `kubectl logs`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if settings.log.format == ci_worker::config::LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    guard
}
