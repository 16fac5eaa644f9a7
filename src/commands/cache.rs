//! `ccflow cache stats|gc|clear`.

use super::Ctx;
use crate::cache::Store;
use crate::cli::{CacheArgs, CacheCommand};
use crate::error::{CommandError, CommandResult, ExitStatus};
use crate::workflow::resolve::parse_memory;

/// Inspects or trims the cache.
///
/// # Errors
/// A bad size, or a cache that cannot be opened.
pub fn run(args: &CacheArgs, ctx: &Ctx) -> CommandResult {
    let store = Store::open(&ctx.state_dir.join("cache"))
        .map_err(|e| CommandError::usage(format!("cannot open the cache: {e}")))?;
    let fail = |e: crate::cache::CacheError| CommandError::failed(e.to_string());
    match &args.command {
        CacheCommand::Stats => {
            let stats = store.stats().map_err(fail)?;
            crate::outln!("cache: {}", store.dir().display());
            crate::outln!("entries: {}", stats.entries);
            crate::outln!("blobs:   {}", stats.blobs);
            crate::outln!(
                "size:    {} (manifests and blobs)",
                human_bytes(stats.bytes)
            );
        }
        CacheCommand::Gc { max_size } => {
            let limit = parse_memory(max_size).ok_or_else(|| {
                CommandError::usage(format!(
                    "`--max-size {max_size}`: expected a size such as `500M` or `2G`"
                ))
            })?;
            let report = store.gc(limit).map_err(fail)?;
            // A collected entry turns an up-to-date answer into a rerun.
            crate::memo::remove_all(&ctx.state_dir);
            crate::outln!(
                "removed {} entries and {} blobs ({}); the cache now holds {}",
                report.entries_removed,
                report.blobs_removed,
                human_bytes(report.bytes_freed),
                human_bytes(report.bytes_after)
            );
        }
        CacheCommand::Clear => {
            store.clear().map_err(fail)?;
            crate::memo::remove_all(&ctx.state_dir);
            crate::outln!("cache cleared");
        }
    }
    Ok(ExitStatus::Success)
}

/// `2.4 KiB`, `310.0 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
