//! The operator and CI tools of the `invariant` binary, apart from serving: the determinism
//! gate (`gate`), golden vector recording (`golden record`), model import and the registry
//! commands (`models …`, on the repository or a running server), and the feature store's
//! `features plan|apply|materialize`, and corridor governance (`switches …`, `corridors …`,
//! `flags …`), and API keys (`keys …`). Transport-free: it works on the repository through the
//! serving core, or on a running server through its HTTP admin API.

pub mod audit_cli;
pub mod gate;
pub mod governance_cli;
pub mod import;
pub mod keys_cli;
pub mod models_cli;
pub mod pipeline_gate;
pub mod review_cli;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use invariant_serving::config::Config;
use std::path::PathBuf;

/// Every tool command of the `invariant` binary.
#[derive(Subcommand)]
pub enum Command {
    /// The model registry: list, show, import, verify, stage, canary, promote, rollback,
    /// deprecate, history (on the repository, or a running server with --server).
    #[command(subcommand)]
    Models(models_cli::ModelsCommand),
    /// The CI determinism gate: hashes, golden bits, repeatability, batch and thread
    /// invariance (and a running server with --server) for every version; exits 1 on any
    /// violation.
    Gate(GateArgs),
    /// Golden vectors: record the exact output bits of a version.
    #[command(subcommand)]
    Golden(GoldenCommand),
    /// The feature store: plan, apply, bulk loading.
    #[command(subcommand)]
    Features(FeaturesCommand),
    /// Kill switches: list, kill, revive (global, market, corridor, model, model in a
    /// corridor).
    #[command(subcommand)]
    Switches(governance_cli::SwitchesCommand),
    /// Corridor governance and health: status, health (of a running server), freeze, unfreeze,
    /// degradation level, rate limits.
    #[command(subcommand)]
    Corridors(governance_cli::CorridorsCommand),
    /// Feature flags per scope: list, set, clear.
    #[command(subcommand)]
    Flags(governance_cli::FlagsCommand),
    /// API keys: create (bound to corridors and roles; the key is shown once), list, revoke.
    #[command(subcommand)]
    Keys(keys_cli::KeysCommand),
    /// The audit trail: verify the hash chains, show records, replay retained inferences.
    #[command(subcommand)]
    Audit(audit_cli::AuditCommand),
    /// The human review queue of a corridor (through a running server): list, submit, show,
    /// claim, release, resolve, escalate, summary.
    #[command(subcommand)]
    Review(review_cli::ReviewCommand),
}

