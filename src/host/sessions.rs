//! Foreground and `run` sessions register in /run/cgdrop/sessions/<pid>.json,
//! so that `cgdrop status` lists them beside the pinned policies. The file
//! goes when the session ends; one whose process is gone (a killed cgdrop)
//! or is another process now (pid reuse: the start time differs) is ignored
//! and removed.
use std::{
    fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

const DIR: &str = "/run/cgdrop/sessions";

#[derive(Debug, Serialize, Deserialize)]
pub struct Session {
    pub pid: u32,
    /// The process's start time (clock ticks since boot, /proc/PID/stat).
    start_ticks: u64,
    /// "foreground" or "run".
    pub kind: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub policy: String,
    /// CLOCK_REALTIME seconds.
    pub started_at: u64,
}

/// Removes the registration when the session ends.
pub struct Registered(PathBuf);

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Registers this process's session. Best effort: a session runs without it.
pub fn register(kind: &str, cgroup: &Path, cgroup_id: u64, policy: &str) -> Option<Registered> {
    let pid = std::process::id();
    let session = Session {
        pid,
        start_ticks: start_ticks(pid)?,
        kind: kind.to_string(),
        cgroup: cgroup.to_string_lossy().into_owned(),
        cgroup_id,
        policy: policy.to_string(),
        started_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(DIR).ok()?;
    let path = Path::new(DIR).join(format!("{pid}.json"));
    fs::write(&path, serde_json::to_vec(&session).ok()?).ok()?;
    Some(Registered(path))
}

/// The sessions running now, oldest first.
pub fn list() -> Vec<Session> {
    let Ok(entries) = fs::read_dir(DIR) else { return Vec::new() };
    let mut out: Vec<Session> = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let path = e.path();
        let session: Option<Session> = fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        match session {
            Some(s) if start_ticks(s.pid) == Some(s.start_ticks) => out.push(s),
            _ => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    out.sort_by_key(|s| (s.started_at, s.pid));
    out
}
