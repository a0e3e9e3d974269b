//! The `herald` command: serve, config, token, publish, notify.
//!
//! The only place `anyhow` lives; libraries report typed errors and this maps
//! them to messages and exit codes.

mod bench;
mod churn;
mod cli;
mod dev;
mod publish;
mod storm;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use herald_server::auth::{sign_hs256, unix_now, ChannelGrant, Claims};
use herald_server::config::{Config, FlagOverrides, Loaded, LogFormat};
use herald_server::Server;

use cli::{Cli, Command, ConfigArgs};

fn main() {
    herald_server::outbound::install_crypto_provider();
    let cli = Cli::parse();
    // `serve` logs as its configuration says (`log.format`, `--log-format`),
    // so it sets logging up once that is loaded; the other commands log text.
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging(LogFormat::Text);
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    if let Err(e) = result {
        eprintln!("herald: {e:#}");
        std::process::exit(1);
    }
}

/// Logs to stderr, filtered by `HERALD_LOG` (default `info`; e.g.
/// `info,herald::access=off` silences the access log).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line with the event's fields and the spans it is
        // in (a connection's id and user), for log pipelines.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Config(args) => {
            if args.example {
                print!("{}", herald_server::config_doc::example_toml());
            } else if args.reference {
                print!("{}", herald_server::config_doc::reference_markdown());
            } else {
                print!("{}", load(&args.config)?.config.to_masked_toml());
            }
            Ok(())
        }
        Command::Token(args) => {
            let loaded = load(&args.config)?;
            let secret = match (args.secret, loaded.config.auth.hmac_secret.clone()) {
                (Some(s), _) | (None, Some(s)) => s,
                (None, None) => dev::read_env(&loaded.config.engine.path)
                    .and_then(|env| env.get("HERALD_AUTH_HMAC_SECRET").cloned())
                    .context("no HMAC secret: set auth.hmac_secret, pass --secret, or start `herald serve --dev` first")?,
            };
            let ttl = humantime::parse_duration(&args.ttl)
                .with_context(|| format!("--ttl {:?} is not a duration", args.ttl))?;
            let now = unix_now();
            let channels: Option<Vec<String>> = args.channels.map(|c| {
                c.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            });
            // The server would ignore such a pattern; better to say so now.
            for pattern in channels.iter().flatten() {
                if ChannelGrant::parse(pattern).is_none() {
                    anyhow::bail!(
                        "--channels {pattern:?} is not a channel name or pattern: `*` may only stand for whole trailing segments (venue:*, venue:42:*, *)"
                    );
                }
            }
            let claims = Claims {
                sub: args.user,
                exp: Some(now + ttl.as_secs()),
                iat: Some(now),
                role: args.role,
                channels,
            };
            println!("{}", sign_hs256(&secret, &claims)?);
            Ok(())
        }
        Command::Publish(args) => {
            publish::run(
                &args.api,
                publish::Target::Channel(&args.channel),
                &args.json,
            )
            .await
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Notify(args) => {
            publish::run(&args.api, publish::Target::User(&args.user), &args.json).await
        }
    }
}

fn env_map() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("HERALD_") || k == "WEBSOCKET_PORT")
        .collect()
}

fn load(args: &ConfigArgs) -> Result<Loaded> {
    let flags = FlagOverrides {
        listen: args.listen.clone(),
        port: args.port,
        dev: args.dev,
        engine: args.engine,
        data_dir: args.data_dir.clone(),
        log_format: args.log_format,
    };
    let env = env_map();
    let mut loaded = Config::load(args.config.as_deref(), &env, &flags)?;
    // A bare `herald serve` (no file, no secrets anywhere) is dev mode (SPEC §4).
    if !loaded.from_file && !loaded.config.has_token_key() && loaded.config.auth.api_keys.is_empty()
    {
        loaded.config.dev = true;
        loaded.config.validate()?;
    }
    Ok(loaded)
}

async fn serve(args: ConfigArgs) -> Result<()> {
    let loaded = load(&args);
    init_logging(
        loaded
            .as_ref()
            .map_or(LogFormat::Text, |l| l.config.log.format),
    );
    let mut config = loaded?.config;
    if config.dev {
        dev::prepare(&mut config)?;
    }
    let server = Server::bind(config).await?;
    let addr = server.local_addr();
    let node = server.node().clone();
    // Listen for the signals before printing the listening line: a SIGTERM
    // sent right after it must shut down cleanly, not meet the default
    // action (the process killed) because the task below had not run yet.
    let signals = Signals::register();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutting down: telling clients to reconnect elsewhere");
        node.begin_shutdown();
    });
    // Tests and scripts read this line to learn the port.
    println!("herald listening on {}://{addr}", server.scheme());
    let _ = std::io::stdout().flush();
    server.run().await.context("server failed")?;
    Ok(())
}

/// SIGINT and SIGTERM, registered when made.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                unix: signal(SignalKind::interrupt())
                    .and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for the first of them.
    async fn recv(self) {
        #[cfg(unix)]
        if let Some((mut int, mut term)) = self.unix {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Default data directory for commands that read `dev.env`.
pub(crate) fn default_data_dir() -> PathBuf {
    Path::new("herald-data").to_owned()
}
