//! Keeping a team member off its leader's core.
//!
//! A pool thread that wakes up to run a team member often lands on the core
//! it last ran on, even when that is the leader's core and the other cores
//! are idle (the scheduler would move it only milliseconds later). The two
//! then share one core and spin at each other's barrier. A member that finds
//! itself on its leader's core therefore excludes that core from its CPU
//! mask for as long as it works, which moves it at once; its previous mask
//! comes back when it is done. Linux only; elsewhere nothing happens.

/// The core the calling thread runs on, when the platform tells.
pub(crate) fn current_cpu() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `sched_getcpu` has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).ok()
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// While alive, keeps the calling thread off one core (when its CPU mask
/// allows another); dropping it restores the previous mask.
pub(crate) struct AvoidCpu {
    #[cfg(target_os = "linux")]
    previous: Option<libc::cpu_set_t>,
}

impl AvoidCpu {
    /// Moves the calling thread off `cpu` when it runs there.
    pub(crate) fn new(cpu: Option<usize>) -> Self {
        #[cfg(target_os = "linux")]
        {
            let previous = match cpu {
                Some(cpu) if current_cpu() == Some(cpu) => exclude(cpu),
                _ => None,
            };
            Self { previous }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = cpu;
            Self {}
        }
    }
}

/// Removes `cpu` from the calling thread's mask; the previous mask, or
/// `None` when nothing changed.
#[cfg(target_os = "linux")]
fn exclude(cpu: usize) -> Option<libc::cpu_set_t> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    if cpu >= 8 * size {
        return None;
    }
    // SAFETY: `cpu_set_t` is plain bits, valid when zeroed; the calls get
    // its true size and a pointer to it, and 0 means the calling thread.
    unsafe {
        let mut previous: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut previous) != 0 {
            return None;
        }
        let mut mask = previous;
        libc::CPU_CLR(cpu, &mut mask);
        if libc::CPU_COUNT(&mask) == 0 || libc::sched_setaffinity(0, size, &mask) != 0 {
            return None;
        }
        Some(previous)
    }
}

impl Drop for AvoidCpu {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(previous) = &self.previous {
            // SAFETY: as in `exclude`. Should it fail, the thread keeps the
            // narrower mask, which costs speed, not correctness.
            unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), previous);
            }
        }
    }
}
