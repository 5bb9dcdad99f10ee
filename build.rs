//! Links what tch leaves out and compiles the C++ shim.
//!
//! - rustc links with `--as-needed`, which drops `libtorch_cuda.so` (nothing references it directly), so CUDA would
//!   never be seen on a GPU machine. It is linked explicitly whenever the libtorch in use ships it.
//! - An rpath to libtorch's folder lets the binary start here without LD_LIBRARY_PATH.
//! - `csrc/libtorch_shim.cpp` (autocast and channels-last, which tch does not expose) and `csrc/bn_gelu.cpp` (the fused
//!   BatchNorm + GELU op) are compiled against the same libtorch headers, with OpenMP when libtorch ships its
//!   libgomp, so that ATen's parallel_for in them runs on libtorch's own thread pool.
//! - `csrc/bn_gelu_kernels.cpp` is compiled once per instruction set (AVX-512, AVX2, none); the op picks at run
//!   time the one ATen itself dispatches to.
use std::path::PathBuf;

fn main() {
    for file in [
        "libtorch_shim.cpp",
        "bn_gelu.cpp",
        "bn_gelu_kernels.cpp",
        "bn_gelu_kernels.h",
    ] {
        println!("cargo:rerun-if-changed=csrc/{file}");
    }
    let lib_dir =
        PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report the libtorch folder"));
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
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
