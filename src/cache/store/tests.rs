//! Tests of the store against real files, threads and processes.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use super::super::key::CacheKey;
use super::*;
use crate::cache::pack;

fn write(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&path, content).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn key(task: &str, salt: &str) -> CacheKey {
    let mut key = CacheKey::new(task);
    key.command = format!("make {salt}");
    key
}

fn new_entry(key: CacheKey, outputs: &[&str]) -> NewEntry {
    NewEntry {
        instance_id: format!("{}[x]", key.task),
        key,
        outputs: outputs.iter().map(ToString::to_string).collect(),
        exit_code: 0,
        log: None,
        attachments: BTreeMap::new(),
        post_state: BTreeMap::new(),
        metadata: serde_json::Value::Null,
    }
}

/// Every file under `dir`, relative, sorted (to prove nothing else appeared).
fn tree(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if entry.file_type().expect("type").is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("prefix");
                files.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn save_lookup_restore_round_trip_keeps_content_and_modes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    write(&work, "bin/tool", b"#!/bin/sh\necho hi\n", 0o755);
    write(&work, "out/private.txt", b"secret-ish", 0o600);
    let large: Vec<u8> = (0..3_000_000u32).map(|n| (n % 251) as u8).collect();
    write(&work, "out/large.bin", &large, 0o644);
    write(dir.path(), "task.log", b"building...\ndone\n", 0o644);
    write(
        dir.path(),
        "transcript.ndjson",
        b"{\"type\":\"result\"}\n",
        0o644,
    );

    let store = Store::open(&dir.path().join("cache")).expect("open");
    let mut new = new_entry(
        key("build", "1"),
        &["./bin/tool", "out/private.txt", "out/large.bin"],
    );
    new.exit_code = 0;
    new.log = Some(dir.path().join("task.log"));
    new.attachments.insert(
        "transcript".to_owned(),
        dir.path().join("transcript.ndjson"),
    );
    new.metadata = serde_json::json!({"tokens": 1234, "cost_usd": 0.5});
    let key_hash = new.key.hash();
    let saved = store.save(&[key_hash], new, &work).expect("save");
    assert_eq!(saved.key_hash, key_hash);
    let paths: Vec<&str> = saved
        .outputs
        .iter()
        .map(|output| output.path.as_str())
        .collect();
    assert_eq!(paths, ["bin/tool", "out/large.bin", "out/private.txt"]);
    store.flush().expect("flush");
    drop(store);

    // A fresh store (as another process would open it).
    let store = Store::open(&dir.path().join("cache")).expect("reopen");
    let entry = store.lookup(&key_hash).expect("lookup").expect("hit");
    assert_eq!(entry, *saved);
    assert_eq!(entry.metadata["tokens"], 1234);
    let log = store
        .read_blob(entry.log.as_deref().expect("log"))
        .expect("log blob");
    assert_eq!(log, b"building...\ndone\n");
    let transcript = store
        .read_blob(&entry.attachments["transcript"])
        .expect("blob");
    assert_eq!(transcript, b"{\"type\":\"result\"}\n");

    let target = dir.path().join("restored");
    let report = store.restore(&entry, &target).expect("restore");
    assert_eq!(report.written.len(), 3);
    assert_eq!(
        std::fs::read(target.join("bin/tool")).expect("read"),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        std::fs::read(target.join("out/large.bin")).expect("read"),
        large
    );
    assert_eq!(mode_of(&target.join("bin/tool")), 0o755);
    assert_eq!(mode_of(&target.join("out/private.txt")), 0o600);
    assert_eq!(
        tree(&target),
        ["bin/tool", "out/large.bin", "out/private.txt"]
    );

    let latest = store
        .latest_for_instance("build[x]")
        .expect("latest")
        .expect("some");
    assert_eq!(latest.key_hash, key_hash);
    assert!(store
        .latest_for_instance("never[ran]")
        .expect("latest")
        .is_none());
    assert!(store
        .lookup(&key("build", "2").hash())
        .expect("lookup")
        .is_none());
}

#[test]
fn unpublished_entries_are_visible_to_their_own_process_only_until_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a.txt", b"a", 0o644);
    let cache = dir.path().join("cache");
    let writer = Store::open(&cache).expect("open");
    let reader = Store::open(&cache).expect("open");
    let new = new_entry(key("a", "1"), &["a.txt"]);
    let key_hash = new.key.hash();
    writer.save(&[], new, dir.path()).expect("save");
    assert!(writer.lookup(&key_hash).expect("lookup").is_some());
    writer.flush().expect("flush");
    assert!(reader.lookup(&key_hash).expect("lookup").is_some());
    assert_eq!(packed_keys(&reader), vec![key_hash]);
}

