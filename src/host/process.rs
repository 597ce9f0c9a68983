//! The command's process: finding it before anything is attached, the user
//! it runs as, starting it inside the cgroup with the privilege drop, and
//! the shell's convention for its exit status.
use std::{
    ffi::{CString, OsString},
    fs::OpenOptions,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, process::CommandExt, process::ExitStatusExt},
    },
    path::Path,
    process::{Command, ExitStatus},
};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use crate::host::cgroup::Cgroup;

/// The command a session runs inside the cgroup.
pub enum Cmd<'a> {
    /// `--run`: through `sh -c`.
    Shell(&'a str),
    /// `cgdrop run`: argv as given, optionally as another user (the sandbox mode).
    Argv { argv: &'a [OsString], user: Option<&'a nix::unistd::User>, keep_fds: &'a [i32] },
}

/// Fails unless the command can be found (on the sandbox's PATH with
/// `sandbox`, else on cgdrop's), before anything is attached.
pub fn check_command(argv: &[OsString], sandbox: bool) -> Result<()> {
    find_program(argv.first().context("no command given")?, sandbox).map(|_| ())
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

/// The command, started: its pid and a pidfd, so that signals never reach
/// another process that reused the pid.
#[derive(Debug)]
pub struct Child {
    pub pid: i32,
    pidfd: OwnedFd,
}

impl Child {
    /// Sends `sig` to the command (a no-op once it has been reaped).
    pub fn signal(&self, sig: Signal) {
        // SAFETY: pidfd_send_signal on a pidfd this struct owns; no siginfo.
        unsafe {
            nix::libc::syscall(
                nix::libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig as nix::libc::c_int,
                std::ptr::null::<nix::libc::siginfo_t>(),
                0,
            );
        }
    }

    /// Waits for the command's exit.
    pub fn wait(&self) -> ExitStatus {
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child and writes its status into a local.
            let ret = unsafe { nix::libc::waitpid(self.pid, &mut status, 0) };
            if ret == self.pid {
                return ExitStatus::from_raw(status);
            }
            if ret < 0 && std::io::Error::last_os_error().raw_os_error() != Some(nix::libc::EINTR) {
                // Not ours to wait for any more; 127 like a shell's failure.
                return ExitStatus::from_raw(127 << 8);
            }
        }
    }
}

/// `struct clone_args` of clone3(2), version 2 (with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// The highest capability number there can be (the bounding set is dropped up to it;
/// numbers the kernel does not know fail with EINVAL, which ends the loop).
pub(super) const CAP_LAST: i32 = 63;

/// Everything the child needs, prepared before the clone: after it, only
/// async-signal-safe syscalls on this memory (no allocation, no locks).
pub(super) struct Prepared {
    pub(super) program: CString,
    pub(super) argv: Vec<CString>,
    pub(super) envp: Vec<CString>,
    /// uid, gid, supplementary groups of --user.
    pub(super) ids: Option<(u32, u32, Vec<nix::libc::gid_t>)>,
    /// The stdio descriptors to give the command (own open file descriptions).
    pub(super) stdio: [Option<OwnedFd>; 3],
    /// Sorted.
    pub(super) keep_fds: Vec<i32>,
    /// The highest descriptor number there can be (for the close_range fallback).
    pub(super) max_fd: u32,
    pub(super) sandbox: bool,
}

/// Starts the command inside the cgroup with clone3(CLONE_INTO_CGROUP): it
/// never exists outside it, so its first socket is filtered. Inherited
/// descriptors above stderr are closed (but `keep_fds`): a socket created
/// outside the cgroup would send unfiltered. With a --user (the sandbox
/// mode): a new session without root's controlling terminal, a clean
/// environment, an empty capability bounding set, the user's groups and ids,
/// NO_NEW_PRIVS. The command gets its own open file descriptions for
/// terminal and pipe stdio, so flags it sets there (O_NONBLOCK) are not cgdrop's.
pub fn spawn_in_cgroup(cmd: &Cmd<'_>, cgroup: &Cgroup) -> Result<Child> {
    let p = prepare(cmd)?;
    let what = p.argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
    let err_pipe = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating a pipe")?;
    let mut argv: Vec<*const nix::libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const nix::libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let parent = std::process::id() as nix::libc::pid_t;
    let mut pidfd: nix::libc::c_int = -1;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP | CLONE_PIDFD,
        pidfd: &mut pidfd as *mut _ as u64,
        exit_signal: nix::libc::SIGCHLD as u64,
        cgroup: cgroup.raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; the child runs only
    // `child::exec`, which makes raw syscalls on memory prepared above and
    // never returns.
    let pid = unsafe { nix::libc::syscall(nix::libc::SYS_clone3, &args as *const CloneArgs, size_of::<CloneArgs>()) };
    if pid == 0 {
        // SAFETY: in the child; see child::exec.
        unsafe { super::child::exec(&p, &argv, &envp, err_pipe.1.as_raw_fd(), parent, cgroup.raw_fd()) }
    }
    if pid < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("starting `{what}` in cgroup {} (clone3)", cgroup.path.display()));
    }
    drop(err_pipe.1);
    // SAFETY: the kernel returned a new pidfd in `pidfd`; nothing else owns it.
    let child = Child { pid: pid as i32, pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) } };
    // EOF: exec succeeded (the pipe is close-on-exec). Four bytes: its errno.
    let mut errno = [0u8; 4];
    let n = nix::unistd::read(err_pipe.0.as_raw_fd(), &mut errno).unwrap_or(0);
    if n == 4 {
        child.wait();
        return Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
            .with_context(|| format!("running `{what}` in cgroup {}", cgroup.path.display()));
    }
    Ok(child)
}

