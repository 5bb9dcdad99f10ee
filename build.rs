//! Links what tch leaves out and compiles the autocast shim.
//!
//! - rustc links with `--as-needed`, which drops `libtorch_cuda.so` (nothing references it directly), so CUDA would
//!   never be seen on a GPU machine. It is linked explicitly whenever the libtorch in use ships it.
//! - An rpath to libtorch's folder lets the binary start here without LD_LIBRARY_PATH.
//! - `csrc/libtorch_shim.cpp` (autocast and channels-last, which tch does not expose) is compiled against the same
//!   libtorch headers.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/libtorch_shim.cpp");
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
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .file("csrc/libtorch_shim.cpp")
        .compile("diffuse_shim");
}
