//! `diffuse serve`: the HTTP API and web page over a shipped model or a training run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::runtime::RuntimeArgs;

use diffuse::device;
use diffuse::pretrained;
use diffuse::server::{self, ServeOptions};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A shipped model from models/ [default: cfg-d64].
    #[arg(long, value_name = "NAME", conflicts_with = "run")]
    pub model: Option<String>,
    /// A training run folder (its newest checkpoint) or a model folder.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Requests that may wait for the model before new ones get 503.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Seconds a request may wait for its digits before it gets 504.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let device = args.runtime.device()?;
    let (source, name) = match (&args.run, &args.model) {
        (Some(run), _) => (run.clone(), run.display().to_string()),
        (None, name) => {
            let name = name.clone().unwrap_or_else(|| pretrained::DEFAULT_MODEL.to_string());
            (pretrained::path_of(&name)?, name)
        }
    };
    let loaded = pretrained::load(&source, None, device)
        .with_context(|| format!("cannot load a model from {}", source.display()))?;
    if matches!(loaded.config.objective, diffuse::train::Objective::Denoiser { .. }) {
        anyhow::bail!(
            "{} is a one-step denoiser, which does not generate digits; serve a ddpm, cfg or flow model",
            source.display()
        );
    }
    eprintln!(
        "serving {} ({}) on {}",
        loaded.label,
        loaded.config.objective.name(),
        device::describe(device)
    );
    let options = ServeOptions {
        addr: args.addr,
        queue: args.queue,
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
        precision: args.runtime.precision,
    };
    server::run(loaded, name, options).with_context(|| format!("cannot serve on {}", args.addr))
}
