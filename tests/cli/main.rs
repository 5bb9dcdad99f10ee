//! The integration tests: the real `diffuse` binary on small real data, one module per area, in one test binary
//! (so the shared helpers and libtorch are compiled and linked once). Tests that need something of the machine are
//! `#[ignore = "needs ..."]` with a `needs_<what>_` name prefix; scripts/test.sh includes them when it is present.

mod common;

mod bad_input;
mod bundle;
mod data_download;
mod deploy_manifests;
mod evaluate_cli;
mod fashion_mnist;
mod fuzz_loaders;
mod gpu;
mod improved_arch;
mod kill_loop;
#[cfg(target_os = "linux")]
mod page_reuse;
mod resume_exact;
mod sample_cli;
mod serve_api;
mod serve_hardening;
mod serve_ops;
mod serve_prometheus;
mod storage_faults;
mod web_e2e;
