//! Command-line interface: clap commands and help, exit codes, logging setup,
//! and the commands that need no deployer (`config`, `status`).
//!
//! The order is fixed: parse → logging → load config (exit 2, nothing on disk
//! touched) → open the state directory (exit 3) → command.

use crate::config::{self, schema::PackageSchema, EffectiveConfig, FlagValue, LoadOptions};
use crate::ids::Alias;
use crate::state::StateDir;
use crate::store::{Store, StoreError};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Re-exported: the exit codes live in [`crate::exit`].
pub use crate::exit::Exit;

const LONG_ABOUT: &str = "\
sysdeploy makes sure the system services of this node (registry, trust graph, IPFS adapter, \
decider, ...) and their periodic spells are deployed as configured, and hosts them: \
`sysdeploy run` at node start is all an operator needs.

Configuration, lowest to highest precedence:
  1. defaults embedded in the binary (no file needed)
  2. a TOML file: --config PATH or env SYSDEPLOY_CONFIG; with
     --config-section system_services only [system_services] and [node]
     are read from it (an existing node's own config file)
  3. systemd credentials: a secret key's value in a file named by its
     dotted key in the credentials directory (LoadCredential=)
  4. env vars: SYSDEPLOY_ prefix, __ between levels, e.g.
     SYSDEPLOY_NODE__API_LISTEN=0.0.0.0:7200
     SYSDEPLOY_SYSTEM_SERVICES__ENABLE=registry,decider
     a secret key may instead name a file (its env name + _FILE, or
     KEY_file = PATH in the TOML file; mode 0600)
  5. flags: --state-dir, --api-listen, --set KEY=VALUE
`sysdeploy config` prints the result and where each value came from.

Exit codes: 0 success, 1 deployment failed, 2 invalid configuration or arguments, \
3 state store unusable (locked by another process, corrupt, or newer schema).";

/// Parsed command line.
#[derive(Debug, Parser)]
#[command(name = "sysdeploy", version, about = "Declarative boot-time deployer and host of a node's system services and spells", long_about = LONG_ABOUT)]
pub struct Cli {
    /// TOML config file (optional; also env SYSDEPLOY_CONFIG). Without one
    /// the node runs on the embedded defaults plus env and flags.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Read only this section of the config file (and [node] next to it),
    /// ignoring its other top-level keys: point --config at an existing
    /// node's own config file. The only section is system_services. Also env
    /// SYSDEPLOY_CONFIG_SECTION.
    #[arg(long, global = true, value_name = "SECTION")]
    pub config_section: Option<String>,

    /// State directory: node key, state store, components, service data
    /// [config: node.state_dir, default: .sysdeploy]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Address of the HTTP API [config: node.api_listen, default: 127.0.0.1:7200]
    #[arg(long, global = true, value_name = "ADDR")]
    pub api_listen: Option<String>,

    /// Set any config key, highest precedence; repeatable. Lists are
    /// comma-separated. Example: --set system_services.decider.decider_period_sec=60
    #[arg(long = "set", global = true, value_name = "KEY=VALUE", value_parser = parse_set)]
    pub set: Vec<(String, String)>,

    /// Deploy the packages of this folder (`<dir>/<package>/distro.toml`)
    /// instead of the ones embedded in the binary: for developing packages
    /// and for tests. Validated exactly like the build validates distros/.
    #[arg(long, global = true, value_name = "DIR", env = config::ENV_DISTROS_DIR)]
    pub distros_dir: Option<PathBuf>,

    /// Log format on stderr; the filter comes from RUST_LOG (default: info)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines for terminals and journald
    Human,
    /// One JSON object per line, for containers and log shippers
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy the configured system services and spells, then serve the HTTP
    /// API and run spells until SIGINT or SIGTERM.
    ///
    /// Takes the state directory's lock: only one `run` per directory.
    Run {
        /// Deploy, print the report and exit instead of serving.
        #[arg(long)]
        once: bool,
        /// Start a new node from a peer: when the state directory is empty or
        /// absent, fetch GET URL/v1/snapshot (URL: the peer's API base, e.g.
        /// http://10.0.0.5:7200), verify it, restore it with a new identity
        /// (--adopt), then boot. Ignored once the state directory holds a node.
        #[arg(long, value_name = "URL", env = "SYSDEPLOY_BOOTSTRAP_FROM", requires = "bootstrap_token_file")]
        bootstrap_from: Option<String>,
        /// File holding the peer's API token (its <state_dir>/api.token), mode
        /// 0600 like every secret file; the token is never read from argv.
        #[arg(long, value_name = "FILE", env = "SYSDEPLOY_BOOTSTRAP_TOKEN_FILE", requires = "bootstrap_from")]
        bootstrap_token_file: Option<PathBuf>,
    },
    /// Show what `run` would change (install, replace, remove, ...) and why,
    /// without changing anything. Works while a node is running.
    Plan {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show the node identity, the state store and what is deployed.
    /// Works while a node is running.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show the effective configuration, each value with where it came from
    /// (default, file:line, env var, flag). Secrets are shown as <redacted>.
    Config {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the running node is ready (GET /readyz answers 200: its
    /// first deployment finished, also while it reloads or when degraded),
    /// 1 otherwise; for container health checks.
    Health {
        /// Print the node's readiness details as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running node to reload its configuration (as SIGHUP does) and
    /// print what the reload changed. Exit 0 when it applied, 1 when it failed,
    /// 2 when the new configuration was refused (nothing changed).
    Reload,
    /// Call a function of a deployed service through the running node's API.
    ///
    /// Example: sysdeploy call registry get-record '["key-1"]'
    Call {
        /// Service alias, e.g. registry
        alias: String,
        /// Exported function name, e.g. get-record
        function: String,
        /// Arguments as a JSON array
        #[arg(value_name = "JSON-ARGS", default_value = "[]")]
        args: String,
    },
    /// List the deployment generations, newest first: number, time, outcome
    /// and what changed. Works while a node is running.
    Generations {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Pin packages to an earlier generation: their desired state then comes
    /// from that generation. Reloads a running node; a stopped one applies it
    /// at its next boot. `sysdeploy unpin` returns to the embedded release.
    Rollback {
        /// The generation (default: the previous one that applied).
        #[arg(long, value_name = "N")]
        to: Option<u64>,
        /// Only this package; repeatable (default: every package that differs).
        #[arg(long = "package", value_name = "P")]
        packages: Vec<String>,
        /// Start from the data kept when that generation's services were
        /// replaced (snapshot_before_replace), not from the current data.
        #[arg(long)]
        restore_data: bool,
    },
    /// Remove pins (all, or --package P...) and reload a running node.
    Unpin {
        /// Only this package; repeatable.
        #[arg(long = "package", value_name = "P")]
        packages: Vec<String>,
    },
    /// Work with package folders (for package developers).
    #[command(subcommand)]
    Package(PackageCommand),
    /// Back up a node's state into one archive, or restore one (docs/operations.md, "Backup and restore").
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// `sysdeploy snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Write the state directory (store, components, artifacts, service data)
    /// into FILE (mode 0600) with a manifest of blake3 hashes. node.key and
    /// api.token only with --include-identity, which needs the node stopped;
    /// a running node is snapshotted through its API without stopping it.
    Create {
        /// The archive to write (replaced atomically if it exists).
        file: PathBuf,
        /// Also archive node.key and api.token: the restored node is the same peer.
        #[arg(long)]
        include_identity: bool,
    },
    /// Restore FILE (`-`: stdin) into the state directory (--state-dir), which
    /// must be absent or empty. Every hash is verified before anything is put
    /// in place. Exit 2: the archive or the request is refused (nothing written).
    Restore {
        /// The archive to restore.
        file: PathBuf,
        /// The restored node gets a new identity: make it the owner of what
        /// the snapshot's host owned (rewritten and logged).
        #[arg(long)]
        adopt: bool,
        /// Restore the identity the snapshot carries (it was created with
        /// --include-identity): the restored node is the same peer. Only where
        /// the original node no longer runs.
        #[arg(long)]
        include_identity: bool,
    },
}

/// `sysdeploy package ...`
#[derive(Debug, Subcommand)]
pub enum PackageCommand {
    /// Validate a package folder (the one holding distro.toml) as the build
    /// and --distros-dir do, plus its components' exports, links, init calls
    /// and provenance (artifacts.lock). Prints every problem (exit 2) or a
    /// summary (exit 0). Reads no config and no state directory.
    Check {
        /// The package folder.
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err("expected KEY=VALUE, e.g. system_services.decider.decider_period_sec=60".into()),
    }
}

impl Cli {
    /// The flag layer of the config, in precedence order (later wins).
    pub fn flag_values(&self) -> Vec<FlagValue> {
        let mut out: Vec<FlagValue> = self.set.iter().map(|(k, v)| FlagValue::set(k, v.clone())).collect();
        if let Some(s) = &self.config_section {
            out.push(FlagValue::config_section(s.clone()));
        }
        if let Some(d) = &self.state_dir {
            out.push(FlagValue::new("--state-dir", "node.state_dir", d.to_string_lossy()));
        }
        if let Some(a) = &self.api_listen {
            out.push(FlagValue::new("--api-listen", "node.api_listen", a.clone()));
        }
        out
    }
}

/// Everything a command needs: the effective config and the package schemas.
#[derive(Debug)]
pub struct Context {
    pub config: EffectiveConfig,
    /// The packages to deploy: embedded, or loaded from `--distros-dir`.
    pub catalog: &'static crate::distro::Catalog,
    /// How the config was loaded, so `run` can re-read it on reload.
    pub load_opts: LoadOptions,
    pub schemas: Vec<PackageSchema>,
    pub log_format: LogFormat,
}

impl Context {
    pub fn state_dir(&self) -> &Path {
        &self.config.node.state_dir
    }

    /// Reports a fatal error: plain text for people, a log record for
    /// containers (`--log-format json`).
    pub fn fail(&self, exit: Exit, msg: impl std::fmt::Display) -> Exit {
        report(self.log_format, msg);
        exit
    }
}

fn report(format: LogFormat, msg: impl std::fmt::Display) {
    match format {
        LogFormat::Human => eprintln!("error: {msg}"),
        LogFormat::Json => tracing::error!("{msg}"),
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // Everything the node creates (state.db, service data, components, the
    // cache) is private to its user, whatever umask the supervisor gave us.
    // SAFETY: umask(2) only sets the process's file mode creation mask.
    unsafe { libc::umask(0o077) };
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // Usage errors exit 2 (Exit::Invalid); --help and --version exit 0.
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    if !matches!(cli.command, Command::Run { .. }) {
        // Short commands exit quietly when their reader goes away
        // (`sysdeploy status --json | head -c1`), as Unix tools do, instead of
        // panicking in `println!`. The node keeps ignoring SIGPIPE: a closed
        // log pipe or client socket must not kill it.
        // SAFETY: signal(2) with SIG_DFL on SIGPIPE, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_logging(cli.log_format);
    // Non-UTF-8 env names cannot be config keys; values are taken lossily so a
    // garbled SYSDEPLOY_ value is reported instead of ignored.
    let env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned()))).collect();
    run(cli, env).into()
}

/// Compiler crates whose debug/trace output is gigabytes per cold boot (every
/// IR pass of every function); kept at `warn` unless RUST_LOG names them.
const NOISY_TARGETS: &[&str] =
    &["cranelift_codegen", "cranelift_frontend", "cranelift_entity", "regalloc2", "wasmtime_cranelift", "wasmtime_internal_cranelift"];

/// The effective log filter for a RUST_LOG value (`None`: unset).
fn log_filter(rust_log: Option<&str>) -> String {
    let base = match rust_log.map(str::trim) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "info".to_string(),
    };
    if base.contains("cranelift") || base.contains("regalloc") {
        return base;
    }
    let quiet: Vec<String> = NOISY_TARGETS.iter().map(|t| format!("{t}=warn")).collect();
    format!("{base},{}", quiet.join(","))
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = EnvFilter::try_new(log_filter(rust_log.as_deref())).unwrap_or_else(|e| {
        eprintln!("warning: RUST_LOG={:?} is not a valid filter ({e}); logging at info", rust_log.unwrap_or_default());
        EnvFilter::new(log_filter(None))
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    // try_init: a second init (tests calling `run` twice) is harmless.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Loads the config and dispatches; `env` is the process environment.
pub fn run(cli: Cli, env: Vec<(String, String)>) -> Exit {
    if let Command::Package(PackageCommand::Check { dir, json }) = &cli.command {
        return crate::package_check::run(dir, *json);
    }
    let catalog: &'static crate::distro::Catalog = match &cli.distros_dir {
        None => crate::distro::embedded(),
        Some(dir) => match crate::distro::Catalog::load_dir(dir) {
            // One catalog per process: leaking it gives it the embedded one's lifetime.
            Ok(c) => {
                let c: &'static crate::distro::Catalog = Box::leak(Box::new(c));
                crate::deploy::generations::register_dir(c, dir);
                c
            }
            Err(e) => {
                report(cli.log_format, format!("--distros-dir {}: {e}", dir.display()));
                return Exit::Invalid;
            }
        },
    };
    let schemas = catalog.schemas();
    let opts = LoadOptions { config_path: cli.config.clone(), env, flags: cli.flag_values() };
    let config = match config::load(&opts, &schemas) {
        Ok(c) => c,
        Err(e) => {
            report(cli.log_format, e);
            return Exit::Invalid;
        }
    };
    let ctx = Context { config, catalog, load_opts: opts, schemas, log_format: cli.log_format };
    match cli.command {
        Command::Run { once, bootstrap_from, bootstrap_token_file } => {
            if let (Some(url), Some(token_file)) = (bootstrap_from, bootstrap_token_file) {
                let b = crate::snapshot::bootstrap::Bootstrap { url, token_file };
                if let Err(e) = crate::snapshot::bootstrap::before_run(&b, &ctx.config, ctx.catalog) {
                    return ctx.fail(e.exit(), e);
                }
            }
            cmd_run(&ctx, once)
        }
        Command::Plan { json } => cmd_plan(&ctx, json),
        Command::Status { json } => cmd_status(&ctx, json),
        Command::Config { json } => cmd_config(&ctx, json),
        Command::Call { alias, function, args } => cmd_call(&ctx, &alias, &function, &args),
        Command::Health { json } => cmd_health(&ctx, json),
        Command::Reload => cmd_reload(&ctx),
        Command::Generations { json } => crate::pin_cli::cmd_generations(&ctx, json),
        Command::Rollback { to, packages, restore_data } => crate::pin_cli::cmd_rollback(&ctx, to, &packages, restore_data),
        Command::Unpin { packages } => crate::pin_cli::cmd_unpin(&ctx, &packages),
        Command::Package(_) => unreachable!("dispatched before the config is loaded"),
        Command::Snapshot(SnapshotCommand::Create { file, include_identity }) => {
            // A running node takes its own snapshot (`POST /v1/snapshots`) without stopping.
            if let Some(n) = crate::state::running_node(ctx.state_dir()) {
                let addr = n.api.unwrap_or(ctx.config.node.api_listen);
                return crate::snapshot::bootstrap::cli_create_online(ctx.state_dir(), addr, n.pid, &file, include_identity)
                    .unwrap_or_else(|e| ctx.fail(e.exit(), e));
            }
            crate::snapshot::cli_create(ctx.state_dir(), &file, include_identity).unwrap_or_else(|e| ctx.fail(e.exit(), e))
        }
        Command::Snapshot(SnapshotCommand::Restore { file, adopt, include_identity }) => {
            crate::snapshot::cli_restore(&file, ctx.state_dir(), adopt, include_identity).unwrap_or_else(|e| ctx.fail(e.exit(), e))
        }
    }
}

/// `run`: lock the state directory, recover, deploy, then serve API and
/// spells until SIGINT/SIGTERM (`--once`: deploy and exit).
fn cmd_run(ctx: &Context, once: bool) -> Exit {
    if let Some(f) = &ctx.config.config_file {
        tracing::info!(file = %f.display(), "config file loaded");
    }
    for e in ctx.config.entries() {
        tracing::debug!(key = %e.key, value = %e.value, source = %e.source, "config");
    }
    let format = ctx.log_format;
    crate::node::run(ctx.config.clone(), ctx.load_opts.clone(), ctx.catalog, once, &|msg| report(format, msg))
}

/// The API address of the node running on the state directory (from
/// `<state_dir>/api.addr`, trusted only while its writer holds the lock),
/// else the configured `node.api_listen`.
fn node_addr(ctx: &Context) -> std::net::SocketAddr {
    crate::state::running_node(ctx.state_dir()).and_then(|n| n.api).unwrap_or(ctx.config.node.api_listen)
}

/// How long `health` waits for the node's answer.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `health`: 0 when `GET /readyz` answers 200, 1 otherwise (not running,
/// booting, failed, unreachable). Needs no token.
fn cmd_health(ctx: &Context, json: bool) -> Exit {
    let addr = node_addr(ctx);
    match crate::api::client::readiness(addr, HEALTH_TIMEOUT) {
        Ok((ready, body)) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&body).expect("json"));
            } else {
                let status = body["status"].as_str().unwrap_or("unknown");
                let reloading = if body["reloading"] == Json::Bool(true) { " (reloading)" } else { "" };
                println!("{}: {status}{reloading}", if ready { "ready" } else { "not ready" });
            }
            if ready {
                Exit::Ok
            } else {
                Exit::DeployFailed
            }
        }
        Err(e) => ctx.fail(Exit::DeployFailed, e),
    }
}

/// `reload`: `POST /v1/reload` with the token from the state dir (`api.token` only).
fn cmd_reload(ctx: &Context) -> Exit {
    let token = match crate::state::read_api_token(ctx.state_dir()) {
        Ok(t) => t,
        Err(e) => return ctx.fail(Exit::StoreUnusable, e),
    };
    match crate::api::client::reload(node_addr(ctx), &token) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            Exit::Ok
        }
        Err(e) if e.code() == Some("invalid_config") => ctx.fail(Exit::Invalid, e),
        Err(e) => ctx.fail(Exit::DeployFailed, e),
    }
}