/// Every key in the store's packs, with the pack holding it.
fn packs_of(store: &Store) -> Vec<(KeyHash, PathBuf)> {
    store
        .shared
        .read_packs()
        .into_iter()
        .flat_map(|pack| {
            pack::decode(&pack.bytes)
                .into_iter()
                .map(move |(key, _)| (key, pack.path.clone()))
        })
        .collect()
}

fn packed_keys(store: &Store) -> Vec<KeyHash> {
    packs_of(store).into_iter().map(|(key, _)| key).collect()
}

#[test]
fn in_place_task_is_found_under_pre_and_post_state_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "src/lib.rs", b"fn new() {}", 0o644);
    let store = Store::open(&dir.path().join("cache")).expect("open");
    let mut pre = key("fix", "1");
    pre.inputs.insert("src/lib.rs".to_owned(), "00".repeat(32));
    let mut post = pre.clone();
    post.inputs
        .insert("src/lib.rs".to_owned(), fsutil::hash_bytes(b"fn new() {}"));
    let mut new = new_entry(pre.clone(), &["src/lib.rs"]);
    new.post_state = post.inputs.clone();
    store
        .save(&[pre.hash(), post.hash()], new, dir.path())
        .expect("save");
    store.flush().expect("flush");
    let by_pre = store.lookup(&pre.hash()).expect("lookup").expect("pre hit");
    let by_post = store
        .lookup(&post.hash())
        .expect("lookup")
        .expect("post hit");
    assert_eq!(by_pre.key_hash, pre.hash());
    assert_eq!(by_post.key_hash, post.hash());
    assert_eq!(by_post.key, pre);
    assert_eq!(by_post.outputs_digest(), by_pre.outputs_digest());
    let latest = store
        .latest_for_instance("fix[x]")
        .expect("latest")
        .expect("some");
    assert_eq!(latest.key_hash, pre.hash());
}

#[test]
fn restore_skips_identical_files_and_fixes_modes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    write(&work, "a.txt", b"alpha", 0o644);
    write(&work, "b.txt", b"bravo", 0o644);
    write(&work, "c.sh", b"echo", 0o755);
    let store = Store::open(&dir.path().join("cache")).expect("open");
    let entry = store
        .save(
            &[],
            new_entry(key("t", "1"), &["a.txt", "b.txt", "c.sh"]),
            &work,
        )
        .expect("save");

    // Restoring into the tree that produced it writes nothing.
    let old = 1_577_836_800_000_000_000;
    for name in ["a.txt", "b.txt", "c.sh"] {
        fsutil::set_mtime_ns(&work.join(name), old).expect("utimensat");
    }
    let report = store.restore(&entry, &work).expect("restore");
    assert_eq!(report.skipped, ["a.txt", "b.txt", "c.sh"]);
    assert!(report.written.is_empty());
    for name in ["a.txt", "b.txt", "c.sh"] {
        let metadata = std::fs::metadata(work.join(name)).expect("stat");
        assert_eq!(fsutil::mtime_ns(&metadata), old, "{name} was rewritten");
    }

    // One file edited (same size), one chmodded: only they are touched.
    write(&work, "b.txt", b"BRAVO", 0o644);
    std::fs::set_permissions(work.join("c.sh"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let index = StatIndex::open(&dir.path().join("index")).expect("index");
    let report = store
        .restore_with_index(&entry, &work, Some(&index))
        .expect("restore");
    assert_eq!(report.written, ["b.txt"]);
    assert_eq!(report.chmodded, ["c.sh"]);
    assert_eq!(report.skipped, ["a.txt"]);
    assert_eq!(std::fs::read(work.join("b.txt")).expect("read"), b"bravo");
    assert_eq!(mode_of(&work.join("c.sh")), 0o755);
    assert_eq!(tree(&work), ["a.txt", "b.txt", "c.sh"], "no temp file left");
}

#[test]
fn corrupt_blob_is_reported_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    write(&work, "good.txt", b"good content", 0o644);
    // Larger than INLINE_MAX: kept as a blob.
    write(
        &work,
        "bad.txt",
        &larger_than_inline(b"content to corrupt "),
        0o644,
    );
    let store = Store::open(&dir.path().join("cache")).expect("open");
    let entry = store
        .save(
            &[],
            new_entry(key("t", "1"), &["good.txt", "bad.txt"]),
            &work,
        )
        .expect("save");
    store.flush().expect("flush");
    let bad = entry
        .outputs
        .iter()
        .find(|output| output.path == "bad.txt")
        .expect("bad");
    let blob_path = store.shared.blob_path(&bad.hash).expect("path");
    let mut bytes = std::fs::read(&blob_path).expect("read blob");
    bytes[3] ^= 0x01;
    std::fs::write(&blob_path, &bytes).expect("corrupt blob");

    assert!(matches!(
        store.read_blob(&bad.hash),
        Err(CacheError::CorruptBlob { .. })
    ));
    std::fs::write(&blob_path, &bytes).expect("corrupt blob again");

    // Same size, so the lookup still finds it; the restore must not trust it.
    let found = store.lookup(&entry.key_hash).expect("lookup").expect("hit");
    let target = dir.path().join("target");
    write(&target, "bad.txt", b"user's own file", 0o644);
    let error = store.restore(&found, &target).expect_err("corrupt");
    assert!(
        matches!(&error, CacheError::CorruptBlob { hash, .. } if *hash == bad.hash),
        "{error}"
    );
    assert_eq!(
        tree(&target),
        ["bad.txt"],
        "good.txt was not written either"
    );
    assert_eq!(
        std::fs::read(target.join("bad.txt")).expect("read"),
        b"user's own file"
    );
    // The corrupt blob is gone, so the entry is now a miss.
    assert!(store.lookup(&entry.key_hash).expect("lookup").is_none());
}

