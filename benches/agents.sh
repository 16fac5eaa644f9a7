#!/usr/bin/env bash
# Agents side by side: N_AGENTS ccflow agent instances (one turn with 1 s of
# mock latency) at -j JOBS against the same `claude -p` commands through
# `xargs -P JOBS` in pre-made directories, in one run, against one
# `ccflow mock-api`. The repository has N_FILES tracked files. The pre-made
# directories are linked worktrees of that repository made before timing
# (`git worktree add --detach`, what ccflow gives each session), so claude
# does the same work in both and the difference is ccflow's own cost per
# instance (snapshot, worktree, diff, apply). A second baseline runs the
# commands in empty directories, for reference: there claude skips the git
# commands it runs in a repository (`git status` over N_FILES files among
# them), so that row is not ccflow's overhead. See docs/benchmarks.md.
#
#   benches/agents.sh                    5 interleaved repetitions
#   REPS=1 N_AGENTS=8 benches/agents.sh  quick check
#
# Needs the real claude CLI: CCFLOW_CLAUDE, else claude_agent_sdk's bundled one.
# Exits non-zero only on errors, never on a missed target.
set -euo pipefail

REPS=${REPS:-5}
JOBS=${JOBS:-8}
N_AGENTS=${N_AGENTS:-32}
N_FILES=${N_FILES:-2000}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CCFLOW=${CCFLOW:-${CARGO_TARGET_DIR:-$here/target}/release/ccflow}
[[ -x "$CCFLOW" ]] || { echo "error: no ccflow binary at \`$CCFLOW\` (cargo build --release)" >&2; exit 1; }
CLAUDE=${CCFLOW_CLAUDE:-$(python3 -c 'import claude_agent_sdk, os; print(os.path.join(os.path.dirname(claude_agent_sdk.__file__), "_bundled", "claude"))' 2>/dev/null || true)}
[[ -x "$CLAUDE" ]] || { echo "error: no claude CLI (set CCFLOW_CLAUDE)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/ccflow-agents.XXXXXX")
mock_pid=""
cleanup() {
    [[ -n "$mock_pid" ]] && kill "$mock_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/mock.yaml" <<'EOF'
default:
  turns:
    - text: "Done."
      delay_ms: 1000
      usage: { input_tokens: 100, output_tokens: 10 }
EOF
"$CCFLOW" mock-api --script "$work/mock.yaml" --port 0 2>"$work/mock.log" &
mock_pid=$!
port=""
for _ in $(seq 1 100); do
    port=$(grep -o '127.0.0.1:[0-9]*' "$work/mock.log" | head -1 | cut -d: -f2 || true)
    [[ -n "$port" ]] && break
    sleep 0.1
done
[[ -n "$port" ]] || { echo "error: the mock API did not start" >&2; cat "$work/mock.log" >&2; exit 1; }

mkdir -p "$work/home"
export HOME=$work/home CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 \
    ANTHROPIC_BASE_URL=http://127.0.0.1:$port ANTHROPIC_API_KEY=test CCFLOW_CLAUDE=$CLAUDE \
    CI=true NO_COLOR=1

# The ccflow repository: N_FILES tracked files and N_AGENTS agent instances.
repo=$work/repo
mkdir -p "$repo/src" "$repo/.claudecluster"
for ((i = 1; i <= N_FILES; i++)); do echo "file $i" >"$repo/src/f$i.txt"; done
items=$(seq -s, 1 "$N_AGENTS")
cat >"$repo/.claudecluster/agents.yaml" <<EOF
version: 1
tasks:
  agent:
    for_each: { items: [$items] }
    agent: { prompt: "Say done ({{ item }})" }
    outputs: ["out/{{ item }}.txt"]
EOF
(cd "$repo" && git init -q && git add -A && git -c user.name=b -c user.email=b@b commit -qm init)

# The baselines: the same CLI command per item in its own pre-made
# directory: a linked worktree of the repository (the target's baseline), or
# an empty directory (reference).
for ((i = 1; i <= N_AGENTS; i++)); do
    mkdir -p "$work/empty/$i"
    git -C "$repo" worktree add -q --detach "$work/checkouts/$i"
done
plain_one() {
    cd "$work/$1/$2" && echo "Say done ($2)" | "$CLAUDE" -p --output-format stream-json --verbose --bare \
        --no-session-persistence --strict-mcp-config --permission-mode acceptEdits >/dev/null
}
export -f plain_one
export work CLAUDE
plain_all() { seq 1 "$N_AGENTS" | xargs -P "$JOBS" -I{} bash -c "plain_one $1 {}"; }
ccflow_all() { rm -rf "$repo/.ccflow" && (cd "$repo" && "$CCFLOW" run agents -j "$JOBS"); }

now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "$t"; }
declare -A samples
measure() {
    local tool=$1 start end
    shift
    start=$(now_us)
    if ! "$@" >"$work/last.out" 2>&1; then
        echo "error: $tool failed" >&2; tail -20 "$work/last.out" >&2; exit 1
    fi
    end=$(now_us)
    samples[$tool]+="$(((end - start) / 1000)) "
}
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

for ((rep = 1; rep <= REPS; rep++)); do
    measure ccflow ccflow_all
    measure "xargs -P" plain_all checkouts
    measure "xargs empty" plain_all empty
done

c=$(median "${samples[ccflow]}")
x=$(median "${samples["xargs -P"]}")
e=$(median "${samples["xargs empty"]}")
printf '\nagents: %d instances, 1 s mock latency, -j %d, %d-file repository, median of %d runs (ms)\n\n' "$N_AGENTS" "$JOBS" "$N_FILES" "$REPS"
printf '%-11s %8s  %-40s %8s  %s\n' tool median samples "vs xargs" target
printf '%-11s %8s  %-40s %8s  %s\n' "xargs -P" "$x" "${samples["xargs -P"]% }" 1.00x "(pre-made worktrees)"
awk -v c="$c" -v x="$x" -v s="${samples[ccflow]% }" 'BEGIN {printf "%-11s %8s  %-40s %7.2fx  <= 1.1x %s\n", "ccflow", c, s, c / x, (c / x <= 1.1 ? "met" : "MISSED")}'
awk -v e="$e" -v x="$x" -v s="${samples["xargs empty"]% }" 'BEGIN {printf "%-11s %8s  %-40s %7.2fx  (empty directories, reference)\n", "xargs empty", e, s, e / x}'
awk -v c="$c" -v x="$x" -v j="$JOBS" -v n="$N_AGENTS" 'BEGIN {printf "ccflow overhead per agent instance (snapshot, worktree, diff, apply; slot time): %.0f ms\n", (c - x) * j / n}'
awk -v c="$c" -v e="$e" 'BEGIN {printf "ccflow against the empty-directory reference: %.2fx\n", c / e}'
