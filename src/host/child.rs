//! The command's side of the clone: what runs between clone3 and exec, with
//! only raw, async-signal-safe syscalls on memory prepared before the clone.
use std::os::fd::AsRawFd;

use super::process::{Prepared, CAP_LAST};

/// Marks descriptors `from..=to` close-on-exec: close_range(2) with
/// CLOSE_RANGE_CLOEXEC (Linux 5.11), else one fcntl per descriptor up to
/// `max_fd` (the open-files limit, read before the clone).
///
/// # Safety
/// Raw syscalls only; safe between clone and exec.
unsafe fn cloexec_range(from: u32, to: u32, max_fd: u32) {
    use nix::libc;
    if libc::syscall(libc::SYS_close_range, from, to, libc::CLOSE_RANGE_CLOEXEC) == 0 {
        return;
    }
    for fd in from..=to.min(max_fd) {
        let flags = libc::fcntl(fd as i32, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd as i32, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// The child between clone3 and exec. Only raw syscalls; on failure the
/// errno goes to `err_fd` and the child exits 127.
///
/// # Safety
/// Must only be called in the child of clone3, with pointers into memory
/// that was prepared before the clone.
pub(super) unsafe fn exec(
    p: &Prepared,
    argv: &[*const nix::libc::c_char],
    envp: &[*const nix::libc::c_char],
    err_fd: i32,
    parent: nix::libc::pid_t,
    cgroup_fd: i32,
) -> ! {
    use nix::libc;
    // The copy of the cgroup's descriptor would hold cgdrop's owner lock
    // (flock is per open file description) until exec: a cleanup after a
    // killed cgdrop would then take the cgroup for a live one.
    libc::close(cgroup_fd);
    let fail = |err: i32| -> ! {
        let bytes = err.to_ne_bytes();
        libc::write(err_fd, bytes.as_ptr().cast(), 4);
        libc::_exit(127)
    };
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
    if p.sandbox && libc::setsid() < 0 {
        fail(errno());
    }
    for (fd, own) in p.stdio.iter().enumerate() {
        if let Some(own) = own {
            if libc::dup2(own.as_raw_fd(), fd as i32) < 0 {
                fail(errno());
            }
        }
    }
    // Descriptors above stderr are closed at exec, but those kept on request;
    // close-on-exec rather than closed, so that err_fd works until exec.
    // `keep_fds` is sorted; sorting here would allocate.
    let mut from: u32 = 3;
    for &fd in p.keep_fds.iter().filter(|&&fd| fd >= 3) {
        let fd = fd as u32;
        if fd > from {
            cloexec_range(from, fd - 1, p.max_fd);
        }
        let flags = libc::fcntl(fd as i32, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd as i32, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
        }
        from = fd + 1;
    }
    cloexec_range(from, u32::MAX, p.max_fd);
    if let Some((uid, gid, groups)) = &p.ids {
        // Capabilities can no longer be regained (setuid binaries included).
        for cap in 0..=CAP_LAST {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                break;
            }
        }
        // Raw syscalls, not glibc's wrappers: after a raw clone3 glibc still
        // counts the parent's threads and would wait for them to change their
        // ids too (its setxid broadcast), forever. This child is one thread.
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
            || libc::syscall(libc::SYS_setresgid, *gid, *gid, *gid) != 0
            || libc::syscall(libc::SYS_setresuid, *uid, *uid, *uid) != 0
        {
            fail(errno());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(errno());
        }
    }
    // Not the guarantee (the policy is pinned while the command runs), but
    // a command should not outlive a cgdrop that can no longer report on it.
    // Set after setuid, which clears it; then check cgdrop is still there.
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
        fail(errno());
    }
    if libc::getppid() != parent {
        fail(libc::ESRCH);
    }
    libc::execve(p.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(errno())
}
