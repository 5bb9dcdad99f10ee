//! `diffuse serve`: the HTTP API and web page over a shipped model or a training run.
//!
//! Every flag can also come from the environment (`DIFFUSE_ADDR`, `DIFFUSE_MODEL`, ...), the usual way to configure
//! a container; a flag on the command line wins over its variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tch::Device;

use super::runtime::RuntimeArgs;

use diffuse::run::{self, shipped};
use diffuse::runtime::device;
use diffuse::server::access::LogFormat;
use diffuse::server::rate_limit::RateLimit;
use diffuse::server::{self, ServeOptions};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A shipped model from models/ [default: cfg-d64].
    #[arg(long, value_name = "NAME", conflicts_with = "run", env = "DIFFUSE_MODEL")]
    pub model: Option<String>,
    /// A training run folder (its newest checkpoint) or a model folder.
    #[arg(long, value_name = "RUN_DIR", env = "DIFFUSE_RUN")]
    pub run: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080", env = "DIFFUSE_ADDR")]
    pub addr: SocketAddr,
    /// Requests that may wait for the model before new ones get 503.
    #[arg(long, default_value_t = 64, env = "DIFFUSE_QUEUE")]
    pub queue: usize,
    /// Seconds a request may wait for its digits before it gets 504.
    #[arg(long, default_value_t = 60, env = "DIFFUSE_TIMEOUT_SECS")]
    pub timeout_secs: u64,
    /// After SIGTERM or SIGINT, seconds to finish accepted requests before exiting anyway.
    #[arg(long, default_value_t = 30, env = "DIFFUSE_DRAIN_SECS")]
    pub drain_secs: u64,
    /// Per-client-IP limit, R requests per second with bursts of BURST, e.g. `5/s,10` [default: off].
    #[arg(long, value_name = "R/s[,BURST]", env = "DIFFUSE_RATE_LIMIT")]
    pub rate_limit: Option<RateLimit>,
    /// Access-log lines as text or as one JSON object per line (stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "DIFFUSE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let device = args.runtime.device()?;
    let (source, name) = shipped::resolve(args.run.as_deref(), args.model.as_deref())?;
    let choice = args.runtime.choice(device);
    let loaded = run::load(&source, None, device, choice.layout)
        .with_context(|| format!("cannot load a model from {}", source.display()))?;
    if matches!(loaded.config.objective, run::Objective::Denoiser { .. }) {
        anyhow::bail!(
            "{} is a one-step denoiser, which does not generate digits; serve a ddpm, cfg or flow model",
            source.display()
        );
    }
    super::note(&format!(
        "serving {} ({}) on {}, {}",
        loaded.label,
        loaded.config.objective.name(),
        device::describe(device),
        choice.describe()
    ));
    let options = ServeOptions {
        addr: args.addr,
        queue: args.queue,
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
        drain: Duration::from_secs(args.drain_secs),
        rate_limit: args.rate_limit,
        log_format: args.log_format,
        precision: choice.precision,
        device: match device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".to_string(),
        },
    };
    server::run(loaded, name, options).with_context(|| format!("cannot serve on {}", args.addr))
}
