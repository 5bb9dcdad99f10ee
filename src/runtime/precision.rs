//! Mixed precision: bf16 autocast with fp32 master weights, on CPU (AMX) and CUDA.
//!
//! tch 0.24 only exposes CUDA fp16 autocast, so a small C++ shim (`csrc/libtorch_shim.cpp`) switches libtorch's
//! autocast on for the device type and dtype we want. Weights and optimizer state stay fp32; convolutions and
//! matrix products run in bf16 inside [`autocast`].

use serde::{Deserialize, Serialize};
use tch::Device;

/// The `--precision` flag; its default comes from [`crate::runtime::tuning`].
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// bf16 autocast compute, fp32 weights and optimizer state.
    Bf16,
}

impl Precision {
    /// How the flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    /// A one-line warning when this precision will be slow on `device`: bf16 on a CPU that only emulates it.
    pub fn slow_here(self, device: Device) -> Option<String> {
        (self == Precision::Bf16 && device == Device::Cpu && !cpu_has_native_bf16()).then(|| {
            format!(
                "warning: --precision bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16 in {CPUINFO}): \
                 libtorch emulates it, measured {BF16_EMULATION_COST} than fp32; drop --precision to use fp32"
            )
        })
    }
}

/// What emulated bf16 cost where it was measured (README, Performance).
const BF16_EMULATION_COST: &str =
    "7x slower (denoiser training 1.5 against 10.2 img/s on an AVX2-only AMD EPYC, `diffuse bench --model denoiser`)";

const CPUINFO: &str = "/proc/cpuinfo";

/// The text of /proc/cpuinfo, or of the file named by `DIFFUSE_CPUINFO` (tests use it to play another CPU); None when
/// it cannot be read.
pub fn read_cpuinfo() -> Option<String> {
    let path = std::env::var_os("DIFFUSE_CPUINFO").unwrap_or_else(|| CPUINFO.into());
    std::fs::read_to_string(path).ok()
}

/// Whether the CPU flags ([`read_cpuinfo`]) list a native bf16 instruction set and oneDNN may use it: a cap below
/// bf16 in `ONEDNN_MAX_CPU_ISA` (bench/compare.sh --isa avx2 sets one) leaves bf16 emulated.
pub fn cpu_has_native_bf16() -> bool {
    let capped = onednn_isa_cap().is_some_and(|cap| isa_cap_excludes_bf16(&cap));
    !capped && read_cpuinfo().is_some_and(|info| flags_have_native_bf16(&info))
}

/// oneDNN's instruction-set cap, `ONEDNN_MAX_CPU_ISA`, when the environment sets one.
pub fn onednn_isa_cap() -> Option<String> {
    std::env::var_os("ONEDNN_MAX_CPU_ISA").map(|cap| cap.to_string_lossy().into_owned())
}

/// Whether oneDNN's instruction-set cap names a set without bf16 instructions.
fn isa_cap_excludes_bf16(cap: &str) -> bool {
    const BELOW_BF16: [&str; 6] = ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"];
    BELOW_BF16.contains(&cap.trim().to_ascii_uppercase().as_str())
}

/// Whether the `flags` lines of a /proc/cpuinfo text name avx512_bf16 or amx_bf16.
fn flags_have_native_bf16(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16"))
}

extern "C" {
    fn diffuse_autocast_set(cuda: i32, enabled: i32, bf16: i32);
    fn diffuse_autocast_is_enabled(cuda: i32) -> i32;
}

/// Runs `f` with autocast on for `device` when `precision` asks for it, and turns it off afterwards (also when `f`
/// panics or unwinds), dropping autocast's weight cache, which goes stale once an optimizer updates weights. Not
/// nestable: an inner call turns autocast off for the rest of an outer one.
pub fn autocast<T>(precision: Precision, device: Device, f: impl FnOnce() -> T) -> T {
    if precision == Precision::Fp32 {
        return f();
    }
    let cuda = i32::from(device.is_cuda());
    struct Guard(i32);
    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: the shim only flips libtorch's thread-local autocast flags.
            unsafe { diffuse_autocast_set(self.0, 0, 1) }
        }
    }
    // SAFETY: as above.
    unsafe { diffuse_autocast_set(cuda, 1, 1) };
    let _guard = Guard(cuda);
    f()
}

/// Whether autocast is currently on for `device` (for tests and diagnostics).
pub fn autocast_enabled(device: Device) -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { diffuse_autocast_is_enabled(i32::from(device.is_cuda())) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn native_bf16_is_read_from_the_cpu_flags() {
        // Abridged /proc/cpuinfo lines of the three CPU classes seen on the development machines.
        let avx2_epyc = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2\n";
        let bf16_epyc = "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n";
        let spr = "flags\t\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n";
        assert!(!flags_have_native_bf16(avx2_epyc));
        assert!(flags_have_native_bf16(bf16_epyc));
        assert!(flags_have_native_bf16(spr));
        // A flag name that merely contains the word does not count, nor does a line other than `flags`.
        assert!(!flags_have_native_bf16(
            "flags\t: avx512_bf16x\nmodel name\t: avx512_bf16\n"
        ));
    }

    /// oneDNN caps below bf16 leave bf16 emulated; caps at or above it, and its own "ALL" and "DEFAULT", do not.
    #[test]
    fn an_isa_cap_below_bf16_excludes_it() {
        for cap in ["AVX2", "avx2", "AVX512_CORE", "AVX512_CORE_VNNI", "SSE41"] {
            assert!(isa_cap_excludes_bf16(cap), "{cap}");
        }
        for cap in ["AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL", "DEFAULT"] {
            assert!(!isa_cap_excludes_bf16(cap), "{cap}");
        }
    }

    #[test]
    fn bf16_autocast_runs_convolutions_in_bf16_and_switches_off_after() {
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = autocast(Precision::Bf16, Device::Cpu, || {
            assert!(autocast_enabled(Device::Cpu));
            x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
        });
        assert_eq!(y.kind(), Kind::BFloat16);
        assert!(!autocast_enabled(Device::Cpu));
        y.to_kind(Kind::Float).sum(Kind::Float).backward();
        assert_eq!(w.grad().kind(), Kind::Float);
        let z = autocast(Precision::Fp32, Device::Cpu, || {
            x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
        });
        assert_eq!(z.kind(), Kind::Float);
    }
}
