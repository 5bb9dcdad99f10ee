//! Figures for looking at what a model learned: grids of grey digits (optionally labelled),
//! line plots of losses and metrics, and GIF animations of sampling. Everything here takes
//! plain slices and `image` buffers, never tensors, so it does not depend on tch and its
//! tests need no model. Every file is written atomically (temporary file in the same
//! folder, then a rename, via `atomic_file`), so a viewer or a crash mid-write never sees
//! half a PNG.

pub mod gif;
pub mod grid;
pub mod plot;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::{EncodableLayout, ImageBuffer, ImageFormat, PixelWithColorType};

/// Font family name under which the embedded DejaVu Sans is registered with plotters.
pub(crate) const FONT_FAMILY: &str = "sans-serif";

/// Errors from building or writing a figure.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    #[error("cannot write figure {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode figure {}: {message}", path.display())]
    Encode { path: PathBuf, message: String },
    #[error("plotting failed: {0}")]
    Plot(String),
    #[error("bad figure input: {0}")]
    BadInput(String),
    #[error("cannot read the images back from the device: {0}")]
    Tensor(#[from] tch::TchError),
}

/// Registers DejaVu Sans with plotters' ab_glyph text renderer, once per process.
///
/// plotters with `ab_glyph` has no system-font lookup: text drawing fails with
/// "FontUnavailable" until a font is registered, so every text-drawing entry point calls
/// this first. The outcome is cached so a bad font is reported each time, not only once.
pub(crate) fn ensure_font() -> Result<(), FigureError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT_FAMILY, plotters::style::FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
        .map_err(FigureError::Plot)
}

/// Encodes an image buffer as PNG bytes; `path` only labels the error.
pub(crate) fn encode_png<P>(img: &ImageBuffer<P, Vec<P::Subpixel>>, path: &Path) -> Result<Vec<u8>, FigureError>
where
    P: PixelWithColorType,
    [P::Subpixel]: EncodableLayout,
{
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .map_err(|e| FigureError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(bytes)
}

/// Writes `bytes` to `path` atomically (see [`crate::io::atomic_file`]), creating missing
/// parent folders so callers can name a figure inside a run folder that does not exist yet.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FigureError> {
    let io_err = |source| FigureError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.file_name().is_none() {
        return Err(FigureError::BadInput(format!("{} is not a file path", path.display())));
    }
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    crate::io::atomic_file::write_atomic(path, bytes).map_err(io_err)?;
    tracing::debug!(path = %path.display(), bytes = bytes.len(), "wrote figure");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_creates_parents_and_leaves_no_temp() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a/b/out.bin");
        write_atomic(&path, b"first")?;
        write_atomic(&path, b"second")?;
        assert_eq!(std::fs::read(&path)?, b"second");
        let entries: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))?.collect();
        assert_eq!(entries.len(), 1, "temporary files left behind");
        Ok(())
    }

    #[test]
    fn write_atomic_rejects_directory_like_path() {
        assert!(matches!(
            write_atomic(Path::new("/"), b"x"),
            Err(FigureError::BadInput(_))
        ));
    }

    #[test]
    fn font_registers() {
        assert!(ensure_font().is_ok());
    }
}
