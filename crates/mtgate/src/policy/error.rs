//! [`PolicyError`]: what building or reloading a policy table can fail with
//! (list files, the geo database). Lookups never fail.

use std::path::PathBuf;

/// A policy table could not be built or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file (ACL list, geo database) is missing or unreadable.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file is over the size accepted.
    #[error("{}: {len} bytes is over the limit of {max}", path.display())]
    TooLarge { path: PathBuf, len: u64, max: u64 },
    /// The geo database is not a MaxMind DB we can read.
    #[error("{}: not a usable MaxMind database: {msg}", path.display())]
    GeoDb { path: PathBuf, msg: String },
}
