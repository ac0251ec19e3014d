#!/usr/bin/env bash
# The whole native benchmark in one go, for a many-core machine without network.
#
#   benchmarks/device_run.sh OUTPUT_DIR [DTLSLOAD]
#
# DTLSLOAD: a prebuilt dtlsload binary (else $DTLSLOAD).  Python: $PYTHON, else python3; it
# must import trio_dtls_server's dependencies (trio, pyOpenSSL, cryptography,
# prometheus_client): this script puts the repository and, when it exists, /tmp/site (where
# `pip install --no-index --target /tmp/site .whl/*.whl` puts the wheels) on PYTHONPATH.
#
# Four parts, each its own `python -m benchmarks` run with its own time limit and its own
# JSON, so one that runs long costs only itself; the whole stays under 8 minutes:
#   per-core  ours (1 worker) vs trio.DTLSEndpoint on one core, dtlsload on another:
#             handshakes/s (PSK-AES128-GCM-SHA256, ECDHE-PSK-CHACHA20-POLY1305), round
#             trips/s (50 peers), RSS
#   scaling   ours with 1, 2, 4, 8 workers on cores 0..N-1, dtlsload processes on the last
#             cores (the same ones for every row): handshakes/s and round trips/s, ratio to 1
#   burst     N peers ping at once: replies lost and kernel drops, before/after the buffer
#   churn     12 waves of 300 half-open clients, --handshake-timeout 5: RSS per wave
# Output: OUTPUT_DIR/<part>/latest.json (+ a timestamped copy), OUTPUT_DIR/<part>.txt (the
# printed tables), OUTPUT_DIR/report.txt (all tables), OUTPUT_DIR/machine.txt.
# BENCH_EXTRA: more options for every part (BENCH_EXTRA=--quick: a smoke run of the script).
set -u

if [ $# -lt 1 ]; then
    echo "usage: $0 OUTPUT_DIR [DTLSLOAD]" >&2
    exit 2
fi
OUT=$1
GENERATOR=${2:-${DTLSLOAD:-}}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
TOTAL_BUDGET=${BENCH_BUDGET_S:-450}   # seconds for all parts (the limit is 480)

mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ -d /tmp/site ]; then
    case ":$PYTHONPATH:" in
        *:/tmp/site:*) ;;
        *) PYTHONPATH="$PYTHONPATH:/tmp/site" ;;
    esac
fi

if [ -z "$GENERATOR" ] || [ ! -x "$GENERATOR" ]; then
    echo "error: no dtlsload binary (give it as the second argument or \$DTLSLOAD): '$GENERATOR'" >&2
    exit 2
fi
if ! "$PY" -c "import trio, OpenSSL, cryptography, prometheus_client, trio_dtls_server" 2>"$OUT/import-error.txt"; then
    echo "error: $PY cannot import the dependencies (PYTHONPATH=$PYTHONPATH):" >&2
    cat "$OUT/import-error.txt" >&2
    exit 2
fi
rm -f "$OUT/import-error.txt"

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "python: $("$PY" --version 2>&1)"
    echo "cpus usable: $("$PY" -c 'import os; print(sorted(os.sched_getaffinity(0)))')"
    echo "load average: $(cat /proc/loadavg 2>/dev/null)"
    echo "dtlsload: $GENERATOR sha256 $(sha256sum "$GENERATOR" | cut -d' ' -f1)"
    echo "git: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
    lscpu 2>/dev/null || grep -m1 "model name" /proc/cpuinfo
} >"$OUT/machine.txt"

START=$(date +%s)
STATUS=0

# run_part NAME CAP_SECONDS ARGS...: one `python -m benchmarks` run, limited to the smaller of
# CAP_SECONDS and what is left of the budget; skipped when under 30 s are left.
run_part() {
    local name=$1 cap=$2
    shift 2
    local left=$((TOTAL_BUDGET - ($(date +%s) - START)))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 30 ]; then
        echo "== $name: SKIPPED, only ${left}s of the budget left" | tee "$OUT/$name.txt"
        STATUS=1
        return
    fi
    echo "== $name (limit ${limit}s)"
    timeout -k 10 "$limit" "$PY" -m benchmarks --native require --no-python \
        --dtlsload "$GENERATOR" --output-dir "$OUT/$name" "$@" ${BENCH_EXTRA:-} 2>&1 |
        tee "$OUT/$name.txt"
    local code=${PIPESTATUS[0]}
    if [ "$code" -ne 0 ]; then
        echo "== $name: exit $code (124: over its ${limit}s limit)" | tee -a "$OUT/$name.txt"
        STATUS=1
    fi
}

run_part per-core 170 --scenario per_core
run_part scaling 150 --scenario scaling --workers-list "${WORKERS_LIST:-1,2,4,8}"
run_part burst 60 --scenario burst
run_part churn 130 --scenario churn

for name in per-core scaling burst churn; do
    echo "######## $name"
    cat "$OUT/$name.txt" 2>/dev/null
done >"$OUT/report.txt"
echo "== done in $(($(date +%s) - START))s; tables in $OUT/report.txt"
exit $STATUS
