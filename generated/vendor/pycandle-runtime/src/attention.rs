//! `nn.MultiheadAttention` in eval mode, with PyTorch's parameter names and masking rules.
//!
//! Parameters load from the module's state-dict prefix: `in_proj_weight` (or
//! `q_proj_weight`, `k_proj_weight`, `v_proj_weight` when `kdim`/`vdim` differ from
//! `embed_dim`), `in_proj_bias`, `out_proj.weight` and `out_proj.bias`.
//!
//! Masks follow `nn.MultiheadAttention`, not `scaled_dot_product_attention`: a boolean
//! `key_padding_mask` (N, S) or `attn_mask` (L, S) or (N * num_heads, L, S) is `true` where
//! attention is *not* allowed; float masks are added to the scores.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

/// The constructor arguments of `nn.MultiheadAttention` that change the computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultiheadAttentionConfig {
    pub embed_dim: usize,
    pub num_heads: usize,
    pub kdim: usize,
    pub vdim: usize,
    pub bias: bool,
    pub batch_first: bool,
}

impl MultiheadAttentionConfig {
    /// PyTorch's defaults: `kdim = vdim = embed_dim`, `bias=True`, `batch_first=False`.
    pub fn new(embed_dim: usize, num_heads: usize) -> Self {
        Self {
            embed_dim,
            num_heads,
            kdim: embed_dim,
            vdim: embed_dim,
            bias: true,
            batch_first: false,
        }
    }
}

/// The masks of one call, as `forward`'s keyword arguments give them.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionMasks<'a> {
    pub key_padding_mask: Option<&'a Tensor>,
    pub attn_mask: Option<&'a Tensor>,
    /// PyTorch's hint that `attn_mask` is the causal mask: without a key padding mask and
    /// without weights, the causal mask is built from the sequence lengths instead.
    pub is_causal: bool,
}

#[derive(Debug, Clone)]
pub struct MultiheadAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    config: MultiheadAttentionConfig,
}

impl MultiheadAttention {
    pub fn load(config: MultiheadAttentionConfig, vb: VarBuilder) -> Result<Self> {
        let e = config.embed_dim;
        if config.num_heads == 0 || !e.is_multiple_of(config.num_heads) {
            candle_core::bail!(
                "embed_dim {e} is not divisible by num_heads {}",
                config.num_heads
            )
        }
        let (wq, wk, wv) = if config.kdim == e && config.vdim == e {
            let w = vb.get((3 * e, e), "in_proj_weight")?;
            (
                w.narrow(0, 0, e)?,
                w.narrow(0, e, e)?,
                w.narrow(0, 2 * e, e)?,
            )
        } else {
            (
                vb.get((e, e), "q_proj_weight")?,
                vb.get((e, config.kdim), "k_proj_weight")?,
                vb.get((e, config.vdim), "v_proj_weight")?,
            )
        };
        let (bq, bk, bv) = if config.bias {
            let b = vb.get(3 * e, "in_proj_bias")?;
            (
                Some(b.narrow(0, 0, e)?),
                Some(b.narrow(0, e, e)?),
                Some(b.narrow(0, 2 * e, e)?),
            )
        } else {
            (None, None, None)
        };
        let out_proj = if config.bias {
            candle_nn::linear(e, e, vb.pp("out_proj"))?
        } else {
            candle_nn::linear_no_bias(e, e, vb.pp("out_proj"))?
        };
        Ok(Self {
            q_proj: Linear::new(wq, bq),
            k_proj: Linear::new(wk, bk),
            v_proj: Linear::new(wv, bv),
            out_proj,
            config,
        })
    }

    pub fn config(&self) -> &MultiheadAttentionConfig {
        &self.config
    }

