//! Which CPUs cgdrop's own threads run on while it starts: the scheduler
//! here left a woken or new thread queued behind a busy one for 3-4 ms
//! (until an idle CPU's balancing tick pulled it), so the threads that are
//! meant to run beside each other are pinned apart, best effort.
use nix::{
    sched::{self, CpuSet},
    unistd::Pid,
};

/// Where this thread may run: its mask, the CPU it runs on, and the rest of
/// its mask (None: no other CPU, or a call failed).
struct Here {
    allowed: CpuSet,
    cpu: usize,
    others: CpuSet,
}

fn here() -> Option<Here> {
    let allowed = sched::sched_getaffinity(Pid::from_raw(0)).ok()?;
    let cpu = sched::sched_getcpu().ok()?;
    let mut others = allowed;
    if !allowed.is_set(cpu).ok()? || others.unset(cpu).is_err() {
        return None;
    }
    (0..CpuSet::count()).any(|c| others.is_set(c).unwrap_or(false)).then_some(Here { allowed, cpu, others })
}

/// The two loading threads kept on different CPUs while they load: this
/// thread on the CPU it runs on (pin_here), the side thread on the others it
/// may use (enter, on that thread). Best effort: with one usable CPU, or
/// should an affinity call fail, nothing is pinned. This thread's mask is
/// given back when the split is dropped.
pub struct CpuSplit {
    here: Option<Here>,
    /// Set once this thread is pinned: the mask to give back.
    saved: Option<CpuSet>,
    pub side: Option<CpuSet>,
}

impl CpuSplit {
    pub fn for_this_thread() -> CpuSplit {
        let here = here();
        let side = here.as_ref().map(|h| h.others);
        CpuSplit { here, saved: None, side }
    }

    /// Pins this thread to the CPU it ran on when the split was made.
    pub fn pin_here(&mut self) {
        let Some(here) = &self.here else { return };
        let mut one = CpuSet::new();
        if one.set(here.cpu).is_ok() && sched::sched_setaffinity(Pid::from_raw(0), &one).is_ok() {
            self.saved = Some(here.allowed);
        }
    }

    /// Called on the side thread.
    pub fn enter(side: &Option<CpuSet>) {
        if let Some(cpus) = side {
            // Best effort: unpinned, the thread still loads.
            let _ = sched::sched_setaffinity(Pid::from_raw(0), cpus);
        }
    }
}

impl Drop for CpuSplit {
    fn drop(&mut self) {
        if let Some(cpus) = &self.saved {
            let _ = sched::sched_setaffinity(Pid::from_raw(0), cpus);
        }
    }
}

/// Runs `f` on a thread kept off this thread's CPU, so that the two run at
/// once (for short work beside this thread's: made on this CPU, a new thread
/// waited until this one blocked). Unpinned where there is no other CPU.
pub fn spawn_beside<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    use std::os::unix::thread::JoinHandleExt;
    let others = here().map(|h| h.others);
    let handle = std::thread::spawn(f);
    if let Some(cpus) = others {
        // SAFETY: a thread's handle, not yet joined (so not yet reaped);
        // the set is a valid cpu_set_t of its size. Moved at once if queued.
        unsafe {
            nix::libc::pthread_setaffinity_np(
                handle.as_pthread_t(),
                std::mem::size_of::<nix::libc::cpu_set_t>(),
                (&cpus as *const CpuSet).cast(),
            );
        }
    }
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask() -> CpuSet {
        sched::sched_getaffinity(Pid::from_raw(0)).unwrap()
    }

    fn cpus(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::count()).filter(|c| set.is_set(*c).unwrap_or(false)).collect()
    }

    // One test for both: each changes this thread's mask for a while.
    #[test]
    fn threads_meant_to_run_beside_each_other_get_different_cpus() {
        let allowed = mask();
        let all = cpus(&allowed);
        if all.len() < 2 {
            eprintln!("one CPU: nothing to split");
            return;
        }
        // A thread made beside this one may use every CPU this one may but
        // the one this one ran on (never more: a `taskset` is kept).
        // (It looks once pinned: made, it may run before spawn_beside pins it.)
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let beside = spawn_beside(move || {
            wait.recv().unwrap();
            (cpus(&mask()), sched::sched_getcpu().unwrap())
        });
        go.send(()).unwrap();
        let (theirs, ran_on) = beside.join().unwrap();
        assert_eq!(theirs.len(), all.len() - 1, "{theirs:?} of {all:?}");
        assert!(theirs.iter().all(|c| all.contains(c)) && theirs.contains(&ran_on));

        // The split pins this thread to its CPU, gives the others to the
        // side, and gives the mask back when dropped.
        {
            let mut split = CpuSplit::for_this_thread();
            split.pin_here();
            let side = cpus(split.side.as_ref().expect("two CPUs: a side"));
            let mine = cpus(&mask());
            assert_eq!(mine.len(), 1);
            assert!(!side.contains(&mine[0]) && side.len() == all.len() - 1);
        }
        assert_eq!(cpus(&mask()), all);
    }
}
