//! Image grids of grey digits: `n` images of `h x w` floats in [0, 1] tiled row by row,
//! each pixel blown up to a `scale x scale` block (nearest neighbour, so a 28x28 digit
//! stays crisp instead of blurring) with a thin grey pad between tiles. `labelled_grid`
//! adds row labels, column labels and a title drawn with plotters' ab_glyph text renderer
//! and the embedded DejaVu Sans font, for figures such as "noisy / denoised per sigma".

use std::path::Path;

use image::{EncodableLayout, GrayImage, ImageBuffer, Luma, PixelWithColorType, Rgb, RgbImage};
use plotters::backend::{BitMapBackend, RGBPixel};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{encode_png, ensure_font, write_atomic, FigureError, FONT_FAMILY};

/// How a batch of images is laid out in a grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridSpec {
    pub rows: usize,
    pub cols: usize,
    /// Height of one source image in pixels.
    pub height: usize,
    /// Width of one source image in pixels.
    pub width: usize,
    /// Integer upscaling factor (nearest neighbour); at least 1.
    pub scale: u32,
    /// Pixels of padding between tiles and around the border.
    pub pad: u32,
    /// Grey level of the padding: mid grey separates black-background digits without
    /// being mistaken for a white stroke.
    pub pad_value: u8,
}

impl GridSpec {
    pub const DEFAULT_SCALE: u32 = 3;
    pub const DEFAULT_PAD: u32 = 2;
    pub const DEFAULT_PAD_VALUE: u8 = 128;

    /// A grid of `rows x cols` images of `height x width` with the default scale and pad.
    pub fn new(rows: usize, cols: usize, height: usize, width: usize) -> Self {
        Self {
            rows,
            cols,
            height,
            width,
            scale: Self::DEFAULT_SCALE,
            pad: Self::DEFAULT_PAD,
            pad_value: Self::DEFAULT_PAD_VALUE,
        }
    }

    /// A grid of 28x28 MNIST digits.
    pub fn mnist(rows: usize, cols: usize) -> Self {
        Self::new(rows, cols, 28, 28)
    }

    pub fn with_scale(mut self, scale: u32) -> Self {
        self.scale = scale;
        self
    }

    pub fn with_pad(mut self, pad: u32) -> Self {
        self.pad = pad;
        self
    }

    /// Number of floats the grid expects: `rows * cols * height * width`.
    pub fn expected_len(&self) -> Option<usize> {
        self.rows
            .checked_mul(self.cols)?
            .checked_mul(self.height)?
            .checked_mul(self.width)
    }

    /// Size of one upscaled tile in output pixels, `(width, height)`.
    fn tile_size(&self) -> Option<(u32, u32)> {
        let w = u32::try_from(self.width).ok()?.checked_mul(self.scale)?;
        let h = u32::try_from(self.height).ok()?.checked_mul(self.scale)?;
        Some((w, h))
    }

    /// Size of the whole grid in output pixels, `(width, height)`.
    pub fn pixel_size(&self) -> Result<(u32, u32), FigureError> {
        let too_big = || FigureError::BadInput(format!("grid {self:?} is too large"));
        let (tw, th) = self.tile_size().ok_or_else(too_big)?;
        let span = |n: usize, tile: u32| -> Option<u32> {
            let n = u32::try_from(n).ok()?;
            n.checked_mul(tile)?
                .checked_add(n.checked_add(1)?.checked_mul(self.pad)?)
        };
        let w = span(self.cols, tw).ok_or_else(too_big)?;
        let h = span(self.rows, th).ok_or_else(too_big)?;
        Ok((w, h))
    }

    /// Top-left output pixel of tile `(row, col)`.
    fn tile_origin(&self, row: u32, col: u32, tile: (u32, u32)) -> (u32, u32) {
        (
            self.pad + col * (tile.0 + self.pad),
            self.pad + row * (tile.1 + self.pad),
        )
    }

