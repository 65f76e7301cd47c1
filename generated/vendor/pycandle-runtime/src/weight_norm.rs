//! Layers trained with PyTorch's weight normalisation, loaded from their own parameters.

use std::collections::HashMap;

use candle_core::Result;
use candle_nn::VarBuilder;

/// The `VarBuilder` of a layer under weight normalisation, with its `weight` computed once
/// from the parameters PyTorch keeps instead: `weight = v * (g / ||v||)`, the norm taken over
/// every dimension but `dim` (over all of them for `None`), as `torch._weight_norm` does.
///
/// Reads either spelling of the parameters: `weight_g` and `weight_v`
/// (`torch.nn.utils.weight_norm`) or `parametrizations.weight.original0` and `original1`
/// (`torch.nn.utils.parametrizations.weight_norm`). The layer's other tensors (`bias`) pass
/// through, so any constructor that loads `weight` and `bias` takes the result.
pub fn weight_norm(vb: VarBuilder, dim: Option<usize>) -> Result<VarBuilder<'static>> {
    let (g, v) = if vb.contains_tensor("weight_g") {
        (vb.get_unchecked("weight_g")?, vb.get_unchecked("weight_v")?)
    } else {
        let p = vb.pp("parametrizations").pp("weight");
        (p.get_unchecked("original0")?, p.get_unchecked("original1")?)
    };
    let norm = match dim {
        // the norm of each slice along `dim`, kept in place for broadcasting against `v`
        Some(dim) => {
            let moved = v.transpose(0, dim)?.flatten_from(1)?;
            let norms = moved.sqr()?.sum_keepdim(1)?.sqrt()?; // (v.dim(dim), 1)
            let mut shape = vec![1; v.rank()];
            shape[dim] = v.dim(dim)?;
            norms.reshape(shape)?
        }
        None => v.sqr()?.sum_all()?.sqrt()?,
    };
    let weight = v.broadcast_mul(&g.broadcast_div(&norm)?)?;
    let mut tensors = HashMap::from([("weight".to_string(), weight)]);
    if vb.contains_tensor("bias") {
        tensors.insert("bias".to_string(), vb.get_unchecked("bias")?);
    }
    Ok(VarBuilder::from_tensors(tensors, vb.dtype(), vb.device()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn both_spellings_and_dims() -> Result<()> {
        let dev = Device::Cpu;
        // v = [[3, 4], [0, 2]], rows scaled to norm g = [10, 1]
        let v = Tensor::new(&[[3f32, 4.0], [0.0, 2.0]], &dev)?;
        let g = Tensor::new(&[[10f32], [1.0]], &dev)?;
        let hooked = HashMap::from([
            ("l.weight_v".to_string(), v.clone()),
            ("l.weight_g".to_string(), g.clone()),
            ("l.bias".to_string(), Tensor::new(&[1f32, 2.0], &dev)?),
        ]);
        let vb = VarBuilder::from_tensors(hooked, DType::F32, &dev);
        let wn = weight_norm(vb.pp("l"), Some(0))?;
        let w = wn.get((2, 2), "weight")?.to_vec2::<f32>()?;
        assert_eq!(w, [[6.0, 8.0], [0.0, 1.0]]);
        assert_eq!(wn.get(2, "bias")?.to_vec1::<f32>()?, [1.0, 2.0]);

        let parametrized = HashMap::from([
            ("parametrizations.weight.original1".to_string(), v),
            (
                "parametrizations.weight.original0".to_string(),
                Tensor::new(5f32, &dev)?,
            ),
        ]);
        let vb = VarBuilder::from_tensors(parametrized, DType::F32, &dev);
        let wn = weight_norm(vb, None)?; // ||v|| = sqrt(29)
        let w = wn.get((2, 2), "weight")?.to_vec2::<f32>()?;
        let s = 5.0 / 29f32.sqrt();
        assert_eq!(w, [[3.0 * s, 4.0 * s], [0.0, 2.0 * s]]);
        assert!(!wn.contains_tensor("bias"));
        Ok(())
    }
}