#[test]
fn torn_or_foreign_manifests_are_misses() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Larger than INLINE_MAX: kept as a blob.
    write(dir.path(), "a.txt", &larger_than_inline(b"alpha "), 0o644);
    let store = Store::open(&dir.path().join("cache")).expect("open");
    let entry = store
        .save(&[], new_entry(key("t", "1"), &["a.txt"]), dir.path())
        .expect("save");
    store.flush().expect("flush");
    let (_, path) = packs_of(&store).pop().expect("a pack");
    let pack_bytes = std::fs::read(&path).expect("read");
    let range = pack::decode(&pack_bytes).pop().expect("a record").1;
    let bytes = pack_bytes[range.clone()].to_vec();
    let fresh = || Store::open(&dir.path().join("cache")).expect("open");

    // A pack cut short, or a manifest damaged inside it, is a miss.
    std::fs::write(&path, &pack_bytes[..pack_bytes.len() - 10]).expect("truncate");
    assert!(fresh().lookup(&entry.key_hash).expect("lookup").is_none());
    let mut flipped = pack_bytes.clone();
    flipped[range.end - 5] ^= 1;
    std::fs::write(&path, &flipped).expect("flip a byte");
    assert!(fresh().lookup(&entry.key_hash).expect("lookup").is_none());
    std::fs::write(&path, b"").expect("empty");
    assert!(fresh().lookup(&entry.key_hash).expect("lookup").is_none());
    std::fs::remove_file(&path).expect("rm pack");

    // Per-entry manifest files (stores from before packs) are still read,
    // with the same checks.
    let legacy = store.shared.entry_path(&entry.key_hash);
    std::fs::write(&legacy, &bytes[..bytes.len() - 10]).expect("truncate");
    assert!(fresh().lookup(&entry.key_hash).expect("lookup").is_none());
    std::fs::write(&legacy, &bytes[..20]).expect("truncate header");
    assert!(fresh().lookup(&entry.key_hash).expect("lookup").is_none());
    std::fs::write(&legacy, &bytes).expect("restore manifest");
    assert!(fresh().lookup(&entry.key_hash).expect("lookup").is_some());

    // A valid manifest under another key's name is not that key's entry,
    // in a file or in a pack.
    let other = key("t", "2").hash();
    std::fs::write(store.shared.entry_path(&other), &bytes).expect("copy");
    assert!(fresh().lookup(&other).expect("lookup").is_none());
    std::fs::write(
        store.shared.packs_dir().join("pack-9"),
        pack::encode([(&other, &bytes[..])]),
    )
    .expect("forge pack");
    assert!(fresh().lookup(&other).expect("lookup").is_none());
    assert!(fresh().lookup(&entry.key_hash).expect("lookup").is_some());

    // A missing blob makes the entry a miss too.
    std::fs::remove_file(
        store
            .shared
            .blob_path(&entry.outputs[0].hash)
            .expect("path"),
    )
    .expect("rm");
    assert!(fresh().lookup(&entry.key_hash).expect("lookup").is_none());
}

#[test]
fn outputs_outside_the_root_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    write(dir.path(), "outside.txt", b"not yours", 0o644);
    write(&work, "inside.txt", b"yours", 0o644);
    std::os::unix::fs::symlink(dir.path().join("outside.txt"), work.join("link.txt"))
        .expect("symlink");
    std::os::unix::fs::symlink(dir.path(), work.join("escape")).expect("symlink");
    std::os::unix::fs::symlink("inside.txt", work.join("inner-link.txt")).expect("symlink");
    let store = Store::open(&dir.path().join("cache")).expect("open");
    let absolute = dir
        .path()
        .join("outside.txt")
        .to_string_lossy()
        .into_owned();
    for bad in [
        "../outside.txt",
        absolute.as_str(),
        "link.txt",
        "escape/outside.txt",
        "sub/../../outside.txt",
    ] {
        let error = store
            .save(&[], new_entry(key("t", bad), &["inside.txt", bad]), &work)
            .expect_err(bad);
        assert!(
            matches!(&error, CacheError::OutputOutsideRoot { path } if path == bad),
            "{bad}: {error}"
        );
    }
    // A symlink that stays inside is stored as the file it points to.
    let entry = store
        .save(&[], new_entry(key("t", "ok"), &["inner-link.txt"]), &work)
        .expect("inner link");
    assert_eq!(entry.outputs[0].hash, fsutil::hash_bytes(b"yours"));

    // Restore refuses forged paths and symlinked directories leading out.
    let mut forged = (*entry).clone();
    forged.outputs[0].path = "../evil.txt".to_owned();
    assert!(matches!(
        store.restore(&forged, &work),
        Err(CacheError::OutputOutsideRoot { .. })
    ));
    forged.outputs[0].path = "escape/evil.txt".to_owned();
    assert!(matches!(
        store.restore(&forged, &work),
        Err(CacheError::OutputOutsideRoot { .. })
    ));
    assert!(!dir.path().join("evil.txt").exists());
}

