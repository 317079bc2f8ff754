//! `invariant`: the deterministic inference server and its command-line tools.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use invariant_cli::ConfigArgs;

/// mimalloc instead of glibc's malloc: the request path allocates many small, short-lived
/// buffers, and glibc's malloc/free (with its consolidation) took a fifth of the server's CPU
/// on uncached inference.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Deterministic AI inference server: hash-verified models served over the Open Inference
/// Protocol (KServe V2), over HTTP and gRPC.
#[derive(Parser)]
#[command(name = "invariant", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: `json` (one object per line) or `text`; default json when stdout is not a
    /// terminal, text when it is.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// More log lines: tool commands log warnings only, `-v` adds info, `-vv` debug (the
    /// server logs info; `-v` adds debug). `INVARIANT_LOG` (a tracing filter) overrides both.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// Logs to stderr, in the chosen format, at the level the command and `-v` ask for.
fn init_logging(cli: &Cli) {
    let serving = matches!(cli.command, Command::Serve(_));
    let level = match (serving, cli.verbose) {
        (true, 0) => "info",
        (true, _) | (false, 2..) => "debug",
        (false, 0) => "warn",
        (false, 1) => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("INVARIANT_LOG")
        .unwrap_or_else(|_| format!("{level},ort=warn,rustls=error").into());
    let format = cli
        .log_format
        .unwrap_or(if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            LogFormat::Text
        } else {
            LogFormat::Json
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Load the model repository and serve the V2 API over HTTP and gRPC (with the advisory
    /// pipelines, the review queue and the ops dashboard at /dashboard).
    Serve(ServeArgs),
    #[command(flatten)]
    Tools(invariant_cli::Command),
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// HTTP listen address (overrides server.http_addr), e.g. 127.0.0.1:8000.
    #[arg(long)]
    http_addr: Option<String>,
    /// gRPC listen address (overrides server.grpc_addr), e.g. 127.0.0.1:8001; an empty value
    /// turns gRPC off.
    #[arg(long)]
    grpc_addr: Option<String>,
    /// DEVELOPMENT ONLY: switch API-key authentication off, so every caller may do anything.
    /// Refused unless every listen address is a loopback address; logged loudly at start.
    #[arg(long)]
    dev_no_auth: bool,
}

/// Whether `addr` (host:port) is a loopback address (`localhost` counts).
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn main() -> Result<()> {
    // Before any thread exists: the server, like every command, sends nothing to anyone its
    // configuration does not name, and ONNX Runtime's builds would.
    invariant_engine::onnx::opt_out_of_telemetry();
    let cli = Cli::parse();
    init_logging(&cli);
    // Every HTTPS client of this process (the object store, `--server` calls) uses ring.
    invariant_remote::install_tls_provider();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Tools(command) => invariant_cli::run(command),
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let mut config = args.config.load()?;
    if let Some(addr) = args.http_addr {
        config.server.http_addr = addr;
    }
    if let Some(addr) = args.grpc_addr {
        config.server.grpc_addr = addr;
    }
    if args.dev_no_auth {
        let addrs = [&config.server.http_addr, &config.server.grpc_addr];
        if let Some(open) = addrs.iter().find(|a| !a.is_empty() && !is_loopback(a)) {
            anyhow::bail!(
                "--dev-no-auth is refused on {open}: authentication may be switched off on loopback addresses only"
            );
        }
        config.auth.disabled_for_development = true;
        tracing::warn!(
            "AUTHENTICATION IS OFF (--dev-no-auth): every caller on this host may infer, read and write features \
             and administer the server; never run this way outside development"
        );
    }
    if config.server.tls.is_none() && !config.server.allow_plaintext {
        let addrs = [&config.server.http_addr, &config.server.grpc_addr];
        if let Some(open) = addrs.iter().find(|a| !a.is_empty() && !is_loopback(a)) {
            anyhow::bail!(
                "{open} is not a loopback address and [server.tls] is not configured: configure TLS, or set \
                 server.allow_plaintext = true when a TLS-terminating proxy sits in front"
            );
        }
    }
    // One server per state directory: its feature store, audit chains and control files are
    // this server's. Replicas each have their own and share the control state through Redis.
    let _claim = invariant_core::durable::claim(&config.state_dir, "server").map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            anyhow::anyhow!(
                "state_dir {} is in use by another server ({e}). Give each server its own state_dir; \
                 replicas share the registry, governance and API keys through Redis with \
                 [control] backend = \"redis\" (docs/replicas.md)",
                config.state_dir.display()
            )
        } else {
            anyhow::anyhow!("cannot claim state_dir {}: {e}", config.state_dir.display())
        }
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let http_addr = config.server.http_addr.clone();
        let grpc_addr = config.server.grpc_addr.clone();
        let service = invariant_serving::InferenceService::build(config)?;
        invariant_serving::events::spawn_subscriber(service.clone());
        let readiness = service.server_health().await;
        let listener = tokio::net::TcpListener::bind(&http_addr)
            .await
            .with_context(|| format!("cannot listen on {http_addr}"))?;
        let grpc = if grpc_addr.is_empty() {
            None
        } else {
            let l = tokio::net::TcpListener::bind(&grpc_addr)
                .await
                .with_context(|| format!("cannot listen on {grpc_addr} (gRPC)"))?;
            tracing::info!(addr = %l.local_addr()?, "serving gRPC (inference.GRPCInferenceService, invariant.advisory.v1.AdvisoryService)");
            Some(l)
        };
        if !service.authority.is_disabled() && service.authority.active_keys() == 0 {
            tracing::warn!(
                keys = %service.config.keys_path().display(),
                "no API keys: every request except the health checks is refused with 401; create one with `invariant keys create`"
            );
        }
        tracing::info!(
            addr = %listener.local_addr()?,
            auth = if service.authority.is_disabled() { "off (--dev-no-auth)" } else { "api keys" },
            versions_ready = readiness.versions_ready,
            versions_failed = readiness.versions_failed,
            "serving"
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = &service.config.server;
        let mut http_limits = invariant_server::listener::ConnectionLimits::of(server, true);
        if let Some(fds) = invariant_server::listener::descriptor_limit() {
            // Both listeners, the model files, Redis and the logs share the descriptors.
            let room = fds.saturating_sub(128) / if grpc.is_some() { 2 } else { 1 };
            if room < http_limits.max_connections {
                tracing::warn!(
                    configured = http_limits.max_connections,
                    descriptor_limit = fds,
                    using = room.max(1),
                    "server.max_connections is above what the descriptor limit allows per listener"
                );
                http_limits.max_connections = room.max(1);
            }
        }
        let mut grpc_limits = invariant_server::listener::ConnectionLimits::of(server, false);
        grpc_limits.max_connections = http_limits.max_connections;
        let drain = std::time::Duration::from_millis(server.http_request_timeout_ms);
        let (http_tls, grpc_tls) = match &server.tls {
            None => (None, None),
            Some(settings) => {
                use invariant_server::tls::{Reloadable, GRPC_ALPN, HTTP_ALPN};
                let http = Reloadable::new(settings.clone(), &HTTP_ALPN)?;
                let grpc = Reloadable::new(settings.clone(), &GRPC_ALPN)?;
                invariant_server::tls::reload_on_sighup(vec![http.clone(), grpc.clone()]);
                tracing::info!(
                    cert = %settings.cert.display(),
                    client_certificates = settings.client_ca.is_some(),
                    "TLS on both listeners (reloaded on SIGHUP)"
                );
                (Some(http), Some(grpc))
            }
        };
        let grpc_task = grpc.map(|l| {
            let mut stop = stop_rx.clone();
            let routes = tonic::service::Routes::new(invariant_server::grpc::service(service.clone()))
                .add_service(invariant_server::grpc::advisory::service(service.clone()))
                .prepare();
            tokio::spawn(invariant_server::listener::serve(
                l,
                routes,
                grpc_limits,
                grpc_tls,
                async move {
                    let _ = stop.changed().await;
                },
                drain,
            ))
        });
        invariant_server::listener::serve(
            listener,
            invariant_server::app(service),
            http_limits,
            http_tls,
            async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            },
            drain,
        )
        .await;
        if let Some(task) = grpc_task {
            task.await.context("gRPC server task")?;
        }
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
