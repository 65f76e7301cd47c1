//! Which threads run what: the directions of a layer side by side, and each
//! direction's team, whose leader is the thread that writes its outputs.

use std::ops::Range;

use super::layer::{Geometry, Job};
use super::task::Task;
use super::team::{contended, Team};
use super::timeloop::member_dispatch;
use super::Float;

/// Multiply-adds per step below which a direction is not split over threads:
/// the per-step barrier would cost more than it saves.
const MIN_SPLIT_WORK: usize = 64 * 1024;
/// Fewest blocks of units a team member handles.
const MIN_BLOCKS_PER_MEMBER: usize = 2;

/// How many threads work on each direction.
pub(super) fn team_size(geom: &Geometry, threads_for_dir: usize) -> usize {
    let work = geom.batch * geom.h_out * geom.gates * geom.hidden;
    if threads_for_dir <= 1 || work < MIN_SPLIT_WORK {
        return 1;
    }
    threads_for_dir
        .min(geom.blocks / MIN_BLOCKS_PER_MEMBER)
        .max(1)
}

/// Splits `0..total` into exactly `parts` contiguous ranges of nearly equal
/// length (ranges may be empty when `total` is small).
pub(super) fn split_range(total: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1);
    let bound = |k: usize| total * k / parts;
    (0..parts).map(|k| bound(k)..bound(k + 1)).collect()
}

/// The per-direction output views handed to a team's leader.
pub(super) struct LeaderOut<'o, T> {
    /// `T * B` rows of `H_out` elements, indexed `t * B + b`.
    pub(super) rows: Vec<&'o mut [T]>,
    /// `(B, H_out)`.
    pub(super) h_n: &'o mut [T],
    /// `(B, H)` for an LSTM.
    pub(super) c_n: Option<&'o mut [T]>,
}

pub(super) fn run_layer<T: Float>(
    geom: Geometry,
    jobs: &[Job<'_, T>],
    out: &mut [T],
    h_n: &mut [T],
    c_n: Option<&mut [T]>,
    threads: usize,
) {
    let d = jobs.len();
    let Geometry {
        batch,
        hidden,
        h_out,
        ..
    } = geom;

    // Per-direction views of the outputs, indexed `t * B + b`.
    let mut rows: Vec<Vec<Option<&mut [T]>>> = (0..d)
        .map(|_| (0..geom.steps * batch).map(|_| None).collect())
        .collect();
    for (i, row) in out.chunks_mut(h_out).enumerate() {
        // `i / d` is `t * B + b`, or `b * T + t` batch first.
        let (at, dir) = (i / d, i % d);
        let at = if geom.batch_first_out {
            (at % geom.steps) * batch + at / geom.steps
        } else {
            at
        };
        rows[dir][at] = Some(row);
    }
    let rows = rows.into_iter().map(|rows| {
        rows.into_iter()
            .map(|row| row.expect("`out` has a row for every step and batch item"))
            .collect::<Vec<_>>()
    });
    let mut c_parts: Vec<Option<&mut [T]>> = match c_n {
        Some(c_n) => c_n.chunks_mut(batch * hidden).map(Some).collect(),
        None => (0..d).map(|_| None).collect(),
    };
    let mut leaders: Vec<LeaderOut<'_, T>> = rows
        .into_iter()
        .zip(h_n.chunks_mut(batch * h_out))
        .zip(c_parts.iter_mut())
        .map(|((rows, h_n), c_n)| LeaderOut {
            rows,
            h_n,
            c_n: c_n.take(),
        })
        .collect();

    if geom.steps == 0 || batch == 0 {
        for (job, leader) in jobs.iter().zip(&mut leaders) {
            copy_or_zero(leader.h_n, job.h0);
            if let Some(c_n) = leader.c_n.as_deref_mut() {
                copy_or_zero(c_n, job.c0);
            }
        }
        return;
    }

    let threads = threads.max(1);
    if threads < d {
        // Not enough threads for the directions: one after the other.
        for (job, leader) in jobs.iter().zip(leaders) {
            run_direction(geom, job, leader, threads);
        }
        return;
    }
    let per_dir = threads / d;
    let mut leaders = leaders.into_iter().zip(jobs);
    let first = leaders.next();
    let others: Vec<Task<'_>> = leaders
        .map(|(leader, job)| {
            // SAFETY: every task is finished below, before `jobs` and the
            // outputs it borrows go out of scope; none is leaked (a panic in
            // between drops, and so settles, the vector).
            unsafe { Task::spawn(move || run_direction(geom, job, leader, per_dir)) }
        })
        .collect();
    if let Some((leader, job)) = first {
        run_direction(geom, job, leader, per_dir);
    }
    // A direction that no pool thread has started yet runs here.
    for task in others {
        task.finish();
    }
}

pub(super) fn copy_or_zero<T: Float>(dst: &mut [T], src: Option<&[T]>) {
    match src {
        Some(src) => dst.copy_from_slice(src),
        None => dst.fill(T::ZERO),
    }
}

/// Runs one direction with a team of up to `threads` threads; the calling
/// thread is the leader and writes the outputs.
pub(super) fn run_direction<T: Float>(
    geom: Geometry,
    job: &Job<'_, T>,
    leader: LeaderOut<'_, T>,
    threads: usize,
) {
    let size = if contended() {
        1
    } else {
        team_size(&geom, threads)
    };
    let team = Team::new(geom, size);
    if team.size == 1 {
        member_dispatch(geom, job, &team, 0, Some(leader));
        return;
    }
    let team = &team;
    let members: Vec<Task<'_>> = (1..team.size)
        .map(|member| {
            // SAFETY: every task is cancelled below, before `team` and `job`
            // go out of scope; none is leaked (a panic in between drops, and
            // so settles, the vector).
            unsafe { Task::spawn(move || member_dispatch(geom, job, team, member, None)) }
        })
        .collect();
    member_dispatch(geom, job, team, 0, Some(leader));
    // A member that has not started by now has nothing left to do.
    for task in members {
        task.cancel();
    }
}
