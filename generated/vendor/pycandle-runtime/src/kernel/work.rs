//! A team member's buffers, and the computation of one step on its share
//! of the units: the input projection of a chunk of steps, the recurrent
//! product and the gates of each cell kind, and the projection of `h`.

use std::ops::Range;

use super::gates::{gru_blocks, lstm_row, GRU_BLOCKS};
use super::isa::Isa;
use super::layer::{Geometry, Input, Job};
use super::panels::UNITS;
use super::product::{mul_acc, Rows};
use super::team::{publish, read_shared, Team};
use super::Float;

/// A member's working state: its share and buffers, allocated once per
/// call. The buffers cover the blocks `base .. base + span`: the leader's
/// cover every block (it may have to finish alone), a member's its own.
pub(super) struct Work<T> {
    /// The unit blocks this member computes.
    pub(super) blocks: Range<usize>,
    /// The `W_hr^T` panels this member computes.
    pub(super) cols: Range<usize>,
    pub(super) base: usize,
    pub(super) span: usize,
    /// Input projection of the times `chunk`, `(chunk * B, span * width)`,
    /// time-major; an LSTM turns each row into its gate pre-activations in
    /// place.
    pub(super) gx: Vec<T>,
    /// The times `gx` holds (for the blocks of the share).
    pub(super) chunk: Range<usize>,
    /// GRU: `h W_hh^T + b_hh`, `(B, span * width)`.
    pub(super) hh: Vec<T>,
    /// LSTM cell state, `(B, span * UNITS)`.
    pub(super) c: Vec<T>,
    /// The units' new `h` (LSTM: before projection), `(B, span * UNITS)`.
    pub(super) h_units: Vec<T>,
    /// With projection, in a team: the full unprojected `h`, `(B, H)`.
    pub(super) hid: Vec<T>,
    /// With projection: the projected columns, `(B, proj_panels * 16)`.
    pub(super) h_cols: Vec<T>,
    /// For the products.
    pub(super) scratch: Vec<T>,
}

/// Columns per panel of `W_hr^T`.
pub(super) const PROJ_COLS: usize = 16;

/// The row stride for rows of `cols` elements: one cache line more when the
/// rows would be a multiple of 4 KiB apart, where the rows a micro-tile
/// loads and stores would all compete for the same few L1 sets.
pub(super) fn row_stride<T>(cols: usize) -> usize {
    let size = std::mem::size_of::<T>();
    if (cols * size).is_multiple_of(4096) {
        cols + 64 / size
    } else {
        cols
    }
}

impl<T: Float> Work<T> {
    /// Member `id`'s share of `team`; the leader's buffers span every block.
    pub(super) fn new(geom: &Geometry, job: &Job<'_, T>, team: &Team<T>, id: usize) -> Self {
        let Geometry { batch, width, .. } = *geom;
        let span = if id == 0 {
            0..geom.blocks
        } else {
            team.blocks[id].clone()
        };
        let is_lstm = job.is_lstm();
        let n = span.len() * UNITS;
        let mut c = vec![T::ZERO; if is_lstm { batch * n } else { 0 }];
        if let Some(c0) = job.c0 {
            let units = span.start * UNITS..(span.end * UNITS).min(geom.hidden);
            for b in 0..batch {
                let src = b * geom.hidden;
                c[b * n..b * n + units.len()]
                    .copy_from_slice(&c0[src + units.start..src + units.end]);
            }
        }
        let rows = |width: usize| vec![T::ZERO; batch * width];
        Self {
            blocks: team.blocks[id].clone(),
            cols: team.cols[id].clone(),
            base: span.start,
            span: span.len(),
            gx: rows(geom.chunk * row_stride::<T>(span.len() * width)),
            chunk: 0..0,
            hh: rows(if is_lstm {
                0
            } else {
                row_stride::<T>(span.len() * width)
            }),
            c,
            h_units: rows(n),
            hid: rows(if geom.projects() { geom.hidden } else { 0 }),
            h_cols: rows(geom.proj_panels * PROJ_COLS),
            scratch: Vec::new(),
        }
    }

    /// Row stride of `gx` and `hh`.
    pub(super) fn stride(&self, geom: &Geometry) -> usize {
        row_stride::<T>(self.span * geom.width)
    }

    /// Row stride of `c` and `h_units`.
    pub(super) fn unit_stride(&self) -> usize {
        self.span * UNITS
    }

    /// Offset of the share's first unit in the rows of `c` and `h_units`.
    pub(super) fn unit0(&self) -> usize {
        (self.blocks.start - self.base) * UNITS
    }

    /// The real units of the share.
    pub(super) fn units(&self, geom: &Geometry) -> Range<usize> {
        (self.blocks.start * UNITS).min(geom.hidden)..(self.blocks.end * UNITS).min(geom.hidden)
    }

