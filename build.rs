//! Links what tch leaves out and compiles the C++ shim.
//!
//! - rustc links with `--as-needed`, which drops `libtorch_cuda.so` (nothing references it directly), so CUDA would
//!   never be seen on a GPU machine. It is linked explicitly whenever the libtorch in use ships it.
//! - An rpath to libtorch's folder lets the binary start here without LD_LIBRARY_PATH.
//! - `csrc/libtorch_shim.cpp` (autocast and channels-last, which tch does not expose) and `csrc/bn_gelu.cpp` (the fused
//!   BatchNorm + GELU op) are compiled against the same libtorch headers, with OpenMP when libtorch ships its
//!   libgomp, so that ATen's parallel_for in them runs on libtorch's own thread pool.
//! - `csrc/cuda.cpp` (CUDA graphs) is compiled with the CUDA runtime headers where libtorch has CUDA, into its
//!   own library whose references to libtorch's CUDA libraries are then made weak (`objcopy --weaken`): the binary
//!   still starts where those libraries are absent (the CPU release bundle drops `libtorch_cuda.so`, see
//!   scripts/package.sh), and graphs are only ever used on a CUDA device, which needs them loaded.
//! - `csrc/bn_gelu_kernels.cpp` is compiled once per instruction set (AVX-512, AVX2, none); the op picks at run
//!   time the one ATen itself dispatches to.
use std::path::PathBuf;

fn main() {
    for file in [
        "libtorch_shim.cpp",
        "bn_gelu.cpp",
        "bn_gelu_kernels.cpp",
        "bn_gelu_kernels.h",
        "cuda.cpp",
    ] {
        println!("cargo:rerun-if-changed=csrc/{file}");
    }
    let lib_dir =
        PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report the libtorch folder"));
    let cuda = lib_dir.join("libtorch_cuda.so").exists();
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
        // Seen for its symbols only: the weak references to it make no NEEDED entry (libtorch_cuda loads it).
        println!("cargo:rustc-link-arg=-lc10_cuda");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());

    let include = lib_dir
        .parent()
        .expect("libtorch lib folder has a parent")
        .join("include");
    // The wheel's own OpenMP runtime (linking another would start a second thread pool).
    let openmp = lib_dir.join("libgomp.so.1").exists();
    if openmp {
        println!("cargo:rustc-link-lib=dylib:+verbatim=libgomp.so.1");
    } else {
        println!("cargo:warning=no libgomp.so.1 beside libtorch: the fused BatchNorm + GELU op runs on one thread");
    }

    let mut shim = cc::Build::new();
    shim.cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .file("csrc/libtorch_shim.cpp")
        .file("csrc/bn_gelu.cpp");
    if openmp {
        shim.flag("-fopenmp");
    }
    // Before the kernel libraries, which it references (static libraries resolve left to right).
    shim.compile("diffuse_shim");
    compile_cuda(cuda, &lib_dir, &include);

    let x86_64 = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
    let isas: &[(&str, &[&str])] = if x86_64 {
        &[
            (
                "avx512",
                &[
                    "-DDIFFUSE_ISA_AVX512",
                    "-mavx512f",
                    "-mavx512dq",
                    "-mavx512bw",
                    "-mavx512vl",
                    "-mfma",
                ],
            ),
            ("avx2", &["-DDIFFUSE_ISA_AVX2", "-mavx2", "-mfma"]),
            ("scalar", &[]),
        ]
    } else {
        &[("scalar", &[])]
    };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (isa, flags) in isas {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .pic(true)
            .warnings(false)
            .flag("-std=c++17")
            .opt_level(3)
            .flag("-ffp-contract=fast")
            .define("DIFFUSE_BN_GELU_TABLE", format!("diffuse_bn_gelu_{isa}").as_str())
            .out_dir(out_dir.join(isa))
            .file("csrc/bn_gelu_kernels.cpp");
        for flag in *flags {
            build.flag(flag);
        }
        build.compile(&format!("diffuse_bn_gelu_{isa}"));
    }
}

/// A complete set of CUDA runtime headers (`cuda_runtime.h` and the `crt/` folder it includes) from the pip wheels
/// beside the `torch` package, or of a system CUDA. The CUDA 13 runtime wheel ships no `crt/`; triton's copy (a
/// torch dependency on Linux) is complete. Only types and declarations are used (the graph API itself is
/// libtorch's), so a minor version apart from libtorch's own CUDA does not matter.
fn cuda_headers(lib_dir: &std::path::Path) -> Option<PathBuf> {
    let site_packages = lib_dir.parent()?.parent()?;
    [
        site_packages.join("nvidia/cu13/include"),
        site_packages.join("nvidia/cuda_runtime/include"),
        site_packages.join("triton/backends/nvidia/include"),
        PathBuf::from("/usr/local/cuda/include"),
    ]
    .into_iter()
    .find(|dir| dir.join("cuda_runtime.h").exists() && dir.join("crt/host_config.h").exists())
}

/// `csrc/cuda.cpp` as the static library `diffuse_cuda`: with CUDA where libtorch has it and its references
/// can be made weak, else the build without (every call reports that graphs are not available).
fn compile_cuda(cuda: bool, lib_dir: &std::path::Path, include: &std::path::Path) {
    let build = |headers: Option<&std::path::Path>| {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .pic(true)
            .warnings(false)
            .include(include)
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .file("csrc/cuda.cpp");
        if let Some(headers) = headers {
            build.include(headers).define("DIFFUSE_CUDA", None);
        }
        build.compile("diffuse_cuda");
    };
    println!("cargo:rustc-check-cfg=cfg(diffuse_cuda)");
    let Some(headers) = cuda.then(|| cuda_headers(lib_dir)).flatten() else {
        if cuda {
            println!(
                "cargo:warning=libtorch has CUDA but no CUDA runtime headers were found beside it: no CUDA graphs"
            );
        }
        return build(None);
    };
    build(Some(&headers));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let objcopy = std::env::var("OBJCOPY").unwrap_or_else(|_| "objcopy".into());
    let weakened = std::process::Command::new(&objcopy)
        .arg("--weaken")
        .arg(out_dir.join("libdiffuse_cuda.a"))
        .status()
        .is_ok_and(|status| status.success());
    if weakened {
        println!("cargo:rustc-cfg=diffuse_cuda");
    } else {
        println!("cargo:warning={objcopy} --weaken failed (binutils missing?): built without CUDA graphs");
        build(None);
    }
}