    /// `attn_output` of `forward(query, key, value, need_weights=False, ...)`.
    pub fn forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: AttentionMasks,
    ) -> Result<Tensor> {
        Ok(self.attend(query, key, value, masks, None)?.0)
    }

    /// `(attn_output, attn_weights)` of `forward(..., need_weights=True)`: the weights are
    /// (N, L, S) averaged over the heads, or (N, num_heads, L, S) when `average` is false
    /// (without N for an unbatched query).
    pub fn forward_with_weights(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: AttentionMasks,
        average: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (out, weights) = self.attend(query, key, value, masks, Some(average))?;
        match weights {
            Some(w) => Ok((out, w)),
            None => candle_core::bail!("attention weights were not computed"),
        }
    }

    /// Batch first: (N, L, E) from the caller's layout; unbatched (L, E) becomes (1, L, E).
    fn to_batch_first(&self, x: &Tensor, batched: bool) -> Result<Tensor> {
        if !batched {
            x.unsqueeze(0)
        } else if self.config.batch_first {
            Ok(x.clone())
        } else {
            x.transpose(0, 1)
        }
    }

    /// (N, T, E) projected and split into heads: (N, H, T, E / H), contiguous.
    fn heads(&self, proj: &Linear, x: &Tensor) -> Result<Tensor> {
        let (n, t, _) = x.dims3()?;
        let h = self.config.num_heads;
        proj.forward(&x.contiguous()?)?
            .reshape((n, t, h, self.config.embed_dim / h))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn attend(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: AttentionMasks,
        weights: Option<bool>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let batched = match query.rank() {
            3 => true,
            2 => false,
            r => candle_core::bail!("MultiheadAttention on a rank-{r} query (2 or 3)"),
        };
        let (h, e) = (self.config.num_heads, self.config.embed_dim);
        let q = self.heads(&self.q_proj, &self.to_batch_first(query, batched)?)?;
        let k = self.heads(&self.k_proj, &self.to_batch_first(key, batched)?)?;
        let v = self.heads(&self.v_proj, &self.to_batch_first(value, batched)?)?;
        let (n, _, l, d) = q.dims4()?;
        let s = k.dim(2)?;
        let dtype = q.dtype();
        // PyTorch scales the query by sqrt(1 / head_dim) before the product
        let q = (q * (1.0 / d as f64).sqrt())?;
        let mut scores = q.matmul(&k.t()?.contiguous()?)?; // (N, H, L, S)
        let kpm = match masks.key_padding_mask {
            Some(m) if !batched => Some(m.unsqueeze(0)?),
            Some(m) => Some(m.clone()),
            None => None,
        };
        if masks.is_causal && kpm.is_none() && weights.is_none() {
            let i = Tensor::arange(0u32, l as u32, q.device())?.unsqueeze(1)?;
            let j = Tensor::arange(0u32, s as u32, q.device())?.unsqueeze(0)?;
            scores = scores.broadcast_add(&additive(&j.broadcast_gt(&i)?, dtype)?)?;
        } else if let Some(m) = masks.attn_mask {
            let m = match m.rank() {
                2 => m.clone(),
                3 => m.reshape((n, h, l, s))?,
                r => candle_core::bail!("attn_mask of rank {r} (2 or 3)"),
            };
            scores = scores.broadcast_add(&additive(&m, dtype)?)?;
        }
        if let Some(m) = kpm {
            scores = scores.broadcast_add(&additive(&m.reshape((n, 1, 1, s))?, dtype)?)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((n, l, e))?;
        let out = self.out_proj.forward(&out)?;
        let out = if !batched {
            out.squeeze(0)?
        } else if self.config.batch_first {
            out
        } else {
            out.transpose(0, 1)?
        };
        let weights = match weights {
            None => None,
            Some(average) => {
                let w = if average { probs.mean(1)? } else { probs };
                Some(if batched { w } else { w.squeeze(0)? })
            }
        };
        Ok((out, weights))
    }
}

/// A mask as scores to add: a boolean (u8) mask is `-inf` where set, 0 elsewhere; a float
/// mask is itself, in the scores' dtype.
fn additive(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    if mask.dtype().is_float() {
        return mask.to_dtype(dtype);
    }
    let zeros = Tensor::zeros(mask.shape(), dtype, mask.device())?;
    let neg_inf = Tensor::full(f32::NEG_INFINITY, mask.shape(), mask.device())?.to_dtype(dtype)?;
    mask.where_cond(&neg_inf, &zeros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    /// One head, identity projections, no bias: plain softmax(q k^T / sqrt(E)) v.
    fn identity_mha(e: usize, batch_first: bool) -> Result<MultiheadAttention> {
        let dev = Device::Cpu;
        let eye = Tensor::eye(e, DType::F32, &dev)?;
        let mut map = HashMap::new();
        map.insert(
            "in_proj_weight".to_string(),
            Tensor::cat(&[&eye, &eye, &eye], 0)?,
        );
        map.insert("out_proj.weight".to_string(), eye);
        let cfg = MultiheadAttentionConfig {
            bias: false,
            batch_first,
            ..MultiheadAttentionConfig::new(e, 1)
        };
        MultiheadAttention::load(cfg, VarBuilder::from_tensors(map, DType::F32, &dev))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn identity_projections_give_scaled_dot_product_attention() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 24., &dev)?
            .reshape((2, 3, 4))?
            .affine(0.1, -1.0)?;
        let mha = identity_mha(4, true)?;
        let (out, w) = mha.forward_with_weights(&x, &x, &x, AttentionMasks::default(), true)?;
        let expected_w = candle_nn::ops::softmax_last_dim(&(x.matmul(&x.t()?)? * 0.5)?)?;
        assert!(max_diff(&w, &expected_w)? < 1e-6);
        assert!(max_diff(&out, &expected_w.matmul(&x)?)? < 1e-6);
        // the same without weights, and sequence first
        let seq_first = identity_mha(4, false)?;
        let xt = x.transpose(0, 1)?;
        let out2 = seq_first.forward(&xt, &xt, &xt, AttentionMasks::default())?;
        assert!(max_diff(&out2.transpose(0, 1)?, &out)? < 1e-6);
        Ok(())
    }

    #[test]
    fn masks_exclude_keys() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 12., &dev)?
            .reshape((1, 3, 4))?
            .affine(0.1, 0.0)?;
        let mha = identity_mha(4, true)?;
        // the last key padded away, and a causal mask: row 0 sees only key 0
        let kpm = Tensor::new(&[[0u8, 0, 1]], &dev)?;
        let causal = Tensor::new(&[[0u8, 1, 1], [0, 0, 1], [0, 0, 0]], &dev)?;
        let masks = AttentionMasks {
            key_padding_mask: Some(&kpm),
            attn_mask: Some(&causal),
            is_causal: false,
        };
        let (_, w) = mha.forward_with_weights(&x, &x, &x, masks, false)?;
        let w = w.squeeze(0)?.squeeze(0)?.to_vec2::<f32>()?;
        assert_eq!(w[0], [1.0, 0.0, 0.0]);
        assert!(w.iter().all(|row| row[2] == 0.0));
        // is_causal without a padding mask builds the mask from the lengths
        let hinted = AttentionMasks {
            attn_mask: Some(&causal),
            is_causal: true,
            ..masks
        };
        let hinted = AttentionMasks {
            key_padding_mask: None,
            ..hinted
        };
        let a = mha.forward(&x, &x, &x, hinted)?;
        let b = mha.forward(
            &x,
            &x,
            &x,
            AttentionMasks {
                is_causal: false,
                ..hinted
            },
        )?;
        assert!(max_diff(&a, &b)? < 1e-6);
        // unbatched input
        let u = mha.forward(&x.squeeze(0)?, &x.squeeze(0)?, &x.squeeze(0)?, hinted)?;
        assert!(max_diff(&u, &a.squeeze(0)?)? < 1e-6);
        Ok(())
    }
}
