//! The `gateway` command line. The only place `anyhow` is used.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::config::{self, ConfigError};
use gateway::snapshot::Snapshot;

// A proxy allocates and frees many small, short-lived buffers per request (header maps,
// request state); mimalloc serves those with less CPU than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gateway", version, about = "Strangler-fig API gateway: monolith or extracted service, per path")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic with the given config. Logs are JSON lines on stderr.
    Run {
        /// The routes file.
        #[arg(long, default_value = "routes.toml")]
        config: PathBuf,
    },
    /// Validate a routes file: exit 0, or exit 1 listing every error as FILE:LINE:COL.
    Check {
        /// The routes file.
        file: PathBuf,
        /// Also preview what the edit from this (current) file does to users.
        #[arg(long)]
        against: Option<PathBuf>,
    },
    /// Which route a request matches, which side answers it, the caller's bucket, and why.
    Explain {
        /// The routes file.
        #[arg(long, default_value = "routes.toml")]
        config: PathBuf,
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// A claim of the caller's verified token, NAME=VALUE (repeatable).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// A request header, NAME=VALUE (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The client's address.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// A running gateway's admin listener (http://HOST:PORT): use its effective dial
        /// (a ramp's position) and breaker states instead of the file's.
        #[arg(long)]
        admin: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start demo upstreams on loopback and the gateway in front of them.
    Demo {
        /// The routes file (the bundled one, run from the repository root).
        #[arg(long, default_value = "routes.toml")]
        config: PathBuf,
    },
    /// The migration progress table of a running gateway.
    Report {
        /// The gateway's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// Print the JSON of /admin/migration instead.
        #[arg(long)]
        json: bool,
    },
    /// Mint a signed JWT to try protected routes with (prints it on stdout).
    Token {
        /// Private key in PEM (RSA, EC or Ed25519).
        #[arg(long)]
        key: PathBuf,
        /// Signing algorithm.
        #[arg(long, default_value = "ES256")]
        alg: String,
        /// `kid` header, naming the key in the gateway's JWKS.
        #[arg(long)]
        kid: Option<String>,
        /// `sub` claim.
        #[arg(long)]
        sub: Option<String>,
        /// `iss` claim.
        #[arg(long)]
        iss: Option<String>,
        /// `aud` claim.
        #[arg(long)]
        aud: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Extra claim NAME=VALUE (repeatable); JSON values (numbers, arrays) are kept as such.
        #[arg(long = "claim")]
        claims: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { file, against } => return check(&file, against.as_deref()),
        Command::Explain { config, method, path, claims, headers, ip, admin, json } => {
            let described = Described { method, path, claims, headers, ip, admin };
            return explain(&config, described, json);
        }
        Command::Run { config } => run(&config, false),
        Command::Demo { config } => run(&config, true),
        Command::Report { admin, json } => gateway::cli::report::fetch(&admin)
            .map(|report| {
                if json {
                    println!("{}", serde_json::to_string_pretty(&report).expect("JSON serialises"));
                } else {
                    print!("{}", gateway::cli::report::render(&report));
                }
            })
            .map_err(Into::into),
        Command::Token { key, alg, kid, sub, iss, aud, ttl, claims } => {
            let request = gateway::cli::token::TokenRequest {
                algorithm: alg,
                kid,
                subject: sub,
                issuer: iss,
                audience: aud,
                ttl_seconds: ttl,
                claims,
            };
            gateway::cli::token::mint(&key, &request, gateway::cli::demo::now_unix())
                .map(|token| println!("{token}"))
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &Path, against: Option<&Path>) -> ExitCode {
    let snapshot = match config::load(file, 1) {
        Ok(snapshot) => snapshot,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{}: ok ({} routes, {} upstreams, checksum {})",
        file.display(),
        snapshot.routes.len() - 1,
        snapshot.upstreams.len(),
        &snapshot.meta.checksum[..12]
    );
    for source in &snapshot.jwks_sources {
        // Checked offline: the URL's form and TLS settings, not what it serves.
        eprintln!(
            "note: jwks_url {} was not fetched; its keys (and any kid they share with another source) are checked when the gateway runs",
            source.keys.settings().source
        );
    }
    if let Some(old_path) = against {
        let old = match config::load(old_path, 1) {
            Ok(old) => old,
            Err(e) => {
                eprintln!("cannot compare against {}:\n{e}", old_path.display());
                return ExitCode::FAILURE;
            }
        };
        println!("changes from {}:", old_path.display());
        for line in gateway::cli::preview::preview(&old, &snapshot) {
            println!("  {line}");
        }
    }
    ExitCode::SUCCESS
}

fn pairs(values: Vec<String>, what: &str) -> Result<Vec<(String, String)>, String> {
    values
        .into_iter()
        .map(|v| {
            v.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{what} {v:?} is not NAME=VALUE"))
        })
        .collect()
}

/// The request `gateway explain` is asked about, as given on the command line.
struct Described {
    method: String,
    path: String,
    claims: Vec<String>,
    headers: Vec<String>,
    ip: Option<std::net::IpAddr>,
    admin: Option<String>,
}

fn explain(config: &Path, described: Described, json: bool) -> ExitCode {
    let Described { method, path, claims, headers, ip, admin } = described;
    let snapshot = match config::load(config, 1) {
        Ok(snapshot) => snapshot,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (claims, headers) = match (pairs(claims, "--claim"), pairs(headers, "--header")) {
        (Ok(c), Ok(h)) => (c, h),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let live = match admin.as_deref().map(live_gateway).transpose() {
        Ok(live) => live,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let request = gateway::cli::explain::ExplainRequest { method, path, claims, headers, ip, live };
    match gateway::cli::explain::explain(&snapshot, &request) {
        Ok(explanation) if json => {
            println!("{}", serde_json::to_string_pretty(&explanation).expect("an explanation serialises"));
            ExitCode::SUCCESS
        }
        Ok(explanation) => {
            print!("{explanation}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A running gateway's dials and breakers, from its `/admin/migration`.
fn live_gateway(admin: &str) -> anyhow::Result<gateway::cli::explain::LiveGateway> {
    let report = gateway::cli::report::fetch(admin)?;
    gateway::cli::explain::LiveGateway::from_migration(admin, &report)
        .map_err(|e| anyhow::anyhow!("cannot read {admin}/admin/migration: {e}"))
}

fn load_or_exit(path: &Path) -> anyhow::Result<Snapshot> {
    config::load(path, 1).map_err(explain_config_error)
}

fn explain_config_error(e: ConfigError) -> anyhow::Error {
    anyhow::anyhow!("invalid config, nothing started:\n{e}")
}

/// `gateway run` and `gateway demo`: take inherited sockets (an upgrade's, systemd's)
/// first, while this is the only thread, then load the config and serve.
fn run(config: &Path, demo: bool) -> anyhow::Result<()> {
    use gateway::server::listeners::InheritedListeners;
    let relaunch = gateway::server::upgrade::Relaunch::of_this_process().context("cannot find this binary")?;
    let mut inherited = InheritedListeners::from_env().unwrap_or_else(|e| {
        eprintln!("gateway: {e}; binding the listeners instead");
        InheritedListeners::none()
    });
    match load_or_exit(config) {
        Ok(snapshot) => serve(snapshot, demo, inherited, relaunch),
        Err(e) => {
            inherited.report_failure(&format!("{e:#}"));
            Err(e)
        }
    }
}

fn serve(
    snapshot: Snapshot,
    demo: bool,
    mut inherited: gateway::server::listeners::InheritedListeners,
    relaunch: gateway::server::upgrade::Relaunch,
) -> anyhow::Result<()> {
    // One worker: a current-thread runtime. The client-connection task and the pooled
    // upstream-connection task hand requests to each other twice per request, and on one
    // thread that hand-off needs no cross-thread wake-ups (about 10% less CPU per request
    // in bench/compare.py).
    let mut builder = if snapshot.server.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(snapshot.server.workers);
        builder
    };
    let runtime =
        builder.thread_name("gateway-worker").enable_all().build().context("cannot start the async runtime")?;
    let _log_guard = gateway::telemetry::init_logging();
    runtime.block_on(async move {
        if demo {
            let upstreams = gateway::cli::demo::start_upstreams(&snapshot).await?;
            for (name, addr) in upstreams {
                println!("demo upstream {name:<10} http://{addr}");
            }
        }
        let running = match gateway::server::start_with(snapshot, &mut inherited).await {
            Ok(running) => running,
            Err(e) => {
                inherited.report_failure(&e.to_string());
                return Err(e.into());
            }
        };
        if let Some(from) = inherited.upgrading_from()
            && !running.wait_ready(gateway::server::upgrade::READY_TIMEOUT).await
        {
            // The old process keeps serving; this one gives back what it accepted.
            let reason = format!("not ready within {}s", gateway::server::upgrade::READY_TIMEOUT.as_secs());
            tracing::error!(from, "upgrade: {reason}; stopping, the old process keeps serving");
            inherited.report_failure(&reason);
            running.shutdown();
            running.wait().await;
            anyhow::bail!("upgrade: {reason}");
        }
        let (listen, tls_listen) =
            (running.listen_addr.map(|a| a.to_string()), running.tls_addr.map(|a| a.to_string()));
        tracing::info!(
            listen = listen.as_deref(),
            tls_listen = tls_listen.as_deref(),
            admin = %running.admin_addr,
            version = running.gateway.snapshot().meta.version,
            pid = std::process::id(),
            upgraded_from = inherited.upgrading_from(),
            "gateway started"
        );
        gateway::server::upgrade::announce_ready(&running, &mut inherited);
        drop(inherited);
        if demo {
            let snapshot = running.gateway.snapshot();
            if let Some(listen) = running.listen_addr {
                println!("gateway            http://{listen}");
            }
            if let Some(tls) = running.tls_addr {
                println!("gateway            https://{tls}");
            }
            println!("admin              http://{}", running.admin_addr);
            println!("\nTry:");
            for line in
                gateway::cli::demo::try_lines(&snapshot, running.listen_addr, running.admin_addr, running.tls_addr)
            {
                println!("  {line}");
            }
            if let Some(origin) = gateway::cli::demo::Origin::pick(&snapshot, running.listen_addr, running.tls_addr) {
                for line in gateway::cli::demo::token_lines(&snapshot, &origin) {
                    println!("{line}");
                }
            }
            println!("\nCtrl-C stops the demo.");
        }
        match wait_for_stop_signal(&running, &relaunch).await? {
            Stop::Signal => {
                tracing::info!("stop signal received");
                gateway::server::upgrade::announce_stopping();
            }
            Stop::Upgraded { pid } => {
                tracing::info!(new_pid = pid, "upgrade: the new process serves; draining this one")
            }
        }
        let pid_file = running.gateway.snapshot().server.pid_file.clone();
        running.shutdown();
        running.wait().await;
        if let Some(path) = pid_file {
            gateway::server::upgrade::remove_pid_file(&path);
        }
        tracing::info!("gateway stopped");
        Ok(())
    })
}

/// Why the gateway stops.
enum Stop {
    /// SIGTERM or SIGINT.
    Signal,
    /// A binary upgrade's new process (this pid) serves now.
    Upgraded { pid: u32 },
}

/// Waits for SIGTERM (orchestrators) or SIGINT (Ctrl-C); meanwhile SIGHUP re-reads the
/// config and SIGUSR2 upgrades to the binary on disk.
async fn wait_for_stop_signal(
    running: &gateway::server::RunningGateway,
    relaunch: &gateway::server::upgrade::Relaunch,
) -> anyhow::Result<Stop> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("cannot watch SIGUSR2")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(Stop::Signal),
            _ = int.recv() => return Ok(Stop::Signal),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: re-reading the config");
                running.trigger_reload();
            }
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: upgrading to the binary on disk");
                match relaunch.upgrade(running).await {
                    Ok(pid) => return Ok(Stop::Upgraded { pid }),
                    Err(e) => tracing::error!(error = %e, "upgrade failed; this process keeps serving"),
                }
            }
        }
    }
}
