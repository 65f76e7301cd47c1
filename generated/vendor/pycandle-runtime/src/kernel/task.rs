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
use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::affinity::{current_cpu, AvoidCpu};

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

    /// The pool side: runs the job unless the caller has taken it back.
    fn run(&self) {
        let job = {
            let mut slot = self.lock();
            let job = slot.job.take();
            slot.running = job.is_some();
            job
        };
        if let Some(job) = job {
            let result = panic::catch_unwind(AssertUnwindSafe(job));
            let mut slot = self.lock();
            slot.running = false;
            slot.panic = result.err();
            self.finished.notify_all();
        }
    }
}

/// How long a pool thread that has run a task goes on running the pool's
/// work before it returns to Rayon's idle loop, which soon puts it to sleep.
///
/// A model's tasks follow each other closely (the layers of a stack, the
/// convolutions of a stack around their batch norms), but a sleeping thread
/// takes a hundred microseconds or more to wake on a virtual machine, and
/// its core slows down meanwhile; PyTorch's OpenMP threads spin between
/// operators for the same reason. Measured on an Intel Xeon (KVM, 2 cores)
/// after 0.3 s idle: the generated Tacotron-2 encoder 5 to 8 % faster at
/// B=8 and 20 to 30 % at B=1, the speaker encoder (3 x LSTM 256) 5 to 8 %
/// at B=10. The lingering thread runs whatever the pool is given
/// ([`rayon::yield_now`]), this runtime's tasks and Candle's parallel
/// operators alike, and yields its core to any other thread that wants it.
const LINGER: Duration = Duration::from_millis(1);

/// Polls of a lingering thread before it starts yielding its core.
const SPINS_BEFORE_YIELD: u32 = 64;

thread_local! {
    /// This thread is lingering: a task it runs from there does not linger
    /// again.
    static LINGERING: Cell<bool> = const { Cell::new(false) };
}

/// After a task, on a pool thread: runs the pool's work as it comes, until
/// none has come for [`LINGER`].
fn linger() {
    if LINGERING.with(|l| l.replace(true)) {
        return;
    }
    let mut last = Instant::now();
    let mut polls = 0u32;
    loop {
        if let Some(rayon::Yield::Executed) = rayon::yield_now() {
            (last, polls) = (Instant::now(), 0);
            continue;
        }
        polls = polls.saturating_add(1);
        if polls < SPINS_BEFORE_YIELD {
            std::hint::spin_loop();
        } else if last.elapsed() >= LINGER {
            break;
        } else {
            std::thread::yield_now();
        }
    }
    LINGERING.with(|l| l.set(false));
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
            pool_side.run();
            drop(pool_side);
            linger();
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

/// Multiply-adds below which a product runs on the calling thread alone:
/// handing work to another thread costs tens of microseconds.
pub(crate) const SPLIT_WORK: usize = 1 << 21;

/// Runs `f(i, share)` for each share `i`: the first on this thread, the
/// others as pool tasks, which move off the caller's core (a pool thread
/// woken after an idle moment wakes there) and which the caller takes back
/// when no pool thread has started them.
pub(crate) fn in_parallel<'a, S: Send + 'a>(
    shares: impl Iterator<Item = S>,
    f: impl Fn(usize, S) + Sync + 'a,
) {
    let mut shares = shares.enumerate();
    let Some((_, first)) = shares.next() else {
        return;
    };
    let caller = current_cpu();
    let f = &f;
    let tasks: Vec<Task<'_>> = shares
        .map(|(i, share)| {
            let job = move || {
                let _elsewhere = AvoidCpu::new(caller);
                f(i, share);
            };
            // SAFETY: every task is finished below, before the borrows end.
            unsafe { Task::spawn(job) }
        })
        .collect();
    f(0, first);
    for task in tasks {
        task.finish();
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
    fn a_lingering_thread_runs_the_pool_s_work_then_leaves() {
        // One thread, a pool of its own: only this test's work reaches it.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a pool");
        let ran = AtomicUsize::new(0);
        let lingered = pool.install(|| {
            rayon::scope(|s| {
                s.spawn(|_| {
                    // Work that arrives while the thread lingers; a task run
                    // from there does not linger again.
                    ran.fetch_add(1, Ordering::Relaxed);
                    linger();
                });
                let start = Instant::now();
                linger();
                start.elapsed()
            })
        });
        assert_eq!(ran.load(Ordering::Relaxed), 1);
        assert!(lingered >= LINGER);
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