/// `plan`: read-only; never takes the lock, never writes.
fn cmd_plan(ctx: &Context, json: bool) -> Exit {
    // Tests prove `plan` never compiles (`FAILPOINTS=runtime::compile=return`).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let (plan, host) = match crate::node::plan_readonly(&ctx.config, ctx.catalog) {
        Ok(p) => p,
        Err(e) => return ctx.fail(e.exit, e.message),
    };
    if json {
        let doc =
            json!({ "host_peer_id": host, "no_changes": plan.is_noop(), "steps": plan.steps, "pins": crate::pin_cli::pins_json(ctx) });
        println!("{}", serde_json::to_string_pretty(&doc).expect("plan serialises"));
    } else {
        if host.is_none() {
            println!("state directory {} is not initialised yet; the first `sysdeploy run` does this:", ctx.state_dir().display());
        }
        print!("{plan}");
        crate::pin_cli::print_pins(ctx);
    }
    Exit::Ok
}

/// `call`: arguments are checked here; the HTTP call arrives with the API issue.
fn cmd_call(ctx: &Context, alias: &str, function: &str, args: &str) -> Exit {
    if let Err(e) = Alias::new(alias) {
        return ctx.fail(Exit::Invalid, format!("alias {alias:?} {e}"));
    }
    if function.is_empty() {
        return ctx.fail(Exit::Invalid, "the function name is empty; give the exported function to call, e.g. get-record");
    }
    match serde_json::from_str::<Json>(args) {
        Ok(Json::Array(_)) => {}
        Ok(_) | Err(_) => {
            return ctx
                .fail(Exit::Invalid, format!("JSON-ARGS {args:?} is not a JSON array; pass e.g. '[\"key-1\", 42]' or nothing for []"))
        }
    }
    let args: Json = serde_json::from_str(args).expect("checked above");
    // The token alone: `node.key` is not needed to call (issue 15).
    let token = match crate::state::read_api_token(ctx.state_dir()) {
        Ok(t) => t,
        Err(e) => return ctx.fail(Exit::StoreUnusable, e),
    };
    let addr = node_addr(ctx);
    match crate::api::client::call(addr, &token, alias, function, args) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            Exit::Ok
        }
        Err(e @ crate::api::client::ClientError::NodeNotRunning { .. }) => ctx.fail(Exit::DeployFailed, e),
        Err(e) => ctx.fail(Exit::DeployFailed, e),
    }
}

