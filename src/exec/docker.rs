//! Docker runner (bollard): filled in by its owner.