#[test]
fn concurrent_saves_of_one_key_leave_a_valid_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let shared_key = key("t", "same");
    std::thread::scope(|scope| {
        for writer in 0..4 {
            let cache = &cache;
            let shared_key = &shared_key;
            let work = dir.path().join(format!("work{writer}"));
            scope.spawn(move || {
                // One store per thread: separate flushers, as in separate
                // processes.
                let store = Store::open(cache).expect("open");
                for round in 0..25 {
                    let content = format!("writer {writer} round {round}");
                    write(&work, "out.txt", content.as_bytes(), 0o644);
                    write(
                        &work,
                        "big.bin",
                        &vec![writer as u8; 1_100_000 + round],
                        0o644,
                    );
                    let new = new_entry(shared_key.clone(), &["out.txt", "big.bin"]);
                    store.save(&[], new, &work).expect("save");
                }
                store.flush().expect("flush");
            });
        }
    });
    let store = Store::open(&cache).expect("open");
    let entry = store
        .lookup(&shared_key.hash())
        .expect("lookup")
        .expect("hit");
    let target = dir.path().join("target");
    store.restore(&entry, &target).expect("restore");
    let content = std::fs::read_to_string(target.join("out.txt")).expect("read");
    assert!(content.starts_with("writer "), "{content}");
    assert_eq!(tree(&store.shared.dir.join("tmp")), Vec::<String>::new());
}

#[test]
fn gc_keeps_the_most_recently_used_entries_under_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("cache")).expect("open");
    let mut keys = Vec::new();
    // Blobs, not inline.
    let size = larger_than_inline(&[0]).len() as u64;
    for number in 0..6u8 {
        write(dir.path(), "out.bin", &larger_than_inline(&[number]), 0o644);
        let entry = store
            .save(
                &[],
                new_entry(key("t", &number.to_string()), &["out.bin"]),
                dir.path(),
            )
            .expect("save");
        keys.push(entry.key_hash);
        // One pack per entry: a pack's mtime is its entries' last use.
        store.flush().expect("flush");
    }
    let packs = packs_of(&store);
    assert_eq!(packs.len(), 6);
    // Entry n was last used at second n; then entry 0 is hit, becoming the
    // most recent.
    for (number, key_hash) in keys.iter().enumerate() {
        let (_, path) = packs
            .iter()
            .find(|(key, _)| key == key_hash)
            .expect("packed");
        fsutil::set_mtime_ns(
            path,
            1_600_000_000_000_000_000 + number as i64 * 1_000_000_000,
        )
        .expect("utimensat");
    }
    let store = Store::open(&dir.path().join("cache")).expect("reopen");
    assert!(store.lookup(&keys[0]).expect("lookup").is_some());

    let before = store.stats().expect("stats");
    assert_eq!((before.entries, before.blobs), (6, 6));
    let manifest_size = before.bytes / 6 - size;
    let limit = 3 * (size + manifest_size) + manifest_size / 2;
    let report = store.gc(limit).expect("gc");
    let after = store.stats().expect("stats");
    assert!(after.bytes <= limit, "{after:?} over {limit}");
    assert_eq!(report.entries_removed, 3);
    assert_eq!(report.blobs_removed, 3);
    assert_eq!(report.bytes_after, after.bytes);
    let kept: Vec<bool> = keys
        .iter()
        .map(|key_hash| store.lookup(key_hash).expect("lookup").is_some())
        .collect();
    assert_eq!(kept, [true, false, false, false, true, true]);

    store.clear().expect("clear");
    assert_eq!(store.stats().expect("stats"), StoreStats::default());
    assert!(store.lookup(&keys[0]).expect("lookup").is_none());
}

/// Env var telling a re-executed test binary to act as the saving child.
const CHILD_ENV: &str = "CCFLOW_CACHE_KILL_CHILD_DIR";

fn child_content(number: u64, file: u64) -> Vec<u8> {
    let mut content = format!("entry {number} file {file}\n").into_bytes();
    if number % 7 == 0 && file == 0 {
        // Now and then a large file, to take the streaming path.
        content.resize(1_200_000, (number % 251) as u8);
    }
    content
}

