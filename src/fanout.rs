//! Fan-out expansion: turning a task's `for_each` into items, each with a
//! stable readable label (`src/lib.rs`, `os=linux,rust=1.80`, `3`).
//!
//! `files` walks the tree with the `ignore` crate (honouring .gitignore),
//! starting only below the literal prefix of each glob, and matches with
//! `globset`. `lines_of`/`json_of` are expanded here too, but only once the
//! producing task has finished (the scheduler calls [`dynamic_items`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, Value as TemplateValue};
use serde_json::Value;

use crate::workflow::raw::RawMatrix;

/// A file matched by `files:`; prints as its path in templates. Its parts
/// are ranges of the path, not strings of their own: a fan-out over 1,000
/// files made 6,000 strings for them (a sixth of planning a rerun).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathItem {
    path: String,
    name: Range<usize>,
    stem: Range<usize>,
    ext: Range<usize>,
    dir: Range<usize>,
}

impl PathItem {
    #[must_use]
    pub fn new(path: &str) -> PathItem {
        PathItem::from_string(path.to_owned())
    }

    /// The item for `path`, taking it.
    #[must_use]
    pub fn from_string(path: String) -> PathItem {
        let p = Path::new(&path);
        // Each part is a slice of `path` (split at `/` or `.`, so valid
        // UTF-8): its place in it is all there is to keep.
        let range = |part: Option<&Path>| -> Range<usize> {
            let Some(part) = part else { return 0..0 };
            let bytes = part.as_os_str().as_encoded_bytes();
            let start = bytes.as_ptr().addr().wrapping_sub(path.as_ptr().addr());
            let end = start.wrapping_add(bytes.len());
            if end <= path.len() && path.is_char_boundary(start) && path.is_char_boundary(end) {
                start..end
            } else {
                0..0
            }
        };
        let name = range(p.file_name().map(Path::new));
        let stem = range(p.file_stem().map(Path::new));
        let ext = range(p.extension().map(Path::new));
        let dir = range(p.parent());
        PathItem {
            path,
            name,
            stem,
            ext,
            dir,
        }
    }

    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The part `key` names (`path`, `name`, `stem`, `ext`, `dir`).
    fn part(&self, key: &str) -> Option<&str> {
        let range = match key {
            "path" => return Some(&self.path),
            "name" => &self.name,
            "stem" => &self.stem,
            "ext" => &self.ext,
            "dir" => &self.dir,
            _ => return None,
        };
        self.path.get(range.clone())
    }
}

impl serde::Serialize for PathItem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut out = serializer.serialize_struct("PathItem", 5)?;
        for key in PATH_PARTS {
            out.serialize_field(key, self.part(key).unwrap_or_default())?;
        }
        out.end()
    }
}

const PATH_PARTS: [&str; 5] = ["path", "name", "stem", "ext", "dir"];

impl Object for PathItem {
    fn get_value(self: &Arc<Self>, key: &TemplateValue) -> Option<TemplateValue> {
        self.part(key.as_str()?).map(TemplateValue::from)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&PATH_PARTS)
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

/// The value of one item.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemValue {
    Path(PathItem),
    Json(Value),
    Batch(Vec<ItemValue>),
}

impl ItemValue {
    /// The value as templates see it.
    #[must_use]
    pub fn to_template(&self) -> TemplateValue {
        match self {
            ItemValue::Path(p) => TemplateValue::from_object(p.clone()),
            ItemValue::Json(v) => TemplateValue::from_serialize(v),
            ItemValue::Batch(items) => items
                .iter()
                .map(ItemValue::to_template)
                .collect::<Vec<_>>()
                .into(),
        }
    }

    /// The value as JSON (plan output, records).
    #[must_use]
    pub fn to_json(&self) -> Value {
        match self {
            ItemValue::Path(p) => serde_json::to_value(p).unwrap_or(Value::Null),
            ItemValue::Json(v) => v.clone(),
            ItemValue::Batch(items) => Value::Array(items.iter().map(ItemValue::to_json).collect()),
        }
    }

