//! Tests of the stat index against real files in temp dirs.

use std::path::Path;
use std::time::Instant;

use super::*;

/// 2020-01-01, safely in the past: entries stamped with it are trusted.
const OLD_NS: i64 = 1_577_836_800_000_000_000;

fn write_old(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&path, content).expect("write");
    fsutil::set_mtime_ns(&path, OLD_NS).expect("utimensat");
}

#[test]
fn unchanged_files_are_not_read_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    let index_path = dir.path().join("state/index");
    for number in 0..20 {
        write_old(
            &root,
            &format!("src/f{number}.rs"),
            &format!("fn f{number}() {{}}"),
        );
    }
    let index = StatIndex::open(&index_path).expect("open");
    let first: Vec<FileHash> = (0..20)
        .map(|n| {
            index
                .hash_file(&root, &format!("src/f{n}.rs"))
                .expect("hash")
        })
        .collect();
    assert_eq!(index.files_read(), 20);
    assert_eq!(
        first[3].hash,
        blake3::hash(b"fn f3() {}").to_hex().to_string()
    );
    assert_eq!(first[3].size, 10);
    // Same process: stat only.
    for n in 0..20 {
        index
            .hash_file(&root, &format!("src/f{n}.rs"))
            .expect("hash");
    }
    assert_eq!(index.files_read(), 20);
    index.save().expect("save");

    // A new process (a fresh index from disk): still stat only.
    let reloaded = StatIndex::open(&index_path).expect("reopen");
    assert_eq!(reloaded.len(), 20);
    let second: Vec<FileHash> = (0..20)
        .map(|n| {
            reloaded
                .hash_file(&root, &format!("src/f{n}.rs"))
                .expect("hash")
        })
        .collect();
    assert_eq!(reloaded.files_read(), 0);
    assert_eq!(first, second);
}

#[test]
fn content_change_with_same_size_and_mtime_is_detected() {
    // Userspace cannot preserve ctime, so the forged edit (same size, mtime
    // put back with utimensat) is caught by the ctime in the stat tuple.
    let dir = tempfile::tempdir().expect("tempdir");
    write_old(dir.path(), "a.txt", "aaaa");
    let index = StatIndex::open(&dir.path().join("index")).expect("open");
    let before = index.hash_file(dir.path(), "a.txt").expect("hash");
    write_old(dir.path(), "a.txt", "bbbb");
    let after = index.hash_file(dir.path(), "a.txt").expect("hash");
    assert_ne!(before.hash, after.hash);
    assert_eq!(after.hash, blake3::hash(b"bbbb").to_hex().to_string());
    assert_eq!(index.files_read(), 2);
}

#[test]
fn entry_stamped_in_the_tick_of_the_index_write_is_rehashed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index_path = dir.path().join("index");
    write_old(dir.path(), "a.txt", "aaaa");
    let index = StatIndex::open(&index_path).expect("open");
    index.hash_file(dir.path(), "a.txt").expect("hash");
    index.save().expect("save");

    // The index file written in the same tick as the file's mtime: racy.
    fsutil::set_mtime_ns(&index_path, OLD_NS).expect("utimensat");
    let racy = StatIndex::open(&index_path).expect("reopen");
    racy.hash_file(dir.path(), "a.txt").expect("hash");
    assert_eq!(racy.files_read(), 1, "a racy entry must be re-read");

    // One nanosecond later is strictly newer: the entry is trusted.
    fsutil::set_mtime_ns(&index_path, OLD_NS + 1).expect("utimensat");
    let clean = StatIndex::open(&index_path).expect("reopen");
    clean.hash_file(dir.path(), "a.txt").expect("hash");
    assert_eq!(
        clean.files_read(),
        0,
        "an older entry is answered from its stat"
    );
}

#[test]
fn file_stamped_now_or_later_is_rehashed_every_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.txt");
    std::fs::write(&path, "aaaa").expect("write");
    // An mtime not older than the hashing moment (here: in the future).
    fsutil::set_mtime_ns(&path, fsutil::coarse_now_ns() + 3_600_000_000_000).expect("utimensat");
    let index = StatIndex::open(&dir.path().join("index")).expect("open");
    index.hash_file(dir.path(), "a.txt").expect("hash");
    index.hash_file(dir.path(), "a.txt").expect("hash");
    assert_eq!(index.files_read(), 2);
}

