//! Tasks for Rayon's pool that borrow the caller's data and that the caller
//! can take back while no pool thread has started them.
//!
//! `rayon::scope` waits for every task it spawned to run. On a loaded
//! machine a pool thread may start a task only after a scheduler time slice,
//! long after the caller has done the work itself (a team member the leader
//! sent away) or could have (another direction): the caller would sit idle
//! for milliseconds. A [`Task`] instead lets the caller, once it is done,
//! either run a task that has not started ([`Task::finish`]) or drop it
//! ([`Task::cancel`]), and only waits for tasks that are already running.

use std::any::Any;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Slot {
    /// The job, until a pool thread or the caller takes it.
    job: Option<Job>,
    /// A pool thread took the job and has not finished it.
    running: bool,
    /// The panic of the job on a pool thread.
    panic: Option<Box<dyn Any + Send>>,
}

#[derive(Default)]
struct Shared {
    slot: Mutex<Slot>,
    finished: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // Jobs run outside the lock; a poisoned lock still holds valid state.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A job handed to Rayon's pool that may borrow data living for `'a`.
///
/// Dropping a task cancels it (see [`Task::cancel`]).
pub(crate) struct Task<'a> {
    shared: Arc<Shared>,
    _borrow: PhantomData<&'a ()>,
}

impl<'a> Task<'a> {
    /// Hands `job` to the current Rayon pool (the global one outside a
    /// pool).
    ///
    /// # Safety
    ///
    /// The task must be settled before `'a` ends: the caller calls
    /// [`Task::finish`] or [`Task::cancel`], or lets the task be dropped,
    /// and never leaks it (`mem::forget`, a reference cycle, a leaked box).
    /// The job's borrows are extended to `'static` for the pool, and only
    /// settling keeps a pool thread from running the job, or from still
    /// running it, after the data it borrows is gone. The borrow checker
    /// cannot see to this: a leaked task outlives nothing it borrows.
    pub(crate) unsafe fn spawn(job: impl FnOnce() + Send + 'a) -> Self {
        let job: Box<dyn FnOnce() + Send + 'a> = Box::new(job);
        // SAFETY: only the lifetime changes. The job is called or dropped
        // only while `'a` lasts: the pool thread takes it out of the slot
        // and sets `running` under the lock, and runs it; the task, which
        // the caller settles before `'a` ends (this function's contract),
        // either takes the job out of the slot itself, or waits, under the
        // same lock, until `running` is cleared after the job returned.
        let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + 'a>, Job>(job) };
        let shared = Arc::new(Shared::default());
        shared.lock().job = Some(job);
        let pool_side = shared.clone();
        rayon::spawn(move || {
            let job = {
                let mut slot = pool_side.lock();
                let job = slot.job.take();
                slot.running = job.is_some();
                job
            };
            if let Some(job) = job {
                let result = panic::catch_unwind(AssertUnwindSafe(job));
                let mut slot = pool_side.lock();
                slot.running = false;
                slot.panic = result.err();
                pool_side.finished.notify_all();
            }
        });
        Self {
            shared,
            _borrow: PhantomData,
        }
    }

    /// Makes sure the job has run: runs it on this thread when no pool
    /// thread has started it, else waits for it. Propagates its panic.
    pub(crate) fn finish(self) {
        self.settle(true);
    }

    /// Drops the job when no pool thread has started it, else waits for it.
    /// Propagates its panic.
    pub(crate) fn cancel(self) {
        self.settle(false);
    }

    fn settle(&self, run_here: bool) {
        let job = self.shared.lock().job.take();
        if let Some(job) = job {
            if run_here {
                job();
            }
            return;
        }
        let mut slot = self.shared.lock();
        while slot.running {
            slot = self
                .shared
                .finished
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(payload) = slot.panic.take() {
            drop(slot);
            if !std::thread::panicking() {
                panic::resume_unwind(payload);
            }
        }
    }
}

impl Drop for Task<'_> {
    fn drop(&mut self) {
        // `finish` and `cancel` already settled; settling again is a no-op
        // apart from a panic they re-raised, which is gone from the slot.
        self.settle(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn finished_tasks_run_exactly_once() {
        let count = AtomicUsize::new(0);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                // SAFETY: every task is finished below, while `count` lives.
                unsafe {
                    Task::spawn(|| {
                        count.fetch_add(1, Ordering::Relaxed);
                    })
                }
            })
            .collect();
        for task in tasks {
            task.finish();
        }
        assert_eq!(count.load(Ordering::Relaxed), 50);
    }

    #[test]
    fn cancelled_tasks_run_at_most_once() {
        let count = AtomicUsize::new(0);
        for _ in 0..50 {
            // SAFETY: the task is cancelled at once, while `count` lives.
            let task = unsafe {
                Task::spawn(|| {
                    count.fetch_add(1, Ordering::Relaxed);
                })
            };
            task.cancel();
        }
        assert!(count.load(Ordering::Relaxed) <= 50);
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let result = panic::catch_unwind(|| {
            // SAFETY: the task borrows nothing, and is finished at once.
            let task = unsafe { Task::spawn(|| panic!("boom")) };
            task.finish();
        });
        assert!(result.is_err());
    }
}
