#!/usr/bin/env bash
# Builds the release bundle dist/diffuse-VERSION-linux-x86_64.tar.gz: the release binary, the libtorch shared
# libraries it needs, the shipped models, README and licences. It runs from any folder on any x86_64 glibc Linux
# with no Python, no venv and no LD_LIBRARY_PATH: the binary's RUNPATH is $ORIGIN/lib and every bundled library's
# is $ORIGIN, and the binary finds models/ beside itself.
#
# The torch wheel from PyPI is the CUDA build; the binary links libtorch_cuda.so (build.rs forces it, so GPUs are
# seen). The default CPU variant drops that one NEEDED entry from the bundled copy of the binary and ships only the
# transitive NEEDED closure of what is left. libtorch_cpu.so itself needs libcudart and libcupti (its profiler), so
# those two small NVIDIA runtime libraries come along; nothing else of CUDA does.
#
# The CUDA variant keeps libtorch_cuda.so and ships its whole closure, plus what it and cuDNN load with dlopen.
#
# Usage: scripts/package.sh [--variant cpu|cuda]
#   DIFFUSE_BIN=path   package this binary instead of running `cargo build --release` (e.g. from a test)
#   DIST_DIR=path      where the tarball goes [default: dist]
#   GZIP_LEVEL=n       gzip level [default: 1: the libraries compress little more at 9, and take far longer]
# Needs patchelf (Debian package `patchelf`).
set -euo pipefail
cd "$(dirname "$0")/.."

variant=cpu
while [ $# -gt 0 ]; do
    case "$1" in
        --variant) variant="${2:-}"; shift 2 ;;
        --variant=*) variant="${1#*=}"; shift ;;
        *) echo "package.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
    esac
done
case "$variant" in cpu | cuda) ;; *) echo "package.sh: --variant must be cpu or cuda" >&2; exit 2 ;; esac
command -v patchelf >/dev/null || { echo "package.sh: needs patchelf (apt-get install patchelf)" >&2; exit 1; }

if [ -z "${DIFFUSE_BIN:-}" ]; then
    # shellcheck source=scripts/env.sh
    . scripts/env.sh
    cargo build --release
    DIFFUSE_BIN=target/release/diffuse
fi
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
suffix=""
[ "$variant" = cuda ] && suffix="-cuda"
name="diffuse-$version-linux-x86_64$suffix"
dist="${DIST_DIR:-dist}"
mkdir -p "$dist"
stage="$(mktemp -d "$dist/.stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
mkdir -p "$root/lib" "$root/licenses"

# Libraries the host always has (glibc, the GCC runtime) or must bring (the NVIDIA driver): never bundled.
is_system() {
    case "$1" in
        libc.so.* | libm.so.* | libdl.so.* | librt.so.* | libpthread.so.* | libutil.so.* | ld-linux*.so.* | \
            libstdc++.so.* | libgcc_s.so.* | libcuda.so.* | libnvidia-*.so.*) return 0 ;;
        *) return 1 ;;
    esac
}

# Where each library resolves for the built binary (its RUNPATH points into the torch venv).
declare -A path_of
while read -r lib _ path _; do
    [ -n "$path" ] && [ -f "$path" ] && path_of["$lib"]="$(readlink -f "$path")"
done < <(ldd "$DIFFUSE_BIN" | grep '=>')

cp "$DIFFUSE_BIN" "$root/diffuse"
chmod u+w "$root/diffuse"
if [ "$variant" = cpu ]; then
    patchelf --remove-needed libtorch_cuda.so "$root/diffuse"
fi
patchelf --set-rpath '$ORIGIN/lib' "$root/diffuse"

site="$(dirname "$(dirname "$(dirname "${path_of[libtorch_cpu.so]}")")")" # the venv's site-packages
queue=($(patchelf --print-needed "$root/diffuse"))
if [ "$variant" = cuda ]; then
    # What libtorch_cuda and cuDNN load with dlopen (never NEEDED): runtime compilation and cuDNN's sub-libraries.
    for f in "$site"/torch/lib/libcaffe2_nvrtc.so "$site"/nvidia/*/lib/libcudnn*.so.* "$site"/nvidia/*/lib/libnvrtc*.so.*; do
        [ -f "$f" ] || continue
        path_of["$(basename "$f")"]="$(readlink -f "$f")"
        queue+=("$(basename "$f")")
    done
fi

# The transitive NEEDED closure, breadth first.
declare -A seen
while [ ${#queue[@]} -gt 0 ]; do
    lib="${queue[0]}"
    queue=("${queue[@]:1}")
    if [ -n "${seen[$lib]:-}" ] || is_system "$lib"; then continue; fi
    seen["$lib"]=1
    src="${path_of[$lib]:-}"
    if [ -z "$src" ]; then # NEEDED by a dlopen-only library: look beside the others
        src="$(ls "$site"/torch/lib/"$lib" "$site"/nvidia/*/lib/"$lib" 2>/dev/null | head -n 1 || true)"
    fi
    if [ -z "$src" ] && ldconfig -p | grep -qF "$lib "; then
        echo "package.sh: $lib is left to the host (not in the venv; the system has it)" >&2
        continue
    fi
    [ -n "$src" ] || { echo "package.sh: cannot find $lib (ldd $DIFFUSE_BIN does not resolve it)" >&2; exit 1; }
    cp "$src" "$root/lib/$lib"
    chmod u+w "$root/lib/$lib"
    patchelf --set-rpath '$ORIGIN' "$root/lib/$lib"
    queue+=($(patchelf --print-needed "$root/lib/$lib"))
done

cp -r models "$root/models"
cp README.md "$root/"
for f in LICENSE* COPYING* NOTICE*; do [ -f "$f" ] && cp "$f" "$root/licenses/"; done
echo "diffuse: MIT OR Apache-2.0 (Cargo.toml)" >"$root/licenses/diffuse.txt"
# Licences of the bundled third-party libraries, from the wheels they came from: torch's, and each NVIDIA wheel
# whose RECORD lists a bundled library.
for info in "$site"/torch-*.dist-info "$site"/nvidia_*.dist-info; do
    [ -d "$info" ] || continue
    case "$(basename "$info")" in
        torch-*) ;;
        *) grep -qF -f <(ls "$root/lib") "$info/RECORD" || continue ;;
    esac
    package="$(basename "$info" .dist-info)"
    mkdir -p "$root/licenses/$package"
    find "$info" -type f \( -iname 'LICEN*' -o -iname 'NOTICE*' -o -iname 'COPYING*' \) \
        -exec cp {} "$root/licenses/$package/" \;
done

out="$dist/$name.tar.gz"
tar -C "$stage" -cf - "$name" | gzip -"${GZIP_LEVEL:-1}" >"$out.part"
mv "$out.part" "$out"
echo "package.sh: $out ($(du -sh "$root" | cut -f1) unpacked, $(du -h "$out" | cut -f1) packed; lib/: $(ls "$root/lib" | tr '\n' ' '))"
echo "$out"
