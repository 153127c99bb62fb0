#!/usr/bin/env bash
# Installs NVIDIA's perf_analyzer (Triton's C++ load generator, the yardstick for `tritonctl loadtest`) into DIR.
# The binary comes from the tritonclient 2.41.0 wheel for Linux x86-64 (later wheels dropped it), checked against its
# sha256 from PyPI; its shared libraries (libb64, libcudart: no GPU needed) come from the nvidia-pytriton wheel that
# tritonctl already depends on, installed for the Python given by PYTHON (default: .venv/bin/python).
# Nothing outside DIR is written; `make perf-analyzer` runs this with DIR=tools/perf_analyzer (git-ignored).
# Usage: tools/get-perf-analyzer.sh DIR    then: DIR/perf_analyzer -m MODEL -u 127.0.0.1:8001 -i grpc --concurrency-range 1:8
set -euo pipefail
dir=${1:?usage: get-perf-analyzer.sh DIR}
py=${PYTHON:-.venv/bin/python}
version=2.41.0
wheel=tritonclient-$version-py3-none-manylinux1_x86_64.whl
sha256=cf4ed5df836fa99937678a9fd852f86ba05c7b83656dd0a540e20afdb9ab4629

[ "$(uname -s)/$(uname -m)" = Linux/x86_64 ] || { echo "perf_analyzer: only Linux x86-64 is supported" >&2; exit 1; }
[ -x "$py" ] || { echo "no Python at $py: run 'make venv' first, or set PYTHON" >&2; exit 1; }
libs=$("$py" -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs")' 2>/dev/null) ||
  { echo "nvidia-pytriton is not installed for $py (pip install -e . installs it)" >&2; exit 1; }
b64=$(ls "$libs"/libb64-*.so.0d 2>/dev/null | head -1)
cudart=$(ls "$libs"/libcudart-*.so.12* 2>/dev/null | head -1)
[ -n "$b64" ] && [ -n "$cudart" ] || { echo "libb64/libcudart not found in $libs (nvidia-pytriton layout changed?)" >&2; exit 1; }

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
tmp=$(mktemp -d "$dir/.download.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 --python-version 3 \
  --implementation py -d "$tmp" "tritonclient==$version"
[ -f "$tmp/$wheel" ] || { echo "pip did not download $wheel (got: $(ls "$tmp"))" >&2; exit 1; }
echo "$sha256  $tmp/$wheel" | sha256sum -c --quiet - || { echo "$wheel: sha256 mismatch" >&2; exit 1; }
"$py" -m zipfile -e "$tmp/$wheel" "$tmp/x" >/dev/null
mkdir -p "$dir/lib"
install -m 755 "$tmp/x/tritonclient-$version.data/data/bin/perf_analyzer" "$dir/lib/perf_analyzer.bin"
ln -sf "$b64" "$dir/lib/libb64.so.0d"
ln -sf "$cudart" "$dir/lib/libcudart.so.12"
cat > "$dir/perf_analyzer.tmp" <<EOS
#!/usr/bin/env bash
LD_LIBRARY_PATH="$dir/lib:$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dir/lib/perf_analyzer.bin" "\$@"
EOS
chmod +x "$dir/perf_analyzer.tmp"
"$dir/perf_analyzer.tmp" --version >/dev/null 2>&1 || { echo "perf_analyzer does not run (missing libraries?)" >&2; exit 1; }
mv "$dir/perf_analyzer.tmp" "$dir/perf_analyzer"  # last: make's target exists only once it runs
echo "perf_analyzer $version ready: $dir/perf_analyzer"