fn child_key(number: u64) -> CacheKey {
    let mut key = key("killed", "loop");
    key.extra.insert("n".to_owned(), number.to_string());
    key
}

/// Not a test on its own: the child of
/// `sigkill_at_random_points_leaves_only_valid_entries`, which runs this
/// binary again with `CHILD_ENV` set. Saves entries in a loop until killed.
#[test]
fn kill_child_saves_in_a_loop() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let work = dir.join(format!("work-{}", std::process::id()));
    let store = Store::open(&dir.join("cache")).expect("open");
    let start = std::env::var("CCFLOW_CACHE_KILL_START")
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .unwrap_or(0);
    for number in start.. {
        for file in 0..3 {
            write(
                &work,
                &format!("out{file}.txt"),
                &child_content(number, file),
                0o644,
            );
        }
        let new = new_entry(child_key(number), &["out0.txt", "out1.txt", "out2.txt"]);
        store.save(&[], new, &work).expect("save");
        if number % 10 == 9 {
            store.flush().expect("flush");
        }
    }
}

#[test]
fn sigkill_at_random_points_leaves_only_valid_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current exe");
    for round in 0..20u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "cache::store::tests::kill_child_saves_in_a_loop",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            // Each round saves new keys, so earlier rounds' entries stay.
            .env("CCFLOW_CACHE_KILL_START", (round * 1000).to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        std::thread::sleep(Duration::from_millis(fastrand::u64(20..150)));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }

    let store = Store::open(&dir.path().join("cache")).expect("open");
    let mut hits = 0;
    let mut misses = 0;
    for key_hash in packed_keys(&store) {
        let Some(entry) = store.lookup(&key_hash).expect("lookup") else {
            misses += 1;
            continue;
        };
        let number: u64 = entry.key.extra["n"].parse().expect("n");
        assert_eq!(entry.key_hash, child_key(number).hash());
        let target = dir.path().join("check");
        let report = store
            .restore(&entry, &target)
            .expect("a visible entry restores");
        assert_eq!(report.written.len(), 3);
        for file in 0..3 {
            let content = std::fs::read(target.join(format!("out{file}.txt"))).expect("read");
            assert!(
                content == child_content(number, file),
                "entry {number} file {file} is wrong"
            );
        }
        std::fs::remove_dir_all(&target).expect("clean");
        hits += 1;
    }
    assert!(hits > 0, "no child lived long enough to publish an entry");
    assert_eq!(misses, 0, "a published manifest must name complete blobs");
    crate::outln!("after 20 SIGKILLs: {hits} valid entries");
}

/// Measurement, not a test: `cargo test --release --lib
/// cache::store::tests::measure_store -- --ignored --nocapture`.
#[test]
#[ignore = "measurement"]
fn measure_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let count = 1000;
    for number in 0..count {
        write(
            &work,
            &format!("out/{number}.txt"),
            format!("output of task {number}\n").as_bytes(),
            0o644,
        );
        write(
            &work,
            &format!("logs/{number}.log"),
            format!("log of task {number}\n").as_bytes(),
            0o644,
        );
    }
    let cache = dir.path().join("cache");
    let store = Store::open(&cache).expect("open");
    let mut keys = Vec::new();
    let started = Instant::now();
    for number in 0..count {
        let mut new = new_entry(
            key("t", &number.to_string()),
            &[&format!("out/{number}.txt")],
        );
        new.log = Some(work.join(format!("logs/{number}.log")));
        keys.push(store.save(&[], new, &work).expect("save").key_hash);
    }
    let saves = started.elapsed();
    let flush_started = Instant::now();
    store.flush().expect("flush");
    let flush = flush_started.elapsed();
    drop(store);

    let store = Store::open(&cache).expect("open");
    let target = dir.path().join("target");
    let started = Instant::now();
    for key_hash in &keys {
        let entry = store.lookup(key_hash).expect("lookup").expect("hit");
        store.restore(&entry, &target).expect("restore");
    }
    let restores = started.elapsed();

    let started = Instant::now();
    let mut synced = 0;
    while started.elapsed() < Duration::from_millis(300) {
        fsutil::sync_file_system(&store.shared.dir_handle).expect("syncfs");
        synced += 1;
    }
    let syncfs = started.elapsed() / synced;
    crate::outln!(
        "save: {:.1} us/entry ({count} entries, {:.1} ms); final flush: {:.1} ms; save+flush: {:.1} us/entry; lookup+restore into an empty dir: {:.1} us/entry; idle syncfs: {:.0} us",
        saves.as_secs_f64() * 1e6 / f64::from(count),
        saves.as_secs_f64() * 1e3,
        flush.as_secs_f64() * 1e3,
        (saves + flush).as_secs_f64() * 1e6 / f64::from(count),
        restores.as_secs_f64() * 1e6 / f64::from(count),
        syncfs.as_secs_f64() * 1e6,
    );
}

