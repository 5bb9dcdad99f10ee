//! The fastest precision and memory layout on this CPU, for training and for sampling, measured once and remembered.
//!
//! The CPU flags alone do not decide either, and neither does a convolution alone. bf16 autocast on an AMD EPYC with
//! AVX512-BF16 trains the D=128 denoiser at 44 img/s against 23 in fp32, but on an Intel Xeon whose AMX the hypervisor
//! hides (avx512_bf16 listed, no amx_bf16) at 20 against 27. On that Xeon the cfg UNet trains about 5% faster
//! channels-last in fp32 and samples equally fast in both layouts, while a lone convolution block with BatchNorm and
//! GELU ran twice as fast contiguous (README, Performance). So the first run of each kind of work on a CPU times the
//! network itself (a
//! training pass, or a sampling forward pass; [`crate::model::tuning`]) in each layout, in fp32 and, where the flags
//! list native bf16, in bf16 too, and keeps the fastest. The timings are stored in the cache folder, keyed by CPU
//! model, thread count, native bf16, the engine (libtorch version and the CPU kernels it dispatches to) and the kind
//! of work, and reused. CUDA takes fp32 channels-last without a
//! measurement.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::runtime::layout::Layout;
use crate::runtime::precision::{cpu_has_native_bf16, read_cpuinfo, Precision};

/// A precision and a layout: how the network runs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Choice {
    pub precision: Precision,
    pub layout: Layout,
}

impl Choice {
    /// e.g. "fp32, channels-last".
    pub fn describe(self) -> String {
        format!("{}, {}", self.precision.name(), self.layout.name())
    }
}

/// One timed setting.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Timing {
    pub precision: Precision,
    pub layout: Layout,
    /// Best time of one pass (training: forward and backward; sampling: forward), milliseconds.
    pub ms: f64,
}

/// The kind of work a choice is for: the two run different kernels (backward, BatchNorm in training mode).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Train,
    Sample,
}

/// Times one pass of `workload` in a precision and layout, in milliseconds.
pub type Timer<'a> = &'a dyn Fn(Workload, Choice) -> f64;

/// What one measurement found (the cache file holds one per CPU model, thread count, native bf16, engine and
/// workload).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Measured {
    pub cpu: String,
    pub threads: usize,
    pub native_bf16: bool,
    /// [`engine`] when measured; records cached before it was keyed read as empty and are measured again.
    #[serde(default)]
    pub engine: String,
    pub workload: Workload,
    pub timings: Vec<Timing>,
}

impl Measured {
    /// The fastest timed setting among those matching the given precision and layout (`None` = any).
    pub fn best(&self, precision: Option<Precision>, layout: Option<Layout>) -> Option<Choice> {
        self.timings
            .iter()
            .filter(|t| precision.is_none_or(|p| p == t.precision) && layout.is_none_or(|l| l == t.layout))
            .min_by(|a, b| a.ms.total_cmp(&b.ms))
            .map(|t| Choice {
                precision: t.precision,
                layout: t.layout,
            })
    }
}

/// The flags resolved for `device` and `workload`: each one given wins; the rest come from the fastest setting
/// measured on this CPU (with `timer`, when nothing is cached) that agrees with the given ones (fp32 channels-last on
/// CUDA).
pub fn resolve(
    precision: Option<Precision>,
    layout: Option<Layout>,
    device: Device,
    workload: Workload,
    timer: Timer,
) -> Choice {
    let fallback = Choice {
        precision: precision.unwrap_or_default(),
        layout: layout.unwrap_or_default(),
    };
    if device != Device::Cpu || (precision.is_some() && layout.is_some()) {
        return fallback;
    }
    measured_on_this_cpu(workload, timer)
        .best(precision, layout)
        .unwrap_or(fallback)
}

