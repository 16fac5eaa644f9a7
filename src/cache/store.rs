//! placeholder
pub struct Store;
pub struct Entry;
pub struct NewEntry;
pub struct OutputFile;
pub struct RestoreReport;
pub struct StoreStats;
pub struct GcReport;
