//! Which precision is faster on this CPU, measured once and remembered.
//!
//! The CPU flags alone do not decide it. bf16 autocast on an AMD EPYC with AVX512-BF16 trains the D=128 denoiser at
//! 44 img/s against 23 in fp32, but on an Intel Xeon whose AMX the hypervisor hides (avx512_bf16 listed, no
//! amx_bf16) it trains at 20 against 27 (README, Performance). So on a CPU that lists native bf16, the first run
//! times a small channels-last convolution step (forward and backward, the UNet's bulk) in both precisions and keeps
//! the faster; the result is stored in the cache folder, keyed by CPU model and thread count, and reused.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::runtime::layout::channels_last;
use crate::runtime::precision::{autocast, Precision};

/// What one measurement found (the cache file holds one per CPU model and thread count).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Measured {
    pub cpu: String,
    pub threads: usize,
    pub fp32_ms: f64,
    pub bf16_ms: f64,
    pub choice: Precision,
}

/// The faster precision on this CPU, from the cache or measured now (and cached).
pub fn faster_on_this_cpu() -> Precision {
    let (cpu, threads) = (cpu_model(), crate::runtime::device::threads());
    let path = cache_file();
    let mut known: Vec<Measured> = path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    if let Some(hit) = known.iter().find(|m| m.cpu == cpu && m.threads == threads) {
        return hit.choice;
    }
    let measured = measure(cpu, threads);
    tracing::info!(?measured, "measured the faster precision on this CPU");
    let choice = measured.choice;
    known.push(measured);
    // A cache that cannot be written only costs the measurement again next time.
    if let Some(path) = path {
        let written = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            let text = serde_json::to_string_pretty(&known).map_err(std::io::Error::other)?;
            crate::io::atomic_file::write_atomic(&path, text.as_bytes())
        });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache the precision measurement");
        }
    }
    choice
}

/// `$DIFFUSE_CACHE/precision.json`, else under `$XDG_CACHE_HOME/diffuse` or `~/.cache/diffuse` (where
/// scripts/env.sh keeps its venv).
pub fn cache_file() -> Option<PathBuf> {
    let dir = std::env::var_os("DIFFUSE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("diffuse")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/diffuse")))?;
    Some(dir.join("precision.json"))
}

/// The CPU's model name from /proc/cpuinfo (or the file named by `DIFFUSE_CPUINFO`).
fn cpu_model() -> String {
    let path = std::env::var_os("DIFFUSE_CPUINFO").unwrap_or_else(|| "/proc/cpuinfo".into());
    std::fs::read_to_string(path)
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Best of 3 timed steps (after 2 untimed) of a 64 -> 64 channel 3x3 convolution on [32, 64, 28, 28]
/// channels-last, forward and backward, in each precision.
fn measure(cpu: String, threads: usize) -> Measured {
    let x = channels_last(&Tensor::randn([32, 64, 28, 28], (Kind::Float, Device::Cpu)));
    let w = channels_last(&(Tensor::randn([64, 64, 3, 3], (Kind::Float, Device::Cpu)) * 0.05)).set_requires_grad(true);
    let time = |precision: Precision| {
        let step = || {
            let y = autocast(precision, Device::Cpu, || {
                x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
            });
            y.to_kind(Kind::Float).square().mean(Kind::Float).backward();
            let _ = w.grad().zero_();
        };
        for _ in 0..2 {
            step();
        }
        (0..3)
            .map(|_| {
                let started = Instant::now();
                step();
                started.elapsed().as_secs_f64() * 1000.0
            })
            .fold(f64::INFINITY, f64::min)
    };
    let (fp32_ms, bf16_ms) = (time(Precision::Fp32), time(Precision::Bf16));
    Measured {
        cpu,
        threads,
        fp32_ms,
        bf16_ms,
        choice: if bf16_ms < fp32_ms {
            Precision::Bf16
        } else {
            Precision::Fp32
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The measurement times both precisions and keeps the faster, and its record survives the cache's JSON (the
    /// cache itself is exercised end to end in tests/cli/sample_cli.rs).
    #[test]
    fn measures_both_precisions_keeps_the_faster_and_round_trips() {
        let m = measure("test CPU".into(), 2);
        assert!(m.fp32_ms > 0.0 && m.bf16_ms > 0.0, "{m:?}");
        let faster = if m.bf16_ms < m.fp32_ms {
            Precision::Bf16
        } else {
            Precision::Fp32
        };
        assert_eq!(m.choice, faster);
        let text = serde_json::to_string(&vec![m.clone()]).expect("json");
        let back: Vec<Measured> = serde_json::from_str(&text).expect("parse");
        // serde_json may round the last bit of an f64; the choice and the key must come back exactly.
        assert_eq!(
            (&back[0].cpu, back[0].threads, back[0].choice),
            (&m.cpu, m.threads, m.choice)
        );
        assert!((back[0].fp32_ms - m.fp32_ms).abs() < 1e-9 && (back[0].bf16_ms - m.bf16_ms).abs() < 1e-9);
    }
}