#[test]
fn corrupt_or_truncated_index_loads_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index_path = dir.path().join("index");
    write_old(dir.path(), "a.txt", "aaaa");
    let index = StatIndex::open(&index_path).expect("open");
    index.hash_file(dir.path(), "a.txt").expect("hash");
    index.save().expect("save");
    let bytes = std::fs::read(&index_path).expect("read");

    let mut flipped = bytes.clone();
    flipped[20] ^= 0x40;
    std::fs::write(&index_path, &flipped).expect("write");
    let loaded = StatIndex::open(&index_path).expect("open corrupt");
    assert!(loaded.is_empty());
    // It still works and rewrites a good index.
    let hash = loaded.hash_file(dir.path(), "a.txt").expect("hash");
    assert_eq!(hash.hash, blake3::hash(b"aaaa").to_hex().to_string());
    loaded.save().expect("save");
    assert_eq!(StatIndex::open(&index_path).expect("open").len(), 1);

    std::fs::write(&index_path, &bytes[..bytes.len() / 2]).expect("write");
    assert!(StatIndex::open(&index_path)
        .expect("open truncated")
        .is_empty());
    std::fs::write(&index_path, b"").expect("write");
    assert!(StatIndex::open(&index_path).expect("open empty").is_empty());
}

#[test]
fn save_is_a_no_op_when_nothing_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index_path = dir.path().join("index");
    write_old(dir.path(), "a.txt", "aaaa");
    let index = StatIndex::open(&index_path).expect("open");
    index.hash_file(dir.path(), "a.txt").expect("hash");
    index.save().expect("save");
    fsutil::set_mtime_ns(&index_path, OLD_NS + 5).expect("utimensat");
    let reloaded = StatIndex::open(&index_path).expect("reopen");
    reloaded.hash_file(dir.path(), "a.txt").expect("hash");
    reloaded.save().expect("save");
    let metadata = std::fs::metadata(&index_path).expect("stat");
    assert_eq!(
        fsutil::mtime_ns(&metadata),
        OLD_NS + 5,
        "the index was rewritten"
    );
}

#[test]
fn missing_file_is_an_error_and_leaves_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_old(dir.path(), "a.txt", "aaaa");
    let index = StatIndex::open(&dir.path().join("index")).expect("open");
    index.hash_file(dir.path(), "a.txt").expect("hash");
    std::fs::remove_file(dir.path().join("a.txt")).expect("rm");
    let error = index.hash_file(dir.path(), "a.txt").expect_err("missing");
    assert!(error.to_string().contains("a.txt"), "{error}");
    assert!(index.is_empty());
    std::fs::create_dir(dir.path().join("d")).expect("mkdir");
    assert!(matches!(
        index.hash_file(dir.path(), "d"),
        Err(CacheError::NotAFile { .. })
    ));
}

#[test]
fn concurrent_hashing_from_many_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    for n in 0..200 {
        write_old(dir.path(), &format!("f{n}"), &format!("content {n}"));
    }
    let index = StatIndex::open(&dir.path().join("index")).expect("open");
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for n in 0..200 {
                    let hash = index.hash_file(dir.path(), &format!("f{n}")).expect("hash");
                    let expected = blake3::hash(format!("content {n}").as_bytes());
                    assert_eq!(hash.hash, expected.to_hex().to_string());
                }
            });
        }
    });
    assert_eq!(index.len(), 200);
    assert!(index.files_read() >= 200);
}

