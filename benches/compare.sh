#!/usr/bin/env bash
# Side-by-side benchmark: ccflow against ninja, make and `xargs -P` doing the
# same work (one trivial command per file plus a reduce over all outputs) on
# the same machine in the same run. See docs/benchmarks.md.
#
#   benches/compare.sh                   all scenarios, 5 repetitions
#   benches/compare.sh cold noop         only these scenarios
#   REPS=3 N_COLD=200 benches/compare.sh quick check with smaller sizes
#
# Scenarios: cold (N_COLD files, -j 2), noop (N_NOOP files, everything up to
# date), change (one input changed, N_COLD files), restore (all outputs
# deleted; ccflow restores from its cache, the others rebuild), docker
# (N_DOCKER `runner: docker` tasks against `docker run --rm` via xargs -P2).
#
# Repetitions are interleaved (rep 1 of every tool, then rep 2, ...) so that
# load from other processes affects every tool alike, and the order of the
# tools rotates from one repetition to the next; medians are printed.
# Exits non-zero only on errors (a tool failing, a missing binary), never on
# a missed target.
set -euo pipefail

REPS=${REPS:-5}
JOBS=${JOBS:-2}
N_COLD=${N_COLD:-1000}
N_NOOP=${N_NOOP:-10000}
N_DOCKER=${N_DOCKER:-50}
IMAGE=${IMAGE:-ccflow-test/busybox:latest}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ -z "${CCFLOW:-}" ]]; then
    target_dir=${CARGO_TARGET_DIR:-$here/target}
    CCFLOW=$target_dir/release/ccflow
    if [[ ! -x "$CCFLOW" || "${BUILD:-0}" == 1 ]]; then
        echo "building the release binary (cargo build --release)" >&2
        (cd "$here" && cargo build --release --quiet)
    fi
fi
[[ -x "$CCFLOW" ]] || { echo "error: no ccflow binary at \`$CCFLOW\`" >&2; exit 1; }
for tool in ninja make xargs; do
    command -v "$tool" >/dev/null || { echo "error: \`$tool\` is not installed" >&2; exit 1; }
done

scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(cold noop change restore docker)

work=$(mktemp -d "${TMPDIR:-/tmp}/ccflow-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
export CI=true NO_COLOR=1

# --- timing -----------------------------------------------------------------

# now_us: microseconds from bash's own clock (no fork).
now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "$t"; }

# measure SCENARIO TOOL CMD...: runs CMD in the current directory and appends
# its wall time to $work/samples (a file: measure runs in subshells); fails
# the script when CMD fails.
measure() {
    local scenario=$1 tool=$2
    shift 2
    local start end
    start=$(now_us)
    if ! "$@" >"$work/last.out" 2>&1; then
        echo "error: $tool failed in scenario $scenario: $*" >&2
        tail -20 "$work/last.out" >&2
        exit 1
    fi
    end=$(now_us)
    echo "$scenario|$tool|$(( (end - start) / 1000 )).$(( (end - start) % 1000 / 100 ))" >>"$work/samples"
}

