//! Job leases on disk: `<job dir>/lease.json` says which orchestrator (pid, host) runs the job.
//!
//! A lease is created when an attempt starts (create-if-absent: written to a temporary file and
//! hard-linked into place, which fails if a lease exists), updated with the worker's pid once it
//! runs, and removed when the attempt ends. A lease left behind by a killed orchestrator is
//! *stale* when its owner pid is dead on this host (or the pid was reused: the process start
//! time, read from `/proc`, differs); [`reclaim_stale`] removes such a lease and says so. A lease
//! from another host is never judged from here.
//!
//! The worker side: every worker gets `PR_SET_PDEATHSIG = SIGTERM` (Linux), so it is asked to
//! stop when its orchestrator dies, and is never left running unsupervised under a stale lease.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::error::ExecError;

/// The lease file's name inside a job's folder.
pub use crate::train::files::LEASE_FILE;

/// Who runs a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub job: String,
    pub host: String,
    /// The orchestrator's pid.
    pub owner_pid: u32,
    /// The orchestrator's start time in clock ticks after boot (`/proc/<pid>/stat` field 22),
    /// to tell a reused pid from the owner; `None` where `/proc` is unavailable.
    pub owner_start: Option<u64>,
    /// The worker's pid (and process group), once started.
    pub worker_pid: Option<u32>,
    pub attempt: u32,
    /// Milliseconds since the Unix epoch (an integer, so a lease reads back exactly).
    pub started_unix_ms: u64,
}

/// What [`reclaim_stale`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseState {
    /// No lease file.
    Free,
    /// A lease whose owner is alive on this host (possibly this process).
    Live(Lease),
    /// A lease whose owner is dead on this host: it was removed.
    Reclaimed(Lease),
    /// A lease from another host: left alone, since its pid means nothing here.
    Foreign(Lease),
}

/// This machine's host name (`"unknown"` if it cannot be read).
pub fn this_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether a process with this pid runs (EPERM means it exists but is someone else's; a
/// zombie does not run).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    // A zombie has exited; it lingers until its parent (for an orphaned worker, whatever
    // adopted it) reaps it, which a container's init may never do.
    exists && !is_zombie(pid as u32)
}

/// Whether `/proc/<pid>/stat` says the process has exited but is not reaped (Linux only).
fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state == "Z")
}

/// A process's start time in clock ticks after boot, from `/proc/<pid>/stat` (Linux only).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); the start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Lease {
    /// A lease for `job` owned by this process.
    pub fn new_owned(job: &str, attempt: u32) -> Lease {
        let pid = std::process::id();
        Lease {
            job: job.to_string(),
            host: this_host(),
            owner_pid: pid,
            owner_start: process_start(pid),
            worker_pid: None,
            attempt,
            started_unix_ms: SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// Whether the owner still runs. Only meaningful on the lease's host.
    pub fn owner_alive(&self) -> bool {
        if !pid_alive(self.owner_pid) {
            return false;
        }
        match (self.owner_start, process_start(self.owner_pid)) {
            (Some(recorded), Some(now)) => recorded == now,
            _ => true,
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a lease serializes")
    }
}

/// The lease file of a job folder.
pub fn lease_path(dir: &Path) -> PathBuf {
    dir.join(LEASE_FILE)
}

/// Reads `<dir>/lease.json`; `None` if there is none.
pub fn read_lease(dir: &Path) -> Result<Option<Lease>, ExecError> {
    let path = lease_path(dir);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ExecError::Io { path, source: e }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ExecError::InvalidLease {
            path,
            reason: format!("expected a lease (job, host, owner_pid, …): {e}"),
        })
}

/// Removes the lease of `dir` if its owner is dead on this host. An unreadable lease file (a
/// crash mid-write cannot leave one, but a hand edit can) is an error, not silently removed.
pub fn reclaim_stale(dir: &Path) -> Result<LeaseState, ExecError> {
    let Some(lease) = read_lease(dir)? else {
        return Ok(LeaseState::Free);
    };
    if lease.host != this_host() {
        return Ok(LeaseState::Foreign(lease));
    }
    if lease.owner_alive() {
        return Ok(LeaseState::Live(lease));
    }
    let path = lease_path(dir);
    match fs::remove_file(&path) {
        Ok(()) => Ok(LeaseState::Reclaimed(lease)),
        // Another reclaimer was first: the lease is gone all the same.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LeaseState::Reclaimed(lease)),
        Err(e) => Err(ExecError::Io { path, source: e }),
    }
}

/// Writes `lease` into `dir` if no live lease exists (a stale one is reclaimed first). Returns
/// the live lease that holds the job otherwise.
pub fn acquire(dir: &Path, lease: &Lease) -> Result<Result<(), Lease>, ExecError> {
    fs::create_dir_all(dir).map_err(ExecError::io(dir))?;
    // Two tries: the second after reclaiming a stale lease found by the first.
    for _ in 0..2 {
        let tmp = write_temp(dir, lease)?;
        let linked = fs::hard_link(&tmp, lease_path(dir));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(Ok(())),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match reclaim_stale(dir)? {
                LeaseState::Live(held) | LeaseState::Foreign(held) => return Ok(Err(held)),
                LeaseState::Free | LeaseState::Reclaimed(_) => continue,
            },
            Err(e) => {
                return Err(ExecError::Io {
                    path: lease_path(dir),
                    source: e,
                });
            }
        }
    }
    match read_lease(dir)? {
        Some(held) => Ok(Err(held)),
        None => Err(ExecError::InvalidLease {
            path: lease_path(dir),
            reason: "created and removed by someone else while acquiring it".into(),
        }),
    }
}

