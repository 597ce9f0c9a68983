//! The command's process: finding it before anything is attached, the user
//! it runs as, starting it inside the cgroup with the privilege drop, and
//! the shell's convention for its exit status.
use std::{
    ffi::OsString,
    fs::OpenOptions,
    os::{fd::AsRawFd, unix::process::CommandExt, unix::process::ExitStatusExt},
    path::Path,
    process::{Child, Command, ExitStatus},
};

use anyhow::{bail, Context, Result};

use crate::host::cgroup::Cgroup;

/// The command a session runs inside the cgroup.
pub enum Cmd<'a> {
    /// `--run`: through `sh -c`.
    Shell(&'a str),
    /// `cgdrop run`: argv as given, optionally as another user.
    Argv { argv: &'a [OsString], user: Option<&'a nix::unistd::User> },
}

/// Fails unless the command can be found, before anything is attached.
pub fn check_command(argv: &[OsString]) -> Result<()> {
    let name = argv.first().context("no command given")?;
    let found = if Path::new(name).components().count() > 1 {
        Path::new(name).is_file()
    } else {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
    };
    if !found {
        bail!("command not found: {}: give a path or a program on PATH", Path::new(name).display());
    }
    Ok(())
}

/// A name or a numeric uid.
pub fn lookup_user(name: &str) -> Result<nix::unistd::User> {
    let found = match name.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(name),
    };
    found
        .with_context(|| format!("looking up user '{name}'"))?
        .with_context(|| format!("unknown user '{name}': `getent passwd` lists the users of this host"))
}

/// Starts the command already inside the cgroup: between fork and exec the
/// child moves itself in (writes "0" to cgroup.procs), so its first socket is
/// filtered, then drops to the --user's groups and ids (after the move, which
/// needs root).
pub fn spawn_in_cgroup(cmd: &Cmd<'_>, cgroup: &Cgroup) -> Result<Child> {
    let procs = OpenOptions::new()
        .write(true)
        .open(cgroup.procs_path())
        .with_context(|| format!("opening {}", cgroup.procs_path().display()))?;
    let fd = procs.as_raw_fd();
    let (mut command, what, user) = match cmd {
        Cmd::Shell(line) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(line);
            (c, (*line).to_string(), None)
        }
        Cmd::Argv { argv, user } => {
            let (first, rest) = argv.split_first().context("no command given")?;
            let mut c = Command::new(first);
            c.args(rest);
            (c, argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "), *user)
        }
    };
    let ids = match user {
        Some(u) => {
            let name = std::ffi::CString::new(u.name.as_str()).context("user name contains NUL")?;
            let groups =
                nix::unistd::getgrouplist(&name, u.gid).with_context(|| format!("reading the groups of {}", u.name))?;
            command.env("HOME", &u.dir).env("USER", &u.name).env("LOGNAME", &u.name);
            Some((u.uid.as_raw(), u.gid.as_raw(), groups.iter().map(|g| g.as_raw()).collect::<Vec<_>>()))
        }
        None => None,
    };
    let parent = std::process::id() as nix::libc::pid_t;
    // SAFETY: the closure only makes raw syscalls (write, setgroups, setgid,
    // setuid, prctl, getppid) on memory prepared before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let last = std::io::Error::last_os_error;
            if nix::libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(last());
            }
            if let Some((uid, gid, groups)) = &ids {
                if nix::libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || nix::libc::setgid(*gid) != 0
                    || nix::libc::setuid(*uid) != 0
                {
                    return Err(last());
                }
            }
            // Should cgdrop be killed (SIGKILL detaches its policy), the
            // command must not run on unfiltered: it dies with cgdrop. Set
            // after setuid, which clears it; then check cgdrop is still there.
            if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL as nix::libc::c_ulong, 0, 0, 0) != 0 {
                return Err(last());
            }
            if nix::libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = command.spawn().with_context(|| format!("running `{what}` in cgroup {}", cgroup.path.display()))?;
    drop(procs);
    Ok(child)
}

/// Makes `cmd` move itself into the cgroup at `path` between fork and exec
/// (by writing "0" to its `cgroup.procs`). For tests and benchmarks, which
/// need `Command`'s pipes; cgdrop's own command is started inside the cgroup.
pub fn join_on_exec(cmd: &mut Command, path: &Path) -> Result<()> {
    let procs = path.join("cgroup.procs");
    let procs = OpenOptions::new().write(true).open(&procs).with_context(|| format!("opening {}", procs.display()))?;
    // SAFETY: only write(2) on an fd the closure owns; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(())
}

/// Shell convention: the exit code, or 128 + the signal that killed the command.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(Signal::SIGTERM as i32)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(Signal::SIGKILL as i32)), 137);
    }

    #[test]
    fn unknown_user() {
        let err = lookup_user("cgdrop-no-such-user").unwrap_err();
        assert!(format!("{err:#}").contains("unknown user 'cgdrop-no-such-user'"), "{err:#}");
        assert_eq!(lookup_user("0").unwrap().name, "root");
    }
}