    /// Repository paths this item names (files items), for inputs.
    #[must_use]
    pub fn paths(&self) -> Vec<String> {
        match self {
            ItemValue::Path(p) => vec![p.path().to_owned()],
            ItemValue::Json(_) => Vec::new(),
            ItemValue::Batch(items) => items.iter().flat_map(ItemValue::paths).collect(),
        }
    }
}

/// Serialises as [`ItemValue::to_json`] would, without building the value.
impl serde::Serialize for ItemValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ItemValue::Path(p) => p.serialize(serializer),
            ItemValue::Json(v) => v.serialize(serializer),
            ItemValue::Batch(items) => serializer.collect_seq(items),
        }
    }
}

/// One fan-out item.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub label: String,
    pub value: ItemValue,
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("malformed glob `{glob}`: {reason}")]
    Glob { glob: String, reason: String },
    #[error("cannot walk `{path}`: {reason}")]
    Walk { path: String, reason: String },
    #[error("cannot read `{path}` for the fan-out: {reason}")]
    Read { path: String, reason: String },
    #[error("`{path}` is not a JSON array: {reason}")]
    NotJsonArray { path: String, reason: String },
}

fn build_set(globs: &[String]) -> Result<globset::GlobSet, FanoutError> {
    let mut builder = globset::GlobSetBuilder::new();
    for glob in globs {
        let compiled = globset::GlobBuilder::new(glob.trim_start_matches("./"))
            .literal_separator(true)
            .build()
            .map_err(|e| FanoutError::Glob {
                glob: glob.clone(),
                reason: e.kind().to_string(),
            })?;
        builder.add(compiled);
    }
    builder.build().map_err(|e| FanoutError::Glob {
        glob: globs.join(", "),
        reason: e.to_string(),
    })
}

/// What a set of globs matches, for repository-relative paths.
///
/// Globs of the shape most workflows use — a literal directory, then a
/// last component whose only wildcard is `*` (`src/*.rs`, `in/*.txt`,
/// `*.md`) — are matched directly, as globset would match them (`*` stops
/// at `/` and matches a leading `.`): building a globset compiles a regex,
/// 0.25 ms for `in/*.txt`, paid by the plan and again by each instance
/// whose inputs are such a glob.
pub(crate) enum GlobMatcher {
    /// (directory, last-component pattern) pairs.
    Simple(Vec<(String, String)>),
    Set(globset::GlobSet),
}

impl GlobMatcher {
    /// # Errors
    /// A malformed glob.
    pub(crate) fn new(globs: &[String]) -> Result<GlobMatcher, FanoutError> {
        let simple: Option<Vec<(String, String)>> = globs
            .iter()
            .map(|glob| simple_glob(glob.trim_start_matches("./")))
            .collect();
        match simple {
            Some(simple) => Ok(GlobMatcher::Simple(simple)),
            None => build_set(globs).map(GlobMatcher::Set),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            GlobMatcher::Simple(globs) => globs.is_empty(),
            GlobMatcher::Set(set) => set.is_empty(),
        }
    }

    /// How deep a walk from `start` must go to see every match: 1 when
    /// every glob names files directly in `start` (`src/*.rs` from `src`:
    /// its subdirectories, however large, need not be listed); `None`,
    /// no limit.
    pub(crate) fn max_depth(&self, start: &str) -> Option<usize> {
        match self {
            GlobMatcher::Simple(globs) if globs.iter().all(|(dir, _)| dir == start) => Some(1),
            _ => None,
        }
    }

    pub(crate) fn is_match(&self, relative: &str) -> bool {
        match self {
            GlobMatcher::Simple(globs) => {
                let (dir, name) = relative.rsplit_once('/').unwrap_or(("", relative));
                globs
                    .iter()
                    .any(|(glob_dir, pattern)| glob_dir == dir && star_match(pattern, name))
            }
            GlobMatcher::Set(set) => set.is_match(relative),
        }
    }
}

/// `glob` as (directory, last-component pattern) when [`GlobMatcher`] can
/// match it directly: no wildcard but `*`, and that only in the last
/// component; no escapes, classes or alternatives; no empty, `.` or `..`
/// component.
fn simple_glob(glob: &str) -> Option<(String, String)> {
    if glob.contains(['?', '[', ']', '{', '}', '\\']) || glob.contains("**") {
        return None;
    }
    let (dir, name) = glob.rsplit_once('/').unwrap_or(("", glob));
    let plain = |part: &str| !part.is_empty() && part != "." && part != "..";
    if dir.contains('*') || !plain(name) || (!dir.is_empty() && !dir.split('/').all(plain)) {
        return None;
    }
    Some((dir.to_owned(), name.to_owned()))
}