/// This CPU's timings for `workload`, from the cache or measured now with `timer` (and cached). Processes that start
/// together take turns through a lock file, so the first measures and the others read its record: every process on
/// a machine makes the same choice.
pub fn measured_on_this_cpu(workload: Workload, timer: Timer) -> Measured {
    let (cpu, threads, native_bf16) = (cpu_model(), crate::runtime::device::threads(), cpu_has_native_bf16());
    let engine = engine();
    let path = cache_file();
    // Held until this function returns. Without a writable cache folder there is no lock and no cache: each process
    // measures for itself.
    let _lock = path.as_deref().and_then(lock_beside);
    // A missing or unreadable cache only costs the measurement again.
    let mut known: Vec<Measured> = path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let key = |m: &Measured| {
        m.cpu == cpu
            && m.threads == threads
            && m.native_bf16 == native_bf16
            && m.engine == engine
            && m.workload == workload
    };
    if let Some(hit) = known.iter().find(|m| key(m)) {
        return hit.clone();
    }
    let measured = measure(cpu, threads, native_bf16, engine, workload, timer);
    tracing::info!(?measured, "measured the fastest precision and layout on this CPU");
    known.push(measured.clone());
    if let Some(path) = path {
        let written = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            let text = serde_json::to_string_pretty(&known).map_err(std::io::Error::other)?;
            crate::io::atomic_file::write_atomic(&path, text.as_bytes())
        });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache the tuning measurement");
        }
    }
    measured
}

/// An exclusive lock on `path`.lock (created with its folder when missing); None when that cannot be had.
fn lock_beside(path: &std::path::Path) -> Option<std::fs::File> {
    let lock_path = path.with_extension("lock");
    lock_path.parent().map(std::fs::create_dir_all)?.ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .ok()?;
    file.lock().ok()?;
    Some(file)
}

/// `$DIFFUSE_CACHE/tuning.json`, else under `$XDG_CACHE_HOME/diffuse` or `~/.cache/diffuse` (where
/// scripts/env.sh keeps its venv).
pub fn cache_file() -> Option<PathBuf> {
    let dir = std::env::var_os("DIFFUSE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("diffuse")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/diffuse")))?;
    Some(dir.join("tuning.json"))
}

