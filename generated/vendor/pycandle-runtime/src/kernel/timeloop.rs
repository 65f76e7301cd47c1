//! The time loop of one team member: its walk over the steps, the
//! exchange of `h` with its partners, the late members' joining, and the
//! switch to working alone.

use std::sync::atomic::Ordering;

use super::affinity::AvoidCpu;
#[cfg(target_arch = "x86_64")]
use super::isa::{Avx2, Avx512};
use super::isa::{Isa, Portable};
use super::layer::{Geometry, Job};
use super::schedule::LeaderOut;
use super::team::{note_contention, publish, read_shared, Pace, PoisonOnPanic, Team, GO, LATE};
use super::work::Work;
use super::{Float, KernelPath};

/// Runs [`member`] compiled for the job's kernel path.
pub(super) fn member_dispatch<T: Float>(
    geom: Geometry,
    job: &Job<'_, T>,
    team: &Team<T>,
    id: usize,
    leader: Option<LeaderOut<'_, T>>,
) {
    let _guard = PoisonOnPanic(&team.barrier);
    match job.path {
        // SAFETY (both): the job's path is `kernel_path_for_batch`'s, which only
        // names an instruction set the CPU has.
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512 => unsafe { member_avx512(geom, job, team, id, leader) },
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => unsafe { member_avx2(geom, job, team, id, leader) },
        _ => member::<T, Portable>(geom, job, team, id, leader),
    }
}

// Everything generic over the `Isa` that the two functions below call is
// `#[inline(always)]`: a function compiled on its own would lack the
// features, and its `mul_add`s would become calls to a software fused
// multiply-add.

/// [`member`] with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn member_avx2<T: Float>(
    geom: Geometry,
    job: &Job<'_, T>,
    team: &Team<T>,
    id: usize,
    leader: Option<LeaderOut<'_, T>>,
) {
    member::<T, Avx2>(geom, job, team, id, leader);
}

/// [`member`] with AVX-512F (and FMA, which the gates' scalar code uses:
/// every AVX-512 CPU has it). The gate loops, which the compiler vectorises,
/// use 512-bit registers here too.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn member_avx512<T: Float>(
    geom: Geometry,
    job: &Job<'_, T>,
    team: &Team<T>,
    id: usize,
    leader: Option<LeaderOut<'_, T>>,
) {
    member::<T, Avx512>(geom, job, team, id, leader);
}