# in_order REP STEP...: evaluates the steps (command strings) starting
# from position REP modulo their number, so that over the repetitions each
# tool runs first, second, ... alike: a tool measured always first (right
# after the previous repetition's last tool) carries whatever that position
# costs in every sample.
in_order() {
    local rep=$1 i
    shift
    local steps=("$@")
    for ((i = 0; i < ${#steps[@]}; i++)); do
        eval "${steps[$(((i + rep) % ${#steps[@]}))]}" || exit 1
    done
}

median() {
    tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else printf "%.1f\n", (v[NR/2]+v[NR/2+1])/2}'
}

# --- fixtures ---------------------------------------------------------------

# setup DIR N: N input files and the same work described for every tool.
setup() {
    local dir=$1 n=$2 i
    rm -rf "$dir"
    mkdir -p "$dir/in" "$dir/out" "$dir/.claudecluster"
    for ((i = 1; i <= n; i++)); do echo "line $i" >"$dir/in/f$i.txt"; done
    cat >"$dir/.claudecluster/bench.yaml" <<'EOF'
version: 1
tasks:
  each:
    for_each: { files: "in/*.txt" }
    inputs: ["{{ item }}"]
    outputs: ["out/{{ item.stem }}.txt"]
    run: cp {{ item }} out/{{ item.stem }}.txt
  all:
    needs: [each]
    inputs: ["out/*.txt"]
    outputs: [all.txt]
    run: cat out/*.txt > all.txt
EOF
    {
        echo "rule cp"
        echo "  command = cp \$in \$out"
        echo "rule cat"
        echo "  command = cat out/*.txt > \$out"
        for ((i = 1; i <= n; i++)); do echo "build out/f$i.txt: cp in/f$i.txt"; done
        printf 'build all.txt: cat'
        for ((i = 1; i <= n; i++)); do printf ' out/f%d.txt' "$i"; done
        echo
        echo "default all.txt"
    } >"$dir/build.ninja"
    cat >"$dir/Makefile" <<'EOF'
OUTS := $(patsubst in/%,out/%,$(wildcard in/*.txt))
all.txt: $(OUTS)
	cat out/*.txt > all.txt
out/%.txt: in/%.txt
	cp $< $@
EOF
}

xargs_all() {
    (cd in && printf '%s\n' *.txt) | xargs -P "$JOBS" -I{} cp in/{} out/{}
    cat out/*.txt >all.txt
}

ccflow_run() { "$CCFLOW" run bench -j "$JOBS"; }

clean_ccflow() { rm -rf out .ccflow all.txt && mkdir out; }
clean_ninja() { rm -rf out .ninja_log .ninja_deps all.txt && mkdir out; }
clean_make() { rm -rf out all.txt && mkdir out; }

# --- scenarios --------------------------------------------------------------

cold() {
    local d=$work/cold
    setup "$d/ccflow" "$N_COLD"; setup "$d/ninja" "$N_COLD"; setup "$d/make" "$N_COLD"; setup "$d/xargs" "$N_COLD"
    for ((rep = 1; rep <= REPS; rep++)); do
        in_order "$rep" \
            '(cd "$d/ccflow" && clean_ccflow && measure cold ccflow ccflow_run)' \
            '(cd "$d/ninja" && clean_ninja && measure cold ninja ninja -j "$JOBS")' \
            '(cd "$d/make" && clean_make && measure cold make make -j "$JOBS")' \
            '(cd "$d/xargs" && clean_make && measure cold "xargs -P" xargs_all)'
    done
}

noop() {
    local d=$work/noop
    setup "$d/ccflow" "$N_NOOP"; setup "$d/ninja" "$N_NOOP"; setup "$d/make" "$N_NOOP"
    (cd "$d/ccflow" && ccflow_run >/dev/null 2>&1)
    (cd "$d/ninja" && ninja -j "$JOBS" >/dev/null)
    (cd "$d/make" && make -j "$JOBS" >/dev/null)
    for ((rep = 1; rep <= REPS; rep++)); do
        in_order "$rep" \
            '(cd "$d/ccflow" && measure noop ccflow ccflow_run)' \
            '(cd "$d/ninja" && measure noop ninja ninja -j "$JOBS")' \
            '(cd "$d/make" && measure noop make make -j "$JOBS")'
    done
}

change() {
    local d=$work/change
    setup "$d/ccflow" "$N_COLD"; setup "$d/ninja" "$N_COLD"; setup "$d/make" "$N_COLD"
    (cd "$d/ccflow" && ccflow_run >/dev/null 2>&1)
    (cd "$d/ninja" && ninja -j "$JOBS" >/dev/null)
    (cd "$d/make" && make -j "$JOBS" >/dev/null)
    local middle=$((N_COLD / 2))
    for ((rep = 1; rep <= REPS; rep++)); do
        for tool in ccflow ninja make; do echo "changed $rep" >"$d/$tool/in/f$middle.txt"; done
        in_order "$rep" \
            '(cd "$d/ccflow" && measure change ccflow ccflow_run)' \
            '(cd "$d/ninja" && measure change ninja ninja -j "$JOBS")' \
            '(cd "$d/make" && measure change make make -j "$JOBS")'
    done
}

restore() {
    local d=$work/restore
    setup "$d/ccflow" "$N_COLD"; setup "$d/ninja" "$N_COLD"; setup "$d/make" "$N_COLD"
    (cd "$d/ccflow" && ccflow_run >/dev/null 2>&1)
    (cd "$d/ninja" && ninja -j "$JOBS" >/dev/null)
    (cd "$d/make" && make -j "$JOBS" >/dev/null)
    for ((rep = 1; rep <= REPS; rep++)); do
        for tool in ccflow ninja make; do rm -rf "$d/$tool/out" && mkdir "$d/$tool/out"; done
        in_order "$rep" \
            '(cd "$d/ccflow" && measure restore ccflow ccflow_run)' \
            '(cd "$d/ninja" && measure restore ninja ninja -j "$JOBS")' \
            '(cd "$d/make" && measure restore make make -j "$JOBS")'
        [[ -f "$d/ccflow/out/f1.txt" ]] || { echo "error: ccflow did not restore out/f1.txt" >&2; exit 1; }
    done
}

docker_loop() {
    seq 1 "$N_DOCKER" | xargs -P "$JOBS" -I{} docker run --rm --network none -v "$PWD:/workspace" -w /workspace "$IMAGE" cp in/f{}.txt out/f{}.txt
}

docker_bench() {
    if ! docker version >/dev/null 2>&1; then
        echo "error: the Docker daemon is unreachable; skip with \`$0 cold noop change restore\`" >&2
        exit 1
    fi
    "$here/.ci/docker-images.sh"
    local d=$work/docker
    setup "$d/ccflow" "$N_DOCKER"; setup "$d/loop" "$N_DOCKER"
    cat >"$d/ccflow/.claudecluster/bench.yaml" <<EOF
version: 1
tasks:
  each:
    for_each: { files: "in/*.txt" }
    runner: docker
    image: $IMAGE
    inputs: ["{{ item }}"]
    outputs: ["out/{{ item.stem }}.txt"]
    run: cp {{ item }} out/{{ item.stem }}.txt
EOF
    for ((rep = 1; rep <= REPS; rep++)); do
        in_order "$rep" \
            '(cd "$d/ccflow" && clean_ccflow && measure docker ccflow ccflow_run)' \
            '(cd "$d/loop" && clean_make && measure docker "docker run" docker_loop)'
    done
}

# --- run --------------------------------------------------------------------

for s in "${scenarios[@]}"; do
    echo "scenario $s ..." >&2
    case $s in
        cold) cold ;;
        noop) noop ;;
        change) change ;;
        restore) restore ;;
        docker) docker_bench ;;
        *) echo "error: unknown scenario \`$s\` (cold, noop, change, restore, docker)" >&2; exit 2 ;;
    esac
done

# --- report -----------------------------------------------------------------

declare -A target=([cold]=1.0 [noop]=1.0 [change]=1.5 [restore]=0.1 [docker]=1.0)
declare -A size=([cold]=$N_COLD [noop]=$N_NOOP [change]=$N_COLD [restore]=$N_COLD [docker]=$N_DOCKER)
declare -A baseline=([cold]=ninja [noop]=ninja [change]=ninja [restore]=ninja [docker]="docker run")

declare -A samples # "scenario/tool" -> space-separated milliseconds
while IFS='|' read -r scenario tool ms; do
    samples["$scenario/$tool"]+="$ms "
done <"$work/samples"

printf '\nccflow %s, %s, %d cores, load %s, -j %s, median of %s runs (ms)\n\n' \
    "$("$CCFLOW" --version 2>/dev/null | awk '{print $2}')" "$(uname -sr)" "$(nproc)" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" "$JOBS" "$REPS"
printf '%-8s %6s  %-10s %10s  %-40s %8s  %s\n' scenario N tool median samples "vs base" target
for s in "${scenarios[@]}"; do
    base=$(median "${samples["$s/${baseline[$s]}"]:-}")
    for key in "${!samples[@]}"; do
        [[ $key == "$s/"* ]] || continue
        tool=${key#*/}
        m=$(median "${samples[$key]}")
        ratio=$(awk -v a="$m" -v b="$base" 'BEGIN {printf "%.2fx", a / b}')
        verdict=""
        if [[ $tool == ccflow ]]; then
            verdict=$(awk -v a="$m" -v b="$base" -v t="${target[$s]}" 'BEGIN {printf "<= %.1fx %s", t, (a / b <= t ? "met" : "MISSED")}')
        fi
        printf '%-8s %6s  %-10s %10s  %-40s %8s  %s\n' "$s" "${size[$s]}" "$tool" "$m" "${samples[$key]% }" "$ratio" "$verdict"
    done | sort -k3,3
    if [[ $s == cold ]]; then
        m=$(median "${samples["cold/ccflow"]}")
        awk -v m="$m" -v n="$N_COLD" 'BEGIN {printf "%-8s %6s  ccflow per task: %.2f ms\n", "cold", n, m / n}'
    fi
done
