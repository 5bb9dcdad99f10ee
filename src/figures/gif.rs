//! Looping GIF animations, e.g. a grid of samples moving from noise to digits over the
//! sampler's steps. The last frame is held longer so a viewer sees the result before the
//! loop restarts. GIF stores delays in hundredths of a second, so delays are rounded down
//! to 10 ms, and many viewers slow anything under 20 ms to 100 ms.

use std::path::Path;

use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, GrayImage, Rgba, RgbaImage};

use super::{write_atomic, FigureError};

/// NeuQuant speed for frames with more than 256 colours (1 = best, 30 = fastest). Grey
/// frames never reach it: they fit an exact palette.
const QUANT_SPEED: i32 = 10;

/// Writes `frames` as a GIF that loops forever: each frame shows for `delay_ms`, the last
/// for `max(delay_ms, hold_last_ms)`. All frames must have the same size.
pub fn write_gif(path: &Path, frames: &[GrayImage], delay_ms: u32, hold_last_ms: u32) -> Result<(), FigureError> {
    write_atomic(path, &gif_bytes_labelled(path, frames, delay_ms, hold_last_ms)?)
}

/// The bytes [`write_gif`] would write (for serving over HTTP).
pub fn gif_bytes(frames: &[GrayImage], delay_ms: u32, hold_last_ms: u32) -> Result<Vec<u8>, FigureError> {
    gif_bytes_labelled(Path::new("(in memory)"), frames, delay_ms, hold_last_ms)
}

fn gif_bytes_labelled(
    path: &Path,
    frames: &[GrayImage],
    delay_ms: u32,
    hold_last_ms: u32,
) -> Result<Vec<u8>, FigureError> {
    let rgba = frames.iter().map(|f| {
        RgbaImage::from_fn(f.width(), f.height(), |x, y| {
            let v = f.get_pixel(x, y).0[0];
            Rgba([v, v, v, 255])
        })
    });
    let sizes: Vec<_> = frames.iter().map(|f| f.dimensions()).collect();
    encode_frames(path, &sizes, rgba, delay_ms, hold_last_ms)
}

/// Checks sizes up front (so nothing is encoded for a bad batch), then encodes lazily
/// converted frames into memory; `path` only labels errors.
fn encode_frames(
    path: &Path,
    sizes: &[(u32, u32)],
    frames: impl Iterator<Item = RgbaImage>,
    delay_ms: u32,
    hold_last_ms: u32,
) -> Result<Vec<u8>, FigureError> {
    let Some(&first) = sizes.first() else {
        return Err(FigureError::BadInput("a GIF needs at least one frame".into()));
    };
    if let Some((i, &size)) = sizes.iter().enumerate().find(|(_, &s)| s != first) {
        return Err(FigureError::BadInput(format!(
            "GIF frame {i} is {}x{}, frame 0 is {}x{}",
            size.0, size.1, first.0, first.1
        )));
    }
    // GIF stores sizes as u16; checking here gives a clear message instead of the
    // encoder's generic dimension error.
    if first.0 == 0 || first.1 == 0 || first.0 > u16::MAX as u32 || first.1 > u16::MAX as u32 {
        return Err(FigureError::BadInput(format!(
            "GIF frames must be 1..=65535 pixels a side, got {}x{}",
            first.0, first.1
        )));
    }

    let encode_err = |e: image::ImageError| FigureError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let last = sizes.len() - 1;
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut bytes, QUANT_SPEED);
        encoder.set_repeat(Repeat::Infinite).map_err(encode_err)?;
        for (i, frame) in frames.enumerate() {
            let ms = if i == last {
                delay_ms.max(hold_last_ms)
            } else {
                delay_ms
            };
            let delay = Delay::from_numer_denom_ms(ms, 1);
            encoder
                .encode_frame(Frame::from_parts(frame, 0, 0, delay))
                .map_err(encode_err)?;
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::gif::GifDecoder;
    use image::{AnimationDecoder, Luma};
    use std::io::BufReader;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn decode(path: &Path) -> Result<Vec<Frame>, Box<dyn std::error::Error>> {
        let file = BufReader::new(std::fs::File::open(path)?);
        Ok(GifDecoder::new(file)?.into_frames().collect_frames()?)
    }

    #[test]
    fn three_frames_round_trip() -> TestResult {
        let dir = tempfile::tempdir()?;
        let frames: Vec<GrayImage> = (0..3u8)
            .map(|k| GrayImage::from_fn(20, 12, |x, _| Luma([(x as u8 * 12).wrapping_add(k)])))
            .collect();
        let path = dir.path().join("anim/steps.gif");
        write_gif(&path, &frames, 100, 1500)?;
        let back = decode(&path)?;
        assert_eq!(back.len(), 3);
        for (f, orig) in back.iter().zip(&frames) {
            assert_eq!(f.buffer().dimensions(), (20, 12));
            // <= 256 grey levels fit an exact palette, so the pixels survive unchanged.
            let grey: Vec<u8> = f.buffer().pixels().map(|p| p.0[0]).collect();
            assert_eq!(grey, orig.as_raw().clone());
        }
        let ms = |f: &Frame| f.delay().numer_denom_ms();
        assert_eq!(ms(&back[0]), (100, 1));
        assert_eq!(ms(&back[2]), (1500, 1));
        Ok(())
    }

    #[test]
    fn mismatched_sizes_and_empty_are_errors() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bad.gif");
        let frames = vec![GrayImage::new(10, 10), GrayImage::new(10, 11)];
        assert!(matches!(
            write_gif(&path, &frames, 100, 100),
            Err(FigureError::BadInput(_))
        ));
        assert!(write_gif(&path, &[], 100, 100).is_err());
        assert!(!path.exists());
        Ok(())
    }
}
