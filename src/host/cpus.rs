//! Which CPUs cgdrop's own threads run on while it starts: the scheduler
//! here left a woken or new thread queued behind a busy one for 3-4 ms
//! (until an idle CPU's balancing tick pulled it), so the threads that are
//! meant to run beside each other are pinned apart, best effort.
use nix::{
    sched::{self, CpuSet},
    unistd::Pid,
};

/// The two loading threads kept on different CPUs while they load: this
/// thread on the CPU it runs on, the side thread on the others it may use.
/// Why: left to the scheduler, one thread was woken onto the other's CPU and
/// waited there 3–4 ms (until an idle CPU's balancing tick pulled it) while
/// the other verified; measured with sched_switch, that was the start-up's
/// imbalance between the CPUs. Best effort: with one usable CPU, or should
/// an affinity call fail, nothing is pinned. This thread's own mask is given
/// back when the split is dropped.
pub struct CpuSplit {
    /// This thread's mask before, and the CPU it runs on.
    mine: Option<(CpuSet, usize)>,
    /// Set once this thread is pinned: the mask to give back.
    saved: Option<CpuSet>,
    pub side: Option<CpuSet>,
}

impl CpuSplit {
    /// The split for this thread and one beside it (pinned by pin_here and enter).
    pub fn for_this_thread() -> CpuSplit {
        let none = CpuSplit { mine: None, saved: None, side: None };
        let (Ok(allowed), Ok(here)) = (sched::sched_getaffinity(Pid::from_raw(0)), sched::sched_getcpu()) else {
            return none;
        };
        let mut side = allowed;
        if !allowed.is_set(here).unwrap_or(false) || side.unset(here).is_err() {
            return none;
        }
        if !(0..sched::CpuSet::count()).any(|cpu| side.is_set(cpu).unwrap_or(false)) {
            return none;
        }
        CpuSplit { mine: Some((allowed, here)), saved: None, side: Some(side) }
    }

    /// Pins this thread to the CPU it ran on when the split was made.
    pub fn pin_here(&mut self) {
        let Some((allowed, here)) = self.mine else { return };
        let mut one = CpuSet::new();
        if one.set(here).is_ok() && sched::sched_setaffinity(Pid::from_raw(0), &one).is_ok() {
            self.saved = Some(allowed);
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

/// The CPUs this thread may use but the one it runs on (None: no other).
fn others() -> Option<CpuSet> {
    let allowed = sched::sched_getaffinity(Pid::from_raw(0)).ok()?;
    let here = sched::sched_getcpu().ok()?;
    let mut others = allowed;
    others.unset(here).ok()?;
    (0..CpuSet::count()).any(|cpu| others.is_set(cpu).unwrap_or(false)).then_some(others)
}

/// Runs `f` on a thread kept off this thread's CPU, so that the two run at
/// once (for short work beside this thread's: made on this CPU, a new thread
/// waited until this one blocked). Unpinned where there is no other CPU.
pub fn spawn_beside<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    use std::os::unix::thread::JoinHandleExt;
    let others = others();
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