    fn validate(&self, len: usize) -> Result<(), FigureError> {
        if self.rows == 0 || self.cols == 0 || self.height == 0 || self.width == 0 {
            return Err(FigureError::BadInput(format!(
                "grid needs non-zero rows, cols, height and width, got {self:?}"
            )));
        }
        if self.scale == 0 {
            return Err(FigureError::BadInput("grid scale must be at least 1".into()));
        }
        let expected = self
            .expected_len()
            .ok_or_else(|| FigureError::BadInput(format!("grid {self:?} is too large")))?;
        if len != expected {
            return Err(FigureError::BadInput(format!(
                "grid of {}x{} images of {}x{} needs {expected} values, got {len}",
                self.rows, self.cols, self.height, self.width
            )));
        }
        Ok(())
    }
}

/// Maps a nominal [0, 1] intensity to a byte; out-of-range values clamp, NaN becomes black
/// (a diverged sample should look empty, not crash the figure).
fn to_byte(v: f32) -> u8 {
    if v.is_nan() {
        0
    } else {
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

/// Tiles `images` (`rows * cols` images of `height * width` floats, row-major) into one
/// grey image, row by row.
pub fn digit_grid(images: &[f32], spec: &GridSpec) -> Result<GrayImage, FigureError> {
    spec.validate(images.len())?;
    let (gw, gh) = spec.pixel_size()?;
    let tile = spec
        .tile_size()
        .ok_or_else(|| FigureError::BadInput(format!("grid {spec:?} is too large")))?;
    let mut out = GrayImage::from_pixel(gw, gh, Luma([spec.pad_value]));
    let s = spec.scale;
    for (i, img) in images.chunks_exact(spec.height * spec.width).enumerate() {
        // Both fit in u32: pixel_size() already bounded rows/cols by u32 arithmetic.
        let (row, col) = ((i / spec.cols) as u32, (i % spec.cols) as u32);
        let (x0, y0) = spec.tile_origin(row, col, tile);
        for (y, line) in img.chunks_exact(spec.width).enumerate() {
            for (x, &v) in line.iter().enumerate() {
                let px = Luma([to_byte(v)]);
                let (bx, by) = (x0 + x as u32 * s, y0 + y as u32 * s);
                for dy in 0..s {
                    for dx in 0..s {
                        out.put_pixel(bx + dx, by + dy, px);
                    }
                }
            }
        }
    }
    Ok(out)
}

const LABEL_PX: f64 = 16.0;
const MIN_LABEL_PX: f64 = 9.0;
const TITLE_PX: f64 = 20.0;
const GAP: u32 = 6;

fn text_size(text: &str, px: f64) -> Result<(u32, u32), FigureError> {
    FontDesc::new(FontFamily::Name(FONT_FAMILY), px, FontStyle::Normal)
        .box_size(text)
        .map_err(|e| FigureError::Plot(format!("cannot measure text {text:?}: {e}")))
}

fn max_text_size(labels: &[String], px: f64) -> Result<(u32, u32), FigureError> {
    labels.iter().try_fold((0, 0), |(w, h), l| {
        let (lw, lh) = text_size(l, px)?;
        Ok((w.max(lw), h.max(lh)))
    })
}

/// The same grid as [`digit_grid`] on a white canvas, with `row_labels` right-aligned left
/// of each row, `col_labels` centred above each column and an optional `title` on top.
/// Empty label slices leave no margin; non-empty ones must match `rows` / `cols`.
pub fn labelled_grid(
    images: &[f32],
    spec: &GridSpec,
    row_labels: &[String],
    col_labels: &[String],
    title: Option<&str>,
) -> Result<RgbImage, FigureError> {
    let grid = digit_grid(images, spec)?;
    for (labels, n, what) in [(row_labels, spec.rows, "row"), (col_labels, spec.cols, "column")] {
        if !labels.is_empty() && labels.len() != n {
            return Err(FigureError::BadInput(format!(
                "{} {what} labels for {n} {what}s",
                labels.len()
            )));
        }
    }
    ensure_font()?;
    let tile = spec
        .tile_size()
        .ok_or_else(|| FigureError::BadInput(format!("grid {spec:?} is too large")))?;

    // Column labels shrink until the widest fits its tile, so neighbours never overlap.
    let mut col_px = LABEL_PX;
    while col_px > MIN_LABEL_PX && max_text_size(col_labels, col_px)?.0 > tile.0 + spec.pad {
        col_px -= 1.0;
    }
    let (row_w, _) = max_text_size(row_labels, LABEL_PX)?;
    let (_, col_h) = max_text_size(col_labels, col_px)?;
    let title = title.filter(|t| !t.is_empty());
    let (title_w, title_h) = match title {
        Some(t) => text_size(t, TITLE_PX)?,
        None => (0, 0),
    };

    let left = if row_labels.is_empty() { 0 } else { row_w + 2 * GAP };
    let col_band = if col_labels.is_empty() { 0 } else { col_h + 2 * GAP };
    let title_band = if title.is_some() { title_h + 2 * GAP } else { 0 };
    let top = title_band + col_band;
    let width = (left + grid.width()).max(title_w + 2 * GAP);
    let height = top + grid.height();

    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (x, y, &Luma([v])) in grid.enumerate_pixels() {
        canvas.put_pixel(left + x, top + y, Rgb([v, v, v]));
    }

    let plot_err = |e: &dyn std::fmt::Display| FigureError::Plot(format!("drawing labels: {e}"));
    {
        let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut canvas, (width, height))
            .map_err(|e| plot_err(&e))?;
        let root = backend.into_drawing_area();
        let to_i32 = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        let row_style = TextStyle::from((FONT_FAMILY, LABEL_PX).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center));
        for (r, label) in row_labels.iter().enumerate() {
            let (_, y0) = spec.tile_origin(r as u32, 0, tile);
            let pos = (to_i32(left - GAP), to_i32(top + y0 + tile.1 / 2));
            root.draw_text(label, &row_style, pos).map_err(|e| plot_err(&e))?;
        }
        let col_style = TextStyle::from((FONT_FAMILY, col_px).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Center));
        for (c, label) in col_labels.iter().enumerate() {
            let (x0, _) = spec.tile_origin(0, c as u32, tile);
            let pos = (to_i32(left + x0 + tile.0 / 2), to_i32(title_band + col_band / 2));
            root.draw_text(label, &col_style, pos).map_err(|e| plot_err(&e))?;
        }
        if let Some(t) = title {
            let style = TextStyle::from((FONT_FAMILY, TITLE_PX).into_font())
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center));
            root.draw_text(t, &style, (to_i32(width / 2), to_i32(title_band / 2)))
                .map_err(|e| plot_err(&e))?;
        }
        root.present().map_err(|e| plot_err(&e))?;
    }
    Ok(canvas)
}

