//! One process per database file: an exclusive OS lock on `<file>.lock`, shared
//! by every transport this process opens on the same file.

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::error::SqliteError;

/// Held while any transport of this process uses the file.
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<FileLock>>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Weak<FileLock>>>> = OnceLock::new();
    LOCKS.get_or_init(Default::default)
}

/// Takes (or shares) the lock of the database at `db` (an absolute path).
pub(crate) fn acquire(db: &Path) -> Result<Arc<FileLock>, SqliteError> {
    let mut locks = registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(held) = locks.get(db).and_then(Weak::upgrade) {
        return Ok(held);
    }
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| SqliteError::Open {
            path: path.display().to_string(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(SqliteError::Locked {
                path: db.display().to_string(),
            });
        }
        Err(TryLockError::Error(source)) => {
            return Err(SqliteError::Open {
                path: path.display().to_string(),
                source,
            });
        }
    }
    let lock = Arc::new(FileLock { _file: file });
    locks.retain(|_, w| w.strong_count() > 0);
    locks.insert(db.to_owned(), Arc::downgrade(&lock));
    Ok(lock)
}