/// The CPU's model name ([`read_cpuinfo`]).
fn cpu_model() -> String {
    read_cpuinfo()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

extern "C" {
    fn diffuse_engine(out: *mut std::ffi::c_char, capacity: i32) -> i32;
}

/// diffuse's own kernels and op choices, in the tuning cache's key: the fused BatchNorm + GELU
/// ([`crate::runtime::bn_gelu`]), GELU as a convolution's post-op ([`crate::runtime::conv_gelu`]) and the
/// matrix-product convolutions ([`crate::model::matmul_conv`]). Change it whenever they change speed, so that every
/// machine measures its precision and layout choice again.
pub const OWN_KERNELS: &str =
    "fused BatchNorm-GELU 2 (fp32, bf16), conv-GELU post-op 2 (fp32, bf16), matmul edge convolutions 1";

/// The engine that runs the kernels: the libtorch version, the CPU kernels ATen dispatches to (which
/// `ATEN_CPU_CAPABILITY` can lower), the version of diffuse's own fused kernels, and oneDNN's instruction-set cap
/// when `ONEDNN_MAX_CPU_ISA` sets one. A new libtorch, new fused kernels or a lowered instruction set run other
/// kernels, so they are measured again.
pub fn engine() -> String {
    let mut buffer = [0u8; 128];
    // SAFETY: the shim writes at most `capacity` bytes, NUL included, into the buffer.
    unsafe { diffuse_engine(buffer.as_mut_ptr().cast(), buffer.len() as i32) };
    let mut text = std::ffi::CStr::from_bytes_until_nul(&buffer)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    text.push_str(&format!(", {}", OWN_KERNELS));
    if let Some(isa) = crate::runtime::precision::onednn_isa_cap() {
        text.push_str(&format!(", oneDNN ISA cap {isa}"));
    }
    text
}

/// Times `workload` in every precision and layout that applies: both layouts, fp32 and, with native bf16, bf16.
fn measure(
    cpu: String,
    threads: usize,
    native_bf16: bool,
    engine: String,
    workload: Workload,
    timer: Timer,
) -> Measured {
    let precisions: &[Precision] = if native_bf16 {
        &[Precision::Fp32, Precision::Bf16]
    } else {
        &[Precision::Fp32]
    };
    let mut timings = Vec::new();
    for &layout in &[Layout::ChannelsLast, Layout::Contiguous] {
        for &precision in precisions {
            let ms = timer(workload, Choice { precision, layout });
            timings.push(Timing { precision, layout, ms });
        }
    }
    Measured {
        cpu,
        threads,
        native_bf16,
        engine,
        workload,
        timings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timer that makes contiguous fp32 the fastest for training and channels-last bf16 for sampling.
    fn fake(workload: Workload, c: Choice) -> f64 {
        match (workload, c.precision, c.layout) {
            (Workload::Train, Precision::Fp32, Layout::Contiguous) => 10.0,
            (Workload::Sample, Precision::Bf16, Layout::ChannelsLast) => 10.0,
            (_, Precision::Fp32, _) => 20.0,
            (_, Precision::Bf16, _) => 30.0,
        }
    }

    /// Every precision and layout that applies is timed, the best is the fastest of them, also when one of the two is
    /// fixed, and the record survives the cache's JSON (the cache itself is exercised end to end in
    /// tests/cli/sample_cli.rs, the real timer in src/model/tuning.rs).
    #[test]
    fn times_every_setting_keeps_the_fastest_and_round_trips() {
        let train = measure("test CPU".into(), 2, true, engine(), Workload::Train, &fake);
        assert_eq!(train.timings.len(), 4, "{train:?}");
        let choice = |precision, layout| Some(Choice { precision, layout });
        assert_eq!(train.best(None, None), choice(Precision::Fp32, Layout::Contiguous));
        assert_eq!(
            train.best(Some(Precision::Bf16), None),
            choice(Precision::Bf16, Layout::ChannelsLast)
        );
        assert_eq!(
            train.best(None, Some(Layout::ChannelsLast)),
            choice(Precision::Fp32, Layout::ChannelsLast)
        );
        let sample = measure("test CPU".into(), 2, true, engine(), Workload::Sample, &fake);
        assert_eq!(sample.best(None, None), choice(Precision::Bf16, Layout::ChannelsLast));
        let text = serde_json::to_string(&vec![train.clone()]).expect("json");
        let back: Vec<Measured> = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, vec![train]);
    }

    /// The engine names the libtorch this was built against and the kernels ATen picked on this CPU; a record cached
    /// before the engine was part of the key reads back with none, so it never matches and is measured again.
    #[test]
    fn the_engine_keys_the_record() {
        let engine = engine();
        assert!(engine.starts_with("libtorch 2.11.0, ATen CPU kernels "), "{engine}");
        let kernels = engine.trim_start_matches("libtorch 2.11.0, ATen CPU kernels ");
        let kernels = kernels.split(',').next().unwrap_or_default();
        assert!(["DEFAULT", "AVX2", "AVX512"].contains(&kernels), "{engine}");
        assert!(engine.contains(OWN_KERNELS), "{engine}");
        let old = r#"[{"cpu":"test CPU","threads":2,"native_bf16":false,"workload":"train",
            "timings":[{"precision":"fp32","layout":"channels-last","ms":1.0}]}]"#;
        let old: Vec<Measured> = serde_json::from_str(old).expect("an old record parses");
        assert_eq!(old[0].engine, "");
        assert_ne!(old[0].engine, engine);
    }

    #[test]
    fn without_native_bf16_only_fp32_is_timed() {
        let m = measure("test CPU".into(), 1, false, engine(), Workload::Sample, &fake);
        assert!(m.timings.iter().all(|t| t.precision == Precision::Fp32), "{m:?}");
        assert_eq!(m.timings.len(), 2);
        assert_eq!(m.best(Some(Precision::Bf16), None), None);
        assert_eq!(m.best(None, None).map(|c| c.precision), Some(Precision::Fp32));
    }
}
