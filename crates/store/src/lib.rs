//! The artifact store: checkpoints and example batches move between roles as files named by the
//! blake3 hash of their content, never over RPC. A file appears whole or not at all (temp file,
//! fsync, rename), and every read re-hashes what it read, so a torn or tampered artifact is an
//! error, never wrong data.
//!
//! A writer killed mid-write (kill -9, power loss) leaves only its temp file
//! (`.<name>.tmp-<pid>-<n>`), never a partial artifact; opening the store removes the temp
//! files whose writer process is gone.
//!
//! Architecture invariants: bytes in, bytes out. This crate knows nothing of models, codecs or
//! the ledger; it is the one place in the workspace that writes files atomically.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes concurrent writes of the same name by one process.
static WRITES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: content hashes to {found}, expected {expected} (corrupt or truncated artifact)")]
    HashMismatch { path: PathBuf, expected: String, found: String },
    #[error("artifact {hash} is not in the store at {root}")]
    Missing { root: PathBuf, hash: String },
}

pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Writes `bytes` to `path` so that readers see the old file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact");
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// A directory of artifacts addressed by `<hash>.<kind>`.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    /// Opens (creating) the store and removes stale temp files (see [`Self::remove_stale_temp_files`]).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| StoreError::Io { path: root.clone(), source })?;
        let store = ArtifactStore { root };
        store.remove_stale_temp_files()?;
        Ok(store)
    }

    /// Removes the temp files of writes that can no longer finish: those whose writer process
    /// (the pid in the name) is not running on this machine. A live writer's temp file is left
    /// alone. Returns the paths removed.
    pub fn remove_stale_temp_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let io = |source| StoreError::Io { path: self.root.clone(), source };
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(temp_file_writer) else { continue };
            if !process_alive(pid) {
                let path = entry.path();
                match std::fs::remove_file(&path) {
                    Ok(()) => removed.push(path),
                    // Another opener removed it first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(StoreError::Io { path, source }),
                }
            }
        }
        Ok(removed)
    }

    /// The temp files present now (a finished run leaves none).
    pub fn temp_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let io = |source| StoreError::Io { path: self.root.clone(), source };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_str().and_then(temp_file_writer).is_some() {
                found.push(entry.path());
            }
        }
        Ok(found)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path_of(&self, hash: &str, kind: &str) -> PathBuf {
        self.root.join(format!("{hash}.{kind}"))
    }

    /// Stores `bytes` under its own hash (a no-op when already present) and returns the hash.
    pub fn put(&self, kind: &str, bytes: &[u8]) -> Result<String, StoreError> {
        let hash = hash_bytes(bytes);
        let path = self.path_of(&hash, kind);
        if !path.exists() {
            write_atomic(&path, bytes)?;
        }
        Ok(hash)
    }

    /// Stores `bytes` that are an encoding of the artifact `hash` (e.g. a compressed copy); the
    /// caller is responsible for having verified that the encoding decodes to `hash`.
    pub fn put_encoded(&self, hash: &str, kind: &str, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let path = self.path_of(hash, kind);
        write_atomic(&path, bytes)?;
        Ok(path)
    }

    /// Reads an artifact stored with `put` and checks it still hashes to its name.
    pub fn get(&self, hash: &str, kind: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(hash, kind);
        let bytes = std::fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => StoreError::Missing { root: self.root.clone(), hash: hash.to_string() },
            _ => StoreError::Io { path: path.clone(), source },
        })?;
        let found = hash_bytes(&bytes);
        if found != hash {
            return Err(StoreError::HashMismatch { path, expected: hash.to_string(), found });
        }
        Ok(bytes)
    }
}

/// The writer's pid of a temp file name written by [`write_atomic`]
/// (`.<name>.tmp-<pid>-<n>`, or `.<name>.tmp-<pid>` from older versions).
fn temp_file_writer(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, tail) = name.rsplit_once(".tmp-")?;
    let pid = tail.split('-').next()?;
    pid.parse().ok()
}

/// Whether `pid` is a running process here. Without `/proc` nothing can be told, so every
/// writer counts as alive and nothing is removed.
///
/// A zombie is not alive: a worker SIGKILLed with its controller is reparented, and where
/// PID 1 does not reap (a container's entry process often does not) it stays in `/proc`
/// as state `Z` for good, and so would its half-written file.
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.is_dir() {
        return true;
    }
    let Ok(stat) = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")) else { return false };
    // `pid (comm) state ...`: comm may hold spaces and parentheses, so the state follows
    // the last `)`.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X' | 'x'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_zombie_writer_is_dead_and_its_temp_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        let temp = dir.path().join(format!(".abc.safetensors.tmp-{pid}-3"));
        std::fs::write(&temp, b"half").unwrap();
        assert!(process_alive(pid));
        assert!(store.remove_stale_temp_files().unwrap().is_empty(), "a live writer's file stays");
        child.kill().unwrap();
        // Not waited for: the child is a zombie until reaped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "still a zombie in /proc");
        assert!(!process_alive(pid));
        assert_eq!(store.remove_stale_temp_files().unwrap(), vec![temp]);
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn put_get_round_trip_and_detect_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let hash = store.put("bin", b"weights").unwrap();
        assert_eq!(store.get(&hash, "bin").unwrap(), b"weights");
        std::fs::write(store.path_of(&hash, "bin"), b"weightz").unwrap();
        let err = store.get(&hash, "bin").unwrap_err().to_string();
        assert!(err.contains("expected"), "{err}");
        assert!(matches!(store.get("00", "bin"), Err(StoreError::Missing { .. })));
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.json");
        write_atomic(&path, b"{}").unwrap();
        write_atomic(&path, b"{\"x\":1}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"x\":1}");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn opening_removes_temp_files_of_dead_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let kept = store.put("bin", b"whole").unwrap();
        // A process that has exited: its pid is free (until reused, which this test outpaces).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = [format!(".{kept}.bin.tmp-{dead}-0"), format!(".x.safetensors.tmp-{dead}")];
        let live = format!(".y.bin.tmp-{}-3", std::process::id());
        for name in stale.iter().chain([&live]) {
            std::fs::write(dir.path().join(name), b"half").unwrap();
        }
        assert_eq!(store.temp_files().unwrap().len(), 3);
        let store = ArtifactStore::open(dir.path()).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, vec![live.clone(), format!("{kept}.bin")]);
        assert_eq!(store.get(&kept, "bin").unwrap(), b"whole");
        assert_eq!(temp_file_writer("a.bin"), None);
        assert_eq!(temp_file_writer(".a.tmp-12-4"), Some(12));
    }
}