/// Rewrites the lease we hold (atomic rename), e.g. with the worker's pid.
pub fn update(dir: &Path, lease: &Lease) -> Result<(), ExecError> {
    let path = lease_path(dir);
    crate::durable::write_atomic(&path, lease.to_json().as_bytes()).map_err(ExecError::io(path))
}

/// Removes the lease if it is ours (same owner pid); someone else's lease is left alone.
pub fn release(dir: &Path) -> Result<(), ExecError> {
    match read_lease(dir) {
        Ok(Some(l)) if l.owner_pid == std::process::id() && l.host == this_host() => {
            fs::remove_file(lease_path(dir)).map_err(ExecError::io(lease_path(dir)))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

fn write_temp(dir: &Path, lease: &Lease) -> Result<PathBuf, ExecError> {
    let tmp = dir.join(format!(".lease.{}.tmp", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(ExecError::io(&tmp))?;
    f.write_all(lease.to_json().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(ExecError::io(&tmp))?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid of a process that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn liveness_of_pids() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(dead_pid()));
        assert!(!pid_alive(0));
        assert!(process_start(std::process::id()).is_some());
    }

    #[test]
    fn an_unreaped_child_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not waited for: a zombie until `wait`.
        let t0 = std::time::Instant::now();
        while !is_zombie(pid) && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(is_zombie(pid));
        assert!(!pid_alive(pid));
        child.wait().unwrap();
        assert!(!is_zombie(std::process::id()));
    }

    #[test]
    fn a_lease_is_acquired_once_and_released_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("jobs/a");
        assert_eq!(reclaim_stale(&job).unwrap(), LeaseState::Free);
        let mine = Lease::new_owned("a", 1);
        assert_eq!(acquire(&job, &mine).unwrap(), Ok(()));
        // A second acquire (another orchestrator's view: the owner is alive) is refused.
        let held = acquire(&job, &Lease::new_owned("a", 1))
            .unwrap()
            .unwrap_err();
        assert_eq!(held, mine);
        assert_eq!(reclaim_stale(&job).unwrap(), LeaseState::Live(mine.clone()));
        let with_worker = Lease {
            worker_pid: Some(42),
            ..mine
        };
        update(&job, &with_worker).unwrap();
        assert_eq!(read_lease(&job).unwrap(), Some(with_worker));
        release(&job).unwrap();
        assert_eq!(read_lease(&job).unwrap(), None);
        let leftovers: Vec<_> = fs::read_dir(&job).unwrap().collect();
        assert!(leftovers.is_empty(), "no temporary files: {leftovers:?}");
    }

    #[test]
    fn a_dead_owners_lease_is_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = Lease {
            owner_pid: dead_pid(),
            ..Lease::new_owned("a", 2)
        };
        update(dir.path(), &stale).unwrap();
        assert_eq!(
            reclaim_stale(dir.path()).unwrap(),
            LeaseState::Reclaimed(stale.clone())
        );
        assert_eq!(read_lease(dir.path()).unwrap(), None);
        // acquire reclaims by itself.
        update(dir.path(), &stale).unwrap();
        let mine = Lease::new_owned("a", 3);
        assert_eq!(acquire(dir.path(), &mine).unwrap(), Ok(()));
        assert_eq!(read_lease(dir.path()).unwrap(), Some(mine));
    }

    #[test]
    fn a_reused_pid_does_not_keep_a_lease_alive() {
        let dir = tempfile::tempdir().unwrap();
        // Our own pid, but a start time that is not ours: the recorded owner is gone.
        let mut lease = Lease::new_owned("a", 1);
        lease.owner_start = lease.owner_start.map(|s| s + 1);
        update(dir.path(), &lease).unwrap();
        assert!(matches!(
            reclaim_stale(dir.path()).unwrap(),
            LeaseState::Reclaimed(_)
        ));
    }

    #[test]
    fn foreign_and_broken_leases_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = Lease {
            host: format!("{}-elsewhere", this_host()),
            owner_pid: dead_pid(),
            ..Lease::new_owned("a", 1)
        };
        update(dir.path(), &foreign).unwrap();
        assert_eq!(
            reclaim_stale(dir.path()).unwrap(),
            LeaseState::Foreign(foreign.clone())
        );
        assert_eq!(
            acquire(dir.path(), &Lease::new_owned("a", 1)).unwrap(),
            Err(foreign)
        );
        fs::write(lease_path(dir.path()), "{not json").unwrap();
        let e = reclaim_stale(dir.path()).unwrap_err().to_string();
        assert!(
            e.starts_with("lease file ") && e.contains("lease.json"),
            "{e}"
        );
        assert!(e.contains("expected a lease"), "{e}");
    }
}