fn prepare(cmd: &Cmd<'_>) -> Result<Prepared> {
    let cstr = |s: &std::ffi::OsStr| CString::new(s.as_bytes()).context("an argument contains a NUL byte");
    let (argv, user, keep_fds): (Vec<CString>, _, &[i32]) = match cmd {
        Cmd::Shell(line) => (vec![cstr("sh".as_ref())?, cstr("-c".as_ref())?, cstr(line.as_ref())?], None, &[]),
        Cmd::Argv { argv, user, keep_fds } => (argv.iter().map(|a| cstr(a)).collect::<Result<_>>()?, *user, keep_fds),
    };
    let first = argv.first().context("no command given")?;
    let program = cstr(find_program(std::ffi::OsStr::from_bytes(first.as_bytes()), user.is_some())?.as_os_str())?;
    let (envp, ids) = match user {
        None => (
            std::env::vars_os().map(|(k, v)| cstr(&[k, v].join(std::ffi::OsStr::new("=")))).collect::<Result<_>>()?,
            None,
        ),
        Some(u) => {
            let name = CString::new(u.name.as_str()).context("user name contains NUL")?;
            let groups =
                nix::unistd::getgrouplist(&name, u.gid).with_context(|| format!("reading the groups of {}", u.name))?;
            let mut env = vec![
                format!("PATH={SAFE_PATH}"),
                format!("HOME={}", u.dir.display()),
                format!("USER={}", u.name),
                format!("LOGNAME={}", u.name),
                format!("SHELL={}", u.shell.display()),
            ];
            if let Some(term) = std::env::var_os("TERM") {
                env.push(format!("TERM={}", term.to_string_lossy()));
            }
            let env = env
                .into_iter()
                .map(|e| CString::new(e).context("an environment value contains NUL"))
                .collect::<Result<_>>()?;
            (env, Some((u.uid.as_raw(), u.gid.as_raw(), groups.iter().map(|g| g.as_raw()).collect())))
        }
    };
    let mut keep_fds = keep_fds.to_vec();
    keep_fds.sort_unstable();
    let mut limit = nix::libc::rlimit { rlim_cur: 1 << 20, rlim_max: 1 << 20 };
    // SAFETY: getrlimit writes into the local struct.
    unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut limit) };
    let max_fd = limit.rlim_cur.min(1 << 20) as u32;
    Ok(Prepared {
        program,
        argv,
        envp,
        ids,
        stdio: [own_description(0), own_description(1), own_description(2)],
        keep_fds,
        max_fd,
        sandbox: user.is_some(),
    })
}

/// PATH of the sandboxed command (its environment is not root's).
const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A new open file description of stdio descriptor `fd` when it is a
/// terminal or a pipe (reopened through /proc), so that what the command
/// sets on it (O_NONBLOCK) does not change cgdrop's; `None` keeps cgdrop's.
fn own_description(fd: i32) -> Option<OwnedFd> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    let kind = st.st_mode & nix::libc::S_IFMT;
    if kind != nix::libc::S_IFIFO && kind != nix::libc::S_IFCHR {
        return None;
    }
    // SAFETY: F_GETFL on a descriptor number; no memory is passed.
    let theirs = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFL) };
    if theirs < 0 {
        return None;
    }
    let access = theirs & nix::libc::O_ACCMODE;
    let path = CString::new(format!("/proc/self/fd/{fd}")).ok()?;
    // Non-blocking open: a named FIFO whose other end is gone would block it.
    let flags = access | nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK;
    // SAFETY: a NUL-terminated path; the result is checked.
    let new = unsafe { nix::libc::open(path.as_ptr(), flags) };
    if new < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let new = unsafe { OwnedFd::from_raw_fd(new) };
    // The command gets the status flags (blocking mode, append) cgdrop's had.
    // SAFETY: F_SETFL on a descriptor we own.
    unsafe { nix::libc::fcntl(new.as_raw_fd(), nix::libc::F_SETFL, theirs) };
    Some(new)
}

/// The program's path: as given when it has a slash, else the first
/// executable file of that name in PATH (the sandbox's PATH with `sandbox`:
/// root's may lead where the user cannot go).
fn find_program(name: &std::ffi::OsStr, sandbox: bool) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let path_var = if sandbox { Some(OsString::from(SAFE_PATH)) } else { std::env::var_os("PATH") };
    if Path::new(name).components().count() > 1 {
        if Path::new(name).is_file() {
            return Ok(Path::new(name).to_path_buf());
        }
    } else if let Some(paths) = path_var {
        if let Some(found) = std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|p| executable(p)) {
            return Ok(found);
        }
    }
    let on = if sandbox { format!("the PATH of --user commands ({SAFE_PATH})") } else { "PATH".to_string() };
    bail!("command not found: {}: give a path or a program on {on}", Path::new(name).display())
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