#[test]
fn store_and_index_are_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    assert_send_sync::<StatIndex>();
}

#[test]
fn pointer_logs_name_the_latest_entry_skip_torn_lines_and_merge_when_many() {
    let dir = tempfile::tempdir().expect("tempdir");
    let instances = dir.path();
    let instance = fsutil::hash_bytes(b"build[x]");
    let other = fsutil::hash_bytes(b"build[y]");
    let (k1, k2, k3) = (
        key("build", "1").hash(),
        key("build", "2").hash(),
        key("build", "3").hash(),
    );
    let log = |name: &str, text: String| std::fs::write(instances.join(name), text).expect("log");
    log(
        "log-00000000000000000001-1",
        format!("{instance} {k1}\n{other} {k3}\n"),
    );
    // The newer log wins, and its last line naming the instance; a torn
    // line at the end is skipped.
    log(
        "log-00000000000000000002-1",
        format!("{instance} {k3}\n{instance} {k2}\n{instance} 12ab"),
    );
    assert_eq!(
        latest_pointer(instances, &instance).expect("read"),
        Some(k2)
    );
    assert_eq!(latest_pointer(instances, &other).expect("read"), Some(k3));
    assert_eq!(
        latest_pointer(instances, &fsutil::hash_bytes(b"never")).expect("read"),
        None
    );
    // Many old logs are merged into one that keeps every latest pointer.
    for n in 3..=(POINTER_LOGS_MAX as u64 + 2) {
        log(&format!("log-{n:020}-1"), format!("{other} {k1}\n"));
    }
    let old = SystemTime::now() - 2 * POINTER_LOG_COMPACT_AGE;
    for log in pointer_logs(instances) {
        std::fs::File::options()
            .append(true)
            .open(&log)
            .and_then(|f| f.set_modified(old))
            .expect("age the log");
    }
    compact_pointer_logs(instances);
    assert_eq!(pointer_logs(instances).len(), 1);
    assert_eq!(
        latest_pointer(instances, &instance).expect("read"),
        Some(k2)
    );
    assert_eq!(latest_pointer(instances, &other).expect("read"), Some(k1));
}

#[test]
fn small_outputs_live_in_the_manifest_and_restore_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    write(&work, "small.txt", b"small\n", 0o640);
    write(&work, "large.txt", &larger_than_inline(b"x"), 0o644);
    let store = Store::open(&dir.path().join("cache")).expect("open");
    let entry = store
        .save(
            &[],
            new_entry(key("t", "1"), &["small.txt", "large.txt"]),
            &work,
        )
        .expect("save");
    store.flush().expect("flush");
    let small = entry
        .outputs
        .iter()
        .find(|o| o.path == "small.txt")
        .expect("small");
    let large = entry
        .outputs
        .iter()
        .find(|o| o.path == "large.txt")
        .expect("large");
    assert!(small.inline.is_some(), "a small output is inline");
    assert!(store
        .shared
        .blob_path(&small.hash)
        .is_some_and(|p| !p.exists()));
    assert!(large.inline.is_none(), "a large output is a blob");
    let found = store.lookup(&entry.key_hash).expect("lookup").expect("hit");
    let target = dir.path().join("target");
    store.restore(&found, &target).expect("restore");
    assert_eq!(
        std::fs::read(target.join("small.txt")).expect("read"),
        b"small\n"
    );
    assert_eq!(mode_of(&target.join("small.txt")), 0o640);
    // Inline content that does not match its hash is never written.
    let mut tampered = found.clone();
    for output in &mut tampered.outputs {
        if output.path == "small.txt" {
            output.inline = Some(super::super::entry::to_hex(b"SMALL\n"));
        }
    }
    let other = dir.path().join("other");
    let error = store.restore(&tampered, &other).expect_err("corrupt");
    assert!(matches!(error, CacheError::CorruptBlob { .. }), "{error}");
    assert!(!other.join("small.txt").exists());
    assert_eq!(
        super::super::entry::from_hex(&super::super::entry::to_hex(&[0, 15, 255])),
        Some(vec![0, 15, 255])
    );
}

/// Saves `count` entries (`t` numbered from 0, `out.txt` holding the
/// number), each published in its own pack; their key hashes.
fn save_in_packs(store: &Store, root: &Path, count: u32) -> Vec<KeyHash> {
    (0..count)
        .map(|number| {
            write(root, "out.txt", format!("{number}\n").as_bytes(), 0o644);
            let entry = store
                .save(
                    &[],
                    new_entry(key("t", &number.to_string()), &["out.txt"]),
                    root,
                )
                .expect("save");
            store.flush().expect("flush");
            entry.key_hash
        })
        .collect()
}