/// `config`: the effective config with sources; secrets redacted.
fn cmd_config(ctx: &Context, json: bool) -> Exit {
    let c = &ctx.config;
    let entries = c.entries();
    if json {
        let values: serde_json::Map<String, Json> = entries
            .iter()
            .map(|e| {
                let v = json!({ "value": e.value, "source": e.source.to_string(), "origin": e.source, "secret": e.secret });
                (e.key.clone(), v)
            })
            .collect();
        let doc = json!({ "config_file": c.config_file, "values": values, "warnings": c.warnings, "notices": c.notices });
        println!("{}", serde_json::to_string_pretty(&doc).expect("json values serialise"));
        return Exit::Ok;
    }
    match &c.config_file {
        Some(f) => println!("# effective configuration (file: {}); secrets are <redacted>", f.display()),
        None => println!("# effective configuration (no config file: embedded defaults, env and flags); secrets are <redacted>"),
    }
    let rendered: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            let v = if e.secret { config::REDACTED.to_string() } else { e.value.to_string() };
            (e.key.clone(), v, e.source.to_string())
        })
        .collect();
    let kw = rendered.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let vw = rendered.iter().map(|r| r.1.chars().count()).filter(|n| *n <= 40).max().unwrap_or(0);
    for (k, v, s) in rendered {
        println!("{k:<kw$} = {v:<vw$}  # {s}");
    }
    for n in &c.notices {
        println!("# note: {n}");
    }
    for w in &c.warnings {
        println!("# warning: {w}");
    }
    Exit::Ok
}

