//! The last acknowledged snapshot on disk, so an edge restarted while the control
//! plane is unreachable serves what it last agreed to. Written to a temporary file,
//! synced, then renamed over the old one: a crash leaves the old or the new, never
//! half of either.

use std::io::Write;
use std::path::{Path, PathBuf};

use meridian_proto::Fleet;
use meridian_proto::wire::Running;
use serde::{Deserialize, Serialize};

const FILE: &str = "fleet-snapshot.json";

/// What is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Persisted {
    /// Store and version it came from.
    pub running: Running,
    /// The fleet.
    pub fleet: Fleet,
}

/// The snapshot file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the kept snapshot; `Ok(None)` when there is none. A file that does not
/// decode or validate is an error, for the caller to report and ignore.
pub fn load(dir: &Path) -> Result<Option<Persisted>, String> {
    let path = path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let p: Persisted = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    p.fleet
        .validate()
        .map_err(|e| format!("{}: fleet.{}: {}", path.display(), e.path, e.message))?;
    Ok(Some(p))
}

/// Durably replaces the kept snapshot.
pub fn save(dir: &Path, snapshot: &Persisted) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&mut f, snapshot).map_err(std::io::Error::other)?;
        f.flush()?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path(dir))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let fleet: Fleet =
            serde_json::from_str(r#"{"policy":{"rules":[{"name":"any","origin":"*","allow":["*"]}]}}"#).unwrap();
        let snap = Persisted {
            running: Running { epoch: 5, version: 9 },
            fleet,
        };
        save(dir.path(), &snap).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!((back.running, back.fleet), (snap.running, snap.fleet));
        std::fs::write(path(dir.path()), b"{\"running\":").unwrap();
        assert!(load(dir.path()).unwrap_err().contains("fleet-snapshot.json"));
    }
}
