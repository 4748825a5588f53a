#!/usr/bin/env bash
# Install NVIDIA's perf_analyzer (Triton's load tool) for benchmarks/perf_analyzer.py, from registry packages only
# (idempotent; fast when already done; x86_64 Linux only):
#
#   bash scripts/perf_analyzer_setup.sh        # then: $PERF_ANALYZER_HOME/perf_analyzer --help
#
# PyPI's `perf-analyzer` is a placeholder; the real binary ships inside tritonclient's manylinux1_x86_64 wheel
# (tritonclient-X.data/data/bin/perf_analyzer). This downloads that wheel (pinned, sha256 checked), unzips only the
# binary, installs the CUDA runtime it links against (libcudart.so.12, from PyPI's nvidia-cuda-runtime-cu12; no GPU
# is needed to run it), makes sure libb64.so.0d is there (Debian's libb64-0d), and writes the wrapper
# $PERF_ANALYZER_HOME/perf_analyzer that sets LD_LIBRARY_PATH and runs the binary.
#
# PERF_ANALYZER_HOME: where it goes (default ~/.cache/specserve/perf_analyzer). PYTHON: the Python whose pip is used
# (default .venv/bin/python of this checkout, else python3).
set -euo pipefail

TRITONCLIENT_VERSION=2.41.0   # its manylinux1_x86_64 wheel ships the perf_analyzer binary (bin/perf_analyzer)
TRITONCLIENT_WHEEL=tritonclient-${TRITONCLIENT_VERSION}-py3-none-manylinux1_x86_64.whl
TRITONCLIENT_SHA256=cf4ed5df836fa99937678a9fd852f86ba05c7b83656dd0a540e20afdb9ab4629
CUDART_VERSION=12.3.101       # CUDA 12.3, what Triton 23.12 (tritonclient 2.41) was built with; any 12.x has libcudart.so.12

die() { echo "perf_analyzer_setup: $*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ] \
  || die "perf_analyzer ships for x86_64 Linux only (this is $(uname -s) $(uname -m)); run the benchmark on an x86_64 Linux machine"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOME_DIR=${PERF_ANALYZER_HOME:-$HOME/.cache/specserve/perf_analyzer}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "no pip for $PYTHON (set PYTHON to a Python with pip)"

BIN=$HOME_DIR/tritonclient-$TRITONCLIENT_VERSION/perf_analyzer
CUDART_DIR=$HOME_DIR/cuda-runtime-$CUDART_VERSION
CUDART_LIB=$CUDART_DIR/nvidia/cuda_runtime/lib
WRAPPER=$HOME_DIR/perf_analyzer
mkdir -p "$HOME_DIR"

# 1. the binary, out of the pinned wheel
if [ ! -x "$BIN" ]; then
  mkdir -p "$(dirname "$BIN")"
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  echo "downloading tritonclient $TRITONCLIENT_VERSION (manylinux1_x86_64 wheel, ~12 MB)"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
    --python-version 3.11 -d "$download" "tritonclient==$TRITONCLIENT_VERSION" \
    || die "pip download of tritonclient==$TRITONCLIENT_VERSION failed"
  wheel=$download/$TRITONCLIENT_WHEEL
  [ -f "$wheel" ] || die "pip did not download $TRITONCLIENT_WHEEL (got: $(ls "$download"))"
  actual=$(sha256sum "$wheel" | cut -d' ' -f1)
  [ "$actual" = "$TRITONCLIENT_SHA256" ] \
    || die "sha256 mismatch for $TRITONCLIENT_WHEEL: expected $TRITONCLIENT_SHA256, got $actual; not installing it"
  "$PYTHON" - "$wheel" "$BIN" <<'EOF'
import shutil, sys, zipfile
wheel, target = sys.argv[1:]
member = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".data/data/bin/perf_analyzer"))
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(target + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  chmod 755 "$BIN.part"
  mv "$BIN.part" "$BIN"
  echo "perf_analyzer binary: $BIN"
fi

# 2. libcudart.so.12
if [ ! -f "$CUDART_LIB/libcudart.so.12" ]; then
  echo "installing nvidia-cuda-runtime-cu12==$CUDART_VERSION into $CUDART_DIR"
  rm -rf "$CUDART_DIR"
  "$PYTHON" -m pip install --quiet --no-deps --target "$CUDART_DIR" "nvidia-cuda-runtime-cu12==$CUDART_VERSION" \
    || die "pip install of nvidia-cuda-runtime-cu12==$CUDART_VERSION failed"
  [ -f "$CUDART_LIB/libcudart.so.12" ] || die "nvidia-cuda-runtime-cu12==$CUDART_VERSION has no $CUDART_LIB/libcudart.so.12"
fi

# 3. libb64.so.0d (Debian's libb64-0d)
if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's libb64-0d (libb64.so.0d)"
    apt-get install -y -qq libb64-0d >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq libb64-0d >/dev/null; } \
      || die "apt-get install libb64-0d failed"
  else
    die "perf_analyzer needs libb64.so.0d: run as root, or ask an admin for: apt-get install libb64-0d"
  fi
fi

# 4. the wrapper
cat >"$WRAPPER.part" <<EOF
#!/bin/sh
# Written by scripts/perf_analyzer_setup.sh: perf_analyzer from tritonclient $TRITONCLIENT_VERSION's wheel, with its CUDA runtime.
LD_LIBRARY_PATH="$CUDART_LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$BIN" "\$@"
EOF
chmod 755 "$WRAPPER.part"
mv "$WRAPPER.part" "$WRAPPER"

# 5. it runs
version=$("$WRAPPER" --version 2>&1) || die "perf_analyzer does not start: $version"
case $version in
  "Perf Analyzer Version"*) ;;
  *) die "perf_analyzer does not start: $version" ;;
esac
echo "$version: $WRAPPER"