/// Writes any 8-bit grey/RGB(A) image as a PNG, atomically, creating parent folders.
pub fn save_png<P>(img: &ImageBuffer<P, Vec<P::Subpixel>>, path: &Path) -> Result<(), FigureError>
where
    P: PixelWithColorType,
    [P::Subpixel]: EncodableLayout,
{
    let bytes = encode_png(img, path)?;
    write_atomic(path, &bytes)
}

/// PNG bytes of a grid (for serving over HTTP).
pub fn png_bytes<P>(img: &ImageBuffer<P, Vec<P::Subpixel>>) -> Result<Vec<u8>, FigureError>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
{
    super::encode_png(img, Path::new("(in memory)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn grid_dimensions() -> TestResult {
        let spec = GridSpec::mnist(2, 3).with_scale(4).with_pad(2);
        let img = digit_grid(&vec![0.5; 6 * 28 * 28], &spec)?;
        // 3 * 28 * 4 + 4 * 2 = 344 wide, 2 * 28 * 4 + 3 * 2 = 230 high.
        assert_eq!(img.dimensions(), (344, 230));
        Ok(())
    }

    #[test]
    fn upscaled_pixel_lands_in_its_block() -> TestResult {
        // 2x2 grid of 2x2 images; image 3 (row 1, col 1) has pixel (y=1, x=0) = 1.0.
        let spec = GridSpec::new(2, 2, 2, 2).with_scale(3).with_pad(1);
        let mut v = vec![0.0; 16];
        v[3 * 4 + 2] = 1.0;
        let img = digit_grid(&v, &spec)?;
        // tile (1,1) origin: x = 1 + 1 * (6 + 1) = 8, y = 8; pixel (y=1,x=0) -> block at (8, 11).
        for (x, y) in [(8, 11), (10, 13)] {
            assert_eq!(img.get_pixel(x, y).0, [255]);
        }
        assert_eq!(img.get_pixel(11, 11).0, [0]);
        assert_eq!(img.get_pixel(0, 0).0, [GridSpec::DEFAULT_PAD_VALUE]);
        Ok(())
    }

    #[test]
    fn wrong_length_is_an_error() {
        let spec = GridSpec::mnist(2, 2);
        assert!(matches!(digit_grid(&[0.0; 10], &spec), Err(FigureError::BadInput(_))));
        let zero = GridSpec::mnist(0, 2);
        assert!(digit_grid(&[], &zero).is_err());
        assert!(digit_grid(&[0.0; 4], &GridSpec::new(1, 1, 2, 2).with_scale(0)).is_err());
    }

    #[test]
    fn values_clamp_and_nan_is_black() -> TestResult {
        let spec = GridSpec::new(1, 1, 1, 5).with_scale(1).with_pad(0);
        let img = digit_grid(&[-3.0, 2.0, f32::NAN, 0.5, f32::INFINITY], &spec)?;
        let px: Vec<u8> = img.pixels().map(|p| p.0[0]).collect();
        // 0.5 * 255 = 127.5 rounds to 128.
        assert_eq!(px, vec![0, 255, 0, 128, 255]);
        Ok(())
    }

    #[test]
    fn labelled_grid_is_larger_and_draws_text() -> TestResult {
        let spec = GridSpec::mnist(2, 3);
        let images = vec![0.0; 6 * 28 * 28];
        let plain = digit_grid(&images, &spec)?;
        let rows = vec!["noisy".to_string(), "denoised".to_string()];
        let cols: Vec<String> = ["sigma=0.1", "sigma=0.4", "sigma=1.0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let img = labelled_grid(&images, &spec, &rows, &cols, Some("Denoising"))?;
        assert!(img.width() > plain.width() && img.height() > plain.height());
        // Text is black on the white margin: some margin pixel must be dark.
        let top = img.height() - plain.height();
        let dark = (0..top)
            .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
            .any(|(x, y)| img.get_pixel(x, y).0[0] < 100);
        assert!(dark, "no text drawn in the label margin");

        let bare = labelled_grid(&images, &spec, &[], &[], None)?;
        assert_eq!(bare.dimensions(), plain.dimensions());
        Ok(())
    }

    #[test]
    fn label_count_mismatch_is_an_error() {
        let spec = GridSpec::mnist(2, 1);
        let res = labelled_grid(&vec![0.0; 2 * 784], &spec, &["a".to_string()], &[], None);
        assert!(matches!(res, Err(FigureError::BadInput(_))));
    }

    #[test]
    fn png_round_trips() -> TestResult {
        let dir = tempfile::tempdir()?;
        let spec = GridSpec::new(1, 2, 3, 3).with_scale(2);
        let v: Vec<f32> = (0..18).map(|i| i as f32 / 17.0).collect();
        let img = digit_grid(&v, &spec)?;
        let path = dir.path().join("sub/grid.png");
        save_png(&img, &path)?;
        let back = image::open(&path)?.to_luma8();
        assert_eq!(back, img);

        let rgb = labelled_grid(&v, &spec, &[], &["a".into(), "b".into()], None)?;
        let rgb_path = dir.path().join("labelled.png");
        save_png(&rgb, &rgb_path)?;
        assert_eq!(image::open(&rgb_path)?.to_rgb8(), rgb);
        Ok(())
    }
}
