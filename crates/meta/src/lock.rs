//! One run per ledger at a time: `evolve start` holds an OS advisory lock (`flock`) on
//! `<ledger>.lock` for as long as it runs. The kernel releases the lock when the process dies,
//! however it dies (kill -9 included), so a crashed controller never blocks the next start; a
//! second controller on a ledger whose lock is held fails at once with the holder's pid.
//!
//! The lock file is never deleted: removing it while another process opens it would let two
//! processes lock two different files of the same name. Its content (pid, host, start time) is
//! informational only; the lock itself is the kernel's.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::Error;

/// Held for the lifetime of a run; dropping it (or the process ending) releases the ledger.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    // Keeps the descriptor, and with it the flock, open.
    _file: File,
}

/// `<ledger>.lock`, beside the ledger.
pub fn lock_path(ledger: &Path) -> PathBuf {
    let mut name = ledger.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "evolve.db".into());
    name.push(".lock");
    ledger.with_file_name(name)
}

impl RunLock {
    /// Takes the ledger's run lock without waiting, or says who holds it.
    pub fn acquire(ledger: &Path) -> Result<RunLock, Error> {
        let path = lock_path(ledger);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Invalid(format!("ledger {}: cannot create its directory {}: {e}", ledger.display(), dir.display())))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::Invalid(format!("ledger {}: cannot open the run lock {}: {e}", ledger.display(), path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = match holder_pid(holder) {
                    Some(pid) => format!("evolve process {pid} ({holder})"),
                    None => "another evolve process".to_string(),
                };
                return Err(Error::Locked(format!(
                    "ledger {} is in use by {who}: one run per ledger at a time (lock {}). Wait for it to finish, stop it, or use another --ledger",
                    ledger.display(),
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::Invalid(format!("ledger {}: cannot lock {}: {e}", ledger.display(), path.display())));
            }
        }
        // Who holds it, for the message above. Written after the lock is ours; a reader that
        // catches it half-written only loses the pid in its message.
        let info = format!("pid={} host={} since={}\n", std::process::id(), hostname(), evolve_ledger::now_iso());
        let written = file.set_len(0).and_then(|()| file.seek(SeekFrom::Start(0))).and_then(|_| file.write_all(info.as_bytes())).and_then(|()| file.flush());
        if let Err(e) = written {
            tracing::warn!("could not write the holder's pid to {}: {e}", path.display());
        }
        Ok(RunLock { path, _file: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn holder_pid(content: &str) -> Option<u32> {
    content.split_whitespace().find_map(|w| w.strip_prefix("pid=")).and_then(|p| p.parse().ok())
}

/// This machine's name, for lock holders and default worker names.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_pid_and_the_lock_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("runs/evolve.db");
        let lock = RunLock::acquire(&ledger).unwrap();
        assert_eq!(lock.path(), dir.path().join("runs/evolve.db.lock"));
        // flock locks belong to the open file description: a second open in the same process
        // conflicts exactly as another process would.
        let err = RunLock::acquire(&ledger).unwrap_err().to_string();
        assert!(err.contains(&ledger.display().to_string()) && err.contains(&format!("evolve process {}", std::process::id())), "{err}");
        drop(lock);
        let again = RunLock::acquire(&ledger).unwrap();
        drop(again);
        assert!(lock_path(&ledger).exists(), "the lock file stays (deleting it would race)");
    }

    /// Not a test on its own: the body of the child process of the test below.
    #[test]
    fn lock_holder_process() {
        if let Ok(ledger) = std::env::var("EVOLVE_TEST_LOCK_HOLDER") {
            let _lock = RunLock::acquire(Path::new(&ledger)).unwrap();
            // The harness may print "test … ... " on the same line first.
            println!("holder has the lock");
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }

    #[test]
    fn a_killed_holder_does_not_keep_the_lock() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("evolve.db");
        // A real other process takes the lock, then dies by SIGKILL. This process stays out of
        // the lock until the child says it holds it: taking it meanwhile would refuse the child.
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "lock::tests::lock_holder_process", "--nocapture", "--test-threads=1"])
            .env("EVOLVE_TEST_LOCK_HOLDER", &ledger)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let locked = stdout.lines().map_while(Result::ok).any(|line| line.contains("holder has the lock"));
        assert!(locked, "the child ended without taking the lock");
        let refused = RunLock::acquire(&ledger).expect_err("the child holds the lock").to_string();
        assert!(refused.contains("in use") && refused.contains("evolve.db"), "{refused}");
        assert!(refused.contains(&format!("evolve process {}", child.id())), "the message names the holder: {refused}");
        child.kill().unwrap();
        child.wait().unwrap();
        RunLock::acquire(&ledger).expect("the kernel released the dead holder's lock");
    }
}
