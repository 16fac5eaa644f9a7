//! `ccflow init`: `.claudecluster/` with a commented example that references
//! the schema, and `.ccflow/.gitignore`.

use super::Ctx;
use crate::error::{CommandError, CommandResult, ExitStatus};
use crate::workflow::discover::WORKFLOW_DIR;
use crate::workflow::schema::SCHEMA_URL;

fn example() -> String {
    format!(
        r#"# yaml-language-server: $schema={SCHEMA_URL}
#
# An example ccflow workflow. Run it with `ccflow run example`;
# see the plan with `ccflow plan example`.
version: 1
name: example
description: Count the lines of every Markdown file, then sum them

vars:
  pattern: "**/*.md"              # override with --var pattern='docs/**/*.md'

tasks:
  count:
    description: One instance per Markdown file (cached by content)
    for_each:
      files: "{{{{ vars.pattern }}}}"
    inputs: ["{{{{ item }}}}"]
    outputs: [".ccflow-out/count/{{{{ item }}}}.txt"]
    # Interpolated values are shell-quoted automatically.
    run: mkdir -p "$(dirname .ccflow-out/count/{{{{ item }}}})" && wc -l < {{{{ item }}}} > .ccflow-out/count/{{{{ item }}}}.txt

  total:
    description: Reduce step, runs after every `count` instance
    needs: [count]
    # A list interpolates as several shell words, each quoted.
    run: mkdir -p .ccflow-out && cat {{{{ needs.count.outputs }}}} /dev/null | awk '{{s+=$1}} END {{print s+0}}' > .ccflow-out/total.txt
    outputs: [.ccflow-out/total.txt]

  # An agent task (needs the claude CLI; see `ccflow mock-api` to rehearse offline):
  # summarize:
  #   needs: [total]
  #   agent:
  #     prompt: "Write a one-paragraph SUMMARY.md of this repository."
  #     max_turns: 10
  #   outputs: [SUMMARY.md]
"#
    )
}

/// Writes the example workflow and the state directory's `.gitignore`.
///
/// # Errors
/// The example exists (without `--force`) or cannot be written.
pub fn run(args: &crate::cli::InitArgs, ctx: &Ctx) -> CommandResult {
    let root = if ctx.root.join(WORKFLOW_DIR).is_dir() {
        ctx.root.clone()
    } else {
        ctx.cwd.clone()
    };
    let dir = root.join(WORKFLOW_DIR);
    let file = dir.join("example.yaml");
    if file.exists() && !args.force {
        return Err(
            CommandError::usage(format!("`{}` already exists", file.display()))
                .hint("pass `--force` to overwrite it"),
        );
    }
    let io = |e: std::io::Error| CommandError::usage(format!("cannot initialise: {e}"));
    fs_err::create_dir_all(&dir).map_err(io)?;
    fs_err::write(&file, example()).map_err(io)?;
    let state = crate::workflow::discover::state_dir(&root);
    fs_err::create_dir_all(&state).map_err(io)?;
    fs_err::write(state.join(".gitignore"), "*\n").map_err(io)?;
    crate::errln!("created {}", file.display());
    crate::errln!("created {}", state.join(".gitignore").display());
    crate::errln!("next: `ccflow plan example`, then `ccflow run example`");
    Ok(ExitStatus::Success)
}