/// Whether `name` matches `pattern`, in which `*` matches any run of
/// characters and every other character itself.
pub(crate) fn star_match(pattern: &str, name: &str) -> bool {
    // No `*`: the whole name is literal.
    let Some((first, after)) = pattern.split_once('*') else {
        return pattern == name;
    };
    // The literal parts before the first `*` and after the last one are
    // anchored; the ones between are found left to right in what remains.
    let (middle, last) = after.rsplit_once('*').unwrap_or(("", after));
    let Some(rest) = name.strip_prefix(first) else {
        return false;
    };
    let Some(mut rest) = rest.strip_suffix(last) else {
        return false;
    };
    for piece in middle.split('*').filter(|piece| !piece.is_empty()) {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `entry`, from a walk no deeper than `max_depth`, is a directory
/// whose listing the walk read (what the walk's result depends on).
pub(crate) fn listed_dir(entry: &ignore::DirEntry, max_depth: Option<usize>) -> bool {
    entry.file_type().is_some_and(|t| t.is_dir()) && max_depth.is_none_or(|max| entry.depth() < max)
}

/// The directory part of a glob before its first wildcard (`src/a/**/*.rs` → `src/a`).
#[must_use]
pub fn literal_prefix(glob: &str) -> &str {
    let glob = glob.trim_start_matches("./");
    let wild = glob.find(['*', '?', '[', '{']).unwrap_or(glob.len());
    match glob[..wild].rfind('/') {
        Some(i) => &glob[..i],
        None if wild == glob.len() => {
            // A literal path: walk its parent.
            glob.rfind('/').map_or("", |i| &glob[..i])
        }
        None => "",
    }
}

/// The directories to walk for `globs`: their literal prefixes, without
/// those nested in another (`""` is the root).
#[must_use]
pub fn walk_starts(globs: &[String]) -> Vec<&str> {
    let mut starts: Vec<&str> = globs.iter().map(|g| literal_prefix(g)).collect();
    starts.sort_unstable();
    starts.dedup();
    starts
        .iter()
        .copied()
        .filter(|s| {
            !starts
                .iter()
                .any(|o| o != s && (o.is_empty() || s.starts_with(&format!("{o}/"))))
        })
        .collect()
}

/// Files under `root` matching any of `globs` and none of `exclude`, sorted.
/// Honours .gitignore; never descends into `.git` or `.ccflow`.
///
/// # Errors
/// Malformed globs, or a walk failure at the root.
pub fn files(root: &Path, globs: &[String], exclude: &[String]) -> Result<Vec<Item>, FanoutError> {
    Ok(matching_paths(root, globs, exclude)?
        .into_iter()
        .map(|path| Item {
            label: path.clone(),
            value: ItemValue::Path(PathItem::from_string(path)),
        })
        .collect())
}

/// The repository-relative paths [`files`] would make items of, sorted:
/// for a caller that needs only the paths (expanding `inputs:` globs).
///
/// # Errors
/// Malformed globs, or a walk failure at the root.
pub fn matching_paths(
    root: &Path,
    globs: &[String],
    exclude: &[String],
) -> Result<Vec<String>, FanoutError> {
    let include = GlobMatcher::new(globs)?;
    let exclude = GlobMatcher::new(exclude)?;
    let starts = walk_starts(globs);
    let mut found = Vec::new();
    for start in starts {
        let dir = if start.is_empty() {
            root.to_path_buf()
        } else {
            root.join(start)
        };
        // What the walk depends on: the directories it lists and the
        // ignore files that shape it (see `crate::memo`).
        crate::memo::stat(&dir);
        crate::memo::ignore_files_above(&dir);
        if !dir.is_dir() {
            continue;
        }
        let walked = walk(root, &dir, include.max_depth(start), true);
        if let Some(e) = walked.error {
            return Err(e);
        }
        for relative in walked.paths() {
            if include.is_match(relative) && (exclude.is_empty() || !exclude.is_match(relative)) {
                found.push(if relative.contains('\\') {
                    relative.replace('\\', "/")
                } else {
                    relative.to_owned()
                });
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

/// What [`walk`] found.
pub(crate) struct Walked {
    /// The files and symlinks below the start, relative to the root (those
    /// with a UTF-8 path), NUL-separated.
    files: Arc<str>,
    /// The first entry that could not be read (the others are in `files`).
    pub error: Option<FanoutError>,
}

impl Walked {
    /// The files and symlinks found, in the order the walk found them.
    pub(crate) fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.split('\0').filter(|f| !f.is_empty())
    }
}

/// The files and symlinks a walk from `dir` (inside `root`) finds, no
/// deeper than `max_depth`, honouring ignore files or not, never below
/// `.git` or `.ccflow`. The caller records the observations of `dir` itself
/// (and, honouring ignore files, of those above it); this records those of
/// the directories listed below it.
///
/// A run recording its observations reuses the walk the last memo kept
/// for the same start, depth and setting when none of the paths it
/// depends on changed (see `crate::memo::walks`), and keeps the walks it
/// makes.
pub(crate) fn walk(
    root: &Path,
    dir: &Path,
    max_depth: Option<usize>,
    honour_ignore: bool,
) -> Walked {
    use crate::memo::walks;
    let observe_listed = |path: &Path| {
        if honour_ignore {
            crate::memo::walked_dir(path);
        } else {
            crate::memo::stat(path);
        }
    };
    let key = walks::key(dir, honour_ignore, max_depth);
    if let Some(kept) = walks::prior(&key).filter(|kept| walks::guards_hold(&kept.guards)) {
        for guard in kept.guards.iter().filter(|g| g.listed) {
            observe_listed(&guard.path);
        }
        tracing::debug!("walk of `{}` reused from the memo", dir.display());
        let files = Arc::clone(&kept.files);
        walks::walked(key, kept);
        return Walked { files, error: None };
    }
    let started_ns = crate::cache::fsutil::coarse_now_ns();
    let mut builder = ignore::WalkBuilder::new(dir);
    if honour_ignore {
        builder
            .hidden(false)
            .parents(true)
            .git_ignore(true)
            .git_global(false)
            .git_exclude(true)
            .require_git(false);
    } else {
        builder.standard_filters(false);
    }
    let walker = builder
        .max_depth(max_depth)
        .filter_entry(|e| {
            let name = e.file_name();
            !(e.depth() > 0 && (name == ".git" || name == ".ccflow"))
        })
        .build();
    let mut files = String::new();
    let mut error = None;
    let mut listed = Vec::new();
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                error.get_or_insert_with(|| FanoutError::Walk {
                    path: dir.display().to_string(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if listed_dir(&entry, max_depth) {
            observe_listed(entry.path());
            listed.push(entry.into_path());
            continue;
        }
        if !entry
            .file_type()
            .is_some_and(|t| t.is_file() || t.is_symlink())
        {
            continue;
        }
        if let Some(relative) = relative_str(entry.path(), root) {
            if !files.is_empty() {
                files.push('\0');
            }
            files.push_str(relative);
        }
    }
    let files: Arc<str> = files.into();
    if error.is_none() && crate::memo::recording() {
        let guards =
            walks::guards_after(walks::guard_paths(dir, listed, honour_ignore), started_ns);
        tracing::debug!(
            "walk of `{}`: {}",
            dir.display(),
            if guards.is_some() {
                "kept"
            } else {
                "not kept (changed too recently)"
            }
        );
        if let Some(guards) = guards {
            walks::walked(
                key,
                walks::Walk {
                    guards: guards.into(),
                    files: Arc::clone(&files),
                },
            );
        }
    }
    Walked { files, error }
}

/// `path` relative to `root` as UTF-8 (`None`: outside `root`, or not
/// UTF-8). The walk's paths start with `root` byte for byte, so the prefix
/// is cut as bytes: `Path::strip_prefix` compares component by component.
fn relative_str<'a>(path: &'a Path, root: &Path) -> Option<&'a str> {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = path.as_os_str().as_bytes();
    let rest = match bytes.strip_prefix(root.as_os_str().as_bytes()) {
        Some(rest) if root.as_os_str().as_bytes().ends_with(b"/") => Some(rest),
        Some(rest) => rest.strip_prefix(b"/").or(rest.is_empty().then_some(rest)),
        None => None,
    };
    match rest {
        Some(rest) => std::str::from_utf8(rest).ok(),
        None => path.strip_prefix(root).ok()?.to_str(),
    }
}

fn scalar_label(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Items of `items:` (and of `json_of`): scalars label as themselves, maps by
/// their `name` or `id`, anything else by index.
#[must_use]
pub fn items(values: &[Value]) -> Vec<Item> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let label = scalar_label(value)
                .or_else(|| {
                    ["name", "id"]
                        .iter()
                        .find_map(|k| value.get(k).and_then(scalar_label))
                })
                .unwrap_or_else(|| i.to_string());
            Item {
                label,
                value: ItemValue::Json(value.clone()),
            }
        })
        .collect()
}

/// The cartesian product of the axes, with GitHub Actions' `include`/`exclude`.
#[must_use]
pub fn matrix(matrix: &RawMatrix) -> Vec<Item> {
    let mut combos: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new()];
    for axis in &matrix.axis_order {
        let values = &matrix.axes[axis];
        combos = combos
            .into_iter()
            .flat_map(|combo| {
                values.iter().map(move |v| {
                    let mut c = combo.clone();
                    c.insert(axis.clone(), v.clone());
                    c
                })
            })
            .collect();
    }
    if matrix.axis_order.is_empty() {
        combos.clear();
    }
    combos.retain(|combo| {
        !matrix
            .exclude
            .iter()
            .any(|ex| ex.iter().all(|(k, v)| combo.get(k) == Some(v)))
    });
    let mut extra_keys: Vec<String> = Vec::new();
    for include in &matrix.include {
        let matches: Vec<usize> = combos
            .iter()
            .enumerate()
            .filter(|(_, combo)| {
                include
                    .iter()
                    .all(|(k, v)| !matrix.axes.contains_key(k) || combo.get(k) == Some(v))
            })
            .map(|(i, _)| i)
            .collect();
        let touches_axes = include.keys().any(|k| matrix.axes.contains_key(k));
        if matches.is_empty() || (!touches_axes && combos.is_empty()) {
            combos.push(include.clone());
        } else {
            for i in matches {
                for (k, v) in include {
                    if !matrix.axes.contains_key(k) {
                        combos[i].insert(k.clone(), v.clone());
                    }
                }
            }
        }
        for k in include.keys() {
            if !matrix.axes.contains_key(k) && !extra_keys.contains(k) {
                extra_keys.push(k.clone());
            }
        }
    }
    let order: Vec<&String> = matrix.axis_order.iter().chain(extra_keys.iter()).collect();
    combos
        .into_iter()
        .map(|combo| {
            let label = order
                .iter()
                .filter_map(|k| {
                    combo.get(*k).map(|v| {
                        format!("{k}={}", scalar_label(v).unwrap_or_else(|| v.to_string()))
                    })
                })
                .collect::<Vec<_>>()
                .join(",");
            let value = Value::Object(combo.into_iter().collect());
            Item {
                label,
                value: ItemValue::Json(value),
            }
        })
        .collect()
}

/// Groups items into chunks of `size`, labelled by chunk index.
#[must_use]
pub fn batch(items: Vec<Item>, size: usize) -> Vec<Item> {
    let size = size.max(1);
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    for item in items {
        chunk.push(item.value);
        if chunk.len() == size {
            out.push(Item {
                label: out.len().to_string(),
                value: ItemValue::Batch(std::mem::take(&mut chunk)),
            });
        }
    }
    if !chunk.is_empty() {
        out.push(Item {
            label: out.len().to_string(),
            value: ItemValue::Batch(chunk),
        });
    }
    out
}

/// Items of `lines_of` (non-empty lines; a line naming a file is a path item)
/// or `json_of` (the elements of a JSON array), read once the producer ran.
///
/// # Errors
/// The file is missing or not the expected shape.
pub fn dynamic_items(root: &Path, file: &str, json: bool) -> Result<Vec<Item>, FanoutError> {
    let path = root.join(file);
    crate::memo::stat(&path);
    let text = std::fs::read_to_string(&path).map_err(|e| FanoutError::Read {
        path: file.to_owned(),
        reason: e.to_string(),
    })?;
    if json {
        let value: Value = serde_json::from_str(&text).map_err(|e| FanoutError::NotJsonArray {
            path: file.to_owned(),
            reason: e.to_string(),
        })?;
        let Value::Array(values) = value else {
            return Err(FanoutError::NotJsonArray {
                path: file.to_owned(),
                reason: "the top-level value is not an array".into(),
            });
        };
        return Ok(items(&values));
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let value = if root.join(line).is_file() {
                ItemValue::Path(PathItem::new(line))
            } else {
                ItemValue::Json(Value::String(line.to_owned()))
            };
            Item {
                label: line.to_owned(),
                value,
            }
        })
        .collect())
}

