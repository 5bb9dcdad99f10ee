//! How the C allocator that libtorch allocates through keeps freed memory.
//!
//! A training step allocates and frees the same large activations and gradients every step (for the cfg UNet, D=64,
//! batch 128, about 330 MB a step; for the part-1 denoiser, D=128, batch 256, several GB). By default glibc hands
//! blocks above its mmap threshold (dynamic, at most 32 MiB) straight back to the kernel, and trims the heap's top
//! when more than its trim threshold is free, so the next step faults the same pages in again and the kernel zeroes
//! them: 5-7% of the cfg run's time in the kernel, and more for the denoiser. Keeping freed memory for the next step
//! removes most of that (measured in README, Performance, on an Intel Xeon with AVX512-BF16 and no AMX, 2 threads):
//! - every command: the mmap threshold fixed at its ceiling and the trim threshold raised. cfg training faults 4x
//!   less and takes about 8% less CPU time for the same steps, with the same peak RSS;
//! - training work (`train`, `bench`): no mmap at all, so blocks above 32 MiB (the denoiser's 100 MB activations) are
//!   reused too: the denoiser faults 4x less and trains about 1.4x faster, for about 1.3 GB more peak RSS (5.0
//!   against 3.7 GB). Sampling work (`sample`, `eval`, `serve` and the rest) keeps mmap for its largest blocks, so a
//!   long-lived server returns them.

use super::tuning::Workload;

/// Applies the settings above. Call once at start-up, before the first tensor. A no-op where the C library is not
/// glibc.
pub fn keep_freed_memory(workload: Workload) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (half its 64 MiB heap size).
        const MMAP_THRESHOLD: i32 = 32 << 20;
        /// The largest trim threshold mallopt takes (an int): keep up to 2 GiB of freed heap.
        const TRIM_THRESHOLD: i32 = i32::MAX;
        // SAFETY: mallopt only changes the allocator's parameters, and is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            if workload == Workload::Train {
                libc::mallopt(libc::M_MMAP_MAX, 0);
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = workload;
}
