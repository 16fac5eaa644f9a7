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
            println!("cache: {}", store.dir().display());
            println!("{stats:#?}");
        }
        CacheCommand::Gc { max_size } => {
            let limit = parse_memory(max_size).ok_or_else(|| {
                CommandError::usage(format!(
                    "`--max-size {max_size}`: expected a size such as `500M` or `2G`"
                ))
            })?;
            let report = store.gc(limit).map_err(fail)?;
            println!("{report:#?}");
        }
        CacheCommand::Clear => {
            store.clear().map_err(fail)?;
            println!("cache cleared");
        }
    }
    Ok(ExitStatus::Success)
}
