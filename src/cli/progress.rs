//! Training progress: an indicatif bar on a terminal; plain lines (epoch, step, loss, img/s, ETA) when stderr is a
//! log file or a pipe, so a long run under `nohup` shows where it is.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use diffuse::train::Hooks;

/// A log never goes longer than this without a progress line (as long as one step is shorter).
const MAX_SILENCE_SECS: f64 = 30.0;

pub struct Bars {
    bar: Option<ProgressBar>,
    /// When stderr is not a terminal, plain lines replace the bar.
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

impl Hooks for Bars {
    fn checkpoint_saved(&mut self, _epoch: usize, dir: &std::path::Path) {
        tracing::info!(checkpoint = %dir.display(), "saved");
    }

    fn test_mse(&mut self, epoch: usize, images: i64, sigma: f64, denoised: f64, noisy: f64) {
        eprintln!(
            "epoch {epoch}: test MSE on {images} digits at sigma {sigma}: denoised {denoised:.5}, noisy input {noisy:.5}"
        );
    }

    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize) {
        self.started = Instant::now();
        self.images = 0;
        self.smoothed_loss = None;
        if !std::io::stderr().is_terminal() {
            self.plain = Some(PlainLines {
                epoch,
                epochs,
                steps,
                every: (steps / 10).max(1),
                done: 0,
                last_line: self.started,
            });
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
    }

    fn step(&mut self, loss: f32, images: usize) {
        self.images += images;
        let loss = loss as f64;
        let smoothed = self.smoothed_loss.map_or(loss, |s| 0.9 * s + 0.1 * loss);
        self.smoothed_loss = Some(smoothed);
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = self.images as f64 / elapsed;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("loss {smoothed:.4} | {rate:.0} img/s"));
            bar.inc(1);
        }
        if let Some(plain) = &mut self.plain {
            plain.done += 1;
            let now = Instant::now();
            let step_secs = elapsed / plain.done as f64;
            if plain.due(now.duration_since(plain.last_line).as_secs_f64(), step_secs) {
                plain.last_line = now;
                eprintln!("{}", plain.line(smoothed, rate, step_secs));
            }
        }
    }

    fn epoch_end(&mut self, epoch: usize, mean_loss: f64, images_per_sec: f64) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.plain = None;
        eprintln!("epoch {epoch}: mean loss {mean_loss:.5}, {images_per_sec:.1} img/s");
    }
}

struct PlainLines {
    epoch: usize,
    epochs: usize,
    steps: usize,
    /// A line every this many steps (a tenth of the epoch).
    every: usize,
    done: usize,
    last_line: Instant,
}

impl PlainLines {
    /// Whether to print after the step just done: at every tenth of the epoch, and whenever waiting for the next
    /// step (about `step_secs`) would leave the log silent for more than [`MAX_SILENCE_SECS`]. The epoch's last step
    /// is left to the epoch-end line.
    fn due(&self, since_last_line_secs: f64, step_secs: f64) -> bool {
        self.done < self.steps
            && (self.done.is_multiple_of(self.every) || since_last_line_secs + step_secs > MAX_SILENCE_SECS)
    }

    fn line(&self, loss: f64, rate: f64, step_secs: f64) -> String {
        let left_in_epoch = (self.steps - self.done) as f64 * step_secs;
        let left_in_run = left_in_epoch + (self.epochs - self.epoch) as f64 * self.steps as f64 * step_secs;
        format!(
            "epoch {}/{}: step {}/{}, loss {loss:.4}, {rate:.0} img/s, ETA epoch {}, run {}",
            self.epoch,
            self.epochs,
            self.done,
            self.steps,
            duration(left_in_epoch),
            duration(left_in_run)
        )
    }
}

/// 42s, 3m05s, 2h07m.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(steps: usize, done: usize) -> PlainLines {
        PlainLines {
            epoch: 2,
            epochs: 5,
            steps,
            every: (steps / 10).max(1),
            done,
            last_line: Instant::now(),
        }
    }

    #[test]
    fn a_line_every_tenth_of_an_epoch() {
        // 470 steps: every 47th, never at the last step (the epoch-end line follows it).
        let due: Vec<usize> = (1..=470).filter(|&d| lines(470, d).due(0.0, 0.01)).collect();
        assert_eq!(due, (1..10).map(|k| k * 47).collect::<Vec<_>>());
    }

    #[test]
    fn slow_steps_never_leave_the_log_silent_for_30_seconds() {
        // 25 s per step (the D=128 denoiser at batch 256 in fp32 on an AVX2-only CPU): a tenth of a 47-step epoch
        // is 4 steps, 100 s, so the silence rule must print after every step.
        let mut since_last = 0.0;
        let mut longest: f64 = 0.0;
        for done in 1..47 {
            since_last += 25.0;
            longest = longest.max(since_last);
            if lines(47, done).due(since_last, 25.0) {
                since_last = 0.0;
            }
        }
        assert!(longest <= MAX_SILENCE_SECS, "{longest} s without a line");
        // Fast steps print only at the tenths.
        assert!(!lines(47, 5).due(10.0, 1.0));
        assert!(lines(47, 5).due(29.5, 1.0));
    }

    #[test]
    fn the_line_names_epoch_step_loss_rate_and_eta() {
        let line = lines(100, 40).line(0.05123, 34.4, 2.0);
        // 60 steps left in epoch 2 (120 s), then 3 more epochs of 100 steps (600 s).
        assert_eq!(
            line,
            "epoch 2/5: step 40/100, loss 0.0512, 34 img/s, ETA epoch 2m00s, run 12m00s"
        );
        assert_eq!(duration(7620.0), "2h07m");
    }
}