/// A large pack (above `PACK_MERGE_LIMIT`, 4 KB in tests) is not
/// rewritten when the small packs after it are merged, and a key saved
/// again in a small pack still wins over the large pack's entry.
#[test]
fn large_packs_are_left_alone_when_the_small_ones_are_merged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let store = Store::open(&cache).expect("open");
    write(dir.path(), "out.txt", b"big\n", 0o644);
    let mut big = key("t", "big");
    for i in 0..200 {
        big.inputs
            .insert(format!("in/file-{i}.txt"), "ab".repeat(32));
    }
    let big_hash = store
        .save(&[], new_entry(big.clone(), &["out.txt"]), dir.path())
        .expect("save")
        .key_hash;
    store.flush().expect("flush");
    let packs_dir = store.shared.packs_dir();
    let big_pack = pack::list(&packs_dir).pop().expect("one pack");
    assert!(
        std::fs::metadata(packs_dir.join(&big_pack))
            .expect("stat")
            .len()
            > 4096
    );
    let keys = save_in_packs(&store, dir.path(), 70);
    // The large pack's key saved again, later, with other outputs.
    write(dir.path(), "out.txt", b"newer\n", 0o644);
    store
        .save(&[], new_entry(big, &["out.txt"]), dir.path())
        .expect("save");
    store.flush().expect("flush");
    drop(store);

    drop(Store::open(&cache).expect("open"));
    let mut left = pack::list(&packs_dir);
    left.sort();
    assert_eq!(left.len(), 2, "the large pack and the merged one: {left:?}");
    assert_eq!(left[0], big_pack, "the large pack is untouched");
    let store = Store::open(&cache).expect("open");
    for key_hash in keys.iter().chain([&big_hash]) {
        assert!(store.lookup(key_hash).expect("lookup").is_some());
    }
    let entry = store.lookup(&big_hash).expect("lookup").expect("entry");
    let target = dir.path().join("check");
    store.restore(&entry, &target).expect("restore");
    assert_eq!(
        std::fs::read_to_string(target.join("out.txt")).expect("read"),
        "newer\n"
    );
}

#[test]
fn many_packs_are_merged_into_one_and_every_entry_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let store = Store::open(&cache).expect("open");
    let keys = save_in_packs(&store, dir.path(), 70);
    // The same key saved again later: the newer manifest must win.
    write(dir.path(), "out.txt", b"newer\n", 0o644);
    store
        .save(&[], new_entry(key("t", "0"), &["out.txt"]), dir.path())
        .expect("save");
    store.flush().expect("flush");
    assert_eq!(pack::list(&store.shared.packs_dir()).len(), 71);
    drop(store);

    // Opening merges them (on the flusher thread; dropping waits for it).
    drop(Store::open(&cache).expect("open"));
    assert_eq!(pack::list(&cache.join("v2/packs")).len(), 1);
    let store = Store::open(&cache).expect("open");
    for (number, key_hash) in keys.iter().enumerate() {
        let entry = store
            .lookup(key_hash)
            .expect("lookup")
            .unwrap_or_else(|| panic!("entry {number} lost in the merge"));
        let target = dir.path().join("check");
        store.restore(&entry, &target).expect("restore");
        let expected = if number == 0 {
            "newer\n".to_owned()
        } else {
            format!("{number}\n")
        };
        assert_eq!(
            std::fs::read_to_string(target.join("out.txt")).expect("read"),
            expected
        );
    }
    assert_eq!(store.stats().expect("stats").entries, 70);
}

#[test]
fn restores_stage_in_a_per_process_directory_that_dead_processes_leave_for_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    write(&work, "out/a.txt", b"alpha", 0o644);
    let large: Vec<u8> = (0..200_000u32).map(|n| (n % 241) as u8).collect();
    write(&work, "out/b.bin", &large, 0o640);
    let store = Store::open(&dir.path().join("cache")).expect("open");
    let new = new_entry(key("stage", "1"), &["out/a.txt", "out/b.bin"]);
    let key_hash = new.key.hash();
    store.save(&[key_hash], new, &work).expect("save");
    store.flush().expect("flush");
    let tmp = store.dir().join("tmp");
    // What a killed restore left: the staging directory of a process that
    // no longer exists (pids never exceed 2^22 on Linux), with a temp file.
    let dead = tmp.join(format!("{RESTORE_STAGING}4194305-1"));
    std::fs::create_dir(&dead).expect("mkdir");
    std::fs::write(dead.join(".ccflow-restore-1-1"), b"torn").expect("write");

    std::fs::remove_dir_all(work.join("out")).expect("rm");
    let entry = store.lookup(&key_hash).expect("lookup").expect("hit");
    let report = store.restore(&entry, &work).expect("restore");
    assert_eq!(report.written, ["out/a.txt", "out/b.bin"]);
    assert_eq!(
        std::fs::read(work.join("out/a.txt")).expect("read"),
        b"alpha"
    );
    assert_eq!(std::fs::read(work.join("out/b.bin")).expect("read"), large);
    assert_eq!(mode_of(&work.join("out/b.bin")), 0o640);
    // Nothing staged is left beside the targets or in the staging directory.
    assert_eq!(tree(&work), ["out/a.txt", "out/b.bin"]);
    assert!(!dead.exists(), "the dead process's staging directory stays");
    let staging: Vec<std::path::PathBuf> = std::fs::read_dir(&tmp)
        .expect("read_dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    assert_eq!(staging.len(), 1, "{staging:?}");
    let own = &staging[0];
    assert!(
        own.file_name().and_then(|name| name.to_str()).is_some_and(
            |name| name.starts_with(&format!("{RESTORE_STAGING}{}-", std::process::id()))
        )
    );
    assert_eq!(std::fs::read_dir(own).expect("read_dir").count(), 0);
    // The restored files' inodes were made in the staging directory: on
    // the same device as the targets, renamed into place.
    assert_eq!(
        std::fs::metadata(own).expect("stat").dev(),
        std::fs::metadata(work.join("out/a.txt"))
            .expect("stat")
            .dev()
    );
    drop(store);
    assert!(
        !own.exists(),
        "the store leaves its staging directory behind"
    );
}

