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
}

#[derive(Subcommand)]
enum Command {
    /// Load the model repository and serve the V2 API over HTTP and gRPC.
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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INVARIANT_LOG").unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Tools(command) => invariant_cli::run(command),
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    use axum::ServiceExt;
    let mut config = args.config.load()?;
    if let Some(addr) = args.http_addr {
        config.server.http_addr = addr;
    }
    if let Some(addr) = args.grpc_addr {
        config.server.grpc_addr = addr;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let http_addr = config.server.http_addr.clone();
        let grpc_addr = config.server.grpc_addr.clone();
        let service = invariant_serving::InferenceService::build(config)?;
        invariant_serving::events::spawn_subscriber(service.clone());
        let readiness = service.server_readiness();
        let listener = tokio::net::TcpListener::bind(&http_addr)
            .await
            .with_context(|| format!("cannot listen on {http_addr}"))?;
        let grpc = if grpc_addr.is_empty() {
            None
        } else {
            let l = tokio::net::TcpListener::bind(&grpc_addr)
                .await
                .with_context(|| format!("cannot listen on {grpc_addr} (gRPC)"))?;
            tracing::info!(addr = %l.local_addr()?, "serving gRPC (inference.GRPCInferenceService)");
            Some(l)
        };
        tracing::info!(
            addr = %listener.local_addr()?,
            versions_ready = readiness.versions_ready,
            versions_failed = readiness.versions_failed,
            "serving"
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let grpc_task = grpc.map(|l| {
            let mut stop = stop_rx.clone();
            let svc = invariant_server::grpc::service(service.clone());
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(tokio_stream_of(l), async move {
                        let _ = stop.changed().await;
                    })
                    .await
            })
        });
        let http = axum::serve(listener, invariant_server::app(service).into_make_service())
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            })
            .await
            .context("HTTP server");
        if let Some(task) = grpc_task {
            task.await.context("gRPC server task")?.context("gRPC server")?;
        }
        http
    })
}

/// Accepted connections of `listener` as the stream tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((accepted, l))
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
