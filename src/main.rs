//! The `diffuse` command line: parses flags, installs logging and progress display, runs a command, and reports
//! any error as one line on stderr with a non-zero exit.

mod cli;

use std::process::ExitCode;

use clap::Parser;

// How the process keeps the memory libtorch frees. A training step allocates and frees the same large activations and
// gradients every step (the cfg UNet, D=64, batch 128: about 330 MB a step; the part-1 denoiser, D=128, batch 256:
// several GB), and so does each sampler step. An allocator that hands freed pages back to the kernel makes the next
// step fault them in again, and the kernel zeroes them: with glibc's defaults that was 5-7% of the cfg run's time and
// a third of the denoiser's speed. jemalloc replaces the C allocator for the whole process, libtorch included (its
// malloc, free and posix_memalign are the ones every library here links to), and never hands freed pages back, so
// the next step reuses them without a fault. A process keeps its peak footprint until it exits (a server, that of
// its largest batch). Measured against glibc tuned to keep freed memory (README, Performance): the same speed, a
// quarter less peak RSS, since jemalloc fragments less.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string pointer that may live in a static: jemalloc's `const char *malloc_conf`.
#[repr(transparent)]
struct ConfString(*const std::ffi::c_char);

// SAFETY: it points at a 'static, immutable C string literal.
unsafe impl Sync for ConfString {}

/// jemalloc's built-in options, read before `main` (`MALLOC_CONF` adds to them): freed pages never decay, neither to
/// "muzzy" (MADV_FREE) nor to purged, since both made the next step fault them in again (measured: 6.8 M faults
/// against 0.9 M in 4 denoiser steps).
#[no_mangle]
static malloc_conf: ConfString = ConfString(c"dirty_decay_ms:-1,muzzy_decay_ms:-1".as_ptr());

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
            }
            let rendered = e.render().to_string();
            let line = rendered
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            cli::note(&format!("error: {line} (see --help)"));
            return ExitCode::from(2);
        }
    };
    cli::init_logging(args.verbose);
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::note(&format!("error: {}", cli::one_line(&e)));
            ExitCode::FAILURE
        }
    }
}
