//! A team of threads working on one direction: the spinning barrier they
//! meet at, the buffers through which they exchange `h`, and the rules by
//! which a team forms, and dissolves when the machine is oversubscribed.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::affinity;
use super::layer::Geometry;
use super::schedule::split_range;
use super::Float;

/// A barrier for a few threads that spins (then yields) instead of sleeping:
/// a step takes microseconds, far less than a futex wake-up.
///
/// Spinning teams suffer when the machine is oversubscribed: a member that
/// loses its core stalls its partners for a whole scheduler time slice, and
/// a member that shares its core with another busy thread runs at a
/// fraction of its speed. Two signs tell the team to dissolve (the leader
/// then finishes the sequence alone): a second wait longer than [`STALL`]
/// (see [`STALLS_TO_DISSOLVE`]), and the leader's request when it spends
/// more time waiting than working (see [`Pace`]): alone, it would be faster.
pub(super) struct SpinBarrier {
    pub(super) size: usize,
    pub(super) arrived: AtomicUsize,
    pub(super) generation: AtomicUsize,
    pub(super) poisoned: AtomicBool,
    /// Barriers after which some member had waited longer than [`STALL`].
    pub(super) stalls: AtomicUsize,
    /// `1 +` the generation of the latest such barrier (0: none yet).
    pub(super) stalled_at: AtomicUsize,
    pub(super) requested: AtomicBool,
    pub(super) dissolve: AtomicBool,
}

/// Spins before a waiting thread starts watching the clock.
pub(super) const SPINS_BEFORE_CLOCK: u32 = 1 << 10;
/// Spinning time before a waiting thread starts yielding its core.
pub(super) const SPIN_TIME: Duration = Duration::from_micros(50);
/// A wait this long means a partner lost its core for a scheduler time
/// slice, not just to a short interruption.
pub(super) const STALL: Duration = Duration::from_millis(1);
/// Stalls after which a team dissolves. On a virtual machine the host takes
/// a core away for a millisecond or more now and then, though no other
/// thread of the guest wants it: dissolving at the first stall then ran the
/// rest of a layer alone, at half speed. (The generated token tagger, B=32,
/// after 0.3 s idle, on a 2-core KVM Xeon, alternating in one process: at
/// the first stall, teams dissolved in 5 to 19 of every 40 to 50 calls,
/// which took 50 to 85 ms instead of 32 to 40; at the second, in 1 to 11.)
/// When threads really outnumber the cores, stalls come every scheduler
/// time slice and the second follows within milliseconds: with two busy
/// loops on the two cores, both rules gave 120-135 ms, and never dissolving
/// 270.
pub(super) const STALLS_TO_DISSOLVE: usize = 2;

