#!/usr/bin/env python3
"""Writes the body of the pull request that the ccflow action opens.

Reads a run record (`.ccflow/runs/RUN_ID/run.json`) and prints Markdown: the
run's totals and a table with every instance, its status, tokens and cost.
GitHub refuses bodies over 65,536 characters, so a very large run lists as
many rows as fit and says how many are left out (the artifact has them all).

Usage: pr-body.py RUN_JSON > body.md
"""

import json
import os
import sys

LIMIT = 60_000


def cell(text):
    """Text made safe for one Markdown table cell inside backticks."""
    return str(text).replace("|", "\\|").replace("`", "'").replace("\n", " ")


def tokens(usage):
    return sum(
        int(usage.get(name, 0) or 0)
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")
    )


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: pr-body.py RUN_JSON\n")
        return 2
    try:
        with open(argv[1], encoding="utf-8") as file:
            run = json.load(file)
    except (OSError, ValueError) as error:
        sys.stderr.write(f"pr-body.py: cannot read the run record `{argv[1]}`: {error}\n")
        return 1

    counts = run.get("counts", {})
    usage = run.get("usage", {})
    instances = run.get("instances", [])
    lines = [
        f"This pull request holds the changes of the ccflow workflow `{cell(run.get('workflow', '?'))}`, "
        f"run `{cell(run.get('run_id', '?'))}`.",
        "",
        f"**{cell(run.get('status', '?'))}**: {counts.get('succeeded', 0)} ran, {counts.get('cached', 0)} cached, "
        f"{counts.get('failed', 0) + counts.get('conflicts', 0)} failed; "
        f"{tokens(usage)} tokens, ${float(usage.get('cost_usd', 0) or 0):.4f}.",
    ]
    server, repository, run_id = (os.environ.get(name) for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"))
    if server and repository and run_id:
        lines.append(f"Logs, transcripts and diffs: the artifact `ccflow-run-{cell(run.get('run_id', ''))}` of [the Actions run]({server}/{repository}/actions/runs/{run_id}).")
    lines += ["", "| instance | status | tokens | cost |", "|---|---|---:|---:|"]

    rows = []
    for instance in instances:
        instance_usage = instance.get("usage", {})
        rows.append(
            f"| `{cell(instance.get('id', '?'))}` | {cell(instance.get('status', '?'))} "
            f"| {tokens(instance_usage)} | ${float(instance_usage.get('cost_usd', 0) or 0):.4f} |"
        )
    size = sum(len(line) + 1 for line in lines)
    for shown, row in enumerate(rows):
        if size + len(row) + 1 > LIMIT:
            lines.append(f"\n… and {len(rows) - shown} more instances (see the run record).")
            break
        lines.append(row)
        size += len(row) + 1

    lines += ["", "<sub>Opened by the ccflow GitHub Action.</sub>"]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