/// `status`: identity, store, what is deployed (services with aliases and
/// blueprints, spells) and the last deployment; read-only, never takes the lock.
fn cmd_status(ctx: &Context, json: bool) -> Exit {
    let dir = ctx.state_dir();
    let known = crate::schema::known() as i64;
    if !dir.exists() {
        if json {
            println!(
                "{}",
                json!({ "state_dir": dir, "initialised": false, "node": { "running": false, "pid": null, "api": null }, "peer_id": null, "store": null, "services": [], "spells": [], "deployment": null })
            );
        } else {
            println!("state directory: {} (does not exist yet; `sysdeploy run` creates it)", dir.display());
            println!("deployment:      no deployment yet");
        }
        return Exit::Ok;
    }
    let state = match StateDir::open_shared(dir) {
        Ok(s) => s,
        Err(e) => return ctx.fail(Exit::StoreUnusable, e),
    };
    let store_path = state.store_path();
    let store = match Store::open_read_only(&store_path) {
        Ok(store) => Some(store),
        Err(StoreError::Missing { .. }) => None,
        Err(e) => return ctx.fail(Exit::StoreUnusable, e),
    };
    let deployed = match &store {
        Some(store) => match read_deployed(store, &store_path) {
            Ok(d) => Some(d),
            Err(e) => return ctx.fail(Exit::StoreUnusable, e),
        },
        None => None,
    };
    let mut deployed = deployed;
    for s in deployed.iter_mut().flat_map(|d| d.services.iter_mut()) {
        add_data_usage(s, dir);
    }
    if let (Some(store), Some(d)) = (&store, deployed.as_mut()) {
        // What each service runs with: its distro.toml's limits over the config's defaults.
        let defaults = crate::runtime::LimitDefaults::for_node(ctx.config.system_services.call_ttl_ms);
        if let Ok(bps) = crate::runtime::read_blueprints(store) {
            crate::runtime::add_limits(&mut d.services, &bps, &defaults);
        }
    }
    let version = deployed.as_ref().map(|d| d.schema_version);
    let running = crate::state::running_node(dir);
    let node_json = json!({
        "running": running.is_some(),
        "pid": running.as_ref().and_then(|n| n.pid),
        "api": running.as_ref().and_then(|n| n.api),
    });
    let empty = Deployment::default();
    let d = deployed.as_ref().unwrap_or(&empty);
    if json {
        let store = version.map(|v| json!({ "path": store_path, "schema_version": v, "known_schema_version": known }));
        let doc = json!({
            "state_dir": dir,
            "initialised": true,
            "node": node_json,
            "peer_id": state.peer_id(),
            "store": store,
            "services": d.services,
            "spells": d.spells,
            "deployment": d.last,
            "pins": crate::pin_cli::pins_json(ctx),
        });
        println!("{doc}");
        return Exit::Ok;
    }
    println!("state directory: {}", dir.display());
    println!("peer id:         {}", state.peer_id());
    match &running {
        None => println!("node:            not running"),
        Some(n) => {
            let pid = n.pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"));
            let api = n.api.map_or_else(|| "api not serving yet".to_string(), |a| format!("api on {a}"));
            println!("node:            running ({pid}, {api})");
        }
    }
    match version {
        Some(v) => println!("state store:     {} (schema version {v} of {known})", store_path.display()),
        None => println!("state store:     {} (not created yet)", store_path.display()),
    }
    let text = |v: &Json| v.as_str().map(str::to_string).unwrap_or_else(|| "-".to_string());
    if d.services.is_empty() {
        println!("services:        none");
    } else {
        println!("services:");
        for s in &d.services {
            let aliases: Vec<String> = s["aliases"].as_array().into_iter().flatten().map(text).collect();
            let aliases = if aliases.is_empty() { "(no alias)".to_string() } else { aliases.join(", ") };
            let package = match (s["package"].as_str(), s["version"].as_str()) {
                (Some(p), Some(v)) => format!("  package {p} {v}"),
                _ => String::new(),
            };
            println!("  {aliases:<20} service {}  blueprint {}{package}", text(&s["id"]), text(&s["blueprint_id"]));
            if let (Some(bytes), Some(inodes)) = (s["data"]["bytes"].as_u64(), s["data"]["inodes"].as_u64()) {
                println!("  {:<20} data {:.1} MiB in {inodes} entries", "", bytes as f64 / (1 << 20) as f64);
            }
            if let Some(line) = crate::runtime::limits_line(&s["limits"]) {
                println!("  {:<20} {line}", "");
            }
        }
    }
    if d.spells.is_empty() {
        println!("spells:          none");
    } else {
        println!("spells:");
        for s in &d.spells {
            let period = s["trigger"]["period_sec"].as_u64().map_or_else(|| "-".to_string(), |p| format!("every {p} s"));
            println!("  {:<20} spell {}  {period}, {} runs", text(&s["alias"]), text(&s["id"]), s["run_count"].as_u64().unwrap_or(0));
        }
    }
    match &d.last {
        None => println!("deployment:      no deployment yet"),
        Some(r) => {
            println!("last deployment: {}", text(&r["summary"]));
            for f in r["failures"].as_array().into_iter().flatten() {
                println!("  failed: {}", text(f));
            }
        }
    }
    crate::pin_cli::print_pins(ctx);
    Exit::Ok
}

