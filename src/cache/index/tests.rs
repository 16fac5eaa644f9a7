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
