//! Noise levels, and which timesteps of the discrete schedule a few-step sampler visits.
//!
//! A [`Level`] is a point (alpha, sigma) of the variance-preserving process x = alpha x0 + sigma eps; the discrete
//! schedule puts timestep t at alpha = sqrt(alpha_bar[t]), sigma = sqrt(1 - alpha_bar[t]). Solvers step between
//! levels, so tests can drive them through exact continuous levels and the samplers through the schedule's.
//! [`Spacing`] picks the visited timesteps with the two rules of the diffusers schedulers.

use serde::{Deserialize, Serialize};

use crate::diffusion::schedule::NoiseSchedule;

/// A noise level of x = alpha x0 + sigma eps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    pub alpha: f64,
    pub sigma: f64,
}

impl Level {
    /// Clean data: alpha = 1, sigma = 0 (where every sampler ends).
    pub const DATA: Level = Level { alpha: 1.0, sigma: 0.0 };

    /// The level of timestep index `t`: alpha = sqrt(alpha_bar[t]), sigma = sqrt(1 - alpha_bar[t]).
    pub fn at(schedule: &NoiseSchedule, t: usize) -> Self {
        let alpha_bar = schedule.alpha_bar[t];
        Level {
            alpha: alpha_bar.sqrt(),
            sigma: (1.0 - alpha_bar).sqrt(),
        }
    }

    /// lambda = log(alpha / sigma), half the log signal-to-noise ratio (+infinity for clean data).
    pub fn lambda(self) -> f64 {
        (self.alpha / self.sigma).ln()
    }
}

/// How the visited timesteps are spread over 0..T-1 (the `--spacing` flag).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    /// round(T - k T/S) - 1 for k = 0..S-1: starts at the noisiest timestep T-1 and stops short of 0
    /// (diffusers' "trailing", Lin et al. 2023, with exactly S values).
    #[default]
    Trailing,
    /// k floor(T/S) for k = S-1..0: ends at timestep 0 but starts below T-1 (diffusers' "leading"); with few steps
    /// the first step starts from a level that pure noise does not match.
    Leading,
}

impl Spacing {
    /// The timesteps to visit, noisiest first, for `steps` steps over a `total`-step schedule (steps clamped to
    /// 1..=total). The sampler then makes one more step, from the last of them to clean data.
    pub fn timesteps(self, total: usize, steps: usize) -> Vec<usize> {
        let steps = steps.clamp(1, total);
        let mut ts: Vec<usize> = match self {
            // np.round rounds halves to even; so does round_ties_even, so ties land where diffusers puts them.
            Spacing::Trailing => (0..steps)
                .map(|k| (total as f64 - k as f64 * total as f64 / steps as f64).round_ties_even() as usize - 1)
                .collect(),
            Spacing::Leading => (0..steps).rev().map(|k| k * (total / steps)).collect(),
        };
        ts.dedup();
        ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::schedule::ScheduleConfig;

    #[test]
    fn trailing_timesteps() {
        // numpy: np.round(300 - np.arange(10) * 300 / 10).astype(int) - 1
        assert_eq!(
            Spacing::Trailing.timesteps(300, 10),
            vec![299, 269, 239, 209, 179, 149, 119, 89, 59, 29]
        );
        // numpy: np.round(300 - np.arange(7) * 300 / 7).astype(int) - 1 (diffusers' np.arange(300, 0, -300 / 7)
        // yields an 8th value, -1, from round-off; we take exactly S)
        assert_eq!(
            Spacing::Trailing.timesteps(300, 7),
            vec![299, 256, 213, 170, 128, 85, 42]
        );
        // Ties (300 / 8 = 37.5): np.round(300 - np.arange(8) * 37.5).astype(int) - 1 rounds halves to even.
        assert_eq!(
            Spacing::Trailing.timesteps(300, 8),
            vec![299, 261, 224, 187, 149, 111, 74, 37]
        );
        assert_eq!(Spacing::Trailing.timesteps(300, 1), vec![299]);
        assert_eq!(
            Spacing::Trailing.timesteps(300, 300),
            (0..300).rev().collect::<Vec<_>>()
        );
        assert_eq!(Spacing::Trailing.timesteps(300, 5000).len(), 300);
    }

    #[test]
    fn leading_timesteps() {
        // numpy: (np.arange(0, 10) * (300 // 10))[::-1]
        assert_eq!(
            Spacing::Leading.timesteps(300, 10),
            vec![270, 240, 210, 180, 150, 120, 90, 60, 30, 0]
        );
        // numpy: (np.arange(0, 7) * (300 // 7))[::-1]
        assert_eq!(Spacing::Leading.timesteps(300, 7), vec![252, 210, 168, 126, 84, 42, 0]);
        assert_eq!(Spacing::Leading.timesteps(300, 1), vec![0]);
        assert_eq!(Spacing::Leading.timesteps(300, 300), (0..300).rev().collect::<Vec<_>>());
    }

    #[test]
    fn levels_of_the_schedule() {
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        let noisiest = Level::at(&schedule, 299);
        // numpy: np.prod(1 - np.linspace(1e-4, 0.02, 300)) = 0.04805842894429403
        assert!((noisiest.alpha - 0.04805842894429403f64.sqrt()).abs() < 1e-12);
        assert!((noisiest.alpha.powi(2) + noisiest.sigma.powi(2) - 1.0).abs() < 1e-12);
        assert_eq!(Level::DATA.lambda(), f64::INFINITY);
    }
}