#[test]
fn a_staged_restore_reaches_a_target_on_another_mount_by_copy() {
    // /dev/shm is tmpfs: a rename from there into the temp dir's file
    // system fails with EXDEV, as it does across bind mounts of one device.
    let shm = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir");
    let dir = tempfile::tempdir().expect("tempdir");
    assert_ne!(
        std::fs::metadata(shm.path()).expect("stat").dev(),
        std::fs::metadata(dir.path()).expect("stat").dev(),
        "the test needs /dev/shm on another file system"
    );
    let staged = shm.path().join(".ccflow-restore-1-1");
    std::fs::write(&staged, b"restored").expect("write");
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o751)).expect("chmod");
    let target = dir.path().join("out.bin");
    std::fs::write(&target, b"old").expect("write");
    publish_staged(&staged, &target).expect("publish");
    assert_eq!(std::fs::read(&target).expect("read"), b"restored");
    assert_eq!(mode_of(&target), 0o751);
    assert!(!staged.exists(), "the staged file stays behind");
    assert_eq!(
        tree(dir.path()),
        ["out.bin"],
        "a temp file stays beside the target"
    );
}

#[test]
fn a_batch_syncs_its_blobs_one_by_one_or_the_file_system_and_publishes_either_way() {
    // Few blobs: an fdatasync each; more than SYNC_EACH_BLOB_UP_TO: syncfs.
    for count in [3, SYNC_EACH_BLOB_UP_TO + 6] {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("work");
        let cache = dir.path().join("cache");
        let store = Store::open(&cache).expect("open");
        let mut saved = Vec::new();
        for i in 0..count {
            let name = format!("f{i}.bin");
            let content = larger_than_inline(&[u8::try_from(i).expect("small")]);
            write(&work, &name, &content, 0o644);
            let entry = store
                .save(&[], new_entry(key("t", &i.to_string()), &[&name]), &work)
                .expect("save");
            assert!(entry.outputs[0].inline.is_none(), "a blob, not inline");
            saved.push((entry.key_hash, name, content));
        }
        store.flush().expect("flush");
        // Another store sees only what was published.
        let reader = Store::open(&cache).expect("open");
        let target = dir.path().join("target");
        for (key_hash, name, content) in &saved {
            let found = reader.lookup(key_hash).expect("lookup").expect("published");
            reader.restore(&found, &target).expect("restore");
            assert_eq!(&std::fs::read(target.join(name)).expect("read"), content);
        }
    }
}

#[test]
fn a_blob_removed_before_its_batch_is_synced_leaves_a_miss_not_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let cache = dir.path().join("cache");
    write(&work, "large.bin", &larger_than_inline(&[7]), 0o644);
    let store = Store::open(&cache).expect("open");
    let entry = store
        .save(&[], new_entry(key("t", "gone"), &["large.bin"]), &work)
        .expect("save");
    // As a concurrent `cache gc` might, before the flusher's window ends.
    let blob = store
        .shared
        .blob_path(&entry.outputs[0].hash)
        .expect("blob path");
    std::fs::remove_file(&blob).expect("remove blob");
    store
        .flush()
        .expect("a missing blob does not fail the batch");
    let reader = Store::open(&cache).expect("open");
    assert!(
        reader.lookup(&entry.key_hash).expect("lookup").is_none(),
        "an entry whose blob is gone is a miss"
    );
}

/// `unit` repeated past what manifests keep inline: stored as a blob.
fn larger_than_inline(unit: &[u8]) -> Vec<u8> {
    let inline_max = usize::try_from(super::super::entry::INLINE_MAX).expect("small");
    unit.repeat(inline_max / unit.len() + 1)
}
