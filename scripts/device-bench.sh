#!/usr/bin/env bash
# One-shot benchmark for a many-core machine with no docker and no network, in one run
# of at most ~8 minutes: verify scaling with ceilings, and cold-build peak RSS.
#
#   OUT=/some/dir [SIZE_GIB=8] [WHEELS=dir] bash scripts/device-bench.sh
#
# Generates a SIZE_GIB source tree under BENCH_DIR, builds a bundle with a fresh key,
# then runs scripts/bench.py: ceilings (SHA-256 with 1 and N threads, page-cache read
# of the bundle), `airgap verify` on each of CORES, cold builds on each of BUILD_CORES,
# and the all-cores table against tar cf / openssl dgst. Writes $OUT/bench.md (tables),
# $OUT/bench.json (every measurement) and $OUT/log. Exits 1 when a build or verify
# peaks above 200 MB RSS, 2 when it cannot start.
#
# Environment (all optional except where the machine lacks packages):
#   OUT          where the results go (default: ./bench-out)
#   SIZE_GIB     data size (default 8; lowered to fit BENCH_DIR's free space)
#   RUNS         measured runs per row, after one warm-up (default 2)
#   CORES        verify core counts (default 1,2,4,8,16; counts above this machine's dropped)
#   BUILD_CORES  cold-build core counts (default 2,16; same rule)
#   BUDGET_S     no new measurement starts after this many seconds (default 360)
#   BENCH_DIR    scratch space (default /tmp; /dev/shm keeps it all in memory)
#   PY           the Python to use (default python3)
#   WHEELS       a directory of wheels for packages this Python lacks (cryptography,
#                cffi, pycparser, pydantic, pydantic-core, annotated-types,
#                typing-extensions, typing-inspection); default ./wheels if it exists.
#                They are unpacked into BENCH_DIR (no pip, no network) and put on PYTHONPATH.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$REPO/bench-out}"
mkdir -p "$OUT"

main() {
    local size="${SIZE_GIB:-8}" runs="${RUNS:-2}" budget="${BUDGET_S:-360}"
    local dir="${BENCH_DIR:-/tmp}" py="${PY:-python3}"
    local wheels="${WHEELS:-}"
    if [[ -z "$wheels" && -d "$REPO/wheels" ]]; then wheels="$REPO/wheels"; fi
    echo "== device-bench $(date -u +%FT%TZ) in $REPO"
    echo "== $(nproc) CPUs usable, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    free -g | sed 's/^/   /'
    df -h "$dir" | sed 's/^/   /'
    "$py" --version

    export PYTHONPATH="$REPO"
    local need="import click, cryptography, pydantic, yaml, rich, requests"
    if ! "$py" -c "$need" 2>/dev/null; then
        if [[ -z "$wheels" ]]; then
            echo "missing packages and no WHEELS directory:" >&2
            "$py" -c "$need" >&2 || true
            return 2
        fi
        local vendor="$dir/airgap-bench-vendor"
        rm -rf "$vendor"
        echo "== unpacking wheels from $wheels into $vendor"
        "$py" - "$wheels" "$vendor" <<'EOF'
import platform, sys, zipfile
from pathlib import Path

wheels, vendor = Path(sys.argv[1]), Path(sys.argv[2])
cp = f"cp{sys.version_info.major}{sys.version_info.minor}"
machine = platform.machine()
picked = {}
for whl in sorted(wheels.glob("*.whl")):
    name, *_, py, abi, plat = whl.name[:-4].split("-")
    ok_py = any(t.startswith("py3") or t == cp for t in py.split("."))
    ok_abi = abi in ("none", "abi3", cp)
    if abi == "abi3":  # stable ABI: built for this minor version or an older one
        ok_py = any(t.startswith("cp3") and int(t[3:]) <= sys.version_info.minor for t in py.split("."))
    ok_plat = plat == "any" or ("linux" in plat and plat.endswith(machine))
    if ok_py and ok_abi and ok_plat:
        picked[name.lower().replace("_", "-")] = whl  # sorted: the last is the newest
for name, whl in sorted(picked.items()):
    print(f"   {whl.name}")
    zipfile.ZipFile(whl).extractall(vendor)
EOF
        export PYTHONPATH="$REPO:$vendor"
        if ! "$py" -c "$need"; then
            echo "still missing packages after unpacking $wheels" >&2
            return 2
        fi
    fi

    # Core counts this machine has.
    local ncpu
    ncpu="$("$py" -c 'import os; print(len(os.sched_getaffinity(0)))')"
    local cores build_cores
    cores="$(fit "${CORES:-1,2,4,8,16}" "$ncpu")"
    build_cores="$(fit "${BUILD_CORES:-2,16}" "$ncpu")"

    # Room for the sources, the bundle and a plain tar of the same files.
    local free_gib
    free_gib="$(df -Pk "$dir" | awk 'NR==2 {print int($4 / 1048576)}')"
    local fits=$(((free_gib - 3) / 3))
    if ((fits < 1)); then
        echo "not enough free space in $dir (${free_gib} GiB)" >&2
        return 2
    fi
    if "$py" -c "import sys; sys.exit(not float('$size') > $fits)"; then
        echo "== SIZE_GIB $size does not fit ${free_gib} GiB free in $dir: using $fits"
        size="$fits"
    fi

    echo "== bench: ${size} GiB, runs $runs, verify on $cores cores, build on $build_cores"
    cd "$REPO"
    local rc=0
    "$py" scripts/bench.py \
        --size-gib "$size" --runs "$runs" \
        --cores "$cores" --build-cores "$build_cores" \
        --dir "$dir" --budget-s "$budget" \
        --out "$OUT/bench.md" --json "$OUT/bench.json" || rc=$?
    rm -rf "$dir/airgap-bench-vendor"
    echo "== done $(date -u +%FT%TZ), exit $rc"
    return "$rc"
}

# The comma list $1 without the counts above $2 (always at least "$2" itself if none fit).
fit() {
    local out=() n
    IFS=, read -ra counts <<<"$1"
    for n in "${counts[@]}"; do
        if ((n <= $2)); then out+=("$n"); fi
    done
    if ((${#out[@]} == 0)); then out=("$2"); fi
    (IFS=,; echo "${out[*]}")
}

set -o pipefail
main 2>&1 | tee "$OUT/log"
