# shellcheck shell=bash
# Source this file (`. scripts/env.sh`) to build and run `diffuse` on a fresh machine.
#
# On first use it creates a Python venv holding torch==2.11.0 (the libtorch that tch 0.24 is pinned to) in a cache
# folder outside the repository, so every clone and every CI run reuses it. It then exports what tch's build needs
# (LIBTORCH_USE_PYTORCH with that venv's python on PATH) and puts torch/lib on LD_LIBRARY_PATH so the binary runs.
# Idempotent, and quiet when everything is already in place.

DIFFUSE_TORCH_VERSION="2.11.0"
DIFFUSE_CACHE="${DIFFUSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/diffuse}"
DIFFUSE_VENV="${DIFFUSE_VENV:-$DIFFUSE_CACHE/venv-torch-$DIFFUSE_TORCH_VERSION}"

_diffuse_torch_ok() {
    [ -x "$DIFFUSE_VENV/bin/python" ] &&
        "$DIFFUSE_VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$DIFFUSE_TORCH_VERSION' else 1)" 2>/dev/null
}

if [ ! -f "$DIFFUSE_VENV/.ready" ] || ! _diffuse_torch_ok; then
    echo "env.sh: installing torch==$DIFFUSE_TORCH_VERSION into $DIFFUSE_VENV (first use only)" >&2
    mkdir -p "$DIFFUSE_CACHE"
    python3 -m venv "$DIFFUSE_VENV" &&
        "$DIFFUSE_VENV/bin/pip" install -q --disable-pip-version-check "torch==$DIFFUSE_TORCH_VERSION" numpy &&
        _diffuse_torch_ok &&
        touch "$DIFFUSE_VENV/.ready" ||
        { echo "env.sh: could not install torch==$DIFFUSE_TORCH_VERSION into $DIFFUSE_VENV" >&2; return 1 2>/dev/null || exit 1; }
fi

DIFFUSE_TORCH_LIB="$("$DIFFUSE_VENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export DIFFUSE_VENV DIFFUSE_TORCH_LIB
export LIBTORCH_USE_PYTORCH=1
case ":$PATH:" in *":$DIFFUSE_VENV/bin:"*) ;; *) export PATH="$DIFFUSE_VENV/bin:$PATH" ;; esac
case ":${LD_LIBRARY_PATH:-}:" in
    *":$DIFFUSE_TORCH_LIB:"*) ;;
    *) export LD_LIBRARY_PATH="$DIFFUSE_TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
esac
unset -f _diffuse_torch_ok
