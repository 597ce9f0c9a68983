//! Watches the cgroup tree for cgroups made and removed, for `apply
//! --watch`: inotify on every directory (systemd, the container runtimes and
//! `mkdir` all make cgroups with mkdir(2), which inotify reports), so a
//! restarted unit's new cgroup is seen at once, without polling.
use std::{
    collections::HashMap,
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use nix::{
    errno::Errno,
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor},
};

/// How deep below the root directories are watched (kubepods nest 4-5 levels).
const MAX_DEPTH: usize = 10;

pub struct TreeWatch {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, (PathBuf, usize)>,
}

impl TreeWatch {
    pub fn new(root: &Path) -> Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context("starting inotify")?;
        let mut me = Self { inotify, dirs: HashMap::new() };
        me.add_tree(root, 0)?;
        Ok(me)
    }

    /// How many directories are watched.
    pub fn watched(&self) -> usize {
        self.dirs.len()
    }

    fn add_tree(&mut self, dir: &Path, depth: usize) -> Result<()> {
        let flags = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_ONLYDIR;
        match self.inotify.add_watch(dir, flags) {
            Ok(wd) => {
                self.dirs.insert(wd, (dir.to_path_buf(), depth));
            }
            // Removed meanwhile: nothing to watch.
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
            Err(Errno::ENOSPC) => {
                anyhow::bail!(
                    "cannot watch {}: out of inotify watches (fs.inotify.max_user_watches); raise it with sysctl",
                    dir.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("watching {}", dir.display())),
        }
        if depth + 1 >= MAX_DEPTH {
            return Ok(());
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.add_tree(&e.path(), depth + 1)?;
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for something to change; true if it did. A
    /// signal ends the wait early (false).
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(n) => Ok(n > 0),
            Err(Errno::EINTR) => Ok(false),
            Err(e) => Err(e).context("waiting for inotify"),
        }
    }

    /// Reads what is queued and watches the directories that appeared.
    pub fn drain(&mut self) -> Result<()> {
        loop {
            let events = match self.inotify.read_events() {
                Ok(ev) => ev,
                Err(Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(e).context("reading inotify events"),
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.dirs.remove(&ev.wd);
                    continue;
                }
                let made = ev.mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO);
                if made && ev.mask.contains(AddWatchFlags::IN_ISDIR) {
                    if let (Some((parent, depth)), Some(name)) = (self.dirs.get(&ev.wd).cloned(), ev.name) {
                        if depth + 1 < MAX_DEPTH {
                            self.add_tree(&parent.join(name), depth + 1)?;
                        }
                    }
                }
            }
        }
    }
}