/// Adds `data: {bytes, inodes}` (as the quota counts them) to a service's
/// status entry; left out when its data dir cannot be read.
fn add_data_usage(service: &mut Json, state_dir: &Path) {
    let Some(id) = service["id"].as_str() else { return };
    let Ok(id) = crate::ids::ServiceId::try_from(id.to_string()) else { return };
    if let (Ok(usage), Json::Object(o)) = (crate::runtime::data_usage(&state_dir.join("services").join(id.as_str())), service) {
        o.insert("data".into(), json!(usage));
    }
}

/// What `status` shows from the store, as JSON values.
#[derive(Default)]
struct Deployment {
    schema_version: i64,
    /// Every service in the runtime's records (so orphans would show, with no alias).
    services: Vec<Json>,
    spells: Vec<Json>,
    /// The last report, plus its one-line `summary` and its `failures`.
    last: Option<Json>,
}

fn read_deployed(store: &Store, path: &Path) -> Result<Deployment, String> {
    let schema_version = store
        .lock()
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(|source| StoreError::Corrupt { path: path.to_path_buf(), source }.to_string())?;
    let journal = crate::deploy::journal::Journal::new(store.clone());
    // The same observed state the planner and `/v1/services` read.
    let current = crate::deploy::observed::observe(store, None).map_err(|e| format!("{}: {e}", path.display()))?;
    let services = current
        .list_services()
        .into_iter()
        .map(|s| crate::node::service_json(s.id, &s.aliases, &s.service.blueprint_id, &s.service.owner, s.service.created_at, s.entry))
        .collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let spells = crate::spell::read_spells(store, now)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id,
                "alias": s.alias,
                "owner": s.owner,
                "script_hash": s.script_hash,
                "trigger": s.trigger,
                "last_run": s.last_run,
                "next_run": s.next_run,
                "run_count": s.run_count,
            })
        })
        .collect();
    let last = journal.last_report().map_err(|e| format!("{}: reading the last deployment: {e}", path.display()))?.map(|mut v| {
        if let Ok(r) = serde_json::from_value::<crate::deploy::Report>(v.clone()) {
            // A refused reload is recorded with its `error` and no steps.
            let refused = v.get("error").and_then(Json::as_str).map(str::to_string);
            if let Json::Object(o) = &mut v {
                let mut failures = r.failures();
                let summary = match refused {
                    Some(e) => {
                        failures.push(e);
                        "reload refused; nothing was changed".to_string()
                    }
                    None => r.summary(),
                };
                o.insert("summary".into(), json!(summary));
                o.insert("failures".into(), json!(failures));
            }
        }
        v
    });
    Ok(Deployment { schema_version, services, spells, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every env var a CLI argument reads is skipped by the config's env
    /// layer; otherwise `SYSDEPLOY_DISTROS_DIR` would be an unknown key.
    #[test]
    fn env_vars_of_arguments_are_not_config_keys() {
        fn walk(cmd: &clap::Command, found: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                if let Some(e) = a.get_env() {
                    found.push(e.to_string_lossy().into_owned());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, found);
            }
        }
        let mut found = Vec::new();
        walk(&Cli::command(), &mut found);
        assert!(found.iter().any(|e| e == config::ENV_DISTROS_DIR), "{found:?}");
        for e in found {
            assert!(config::CLI_ENV.contains(&e.as_str()), "{e} is read by the CLI but not listed in config::CLI_ENV");
        }
    }

    #[test]
    fn trace_does_not_include_the_compiler_unless_asked() {
        assert!(log_filter(None).starts_with("info,cranelift_codegen=warn"));
        assert!(log_filter(Some("trace")).starts_with("trace,cranelift_codegen=warn"));
        assert_eq!(log_filter(Some("trace,cranelift_codegen=trace")), "trace,cranelift_codegen=trace");
        for f in [log_filter(None), log_filter(Some("debug,sysdeploy=trace"))] {
            tracing_subscriber::EnvFilter::try_new(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn flags_become_the_highest_layer() {
        let cli = Cli::try_parse_from([
            "sysdeploy",
            "--set",
            "system_services.call_ttl_ms=5",
            "config",
            "--state-dir",
            "/x",
            "--api-listen",
            "127.0.0.1:1",
        ])
        .unwrap();
        let flags = cli.flag_values();
        assert_eq!(flags.len(), 3);
        assert_eq!(flags[0].flag, "--set system_services.call_ttl_ms");
        assert_eq!(flags[1].key, "node.state_dir");
        assert!(Cli::try_parse_from(["sysdeploy", "--set", "novalue", "config"]).is_err());
    }
}