    /// Projects the input of the times `self.chunk` for `blocks` into `gx`:
    /// `x_t W_ih^T + bias`, or for token ids the rows of their table.
    #[inline(always)]
    pub(super) fn project<I: Isa>(
        &mut self,
        geom: &Geometry,
        job: &Job<'_, T>,
        blocks: Range<usize>,
    ) {
        let Geometry {
            batch,
            input,
            width,
            ..
        } = *geom;
        let stride = self.stride(geom);
        let rows = self.chunk.len() * batch;
        let col0 = (blocks.start - self.base) * width;
        let x = match job.x {
            Input::Features(x) => x,
            Input::Tokens { ids, table } => {
                // Row `s * B + b` is step `s` of the chunk, item `b`.
                let cols = blocks.start * width..blocks.end * width;
                for (r, dst) in self.gx[col0..].chunks_mut(stride).take(rows).enumerate() {
                    let (t, b) = (self.chunk.start + r / batch, r % batch);
                    let id = if geom.batch_first_in {
                        ids[b * geom.steps + t]
                    } else {
                        ids[t * batch + b]
                    };
                    dst[..cols.len()].copy_from_slice(&table.row(id as usize)[cols.clone()]);
                }
                return;
            }
        };
        let bias = &job.w.x_bias[blocks.start * width..blocks.end * width];
        let (x, x_rows) = if geom.batch_first_in {
            // `(B, T, I)`: step `s` of the chunk, item `b`, at
            // `b * T * I + (start + s) * I`.
            let rows = Rows {
                stride: geom.steps * input,
                group: batch,
                group_stride: input,
            };
            (&x[self.chunk.start * input..], rows)
        } else {
            let x = &x[self.chunk.start * batch * input..self.chunk.end * batch * input];
            (x, Rows::plain(input))
        };
        mul_acc::<T, I>(
            &mut self.gx[col0..],
            stride,
            x,
            x_rows,
            rows,
            &job.w.w_ih,
            blocks,
            Some(bias),
            false,
            &mut self.scratch,
        );
    }

    /// Makes `gx` hold walk step `step` (time `t`): when it does not, loads
    /// the chunk of steps starting there.
    #[inline(always)]
    pub(super) fn ensure_chunk<I: Isa>(
        &mut self,
        geom: &Geometry,
        job: &Job<'_, T>,
        step: usize,
        t: usize,
    ) {
        if self.chunk.contains(&t) {
            return;
        }
        let n = geom.chunk.min(geom.steps - step);
        self.chunk = if job.reverse {
            t + 1 - n..t + 1
        } else {
            t..t + n
        };
        self.project::<I>(geom, job, self.blocks.clone());
    }

    /// The leader, from now on alone: takes over every block and projection
    /// panel, with the current chunk's projection of the blocks it gains.
    #[inline(always)]
    pub(super) fn take_all<I: Isa>(&mut self, geom: &Geometry, job: &Job<'_, T>) {
        let gained = self.blocks.end..geom.blocks;
        self.blocks = 0..geom.blocks;
        self.cols = 0..geom.proj_panels;
        self.project::<I>(geom, job, gained);
    }

    /// The leader, alone until now: back to its own share of the team's
    /// blocks and panels (its buffers still span every block, and the
    /// current chunk's projection stays valid for its share).
    #[inline(always)]
    pub(super) fn share_again(&mut self, team: &Team<T>) {
        self.blocks = team.blocks[0].clone();
        self.cols = team.cols[0].clone();
    }

    /// The cell state of the share's units from the team's `c`, where it
    /// was published: for a member joining a leader that went ahead alone,
    /// and for a leader taking over every unit when the team dissolves.
    #[inline(always)]
    pub(super) fn read_c(&mut self, geom: &Geometry, team: &Team<T>) {
        let (units, cs, u0) = (self.units(geom), self.unit_stride(), self.unit0());
        for (b, row) in self.c.chunks_exact_mut(cs).enumerate() {
            let shared = &team.c[b * geom.hidden + units.start..b * geom.hidden + units.end];
            read_shared(shared, &mut row[u0..u0 + units.len()]);
        }
    }