#[inline(always)]
pub(super) fn member<T: Float, I: Isa>(
    geom: Geometry,
    job: &Job<'_, T>,
    team: &Team<T>,
    id: usize,
    mut leader: Option<LeaderOut<'_, T>>,
) {
    let Geometry {
        steps,
        batch,
        hidden,
        h_out,
        ..
    } = geom;
    let is_lstm = job.is_lstm();

    // Start: every member projects its share of the first chunk; the leader
    // then decides whether the team works together or it goes ahead alone,
    // to be joined by the members when they have all started.
    if id > 0 {
        team.joined.fetch_add(1, Ordering::AcqRel);
        if team.cancelled() {
            // Started too late: the leader already works alone.
            return;
        }
    }
    // A member on its leader's core moves away for as long as it works.
    let _away = (id > 0).then(|| AvoidCpu::new(team.leader_cpu));
    let mut work = Work::new(&geom, job, team, id);
    // The full previous `h`, `(B, H_out)`.
    let mut h_prev = vec![T::ZERO; batch * h_out];
    if let Some(h0) = job.h0 {
        h_prev.copy_from_slice(h0);
    }
    let mut solo = id == 0;
    // The first step this thread works on: a member that started after the
    // leader went ahead alone joins it where it invites the team to.
    let mut first = 0;
    let late = id > 0 && team.start.load(Ordering::Acquire) == LATE;
    if !late {
        work.ensure_chunk::<I>(&geom, job, 0, job.time(steps, 0));
    }
    if id == 0 && team.size > 1 {
        let go = team.members_started();
        match team.decide(go) {
            GO => solo = false,
            LATE => work.take_all::<I>(&geom, job),
            _ => {
                note_contention();
                work.take_all::<I>(&geom, job);
            }
        }
    } else if id > 0 {
        let decision = if late { LATE } else { team.decision() };
        match decision {
            GO => {}
            LATE => {
                // From the state the leader published: `h` of the step
                // before, and the units' `c`.
                let Some(step) = team.invitation() else {
                    return;
                };
                read_shared(&team.h[(step - 1) % 2], &mut h_prev);
                if is_lstm {
                    work.read_c(&geom, team);
                }
                first = step;
            }
            _ => return,
        }
    }

    // The leader watches the team's pace.
    let mut pace = (id == 0).then(Pace::new);
    for step in first..steps {
        let t = job.time(steps, step);
        work.ensure_chunk::<I>(&geom, job, step, t);
        // Every other step walks the weights backwards: what the previous
        // step read last is still in cache when a share is a little too
        // large for it.
        let zigzag = step % 2 == 1;
        let nonzero_h = step > 0 || job.h0.is_some();
        work.step::<I>(&geom, job, t, nonzero_h.then_some(&h_prev[..]), zigzag);
        if !solo && is_lstm && step + 1 == steps {
            work.publish_c(&geom, team);
        }
        if geom.projects() {
            if !solo {
                let (cs, u0) = (work.unit_stride(), work.unit0());
                let units = work.units(&geom);
                publish(&team.hid, hidden, units, &work.h_units[u0..], cs, batch);
                sync(team, &mut pace);
                read_shared(&team.hid, &mut work.hid);
            }
            work.project_h::<I>(&geom, job, solo, zigzag);
        }
        // The new `h`: into `h_prev` when alone, else through the team.
        let (cols, part, part_rs) = work.h_out_part(&geom);
        if solo {
            for b in 0..batch {
                h_prev[b * h_out + cols.start..b * h_out + cols.end]
                    .copy_from_slice(&part[b * part_rs..b * part_rs + cols.len()]);
            }
        } else {
            publish(&team.h[step % 2], h_out, cols, part, part_rs, batch);
            sync(team, &mut pace);
            read_shared(&team.h[step % 2], &mut h_prev);
        }
        if let Some(leader) = leader.as_mut() {
            write_rows(&mut leader.rows, t, batch, &h_prev);
        }

        // Alone after the members started late: once they all have, they
        // take their shares back from the next step on.
        if solo && id == 0 && team.size > 1 && team.may_invite(step, steps) {
            publish(&team.h[step % 2], h_out, 0..h_out, &h_prev, h_out, batch);
            if is_lstm {
                work.publish_c(&geom, team);
            }
            team.invite(step + 1);
            work.share_again(team);
            solo = false;
            continue;
        }

        // Every member reads the same decision after the same barrier.
        if !solo && team.barrier.dissolving() && step + 1 < steps {
            if is_lstm {
                work.publish_c(&geom, team);
            }
            team.barrier.wait();
            if leader.is_none() {
                return;
            }
            // The leader takes over every unit from the next step on.
            note_contention();
            work.take_all::<I>(&geom, job);
            if is_lstm {
                work.read_c(&geom, team);
            }
            solo = true;
        }
    }

    // Only the leader goes on: everything it reads was published before the
    // last barrier.
    let Some(leader) = leader else { return };
    team.close();
    leader.h_n.copy_from_slice(&h_prev);
    if let Some(c_n) = leader.c_n {
        if solo {
            let cs = work.unit_stride();
            for (dst, src) in c_n.chunks_exact_mut(hidden).zip(work.c.chunks_exact(cs)) {
                dst.copy_from_slice(&src[..hidden]);
            }
        } else {
            read_shared(&team.c, c_n);
        }
    }
}

/// A team member's barrier: the leader's keeps its [`Pace`].
pub(super) fn sync<T: Float>(team: &Team<T>, pace: &mut Option<Pace>) {
    match pace {
        Some(pace) => pace.wait(&team.barrier),
        None => team.barrier.wait(),
    }
}

/// Writes `h` (`(B, H_out)`) into the output rows of time index `t`.
#[inline(always)]
pub(super) fn write_rows<T: Float>(rows: &mut [&mut [T]], t: usize, batch: usize, h: &[T]) {
    let width = h.len() / batch.max(1);
    for (b, row) in rows[t * batch..(t + 1) * batch].iter_mut().enumerate() {
        row.copy_from_slice(&h[b * width..(b + 1) * width]);
    }
}