/// Measurement, not a test: `cargo test --release --lib
/// cache::index::tests::measure_unchanged_tree -- --ignored --nocapture`.
#[test]
#[ignore = "measurement"]
fn measure_unchanged_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    let index_path = dir.path().join("index");
    let files: Vec<String> = (0..10_000)
        .map(|n| format!("src/m{}/file{n}.rs", n % 100))
        .collect();
    for (n, rel) in files.iter().enumerate() {
        write_old(
            &root,
            rel,
            &format!("// file {n}\n{}", "x".repeat(n % 2000)),
        );
    }
    let index = StatIndex::open(&index_path).expect("open");
    let started = Instant::now();
    for rel in &files {
        index.hash_file(&root, rel).expect("hash");
    }
    let cold = started.elapsed();
    index.save().expect("save");

    let started = Instant::now();
    let reloaded = StatIndex::open(&index_path).expect("reopen");
    let load = started.elapsed();
    let started = Instant::now();
    for rel in &files {
        reloaded.hash_file(&root, rel).expect("hash");
    }
    let warm = started.elapsed();
    assert_eq!(reloaded.files_read(), 0);
    let started = Instant::now();
    reloaded.save().expect("save");
    let save = started.elapsed();
    crate::outln!(
        "cold hash: {:.2} us/file; load of 10,000 entries: {:.2} ms; warm hash_file: {:.2} us/file ({:.2} ms total); no-op save: {:?}",
        cold.as_secs_f64() * 1e6 / 10_000.0,
        load.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e6 / 10_000.0,
        warm.as_secs_f64() * 1e3,
        save
    );
}

/// What a reload of `index_path` holds: `rel` -> content hash.
fn hashes_in(index_path: &Path) -> std::collections::BTreeMap<String, String> {
    let bytes = std::fs::read(index_path).expect("read index");
    decode(&bytes)
        .expect("an intact base")
        .entries
        .into_iter()
        .fold(
            std::collections::BTreeMap::new(),
            |mut map, (rel, entry)| {
                match entry {
                    Some(entry) => map.insert(
                        rel,
                        blake3::Hash::from_bytes(entry.hash).to_hex().to_string(),
                    ),
                    None => map.remove(&rel),
                };
                map
            },
        )
}

/// One run's worth of hashing: opens the index at `index_path`, hashes
/// `rels` under `root`, saves.
fn hash_and_save(index_path: &Path, root: &Path, rels: &[&str]) {
    let index = StatIndex::open(index_path).expect("open");
    for rel in rels {
        index.hash_file(root, rel).expect("hash");
    }
    index.save().expect("save");
}

#[test]
fn a_save_of_a_few_changes_appends_them_and_a_reload_applies_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index_path = dir.path().join("index");
    for n in 0..100 {
        write_old(dir.path(), &format!("f{n}.txt"), &format!("content {n}"));
    }
    let index = StatIndex::open(&index_path).expect("open");
    for n in 0..100 {
        index
            .hash_file(dir.path(), &format!("f{n}.txt"))
            .expect("hash");
    }
    index.save().expect("save");
    let base = std::fs::read(&index_path).expect("read");

    // One file edited, one removed, one added: three entries appended,
    // the base left as it was.
    let index = StatIndex::open(&index_path).expect("reopen");
    write_old(dir.path(), "f3.txt", "edited");
    std::fs::remove_file(dir.path().join("f4.txt")).expect("rm");
    write_old(dir.path(), "new.txt", "new");
    for rel in ["f3.txt", "new.txt", "f5.txt"] {
        index.hash_file(dir.path(), rel).expect("hash");
    }
    index.hash_file(dir.path(), "f4.txt").expect_err("removed");
    index.save().expect("save");
    let after = std::fs::read(&index_path).expect("read");
    assert!(after.starts_with(&base), "the base was rewritten");
    let appended = after.len() - base.len();
    assert!(
        appended < 400,
        "{appended} bytes appended for three changes"
    );

    let hashes = hashes_in(&index_path);
    assert_eq!(hashes.len(), 100);
    assert_eq!(
        hashes["f3.txt"],
        blake3::hash(b"edited").to_hex().to_string()
    );
    assert_eq!(hashes["new.txt"], blake3::hash(b"new").to_hex().to_string());
    assert!(!hashes.contains_key("f4.txt"));
    // And the reloaded index answers from its stats alone.
    let reloaded = StatIndex::open(&index_path).expect("reopen");
    for rel in ["f3.txt", "new.txt", "f50.txt"] {
        reloaded.hash_file(dir.path(), rel).expect("hash");
    }
    assert_eq!(reloaded.files_read(), 0);
}

