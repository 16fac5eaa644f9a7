//! Expanding a task's `inputs` and `outputs` globs into concrete files.
//!
//! Inputs honour .gitignore (an input glob `src/**` should not pull in
//! build products), except that a literal path is always taken as written.
//! Outputs do not honour .gitignore: outputs are usually ignored build
//! products. Neither ever descends into `.git` or `.ccflow`.

use std::path::Path;

pub(crate) fn has_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

/// Expands patterns to sorted repository-relative files.
///
/// # Errors
/// A malformed glob, naming it.
pub fn expand(
    root: &Path,
    patterns: &[String],
    honour_ignore: bool,
) -> Result<Vec<String>, String> {
    expand_seen(root, patterns, honour_ignore)
        .map(|files| files.into_iter().map(|(path, _)| path).collect())
}

/// [`expand`], with the `stat` of each file named literally (the glob
/// matches have none): the caller hashing the inputs needs no second one.
///
/// # Errors
/// A malformed glob, or a directory that cannot be walked.
pub fn expand_seen(
    root: &Path,
    patterns: &[String],
    honour_ignore: bool,
) -> Result<Vec<(String, Option<crate::cache::FileStat>)>, String> {
    // Files named literally first, with their stat; glob matches after.
    // Sorted and deduplicated at the end (a walk of 1,000 files inserted
    // one by one into a sorted map compared paths ~10,000 times).
    let mut seen: Vec<(String, Option<crate::cache::FileStat>)> = Vec::new();
    let mut globs = Vec::new();
    for pattern in patterns {
        let pattern = pattern.trim_start_matches("./");
        // A path that exists is taken literally even when it holds glob
        // characters: `{{ item }}` rendered to `pages/[id].tsx` names that
        // file, not the glob matching `pages/i.tsx`, which left such inputs
        // unhashed (edits never reran) and such outputs unsaved.
        let path = root.join(pattern);
        match std::fs::metadata(&path).ok() {
            Some(metadata) if metadata.is_file() => {
                let stat = crate::cache::FileStat::of(&metadata);
                crate::memo::metadata(&path, &stat);
                seen.push((pattern.to_owned(), Some(stat)));
                continue;
            }
            // A directory names everything below it.
            Some(metadata) if metadata.is_dir() => globs.push(format!(
                "{}/**",
                globset::escape(pattern.trim_end_matches('/'))
            )),
            _ if has_glob(pattern) => globs.push(pattern.to_owned()),
            _ => {}
        }
        // Whether it exists, and what a directory holds, decide the list.
        crate::memo::stat(&path);
    }
    let mut found = |file: String| seen.push((file, None));
    if !globs.is_empty() {
        if honour_ignore {
            let paths =
                crate::fanout::matching_paths(root, &globs, &[]).map_err(|e| e.to_string())?;
            paths.into_iter().for_each(&mut found);
        } else {
            let set = crate::fanout::GlobMatcher::new(&globs).map_err(|e| e.to_string())?;
            for start in crate::fanout::walk_starts(&globs) {
                let dir = if start.is_empty() {
                    root.to_path_buf()
                } else {
                    root.join(start)
                };
                crate::memo::stat(&dir);
                // Entries that cannot be read are left out, as a file
                // the glob does not match.
                let walked = crate::fanout::walk(root, &dir, set.max_depth(start), false);
                for relative in walked.paths() {
                    if set.is_match(relative) {
                        found(relative.to_owned());
                    }
                }
            }
        }
    }
    // Stable: of two entries for one path, the literal one (with its
    // stat) comes first and is kept.
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    seen.dedup_by(|later, first| later.0 == first.0);
    Ok(seen)
}

/// The literal (glob-free) patterns that name nothing on disk: declared
/// outputs a task did not create.
#[must_use]
pub fn missing_literals(root: &Path, patterns: &[String]) -> Vec<String> {
    patterns
        .iter()
        .map(|p| p.trim_start_matches("./"))
        .filter(|p| !has_glob(p) && std::fs::symlink_metadata(root.join(p)).is_err())
        .map(str::to_owned)
        .collect()
}