/// Spins, then yields, until `done()`; panics when `poisoned` is set. Returns
/// how long the wait took once it started watching the clock (`None` for a
/// short wait).
pub(super) fn wait_until(
    mut done: impl FnMut() -> bool,
    poisoned: &AtomicBool,
) -> Option<Duration> {
    let mut spins = 0u32;
    let mut clock: Option<Instant> = None;
    let mut yielding = false;
    while !done() {
        if poisoned.load(Ordering::Relaxed) {
            panic!("recurrent kernel: another team member panicked");
        }
        spins = spins.wrapping_add(1);
        // Reading the clock costs about as much as a short spin: only
        // every 64 rounds, once spinning has gone on for a while.
        if spins >= SPINS_BEFORE_CLOCK && spins.is_multiple_of(64) {
            yielding = clock.get_or_insert_with(Instant::now).elapsed() >= SPIN_TIME;
        }
        if yielding {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    clock.map(|start| start.elapsed())
}

impl SpinBarrier {
    pub(super) fn new(size: usize) -> Self {
        Self {
            size,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
            stalls: AtomicUsize::new(0),
            stalled_at: AtomicUsize::new(0),
            requested: AtomicBool::new(false),
            dissolve: AtomicBool::new(false),
        }
    }

    pub(super) fn wait(&self) {
        if self.size == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.size {
            // Last to arrive: every member's earlier `stalls` and
            // `requested` stores are visible through `arrived`; publish the
            // decision with the new generation.
            self.arrived.store(0, Ordering::Relaxed);
            if self.stalled_too_often()
                || self.requested.load(Ordering::Relaxed)
                || forced_dissolve(generation)
            {
                self.dissolve.store(true, Ordering::Relaxed);
            }
            self.generation
                .store(generation.wrapping_add(1), Ordering::Release);
            return;
        }
        let waited = wait_until(
            || self.generation.load(Ordering::Acquire) != generation,
            &self.poisoned,
        );
        // The first barrier also waits for the members that started last to
        // project their share of the first chunk.
        if generation > 0 && waited.is_some_and(|w| w > STALL) {
            self.record_stall(generation);
        }
    }

    /// Counts a stall that ended barrier `generation`, once however many
    /// members waited through it.
    pub(super) fn record_stall(&self, generation: usize) {
        if self.stalled_at.swap(generation + 1, Ordering::Relaxed) != generation + 1 {
            self.stalls.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the team has stalled [`STALLS_TO_DISSOLVE`] times: the last
    /// member to reach the barrier then dissolves it.
    pub(super) fn stalled_too_often(&self) -> bool {
        self.stalls.load(Ordering::Relaxed) >= STALLS_TO_DISSOLVE
    }

    /// The leader asks the team to dissolve at the next barrier.
    pub(super) fn request_dissolve(&self) {
        self.requested.store(true, Ordering::Relaxed);
    }

    /// Whether the team should dissolve; the same answer for every member
    /// between two barriers.
    pub(super) fn dissolving(&self) -> bool {
        self.dissolve.load(Ordering::Relaxed)
    }
}

/// The leader's account of its team's pace: time spent working and time
/// spent waiting at the barrier for the members, from the end of the first
/// barrier on.
pub(super) struct Pace {
    last: Option<Instant>,
    work: Duration,
    wait: Duration,
    barriers: usize,
}

/// Barriers the leader counts before it judges the team's pace.
pub(super) const PACE_BARRIERS: usize = 4;
/// Waiting the leader tolerates whatever the pace: one short interruption
/// of a member costs less than finishing alone.
pub(super) const PACE_TOLERANCE: Duration = Duration::from_micros(500);

impl Pace {
    pub(super) fn new() -> Self {
        Self {
            last: None,
            work: Duration::ZERO,
            wait: Duration::ZERO,
            barriers: 0,
        }
    }

    /// The leader's barrier: when, since the team formed, it waited for the
    /// members longer than it worked (and more than [`PACE_TOLERANCE`];
    /// stalls left out), they run at less than half its speed (their cores
    /// are shared), and it asks the team to dissolve.
    pub(super) fn wait(&mut self, barrier: &SpinBarrier) {
        let arrived = Instant::now();
        if let Some(last) = self.last {
            self.work += arrived - last;
            self.barriers += 1;
        }
        barrier.wait();
        let done = Instant::now();
        // A stall is the barrier's to judge (see `STALLS_TO_DISSOLVE`): one
        // would otherwise outweigh the first steps' work.
        if self.last.is_some() && done - arrived <= STALL {
            self.wait += done - arrived;
        }
        self.last = Some(done);
        if self.barriers >= PACE_BARRIERS && self.wait > self.work && self.wait > PACE_TOLERANCE {
            barrier.request_dissolve();
        }
    }
}

/// Tests set this to `n > 0` to dissolve every team at its `n`-th barrier.
#[cfg(test)]
pub(super) static DISSOLVE_AT: AtomicUsize = AtomicUsize::new(0);

/// Tests set this to [`ALWAYS`] (leaders wait for their members, however
/// long they take to start) or [`NEVER`] (leaders always work alone).
#[cfg(test)]
pub(super) static START_MODE: AtomicUsize = AtomicUsize::new(PENDING);

#[cfg(test)]
pub(super) const ALWAYS: usize = 1;
pub(super) const NEVER: usize = usize::MAX;

pub(super) fn start_mode() -> usize {
    #[cfg(test)]
    return START_MODE.load(Ordering::Relaxed);
    #[cfg(not(test))]
    PENDING
}

pub(super) fn forced_dissolve(generation: usize) -> bool {
    #[cfg(test)]
    return DISSOLVE_AT.load(Ordering::Relaxed) == generation + 1;
    #[cfg(not(test))]
    {
        let _ = generation;
        false
    }
}

/// Poisons the barrier when a member unwinds, so that its partners stop
/// waiting for it.
pub(super) struct PoisonOnPanic<'a>(pub(super) &'a SpinBarrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// How long teams do not form after one was sent away or dissolved: the
/// machine is likely still oversubscribed, and another team would lose
/// another stall before it dissolves in turn.
pub(super) const CONTENTION_BACKOFF: Duration = Duration::from_millis(20);

/// When a team was last sent away or dissolved, in nanoseconds since
/// [`epoch`] plus one; 0 for never.
pub(super) static CONTENTION_SEEN: AtomicU64 = AtomicU64::new(0);

pub(super) fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(super) fn nanos_since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
}

/// Records that a team was sent away or dissolved now.
pub(super) fn note_contention() {
    CONTENTION_SEEN.store(nanos_since_epoch() + 1, Ordering::Relaxed);
}

/// Whether a team was sent away or dissolved less than
/// [`CONTENTION_BACKOFF`] ago (ignored by the tests' forced team paths).
pub(super) fn contended() -> bool {
    let seen = CONTENTION_SEEN.load(Ordering::Relaxed);
    let backoff = CONTENTION_BACKOFF.as_nanos() as u64;
    start_mode() == PENDING && seen > 0 && nanos_since_epoch().saturating_sub(seen - 1) < backoff
}

/// How long the leader, done with its share of the first chunk, waits for
/// the members' threads to start before it goes ahead alone ([`LATE`]); the
/// members join it at the first step after they have all started.
///
/// After an idle moment a pool thread can take a few hundred microseconds
/// to wake on a virtual machine: with 50 us, the generated speaker encoder
/// (3 x LSTM 256, B=10) took a median 31 to 34 ms after 0.3 s idle on an
/// Intel Xeon (KVM, 2 cores), its teams sent away and the next 20 ms run
/// alone ([`CONTENTION_BACKOFF`]); with 250 us to 2 ms, 23 to 24.5 ms (20
/// back to back either way). On some hosts the wake-up takes 2 to 4 ms
/// (measured on a 2-core KVM Xeon after 10 to 300 ms idle), longer than
/// any sensible wait: sending the members away for good then ran the
/// generated token tagger's layer (B=32) alone, the whole model 34 ms
/// after 0.3 s idle against 26 to 27 back to back; joining late, 29 to 31
/// (only the steps before the members arrive run alone). A busy machine
/// loses at most this wait per layer, and a team whose members cannot keep
/// up dissolves (see [`SpinBarrier`]).
pub(super) const JOIN_WAIT: Duration = Duration::from_micros(500);

pub(super) const PENDING: usize = 0;
pub(super) const GO: usize = 1;
pub(super) const CANCELLED: usize = 2;
/// The leader went ahead alone, and invites the members to a later step
/// once they have all started ([`Team::invite`]).
pub(super) const LATE: usize = 3;

/// [`Team::join_at`] before the leader invites the members, and after it
/// finished without inviting them.
const NOT_YET: usize = 0;
const NEVER_JOIN: usize = usize::MAX;

/// Tests set [`START_MODE`] to `LATE_AFTER + s`: the leader goes ahead alone
/// at once and invites the members after step `s`, however long they take
/// to start.
#[cfg(test)]
pub(super) const LATE_AFTER: usize = 16;

/// Tests: the step after which the leader invites its members, in a
/// `LATE_AFTER + s` mode.
#[cfg(test)]
pub(super) fn late_after(mode: usize) -> Option<usize> {
    (LATE_AFTER..NEVER)
        .contains(&mode)
        .then(|| mode - LATE_AFTER)
}

/// Tests: how many times members were invited to join a leader.
#[cfg(test)]
pub(super) static INVITATIONS: AtomicUsize = AtomicUsize::new(0);

/// The threads working on one direction and the buffers they exchange.
///
/// Member `k` owns the unit blocks `blocks[k]` (all gates of those units,
/// their input projection and cell state) and with a projection the
/// `W_hr^T` panels `cols[k]`. Each step it publishes its columns of `h` for
/// the whole batch into `h`, double-buffered by step parity so that one
/// barrier per step suffices; after the barrier every member reads the full
/// `h` for the next step. Relaxed atomics carry the values; the barrier
/// orders writers and readers.
pub(super) struct Team<T: Float> {
    pub(super) size: usize,
    pub(super) barrier: SpinBarrier,
    pub(super) blocks: Vec<Range<usize>>,
    pub(super) cols: Vec<Range<usize>>,
    /// `[parity]`: `(B, H_out)`.
    pub(super) h: [Vec<T::Atomic>; 2],
    /// With projection: the unprojected `h`, `(B, H)`.
    pub(super) hid: Vec<T::Atomic>,
    /// LSTM cell state, `(B, H)`, published at the end and when dissolving.
    pub(super) c: Vec<T::Atomic>,
    /// Members (other than the leader) that have started.
    pub(super) joined: AtomicUsize,
    /// The leader's decision for the members: [`PENDING`], [`GO`],
    /// [`CANCELLED`] or [`LATE`].
    pub(super) start: AtomicUsize,
    /// After [`LATE`]: the step from which the members work with the
    /// leader, once it has invited them.
    pub(super) join_at: AtomicUsize,
    /// The core the leader started on, when known.
    pub(super) leader_cpu: Option<usize>,
}

impl<T: Float> Team<T> {
    pub(super) fn new(geom: Geometry, size: usize) -> Self {
        let b = geom.batch;
        let many = size > 1;
        let shared = |len: usize| -> Vec<T::Atomic> {
            (0..if many { len } else { 0 })
                .map(|_| T::new_atomic(T::ZERO))
                .collect()
        };
        Self {
            size,
            barrier: SpinBarrier::new(size),
            blocks: split_range(geom.blocks, size),
            cols: split_range(geom.proj_panels, size),
            h: [shared(b * geom.h_out), shared(b * geom.h_out)],
            hid: shared(if geom.projects() { b * geom.hidden } else { 0 }),
            c: shared(if geom.gates == 4 { b * geom.hidden } else { 0 }),
            joined: AtomicUsize::new(0),
            start: AtomicUsize::new(PENDING),
            join_at: AtomicUsize::new(NOT_YET),
            leader_cpu: if many { affinity::current_cpu() } else { None },
        }
    }

    /// The leader: waits (boundedly) for every member to start; whether they
    /// all did.
    pub(super) fn members_started(&self) -> bool {
        let all = || self.all_joined();
        match start_mode() {
            NEVER => false,
            #[cfg(test)]
            mode if late_after(mode).is_some() => false,
            PENDING => {
                let start = Instant::now();
                let mut spins = 0u32;
                while !all() {
                    if start.elapsed() > JOIN_WAIT {
                        return all();
                    }
                    spins = spins.wrapping_add(1);
                    if spins < SPINS_BEFORE_CLOCK {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
                true
            }
            // Tests: wait however long it takes.
            _ => {
                wait_until(all, &self.barrier.poisoned);
                true
            }
        }
    }

    /// Whether every member has started.
    fn all_joined(&self) -> bool {
        self.joined.load(Ordering::Acquire) + 1 == self.size
    }

    /// The leader's decision once it has waited for the members: [`GO`]
    /// when they all started; else it goes ahead alone, and [`LATE`]
    /// members may still join it later ([`CANCELLED`] in the tests' `NEVER`
    /// mode, which keeps the path where they never do).
    pub(super) fn decide(&self, go: bool) -> usize {
        let decision = match (go, start_mode()) {
            (true, _) => GO,
            (false, NEVER) => CANCELLED,
            (false, _) => LATE,
        };
        self.start.store(decision, Ordering::Release);
        decision
    }

    /// A member: whether the leader has already sent the members away, or
    /// finished alone.
    pub(super) fn cancelled(&self) -> bool {
        self.start.load(Ordering::Acquire) == CANCELLED
            || self.join_at.load(Ordering::Acquire) == NEVER_JOIN
    }

    /// A member: waits for the leader's decision.
    pub(super) fn decision(&self) -> usize {
        self.wait_for(&self.start, PENDING)
    }

    /// Waits until `value` no longer holds `unset`, and returns what it
    /// holds then.
    fn wait_for(&self, value: &AtomicUsize, unset: usize) -> usize {
        let mut seen = unset;
        wait_until(
            || {
                seen = value.load(Ordering::Acquire);
                seen != unset
            },
            &self.barrier.poisoned,
        );
        seen
    }

    /// The leader, alone after [`LATE`], at the end of `step`: whether to
    /// invite the members to work with it from the next step on (they have
    /// all started, and steps remain). The tests' `LATE_AFTER + s` mode
    /// waits for the members at step `s`.
    pub(super) fn may_invite(&self, step: usize, steps: usize) -> bool {
        if self.start.load(Ordering::Relaxed) != LATE
            || self.join_at.load(Ordering::Relaxed) != NOT_YET
            || step + 1 >= steps
        {
            return false;
        }
        #[cfg(test)]
        if let Some(at) = late_after(start_mode()) {
            if step != at {
                return false;
            }
            wait_until(|| self.all_joined(), &self.barrier.poisoned);
            return true;
        }
        self.all_joined()
    }

    /// The leader: the members work from `step` on, from the `h` and `c`
    /// it published before.
    pub(super) fn invite(&self, step: usize) {
        #[cfg(test)]
        INVITATIONS.fetch_add(1, Ordering::Relaxed);
        self.join_at.store(step, Ordering::Release);
    }

    /// The leader, done: members still waiting for an invitation stop.
    pub(super) fn close(&self) {
        let _ = self.join_at.compare_exchange(
            NOT_YET,
            NEVER_JOIN,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }

    /// A member after [`LATE`]: waits for the step the leader invites it
    /// to, or `None` when it finished without.
    pub(super) fn invitation(&self) -> Option<usize> {
        let at = self.wait_for(&self.join_at, NOT_YET);
        (at != NEVER_JOIN).then_some(at)
    }
}

/// Copies `src` (`B` rows `src_rs` apart, of `cols.len()` elements) into
/// columns `cols` of the shared `(B, width)` matrix `buf`.
pub(super) fn publish<T: Float>(
    buf: &[T::Atomic],
    width: usize,
    cols: Range<usize>,
    src: &[T],
    src_rs: usize,
    batch: usize,
) {
    let n = cols.len();
    for b in 0..batch {
        let dst = &buf[b * width + cols.start..b * width + cols.end];
        for (d, &v) in dst.iter().zip(&src[b * src_rs..b * src_rs + n]) {
            T::store(d, v);
        }
    }
}

/// Reads the shared matrix `buf` into `dst`, as far as both reach: one plain
/// copy, not an atomic load per element, which the compiler leaves scalar
/// (that loop was 1.5 % of the tagger's time at B=32, its loads of the other
/// member's cache lines missing one after another).
///
/// Every caller reads after the barrier that follows the writes it reads,
/// and no member writes `buf` again until every reader has passed a later
/// barrier (the step loop double-buffers `h` for this), so the copy races
/// with no write.
pub(super) fn read_shared<T: Float>(buf: &[T::Atomic], dst: &mut [T]) {
    const {
        assert!(
            std::mem::size_of::<T::Atomic>() == std::mem::size_of::<T>()
                && std::mem::align_of::<T::Atomic>() >= std::mem::align_of::<T>()
        )
    };
    let n = dst.len().min(buf.len());
    // SAFETY: `T::Atomic` is the atomic integer holding the bits of `T`, of
    // its size and alignment (checked above), and every bit pattern is a
    // valid `T`. No thread writes `buf[..n]` during the copy (see above);
    // the barrier's acquire orders the writes before it.
    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr().cast::<T>(), dst.as_mut_ptr(), n) }
}
