//! Which dataset a run trains on, and where its files are looked for.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// MNIST or Fashion-MNIST: the same IDX layout, file names and shapes.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    #[default]
    Mnist,
    FashionMnist,
}

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const FASHION_MNIST_DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

impl Dataset {
    /// The folder to read: `--data-dir`, else for MNIST `$MNIST_DIR` then `./data/mnist`, and for Fashion-MNIST
    /// `$FASHION_MNIST_DIR` then Debian's install folder.
    pub fn resolve_dir(self, flag: Option<&Path>) -> PathBuf {
        match self {
            Dataset::Mnist => super::mnist::resolve_data_dir(flag),
            Dataset::FashionMnist => flag
                .map(Path::to_path_buf)
                .or_else(|| std::env::var_os("FASHION_MNIST_DIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DEBIAN_DIR)),
        }
    }

    /// Class names, for figure labels.
    pub fn class_names(self) -> [&'static str; 10] {
        match self {
            Dataset::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            Dataset::FashionMnist => [
                "T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot",
            ],
        }
    }
}
