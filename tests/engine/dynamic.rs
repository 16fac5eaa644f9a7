//! dynamic
