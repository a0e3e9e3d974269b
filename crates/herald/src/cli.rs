//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use herald_server::config::{EngineKind, LogFormat};

/// Herald: a self-hosted real-time updates server.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server (a bare `herald serve` with no config runs in dev mode).
    Serve(ConfigArgs),
    /// Print the effective configuration, secrets masked (or the example / reference).
    Config(ConfigCommandArgs),
    /// Print a signed client token (HS256) for development and tests.
    Token(TokenArgs),
    /// Publish JSON to a channel through the HTTP API.
    Publish(PublishArgs),
    /// Send a JSON notification to a user through the HTTP API.
    Notify(NotifyArgs),
    /// Load-generate against a running server (publish, batch, fanout).
    Bench(crate::bench::BenchArgs),
}

/// `herald config`.
#[derive(Debug, Args)]
pub(crate) struct ConfigCommandArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Print a commented configuration with every key at its default (accepted by `serve --config`).
    #[arg(long, conflicts_with = "reference")]
    pub(crate) example: bool,
    /// Print the configuration reference in Markdown (docs/configuration.md).
    #[arg(long)]
    pub(crate) reference: bool,
}

/// Where configuration comes from; flags beat env, env beats file.
#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// TOML config file.
    #[arg(long, env = "HERALD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Development mode: loopback only, generated secrets, anonymous allowed.
    #[arg(long)]
    pub(crate) dev: bool,
    /// Address to listen on (host:port).
    #[arg(long)]
    pub(crate) listen: Option<String>,
    /// Port to listen on (keeps the host of `listen`).
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// Engine: embedded, memory, redis (with `engine.redis_url`).
    #[arg(long, value_parser = parse_engine)]
    pub(crate) engine: Option<EngineKind>,
    /// Directory of the embedded store and dev.env.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Log format: text (default) or json.
    #[arg(long, value_parser = parse_log_format)]
    pub(crate) log_format: Option<LogFormat>,
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("unknown log format {s:?}: use text or json")),
    }
}

fn parse_engine(s: &str) -> Result<EngineKind, String> {
    match s {
        "embedded" => Ok(EngineKind::Embedded),
        "memory" => Ok(EngineKind::Memory),
        "redis" => Ok(EngineKind::Redis),
        _ => Err(format!(
            "unknown engine {s:?}: use embedded, memory or redis"
        )),
    }
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub(crate) user: String,
    /// `admin` may subscribe anywhere.
    #[arg(long)]
    pub(crate) role: Option<String>,
    /// Channels for `claim` namespaces, comma-separated; `prefix:*` and `*` allowed.
    #[arg(long)]
    pub(crate) channels: Option<String>,
    /// Lifetime, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "1h")]
    pub(crate) ttl: String,
    /// HMAC secret (default: the configured one, or dev mode's dev.env).
    #[arg(long, env = "HERALD_TOKEN_SECRET")]
    pub(crate) secret: Option<String>,
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ApiArgs {
    /// The server's HTTP origin.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// API key (default: dev mode's dev.env).
    #[arg(long, env = "HERALD_API_KEY")]
    pub(crate) api_key: Option<String>,
    /// Where dev mode wrote dev.env.
    #[arg(long, default_value_os_t = crate::default_data_dir())]
    pub(crate) data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Channel name.
    pub(crate) channel: String,
    /// JSON data.
    pub(crate) json: String,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Debug, Args)]
pub(crate) struct NotifyArgs {
    /// User id.
    pub(crate) user: String,
    /// JSON data.
    pub(crate) json: String,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}