    /// One step at time `t` from the previous state `h_prev` `(B, H_out)`:
    /// the share's gate pre-activations, then the gates, which update `c`
    /// and write the units' new `h` into `h_units`.
    #[inline(always)]
    pub(super) fn step<I: Isa>(
        &mut self,
        geom: &Geometry,
        job: &Job<'_, T>,
        t: usize,
        h_prev: Option<&[T]>,
        zigzag: bool,
    ) {
        let Geometry {
            batch,
            h_out,
            width,
            ..
        } = *geom;
        let stride = self.stride(geom);
        let share = self.blocks.clone();
        let col0 = (share.start - self.base) * width;
        let row0 = (t - self.chunk.start) * batch * stride;
        let (cs, u0, n) = (self.unit_stride(), self.unit0(), share.len() * UNITS);
        // `h W_hh^T`: for an LSTM in place on the projected input, for a GRU
        // into `hh` after `b_hh`, which the tiles start from (`hh` is written
        // first only without a previous `h`, or without a bias to start from).
        let (dst, bias) = if job.is_lstm() {
            (&mut self.gx[row0 + col0..], None)
        } else {
            let bias = job
                .w
                .h_bias
                .as_ref()
                .map(|b| &b[share.start * width..share.end * width]);
            if h_prev.is_none() || bias.is_none() {
                for row in self.hh.chunks_exact_mut(stride) {
                    let dst = &mut row[col0..col0 + share.len() * width];
                    match bias {
                        Some(b) => dst.copy_from_slice(b),
                        None => dst.fill(T::ZERO),
                    }
                }
            }
            (&mut self.hh[col0..], bias)
        };
        if let Some(h_prev) = h_prev {
            mul_acc::<T, I>(
                dst,
                stride,
                h_prev,
                Rows::plain(h_out),
                batch,
                &job.w.w_hh,
                share.clone(),
                bias,
                zigzag,
                &mut self.scratch,
            );
        }
        for b in 0..batch {
            let pre = row0 + b * stride + col0;
            let u = b * cs + u0;
            if job.is_lstm() {
                lstm_row::<T, I>(
                    &mut self.gx[pre..pre + share.len() * width],
                    &mut self.c[u..u + n],
                    &mut self.h_units[u..u + n],
                );
                continue;
            }
            // Blocks `GRU_BLOCKS` at a time, then one by one.
            let zeros = [T::ZERO; GRU_BLOCKS * UNITS];
            let mut k = 0;
            while k < share.len() {
                let blocks = if k + GRU_BLOCKS <= share.len() {
                    GRU_BLOCKS
                } else {
                    1
                };
                let j = share.start + k;
                let units = geom.units_in(j).start..geom.units_in(j + blocks - 1).end;
                let hh = b * stride + col0 + k * width;
                let x = pre + k * width;
                let hp = match h_prev {
                    Some(h) => &h[b * h_out + units.start..b * h_out + units.end],
                    None => &zeros[..units.len()],
                };
                let (hh, x) = (
                    &self.hh[hh..hh + blocks * width],
                    &self.gx[x..x + blocks * width],
                );
                let h = &mut self.h_units[u + k * UNITS..u + k * UNITS + units.len()];
                if blocks == GRU_BLOCKS {
                    gru_blocks::<T, I, { 2 * GRU_BLOCKS * UNITS }, { GRU_BLOCKS * UNITS }>(
                        hh, x, hp, h,
                    );
                } else {
                    gru_blocks::<T, I, { 2 * UNITS }, UNITS>(hh, x, hp, h);
                }
                k += blocks;
            }
        }
    }

    /// With projection: the columns `cols` of `h W_hr^T` into `h_cols`, `h`
    /// being `h_units` (alone) or the team's full `hid`.
    #[inline(always)]
    pub(super) fn project_h<I: Isa>(
        &mut self,
        geom: &Geometry,
        job: &Job<'_, T>,
        alone: bool,
        zigzag: bool,
    ) {
        let ps = geom.proj_panels * PROJ_COLS;
        let cols = self.cols.clone();
        for row in self.h_cols.chunks_exact_mut(ps) {
            row[cols.start * PROJ_COLS..cols.end * PROJ_COLS].fill(T::ZERO);
        }
        let (lhs, lhs_rs) = if alone {
            (&self.h_units, self.unit_stride())
        } else {
            (&self.hid, geom.hidden)
        };
        mul_acc::<T, I>(
            &mut self.h_cols[cols.start * PROJ_COLS..],
            ps,
            lhs,
            Rows::plain(lhs_rs),
            geom.batch,
            job.w.w_hr.as_ref().expect("projecting weights"),
            cols,
            None,
            zigzag,
            &mut self.scratch,
        );
    }

    /// The columns of `h` this member computes, and where they are: `(cols,
    /// buffer, row stride)`.
    pub(super) fn h_out_part(&self, geom: &Geometry) -> (Range<usize>, &[T], usize) {
        if geom.projects() {
            let cols = (self.cols.start * PROJ_COLS).min(geom.h_out)
                ..(self.cols.end * PROJ_COLS).min(geom.h_out);
            let ps = geom.proj_panels * PROJ_COLS;
            (cols.clone(), &self.h_cols[cols.start..], ps)
        } else {
            (
                self.units(geom),
                &self.h_units[self.unit0()..],
                self.unit_stride(),
            )
        }
    }

    /// Publishes the share's cell state into the team's `c`.
    pub(super) fn publish_c(&self, geom: &Geometry, team: &Team<T>) {
        let c = &self.c[self.unit0()..];
        publish(
            &team.c,
            geom.hidden,
            self.units(geom),
            c,
            self.unit_stride(),
            geom.batch,
        );
    }
}
