//! The embedded durable store: every accepted fleet document, by monotonic version.
//!
//! One redb file in the data directory. A change is validated, written with the next
//! version and committed with an fsync before [`Store::commit`] returns, so an
//! acknowledged change survives `kill -9` and power loss; a rejected change writes
//! nothing. Nothing here speaks HTTP or knows about edges.

use std::path::{Path, PathBuf};

use meridian_proto::{Fleet, FleetError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Fleet documents (JSON) by version.
const FLEETS: TableDefinition<u64, &[u8]> = TableDefinition::new("fleets");
/// Facts about the store itself.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The change does not pass the shared validation; nothing was written.
    #[error("invalid fleet: {0}")]
    Invalid(#[from] FleetError),
    /// The database could not be opened, read or written.
    #[error("store {path}: {message}")]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A stored document no longer decodes (a newer format, or corruption).
    #[error("stored fleet version {version} does not decode: {message}")]
    Decode {
        /// The version.
        version: u64,
        /// Why.
        message: String,
    },
}

/// The durable store of one control plane.
pub struct Store {
    db: Database,
    path: PathBuf,
    epoch: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("fleet.redb");
        let fail = |e: &dyn std::fmt::Display| StoreError::Storage {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        let db = Database::create(&path).map_err(|e| fail(&e))?;
        let epoch = {
            let txn = db.begin_write().map_err(|e| fail(&e))?;
            let epoch = {
                let mut meta = txn.open_table(META).map_err(|e| fail(&e))?;
                let existing = meta.get("epoch").map_err(|e| fail(&e))?.map(|v| v.value());
                match existing {
                    Some(e) => e,
                    None => {
                        let fresh = random_epoch().map_err(|e| fail(&e))?;
                        meta.insert("epoch", fresh).map_err(|e| fail(&e))?;
                        fresh
                    }
                }
            };
            txn.commit().map_err(|e| fail(&e))?;
            epoch
        };
        Ok(Store { db, path, epoch })
    }

    /// This store's identity, drawn at random when it was created: versions from
    /// two stores are unrelated, and edges must not mistake one for the other.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The fleet of one version, if it is kept.
    pub fn get(&self, version: u64) -> Result<Option<Fleet>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(&e))?;
        let table = match txn.open_table(FLEETS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.fail(&e)),
        };
        let Some(doc) = table.get(version).map_err(|e| self.fail(&e))? else {
            return Ok(None);
        };
        serde_json::from_slice(doc.value())
            .map(Some)
            .map_err(|e| StoreError::Decode {
                version,
                message: e.to_string(),
            })
    }

    fn fail(&self, e: &dyn std::fmt::Display) -> StoreError {
        StoreError::Storage {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The latest version and its fleet, if anything was ever committed.
    pub fn current(&self) -> Result<Option<(u64, Fleet)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(&e))?;
        let table = match txn.open_table(FLEETS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.fail(&e)),
        };
        let Some((version, doc)) = table.last().map_err(|e| self.fail(&e))? else {
            return Ok(None);
        };
        let version = version.value();
        let fleet = serde_json::from_slice(doc.value()).map_err(|e| StoreError::Decode {
            version,
            message: e.to_string(),
        })?;
        Ok(Some((version, fleet)))
    }

    /// Validates `fleet` and stores it as the next version; durable when this returns.
    pub fn commit(&self, fleet: &Fleet) -> Result<u64, StoreError> {
        fleet.validate()?;
        let doc = serde_json::to_vec(fleet).map_err(|e| self.fail(&e))?;
        let txn = self.db.begin_write().map_err(|e| self.fail(&e))?;
        let version = {
            let mut table = txn.open_table(FLEETS).map_err(|e| self.fail(&e))?;
            let next = table
                .last()
                .map_err(|e| self.fail(&e))?
                .map_or(1, |(v, _)| v.value() + 1);
            table.insert(next, doc.as_slice()).map_err(|e| self.fail(&e))?;
            next
        };
        txn.commit().map_err(|e| self.fail(&e))?;
        Ok(version)
    }
}

fn random_epoch() -> Result<u64, ring::error::Unspecified> {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
    // Leave room below 2^53 so the epoch survives JSON readers that use doubles.
    Ok(u64::from_be_bytes(bytes) >> 11 | 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(tenants: usize) -> Fleet {
        let mut s = String::from("[policy]\nrules = [{ name = \"any\", origin = \"*\", allow = [\"*\"] }]\n");
        for i in 0..tenants {
            s.push_str(&format!(
                "[[tenants]]\nid = \"t{i}\"\nhome = \"DE\"\nbindings = [{{ host = \"t{i}.test\" }}]\n"
            ));
        }
        toml::from_str(&s).unwrap()
    }

    #[test]
    fn versions_grow_survive_reopening_and_invalid_changes_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.current().unwrap().is_none());
        assert_eq!(store.commit(&fleet(1)).unwrap(), 1);
        assert_eq!(store.commit(&fleet(2)).unwrap(), 2);
        let mut bad = fleet(2);
        bad.policy.rules.clear();
        let err = store.commit(&bad).unwrap_err();
        assert!(
            matches!(err, StoreError::Invalid(ref e) if e.path == "policy.rules"),
            "{err}"
        );
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let (version, f) = store.current().unwrap().unwrap();
        assert_eq!((version, f.tenants.len()), (2, 2));
        assert_eq!(store.get(1).unwrap().unwrap().tenants.len(), 1);
        assert!(store.get(3).unwrap().is_none());
        let epoch = store.epoch();
        drop(store);
        assert_eq!(Store::open(dir.path()).unwrap().epoch(), epoch, "the epoch is durable");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(Store::open(other.path()).unwrap().epoch(), epoch);
    }
}
