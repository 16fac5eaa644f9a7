#!/bin/sh
# Benchmark: `ccflow plan` of a `files:` fan-out over 100,000 files.
#
# Generates the files once (under $CCFLOW_BENCH_DIR, default
# ${TMPDIR:-/tmp}/ccflow-bench-100k), builds the release binary, then runs
# `ccflow plan bench --format json > /dev/null` $RUNS times (default 5) under
# /usr/bin/time -v and prints each run's wall time and peak RSS, then the
# medians. Target (issue 2): median < 1 s and < 300 MB on a 2-core machine.
#
# Usage: benches/plan.sh            (from the repository root)
#        FILES=20000 RUNS=3 benches/plan.sh
set -eu

FILES=${FILES:-100000}
RUNS=${RUNS:-5}
DIR=${CCFLOW_BENCH_DIR:-${TMPDIR:-/tmp}/ccflow-bench-$((FILES / 1000))k}
REPO=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET/release/ccflow

if [ ! -f "$DIR/.generated-$FILES" ]; then
    echo "generating $FILES files under $DIR" >&2
    rm -rf "$DIR"
    mkdir -p "$DIR/.claudecluster"
    # 100 folders of FILES/100 small files each, like a large source tree.
    per=$((FILES / 100))
    (cd "$DIR" && seq 0 99 | awk '{ printf "src/d%02d\n", $1 }' | xargs mkdir -p \
        && seq 0 $((FILES - 1)) | awk -v per="$per" '{ printf "src/d%02d/file%06d.txt\n", int($1 / per), $1 }' \
        | xargs touch)
    cat > "$DIR/.claudecluster/bench.yaml" <<'YAML'
version: 1
tasks:
  each:
    for_each:
      files: "src/**/*.txt"
    inputs: ["{{ item }}"]
    outputs: ["out/{{ item.dir }}/{{ item.stem }}.o"]
    run: mkdir -p out/{{ item.dir }} && cp {{ item }} out/{{ item.dir }}/{{ item.stem }}.o
  all:
    needs: [each]
    run: cat {{ needs.each.outputs }} > /dev/null
YAML
    touch "$DIR/.generated-$FILES"
fi

echo "building $BIN" >&2
(cd "$REPO" && cargo build --release --quiet)

results=$(mktemp)
trap 'rm -f "$results"' EXIT
i=1
while [ "$i" -le "$RUNS" ]; do
    stats=$( (cd "$DIR" && /usr/bin/time -v "$BIN" plan bench --format json > /dev/null) 2>&1 ) || {
        echo "$stats" >&2
        echo "ccflow plan failed" >&2
        exit 1
    }
    wall=$(echo "$stats" | awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, t, ":"); s = 0; for (k = 1; k <= n; k++) s = s * 60 + t[k]; print s }')
    rss=$(echo "$stats" | awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }')
    # CPU time (user + system) too: on a shared machine wall time includes waiting for a core.
    cpu=$(echo "$stats" | awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.2f", s }')
    echo "run $i: ${wall}s wall, ${cpu}s cpu, ${rss} MB peak RSS"
    echo "$wall $rss $cpu" >> "$results"
    i=$((i + 1))
done
sort -n -k1,1 "$results" | awk -v n="$RUNS" 'NR == int((n + 1) / 2) { printf "median wall: %ss\n", $1 }'
sort -n -k3,3 "$results" | awk -v n="$RUNS" 'NR == int((n + 1) / 2) { printf "median cpu: %ss\n", $3 }'
sort -n -k2,2 "$results" | awk -v n="$RUNS" 'NR == int((n + 1) / 2) { printf "median peak RSS: %s MB\n", $2 }'
echo "($FILES files; target: < 1 s and < 300 MB; load average: $(cut -d' ' -f1-3 /proc/loadavg))"
