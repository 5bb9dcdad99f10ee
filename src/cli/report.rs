//! `diffuse report RUN_DIR... --out DIR`: one self-contained HTML page for the given runs.

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run folders to include.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder (index.html is written there).
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let path = diffuse::report::write(&args.runs, &args.out)?;
    println!("{}", path.display());
    Ok(())
}
