//! `diffuse data download|check`.

use anyhow::Context;
use clap::{Args, Subcommand};

use diffuse::data;

use super::runtime::DataArgs;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Download the four MNIST files, verifying each against its MD5 (retrying the next mirror on failure).
    Download(DownloadArgs),
    /// Verify a data folder and print what it holds.
    Check(DataArgs),
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    #[command(flatten)]
    pub dir: DataArgs,
    /// Mirror base URL, tried in the order given (repeatable) [default: the public MNIST mirrors].
    #[arg(long = "mirror", value_name = "URL")]
    pub mirrors: Vec<String>,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Download(args) => {
            let dir = data::resolve_data_dir(args.dir.data_dir.as_deref());
            let mirrors: Vec<String> = if args.mirrors.is_empty() {
                data::DEFAULT_MIRRORS.iter().map(|m| m.to_string()).collect()
            } else {
                args.mirrors
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let report = data::download(&dir, &mirrors)?;
            println!("{report}");
            Ok(())
        }
        DataCommand::Check(args) => {
            let dir = data::resolve_data_dir(args.data_dir.as_deref());
            let report = data::check_dir(&dir)?;
            println!("{report}");
            anyhow::ensure!(
                report.is_usable(),
                "{} is not a usable data folder (see above)",
                dir.display()
            );
            Ok(())
        }
    }
}
