//! The content-hash cache: what decides a task's result (the [`CacheKey`]),
//! how input files are hashed without re-reading an unchanged tree (the
//! [`StatIndex`]), and where results live (the content-addressed [`Store`]).
//!
//! This module knows nothing about workflows or the scheduler: the scheduler
//! renders commands, expands globs and decides hit or miss; this module turns
//! the facts it is given into keys, and keys into stored results.
//!
//! SPEC §3 is the contract. The durability design is described in `store.rs`.

mod entry;
mod error;
pub(crate) mod fsutil;
pub mod index;
pub mod key;
mod pack;
pub mod store;

pub use entry::{Entry, NewEntry, OutputFile};
pub use error::CacheError;
pub use fsutil::{DirStat, FileStat};
pub use index::{FileHash, StatIndex};
pub use key::{outputs_digest, CacheKey, KeyChange, KeyHash, CACHE_FORMAT_VERSION, VAR_PREFIX};
pub use store::{GcReport, RestoreReport, Store, StoreStats};