#[test]
fn a_torn_batch_ends_the_journal_and_the_next_save_rewrites_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index_path = dir.path().join("index");
    for rel in ["a.txt", "b.txt", "c.txt"] {
        write_old(dir.path(), rel, rel);
    }
    hash_and_save(&index_path, dir.path(), &["a.txt"]);
    hash_and_save(&index_path, dir.path(), &["b.txt"]);
    let whole = std::fs::read(&index_path).expect("read");
    hash_and_save(&index_path, dir.path(), &["c.txt"]);
    let with_c = std::fs::read(&index_path).expect("read");

    // Killed while appending `c.txt`'s batch: the journal ends before it.
    for cut in [1, 20, with_c.len() - whole.len() - 1] {
        std::fs::write(&index_path, &with_c[..whole.len() + cut]).expect("write");
        let loaded = StatIndex::open(&index_path).expect("open torn");
        assert_eq!(loaded.len(), 2, "cut {cut}: a.txt and b.txt");
        // One flipped bit in a batch: the same.
        let mut flipped = with_c.clone();
        flipped[whole.len() + cut] ^= 0x10;
        std::fs::write(&index_path, &flipped).expect("write");
        assert_eq!(
            StatIndex::open(&index_path).expect("open").len(),
            2,
            "cut {cut}"
        );
    }
    // The next save does not append after the damage (a later batch would
    // never be read): it rewrites the file, which then reads whole.
    std::fs::write(&index_path, &with_c[..whole.len() + 20]).expect("write");
    let loaded = StatIndex::open(&index_path).expect("open torn");
    loaded.hash_file(dir.path(), "c.txt").expect("hash");
    loaded.save().expect("save");
    let bytes = std::fs::read(&index_path).expect("read");
    let decoded = decode(&bytes).expect("intact");
    assert!(!decoded.torn);
    assert_eq!(decoded.journal_len, 0, "rewritten as a base");
    assert_eq!(hashes_in(&index_path).len(), 3);
}

#[test]
fn a_long_journal_is_folded_into_a_new_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index_path = dir.path().join("index");
    write_old(dir.path(), "a.txt", "a");
    hash_and_save(&index_path, dir.path(), &["a.txt"]);
    // Changes worth more than the journal's limit in one save: a new base.
    let many = usize::try_from(JOURNAL_MIN_LIMIT).unwrap() / FIXED_LEN + 10;
    for n in 0..many {
        write_old(dir.path(), &format!("f{n}"), &n.to_string());
    }
    let names: Vec<String> = (0..many).map(|n| format!("f{n}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    hash_and_save(&index_path, dir.path(), &names);
    let decoded = decode(&std::fs::read(&index_path).expect("read")).expect("intact");
    assert_eq!(decoded.journal_len, 0);
    assert_eq!(decoded.entries.len(), many + 1);
}

#[test]
fn two_indexes_on_one_file_both_keep_what_they_saved() {
    // Two ccflow processes sharing a state directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let index_path = dir.path().join("index");
    for rel in ["a.txt", "b.txt", "c.txt"] {
        write_old(dir.path(), rel, rel);
    }
    hash_and_save(&index_path, dir.path(), &["a.txt"]);
    let one = StatIndex::open(&index_path).expect("open");
    let two = StatIndex::open(&index_path).expect("open");
    one.hash_file(dir.path(), "b.txt").expect("hash");
    two.hash_file(dir.path(), "c.txt").expect("hash");
    one.save().expect("save");
    two.save().expect("save");
    let hashes = hashes_in(&index_path);
    assert_eq!(
        hashes.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a.txt", "b.txt", "c.txt"]
    );
}

#[test]
fn an_index_of_the_format_before_the_journal_is_read_as_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index_path = dir.path().join("index");
    let mut old = MAGIC_V1.to_vec();
    old.extend_from_slice(&0u32.to_le_bytes());
    let checksum = blake3::hash(&old);
    old.extend_from_slice(checksum.as_bytes());
    std::fs::write(&index_path, &old).expect("write");
    write_old(dir.path(), "a.txt", "a");
    let index = StatIndex::open(&index_path).expect("open");
    assert!(index.is_empty());
    index.hash_file(dir.path(), "a.txt").expect("hash");
    index.save().expect("save");
    assert_eq!(hashes_in(&index_path).len(), 1);
}
