#!/usr/bin/env bash
# The optimiser's tests with the HiGHS backend (cargo feature `highs`). highs-sys needs
# cmake, libclang (bindgen) and a C++ compiler: cmake and libclang come from PyPI into a
# virtualenv, so no system package beyond a C++ compiler is needed. Fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v c++ >/dev/null || { echo "highs-tests: no C++ compiler (apt-get install g++)" >&2; exit 1; }
VENV="${PED_HIGHS_VENV:-${TMPDIR:-/tmp}/ped-highs-venv}"
if ! "$VENV/bin/python" -c "import clang.native, cmake" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet cmake libclang
fi
export PATH="$VENV/bin:$PATH"
PYVER=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
export LIBCLANG_PATH="$VENV/lib/python$PYVER/site-packages/clang/native"
[ -d "$LIBCLANG_PATH" ] || { echo "highs-tests: $LIBCLANG_PATH missing" >&2; exit 1; }
cmake --version | head -1
# Same tests as the default build, now through HiGHS: the LP, the allocation solver
# against its LP oracle, the fallback ladder.
cargo test --features highs --lib plan::
cargo test --features highs --test plan_allocate
cargo test --features highs --test offline -- plan_cli::
