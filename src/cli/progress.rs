//! Progress bars for training (indicatif): loss and images per second, one bar per epoch.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use diffuse::train::Progress;

pub struct Bars {
    bar: Option<ProgressBar>,
    /// When stderr is not a terminal (logs, nohup), a plain line every tenth of an epoch replaces the bar.
    plain: Option<PlainLines>,
    started: Instant,
    images: usize,
    smoothed_loss: Option<f64>,
}

impl Bars {
    pub fn new() -> Self {
        Self {
            bar: None,
            plain: None,
            started: Instant::now(),
            images: 0,
            smoothed_loss: None,
        }
    }
}

impl Progress for Bars {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize) {
        let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
        self.plain = (!std::io::stderr().is_terminal()).then(|| PlainLines {
            label: format!("epoch {epoch}/{epochs}"),
            steps,
            every: (steps / 10).max(1),
            done: 0,
        });
        self.started = Instant::now();
        self.images = 0;
        self.smoothed_loss = None;
    }

    fn step(&mut self, loss: f32, images: usize) {
        self.images += images;
        let loss = loss as f64;
        let smoothed = self.smoothed_loss.map_or(loss, |s| 0.9 * s + 0.1 * loss);
        self.smoothed_loss = Some(smoothed);
        if let Some(bar) = &self.bar {
            let rate = self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {smoothed:.4} | {rate:.0} img/s"));
            bar.inc(1);
        }
        if let Some(plain) = &mut self.plain {
            plain.done += 1;
            if plain.done % plain.every == 0 && plain.done < plain.steps {
                let rate = self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                eprintln!(
                    "{}: step {}/{}, loss {smoothed:.4}, {rate:.0} img/s",
                    plain.label, plain.done, plain.steps
                );
            }
        }
    }

    fn epoch_end(&mut self, epoch: usize, mean_loss: f64, images_per_sec: f64) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("epoch {epoch}: mean loss {mean_loss:.5}, {images_per_sec:.1} img/s");
    }
}

struct PlainLines {
    label: String,
    steps: usize,
    every: usize,
    done: usize,
}
