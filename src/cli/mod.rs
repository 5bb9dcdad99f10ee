//! Command-line structure (clap derive) and dispatch to the subcommands.

mod bench;
mod data;
mod eval;
mod figures;
mod plot_losses;
mod progress;
mod report;
mod runtime;
mod sample;
mod serve;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "diffuse",
    version,
    about = "Train, sample, evaluate and serve small diffusion and flow models on MNIST"
)]
pub struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Get and verify the MNIST files.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Train a model.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Draw digits from a trained run (PNG grid, GIF, IDX).
    Sample(sample::SampleArgs),
    /// Score samples: classifier accuracy and Frechet distance to the MNIST test set (optionally a sweep).
    Eval(eval::EvalArgs),
    /// Serve a model over HTTP: an API and a web page.
    Serve(serve::ServeArgs),
    /// Write one self-contained HTML report of runs (config, losses, figures, metrics, timings).
    Report(report::ReportArgs),
    /// Overlay the per-step loss curves of several runs.
    PlotLosses(plot_losses::PlotLossesArgs),
    /// Measure training and sampling throughput and peak memory.
    Bench(bench::BenchArgs),
    /// Regenerate a run's figures from its checkpoints.
    Figures(figures::FiguresArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::Train(cmd) => train::run(cmd),
        Command::Sample(args) => sample::run(args),
        Command::Figures(args) => figures::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Eval(args) => eval::eval(args),
        Command::Report(args) => report::run(args),
        Command::PlotLosses(args) => plot_losses::run(args),
    }
}

/// Refuses an output path (a file, or a file-name prefix) whose folder is missing, before any work is done.
fn check_output_folder(path: &std::path::Path) -> anyhow::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !parent.is_dir() {
        anyhow::bail!("output folder {} does not exist", parent.display());
    }
    Ok(())
}

/// [`check_output_folder`], and refuses a file path that is a folder or, when the file is written in a `format`
/// (an extension: "png"), one whose name says otherwise.
fn check_output_file(path: &std::path::Path, format: Option<&str>) -> anyhow::Result<()> {
    check_output_folder(path)?;
    if path.is_dir() {
        anyhow::bail!("{} is a folder; give a file name", path.display());
    }
    if let Some(format) = format {
        let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if extension.as_deref() != Some(format) {
            anyhow::bail!(
                "{} is written as {}: give it a .{format} name",
                path.display(),
                format.to_uppercase()
            );
        }
    }
    Ok(())
}

/// Writes one line to stderr, ignoring a failed write: a closed stderr (a log pipe that died) must not panic, as
/// `eprintln!` would.
pub fn note(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Logs go to stderr; `RUST_LOG` overrides the level that `-v` picks.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn,diffuse::server=info",
        1 => "info,diffuse=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // A failed write (stderr a closed pipe) must not turn into a panic: its fallback report would panic too.
        .log_internal_errors(false)
        .init();
}

/// The error chain on one line, outermost context first, without repeating causes that are already included.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.lines().next().unwrap_or("").trim().to_string();
        if parts.last().is_some_and(|last| last.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}