/// `invariant features …`
#[derive(Subcommand)]
pub enum FeaturesCommand {
    /// Validate the feature repository and show what applying it would change; exit 1 on an
    /// invalid definition or an incompatible change (one that needs a new schema_version).
    Plan {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate and record the feature repository as the definitions the server serves
    /// (refused on an incompatible change); restart the server to pick them up.
    Apply {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load rows of a feature view from a CSV or Parquet file into one corridor (the server must not hold
    /// the store file open): batched writes, a progress bar, and a summary with every rejected
    /// row's line and reason.
    Materialize {
        #[command(flatten)]
        config: ConfigArgs,
        /// The embedded store file (overrides feature_store).
        #[arg(long)]
        feature_store: Option<PathBuf>,
        /// CSV file (a header naming the join key, event_timestamp and features), or a Parquet
        /// file (`.parquet`, uncompressed or Snappy) with columns of those names.
        #[arg(long = "from", value_name = "FILE")]
        from: PathBuf,
        /// Feature view.
        #[arg(long)]
        view: String,
        /// Corridor.
        #[arg(long)]
        corridor: String,
        /// Rows per transaction (per request with --server; at most the server's
        /// limits.request.max_push_rows).
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        /// Load into this running server instead of the store file: the rows are checked here
        /// and sent in batches to its `/corridors/{corridor}/write-to-online-store` with the key
        /// from INVARIANT_API_KEY (`features:write` in the corridor); the server stays the only
        /// writer of its store, and audits each batch.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Reads a CSV or Parquet file (by its extension) of rows of `view`, with a progress bar, and
/// hands the checked rows to `write` a batch at a time.
fn load_file(
    from: &std::path::Path,
    defs: &invariant_featurestore::defs::Definitions,
    view: &str,
    batch: usize,
    write: impl invariant_featurestore::materialize::RowSink,
) -> Result<invariant_featurestore::materialize::MaterializeReport> {
    use invariant_featurestore::materialize::{materialize_csv_into, materialize_parquet_into};
    let file = std::fs::File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    let parquet = from.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    let report = if parquet {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("materializing {spinner} {pos} rows {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        let report = materialize_parquet_into(defs, view, file, batch, |n| bar.set_position(n), write);
        bar.finish_and_clear();
        report
    } else {
        let bar = indicatif::ProgressBar::new(file.metadata()?.len());
        bar.set_style(
            indicatif::ProgressStyle::with_template("materializing [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let report = materialize_csv_into(
            defs,
            view,
            std::io::BufReader::new(file),
            batch,
            |b| bar.set_position(b),
            write,
        );
        bar.finish_and_clear();
        report
    };
    Ok(report?)
}

/// Loads a file into a running server: checked here, written there in batches (the server
/// checks again, writes with the same rule and audits each batch).
fn materialize_to_server(
    config: &Config,
    server: &str,
    from: &std::path::Path,
    view: &str,
    corridor: &str,
    batch: usize,
) -> Result<invariant_featurestore::materialize::MaterializeReport> {
    let defs = invariant_featurestore::load_definitions(&config.feature_repository, &config.features_applied_path())?;
    let path = format!("/corridors/{corridor}/write-to-online-store");
    load_file(from, &defs, view, batch, |v, rows| {
        let request = invariant_featurestore::materialize::push_request(&defs, v, rows)?;
        let body = serde_json::json!({ "feature_view_name": request.feature_view, "df": request.df });
        let reply = models_cli::call(server, reqwest::Method::POST, &path, Some(body))
            .map_err(|e| invariant_featurestore::FeatureError::Store(format!("{server}: {e:#}")))?;
        Ok((
            reply["written"].as_u64().unwrap_or(0),
            reply["ignored"].as_u64().unwrap_or(0),
        ))
    })
}

/// Prints a materialization summary.
fn print_materialization(report: &invariant_featurestore::materialize::MaterializeReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!(
        "{} rows read, {} written, {} ignored (older or identical), {} rejected; {:.1} s, {:.0} rows/s",
        report.rows, report.written, report.ignored, report.rejected, report.seconds, report.rows_per_second
    );
    for r in &report.rejections {
        println!("  line {}: {}", r.line, r.reason);
    }
    if report.rejected as usize > report.rejections.len() {
        println!(
            "  ... and {} more rejected rows",
            report.rejected as usize - report.rejections.len()
        );
    }
    Ok(())
}

/// `invariant gate`
#[derive(Args)]
pub struct GateArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Golden vector directory (overrides golden_vectors).
    #[arg(long)]
    golden_vectors: Option<PathBuf>,
    /// Versions to check, as MODEL or MODEL:VERSION (default: every version).
    #[arg(value_name = "MODEL[:VERSION]")]
    select: Vec<String>,
    /// Also send every golden vector to this running server and compare its bits with the
    /// in-process engine's, e.g. http://127.0.0.1:8000 (the API key is read from
    /// INVARIANT_API_KEY; it needs the `infer` role in the corridor the vectors use).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Print the portability report instead: per version its engine, whether its bits are
    /// the same on every CPU, the CPU classes it has golden vectors for, and its result on
    /// this host's class.
    #[arg(long)]
    portability: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `invariant golden …`
#[derive(Subcommand)]
pub enum GoldenCommand {
    /// Compute golden vectors of MODEL VERSION and write golden-vectors/MODEL/VERSION.jsonl
    /// (with --cpu-class, golden-vectors/MODEL/VERSION@CLASS.jsonl).
    Record {
        #[command(flatten)]
        config: ConfigArgs,
        /// Golden vector directory (overrides golden_vectors).
        #[arg(long)]
        golden_vectors: Option<PathBuf>,
        /// Model name.
        model: String,
        /// Model version.
        #[arg(value_name = "VERSION")]
        model_version: String,
        /// Record the vectors of a version that is not portable (ONNX Runtime) for this
        /// host's CPU class (x86-64-v1 … x86-64-v4; must be this host's), beside its other
        /// classes: the version then verifies, and serves, on hosts of that class too.
        #[arg(long, value_name = "CLASS")]
        cpu_class: Option<String>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Record the golden vectors of advisory pipeline NAME VERSION
    /// (golden-vectors/pipelines/NAME/VERSION.jsonl): each case of --cases (JSONL,
    /// `{"id": "...", "facts": {...}}` per line) scored by the pipeline's pinned model versions
    /// in-process, with its advisory.
    RecordPipeline {
        #[command(flatten)]
        config: ConfigArgs,
        /// Golden vector directory (overrides golden_vectors).
        #[arg(long)]
        golden_vectors: Option<PathBuf>,
        /// The pipeline.
        name: String,
        /// Its version.
        #[arg(value_name = "VERSION")]
        pipeline_version: String,
        /// The cases to record.
        #[arg(long, value_name = "FILE")]
        cases: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// Where the configuration comes from.
#[derive(Args, Clone)]
pub struct ConfigArgs {
    /// Configuration file (default: ./invariant.toml if present, else the embedded defaults).
    #[arg(long, env = "INVARIANT_CONFIG")]
    config: Option<PathBuf>,
    /// Model repository directory (overrides model_repository).
    #[arg(long)]
    model_repository: Option<PathBuf>,
    /// State directory (overrides state_dir): where the file control backend keeps the
    /// registry, governance and key documents.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

impl ConfigArgs {
    /// The configuration these arguments name (file, then environment, then flags).
    pub fn load(&self) -> Result<Config> {
        let file = self.config.clone().or_else(|| {
            let local = PathBuf::from("invariant.toml");
            local.exists().then_some(local)
        });
        let mut config = Config::load(file.as_deref())?;
        if let Some(repo) = &self.model_repository {
            config.model_repository = repo.clone();
        }
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
        tracing::info!(
            config = %file.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "embedded defaults".into()),
            repository = %config.model_repository.display(),
            "configuration loaded"
        );
        Ok(config)
    }
}

/// Runs one tool command.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Models(command) => models_cli::run(command),
        Command::Switches(command) => governance_cli::switches(command),
        Command::Corridors(command) => governance_cli::corridors(command),
        Command::Flags(command) => governance_cli::flags(command),
        Command::Keys(command) => keys_cli::run(command),
        Command::Audit(command) => audit_cli::run(command),
        Command::Review(command) => review_cli::run(command),
        Command::Gate(args) => gate(args),
        Command::Features(FeaturesCommand::Plan { config, json }) => features_plan(config, json, false),
        Command::Features(FeaturesCommand::Apply { config, json }) => features_plan(config, json, true),
        Command::Features(FeaturesCommand::Materialize {
            config,
            feature_store,
            from,
            view,
            corridor,
            batch,
            server,
            json,
        }) => {
            let mut config = config.load()?;
            let corridor = config
                .corridor(&corridor)
                .map(|c| c.id.to_string())
                .with_context(|| format!("unknown corridor '{corridor}'"))?;
            let report = match server {
                Some(server) => materialize_to_server(&config, &server, &from, &view, &corridor, batch)?,
                None => {
                    if let Some(path) = feature_store {
                        config.feature_store = path.display().to_string();
                    }
                    let store = config.open_feature_store().with_context(|| {
                        format!(
                            "opening {} (is a server holding it? load through it with --server)",
                            config.feature_store_path().display()
                        )
                    })?;
                    let report = load_file(&from, &store.defs, &view, batch, |v, rows| {
                        let outcomes = store.write_rows(&corridor, v, rows)?;
                        let written = outcomes
                            .iter()
                            .filter(|o| **o == invariant_featurestore::store::WriteOutcome::Written)
                            .count() as u64;
                        Ok((written, outcomes.len() as u64 - written))
                    })?;
                    let audit = invariant_serving::audit::AuditLog::open(&config)
                        .with_context(|| format!("opening the audit trail {}", config.audit_dir().display()))?;
                    let actor = std::env::var("USER").unwrap_or_else(|_| "cli".into());
                    let chain = (!store.is_global(&view)).then_some(corridor.as_str());
                    audit.record(
                        chain,
                        "materialization",
                        &serde_json::json!({
                            "actor": actor, "feature_view": view, "source": from.display().to_string(),
                            "rows": report.rows, "written": report.written, "ignored": report.ignored,
                            "rejected": report.rejected,
                        }),
                    )?;
                    report
                }
            };
            print_materialization(&report, json)
        }
        Command::Golden(GoldenCommand::Record {
            config,
            golden_vectors,
            model,
            model_version: version,
            cpu_class,
            force,
        }) => {
            let mut config = config.load()?;
            if let Some(dir) = golden_vectors {
                config.golden_vectors = dir;
            }
            if invariant_remote::is_remote(&config.golden_vectors.to_string_lossy()) {
                anyhow::bail!(
                    "golden_vectors is {}: record into a local directory (--golden-vectors DIR), then upload the file",
                    config.golden_vectors.display()
                );
            }
            invariant_serving::remote::Mirrors::open(&mut config)?;
            let (path, n) = gate::record_golden(&config, &model, &version, cpu_class.as_deref(), force)?;
            println!("recorded {n} golden vectors of {model} {version} in {}", path.display());
            Ok(())
        }
        Command::Golden(GoldenCommand::RecordPipeline {
            config,
            golden_vectors,
            name,
            pipeline_version,
            cases,
            force,
        }) => {
            let mut config = config.load()?;
            if let Some(dir) = golden_vectors {
                config.golden_vectors = dir;
            }
            for place in [&config.model_repository, &config.golden_vectors] {
                if invariant_remote::is_remote(&place.to_string_lossy()) {
                    anyhow::bail!(
                        "{} is on object storage: record into a local repository and golden directory, then upload",
                        place.display()
                    );
                }
            }
            let (path, n) = pipeline_gate::record_pipeline(&config, &name, &pipeline_version, &cases, force)?;
            println!(
                "recorded {n} cases of pipeline {name} {pipeline_version} in {}",
                path.display()
            );
            Ok(())
        }
    }
}

fn gate(args: GateArgs) -> Result<()> {
    let mut config = args.config.load()?;
    if let Some(dir) = args.golden_vectors {
        config.golden_vectors = dir;
    }
    // An s3:// repository or golden store is gated on its verified local copy.
    invariant_serving::remote::Mirrors::open(&mut config)?;
    let options = gate::GateOptions {
        selectors: args.select,
        server: args.server,
    };
    let report = gate::run_gate(&config, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.portability {
        print!("{}", report.render_portability());
    } else {
        print!("{}", report.render());
    }
    if !report.passed {
        let failed = report.versions.iter().filter(|v| !v.passed).count();
        let pipelines = report.pipelines.iter().filter(|p| !p.passed).count();
        anyhow::bail!(
            "determinism gate failed: {failed} version(s) and {pipelines} pipeline version(s) with violations"
        );
    }
    Ok(())
}

/// `features plan` (apply = false) and `features apply`.
fn features_plan(args: ConfigArgs, json: bool, apply: bool) -> Result<()> {
    use invariant_featurestore::plan;
    let config = args.load()?;
    let defs = invariant_featurestore::defs::Definitions::load_dir(&config.feature_repository)?;
    let path = config.features_applied_path();
    let changes = if apply {
        plan::apply(&path, &defs)?
    } else {
        let old = plan::Applied::load(&path)?.map(|a| a.definitions());
        plan::plan(old.as_ref(), &defs)
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
    } else if changes.is_empty() {
        println!("no changes");
    } else {
        for c in &changes {
            let flag = if c.incompatible {
                "  INCOMPATIBLE: bump schema_version"
            } else {
                ""
            };
            println!("{:<7} {:<16} {:<40} {}{flag}", c.action, c.kind, c.name, c.detail);
        }
    }
    if apply && !json {
        println!("applied {} change(s) to {}", changes.len(), path.display());
    } else if !apply && changes.iter().any(|c| c.incompatible) {
        anyhow::bail!("the plan has incompatible changes");
    }
    Ok(())
}