/// Makes labels safe and unique: newlines become spaces, long labels are
/// shortened, and repeats get `#2`, `#3`.
pub fn unique_labels(items: &mut [Item]) {
    for item in items.iter_mut() {
        if item.label.contains(['\n', '\r']) {
            item.label = item.label.replace(['\n', '\r'], " ");
        }
        if item.label.len() > 120 && item.label.chars().count() > 120 {
            item.label = item.label.chars().take(117).collect::<String>() + "...";
        }
    }
    // Counted over borrowed labels, foldhash: a fan-out over 1,000 files
    // copied and SipHashed every label to find no duplicate.
    let mut seen: HashMap<&str, usize, foldhash::fast::FixedState> =
        HashMap::with_capacity_and_hasher(items.len(), foldhash::fast::FixedState::default());
    let mut repeats = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let count = seen.entry(item.label.as_str()).or_insert(0);
        *count += 1;
        if *count > 1 {
            repeats.push((index, *count));
        }
    }
    drop(seen);
    for (index, count) in repeats {
        let label = &mut items[index].label;
        *label = format!("{label}#{count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts, as ranges of the path, are what `Path` says they are.
    #[test]
    fn path_item_parts_match_std_path() {
        let os = |s: Option<&std::ffi::OsStr>| {
            s.map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        for path in [
            "a.txt",
            "src/lib.rs",
            "dir/.bashrc",
            "a/b.tar.gz",
            "noext",
            "x/y.",
            "ünï/çødé.rs",
            "deep/er/still/Makefile",
        ] {
            let item = PathItem::new(path);
            let p = Path::new(path);
            let json = serde_json::to_value(&item).expect("json");
            let expected = serde_json::json!({
                "path": path,
                "name": os(p.file_name()),
                "stem": os(p.file_stem()),
                "ext": os(p.extension()),
                "dir": p.parent().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default(),
            });
            assert_eq!(json, expected, "{path}");
            assert_eq!(item.part("stem").unwrap_or("?"), expected["stem"], "{path}");
            assert_eq!(item.path(), path);
        }
    }

    /// The direct matcher answers as the globset it stands in for, on
    /// every pattern it takes, and leaves every other pattern to globset.
    #[test]
    fn simple_globs_match_as_globset_does() {
        let patterns = [
            "in/*.txt",
            "*.md",
            "src/a/*",
            "*",
            "a*b*c",
            "a*a",
            "*a*a*",
            "ab*ba",
            "x/y/z.txt",
            "*.tar.gz",
            ".hidden*",
            "*txt",
            "in/f1*",
            "deep/er/*.rs",
            "**",
            "**/*.rs",
            "src/**",
            "a?.txt",
            "[ab].txt",
            "{a,b}.txt",
            "a\\*.txt",
            "in/*/x.txt",
            "*/x.txt",
            "in//x.txt",
            "in/",
            "./in/*.txt",
            "in/./x.txt",
            "../x.txt",
        ];
        let paths = [
            "in/f1.txt",
            "in/f10.txt",
            "in/.f.txt",
            "in/sub/f.txt",
            "in",
            "README.md",
            ".md",
            "docs/README.md",
            "src/a/x",
            "src/a/b/c",
            "src/a",
            "abc",
            "abxbyc",
            "ac",
            "a",
            "aa",
            "aba",
            "abba",
            "aab",
            "a/b/c",
            "x/y/z.txt",
            "x/y/z.txtx",
            "f.tar.gz",
            "f.gz",
            ".hidden",
            ".hiddenfile",
            "txt",
            "atxt",
            "in/f1",
            "deep/er/m.rs",
            "deep/er/x/m.rs",
            "a1.txt",
            "a.txt",
            "b.txt",
            "a*.txt",
            "in/x/x.txt",
            "in/x.txt",
            "x.txt",
        ];
        let mut simple = 0;
        for pattern in patterns {
            let globs = [pattern.to_owned()];
            let matcher = GlobMatcher::new(&globs).expect("valid glob");
            let set = build_set(&globs).expect("valid glob");
            if matches!(matcher, GlobMatcher::Simple(_)) {
                simple += 1;
                assert!(
                    !pattern.contains("**") && !pattern.contains('?'),
                    "{pattern}"
                );
            }
            for path in paths {
                assert_eq!(
                    matcher.is_match(path),
                    set.is_match(path),
                    "`{pattern}` on `{path}`"
                );
            }
        }
        assert!(
            simple >= 12,
            "most plain patterns take the direct path: {simple}"
        );
        assert!(GlobMatcher::new(&[]).expect("no globs").is_empty());
        assert!(GlobMatcher::new(&["src/[a-".to_owned()]).is_err());
    }

    #[test]
    fn files_honour_gitignore_and_exclude() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "src/a.rs",
            "src/b/c.rs",
            "src/skip.rs",
            "target/x.rs",
            "README.md",
            ".ccflow/y.rs",
        ] {
            std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            std::fs::write(root.join(f), "x").unwrap();
        }
        std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
        let found = files(root, &["**/*.rs".into()], &["src/skip.rs".into()]).unwrap();
        let labels: Vec<_> = found.iter().map(|i| i.label.as_str()).collect();
        assert_eq!(labels, ["src/a.rs", "src/b/c.rs"]);
        let found = files(root, &["src/*.rs".into()], &[]).unwrap();
        let labels: Vec<_> = found.iter().map(|i| i.label.as_str()).collect();
        assert_eq!(labels, ["src/a.rs", "src/skip.rs"]);
    }

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("src/a/**/*.rs"), "src/a");
        assert_eq!(literal_prefix("*.rs"), "");
        assert_eq!(literal_prefix("docs/index.md"), "docs");
    }

    #[test]
    fn matrix_with_include_and_exclude() {
        let raw: RawMatrix = serde_json::from_value(serde_json::json!({
            "os": ["linux", "mac"],
            "rust": ["1.80", "1.81"],
            "exclude": [{"os": "mac", "rust": "1.80"}],
            "include": [{"os": "linux", "extra": "yes"}, {"os": "windows", "rust": "1.81"}]
        }))
        .unwrap();
        let labels: Vec<_> = matrix(&raw).into_iter().map(|i| i.label).collect();
        assert_eq!(
            labels,
            [
                "os=linux,rust=1.80,extra=yes",
                "os=linux,rust=1.81,extra=yes",
                "os=mac,rust=1.81",
                "os=windows,rust=1.81"
            ]
        );
    }

    #[test]
    fn items_batches_and_unique_labels() {
        let values = vec![
            serde_json::json!("a"),
            serde_json::json!({"name": "b"}),
            serde_json::json!({"x": 1}),
            serde_json::json!("a"),
        ];
        let mut list = items(&values);
        unique_labels(&mut list);
        let labels: Vec<_> = list.iter().map(|i| i.label.as_str()).collect();
        assert_eq!(labels, ["a", "b", "2", "a#2"]);
        let batched = batch(list, 3);
        assert_eq!(batched.len(), 2);
        assert_eq!(batched[1].label, "1");
    }

    #[test]
    fn path_items_render_as_their_path() {
        let item = ItemValue::Path(PathItem::new("src/lib.rs")).to_template();
        assert_eq!(item.to_string(), "src/lib.rs");
        assert_eq!(item.get_attr("stem").unwrap().to_string(), "lib");
    }
}
