//! QLoRA's frozen base: a weight kept in its GGUF blocks ([`QuantizedWeight`]) and the linear
//! map over it, dequantized a tile of rows at a time inside the forward and backward passes.
//!
//! # Why a custom autodiff step
//!
//! `y = x · Wᵀ` over dequantized tiles written with ordinary tensor ops would make burn's
//! autodiff keep every dequantized tile until the backward pass (it saves a matmul's
//! right-hand side to compute the gradient of the left), so a training step would hold the
//! whole f32 base after all. Like bitsandbytes' `MatMul4Bit` under PEFT's QLoRA, the step
//! registered here saves only a reference to the quantized blocks and dequantizes again in
//! the backward pass: `dL/dx = dL/dy · W`, tile by tile. `W` itself gets no gradient (it is
//! frozen). burn offers no such hook at its tensor level, so this is written against
//! `burn-autodiff`'s backend-extension API for the CPU backend (`Autodiff<Flex>`); on other
//! backends the same tiles go through ordinary ops (correct, but they are kept for backward).
//!
//! # Costs
//!
//! Resident: the blocks (Q4_0 4.5 bits, Q4_1 5, Q8_0 8.5 per weight, against f32's 32).
//! Per pass: one dequantization of every tile (forward) or two (training), and at most one
//! tile of [`TILE_ROWS`] rows in f32 at a time.

use std::ops::Range;
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn_flex::Flex;
use mlinfra_data::tensor::{GgmlType, dequantize_into};

use crate::{Error, Result};

/// Output rows dequantized at a time: 128 rows of SmolLM2's widest input (1,536) are 768 KiB
/// of f32, about a core's L2.
pub const TILE_ROWS: usize = 128;

/// A frozen `[out, in]` weight (Hugging Face's layout: one row per output) in ggml blocks.
pub struct QuantizedWeight {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    bytes: Box<[u8]>,
}

impl std::fmt::Debug for QuantizedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedWeight")
            .field("ty", &self.ty.name())
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

impl QuantizedWeight {
    /// `rows × cols` weights of type `ty`, row-major in `bytes` (each row whole blocks).
    ///
    /// # Errors
    ///
    /// [`Error::Weights`] for a type mlinfra-data cannot dequantize, rows that are not whole
    /// blocks, or `bytes` of another length.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self> {
        let fail = |reason: String| {
            Err(Error::Weights {
                origin: "a quantized weight".into(),
                reason: reason.into(),
            })
        };
        let block = ty.block_size();
        if block == 0 || !cols.is_multiple_of(block) {
            return fail(format!(
                "{} rows of {cols} are not whole blocks of {block}",
                ty.name()
            ));
        }
        let row_bytes = cols / block * ty.type_size();
        if Some(bytes.len()) != rows.checked_mul(row_bytes) {
            return fail(format!(
                "{rows} rows of {cols} {} weights need {row_bytes} bytes each, got {} in all",
                ty.name(),
                bytes.len()
            ));
        }
        let weight = QuantizedWeight {
            ty,
            rows,
            cols,
            row_bytes,
            bytes: bytes.into_boxed_slice(),
        };
        let mut probe = vec![0.0; cols];
        if rows > 0 && !weight.dequantize_rows(0..1, &mut probe) {
            return fail(format!(
                "{} is not a type mlinfra-data dequantizes",
                ty.name()
            ));
        }
        Ok(weight)
    }

    /// The ggml type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Bytes held: the blocks.
    pub fn resident_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Rows `rows` as f32 into `out` (`rows.len() · in` values); false for a bad range.
    pub fn dequantize_rows(&self, rows: Range<usize>, out: &mut [f32]) -> bool {
        if rows.end > self.rows || rows.start > rows.end {
            return false;
        }
        let bytes = &self.bytes[rows.start * self.row_bytes..rows.end * self.row_bytes];
        dequantize_into(self.ty, bytes, out)
    }

    /// Rows `rows` as a `[rows, in]` tensor on `like`'s device, in its dtype: one f32 buffer,
    /// handed to burn without a copy.
    fn tile(&self, rows: Range<usize>, like: &Tensor<2>) -> Tensor<2> {
        let count = rows.len();
        let mut values = vec![0.0; count * self.cols];
        let converted = self.dequantize_rows(rows, &mut values);
        debug_assert!(converted, "checked at construction");
        Tensor::<2>::from_data(
            TensorData::new(values, [count, self.cols]),
            (&like.device(), like.dtype()),
        )
    }

    /// `x · Wᵀ` for `x` `[n, in]`, one tile of rows of `W` at a time: `[n, out]`.
    fn forward_tiles(&self, x: Tensor<2>) -> Tensor<2> {
        let parts: Vec<Tensor<2>> = (0..self.rows)
            .step_by(TILE_ROWS)
            .map(|start| {
                let rows = start..(start + TILE_ROWS).min(self.rows);
                let tile = self.tile(rows, &x);
                x.clone().matmul(tile.transpose())
            })
            .collect();
        Tensor::cat(parts, 1)
    }

    /// `dy · W` for `dy` `[n, out]`: the gradient of `x · Wᵀ` with respect to `x`, `[n, in]`.
    fn backward_tiles(&self, dy: Tensor<2>) -> Tensor<2> {
        let mut sum: Option<Tensor<2>> = None;
        for start in (0..self.rows).step_by(TILE_ROWS) {
            let rows = start..(start + TILE_ROWS).min(self.rows);
            let count = rows.len();
            let tile = self.tile(rows, &dy);
            let part = dy.clone().narrow(1, start, count).matmul(tile);
            sum = Some(match sum {
                Some(sum) => sum + part,
                None => part,
            });
        }
        sum.unwrap_or_else(|| Tensor::zeros([dy.dims()[0], self.cols], (&dy.device(), dy.dtype())))
    }
}

/// `x · Wᵀ` for `x` `[..., in]`: `[..., out]`, `W` never dequantized whole (see the
/// [module docs](self)).
pub(crate) fn quantized_linear<const D: usize>(
    x: Tensor<D>,
    weight: &Arc<QuantizedWeight>,
) -> Tensor<D> {
    let dims = x.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let flat = x.reshape([rows, weight.cols]);
    let out = match flat.clone().try_into_primitive::<Autodiff<Flex>>() {
        // On `Autodiff<Flex>`: computed on the inner tensor, registered with only the
        // quantized weight as the backward step's state.
        Ok(x) => {
            let node = x.node();
            let inner = Tensor::<2>::from_primitive::<Flex>(x.primitive().clone());
            let out = weight
                .forward_tiles(inner)
                .try_into_primitive::<Flex>()
                .unwrap_or_else(|e| unreachable!("a Flex tensor stays on Flex: {e:?}"));
            let tracked = match QuantizedMatmul
                .prepare::<NoCheckpointing>([node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(Arc::clone(weight), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            };
            Tensor::<2>::from_primitive::<Autodiff<Flex>>(tracked)
        }
        Err(_) => weight.forward_tiles(flat),
    };
    let mut shape = dims;
    shape[D - 1] = weight.rows;
    out.reshape(shape)
}

/// The backward step: the gradient of `x` from the gradient of `y`, dequantizing again.
#[derive(Debug)]
struct QuantizedMatmul;

impl Backward<Flex, 1> for QuantizedMatmul {
    type State = Arc<QuantizedWeight>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let weight = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let dy = Tensor::<2>::from_primitive::<Flex>(grad);
            weight
                .backward_tiles(dy)
                .try_into_primitive::<Flex>()
                .unwrap_or_else(|e| unreachable!("a Flex tensor stays on Flex: {e:?}"))
        });
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::rng::SplitMix64;

    /// Random but valid blocks: every byte pattern is a block, once the f16 scale (and Q4_1's
    /// minimum) are small finite numbers.
    pub(crate) fn random_weight(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        seed: u64,
    ) -> QuantizedWeight {
        let mut rng = SplitMix64::new(seed);
        let block_bytes = ty.type_size();
        let blocks = rows * cols / ty.block_size();
        let mut bytes = Vec::with_capacity(blocks * block_bytes);
        for _ in 0..blocks {
            let scale = half::f16::from_f32(rng.uniform(0.001, 0.02) as f32).to_le_bytes();
            let min = half::f16::from_f32(rng.uniform(-0.1, 0.0) as f32).to_le_bytes();
            bytes.extend_from_slice(&scale);
            let mut rest = block_bytes - 2;
            if ty == GgmlType::Q4_1 {
                bytes.extend_from_slice(&min);
                rest -= 2;
            }
            bytes.extend((0..rest).map(|_| rng.next_u64() as u8));
        }
        QuantizedWeight::new(ty, rows, cols, bytes).unwrap()
    }

    fn dense(weight: &QuantizedWeight, device: &Device) -> Tensor<2> {
        let [rows, cols] = weight.shape();
        let mut values = vec![0.0; rows * cols];
        assert!(weight.dequantize_rows(0..rows, &mut values));
        Tensor::from_data(TensorData::new(values, [rows, cols]), device)
    }

    fn input(rows: usize, cols: usize, device: &Device) -> Tensor<2> {
        let mut rng = SplitMix64::new(5);
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| rng.uniform(-1.0, 1.0) as f32)
            .collect();
        Tensor::from_data(TensorData::new(values, [rows, cols]), device)
    }

    fn max_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Forward and backward over tiles equal the dense map over the whole dequantized weight,
    /// for Q4_0, Q4_1 and Q8_0, with an output width that is not a multiple of the tile.
    #[test]
    fn tiles_compute_what_the_dense_weight_does() {
        let device = Device::flex().autodiff();
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let weight = Arc::new(random_weight(ty, 2 * TILE_ROWS + 37, 64, 3));
            let w = dense(&weight, &device);
            let x = input(6, 64, &device).require_grad();
            assert!(
                x.clone().try_into_primitive::<Autodiff<Flex>>().is_ok(),
                "the custom backward step is the one under test"
            );
            let probe = input(6, 2 * TILE_ROWS + 37, &device);
            let y = quantized_linear(x.clone(), &weight);
            let want = x.clone().matmul(w.clone().transpose());
            assert!(max_diff(y.clone(), want) < 1e-5, "{}: forward", ty.name());
            let grads = (y * probe.clone()).sum().backward();
            let got = x.grad(&grads).unwrap();
            let want = probe.inner().matmul(w.inner());
            assert!(max_diff(got, want) < 1e-4, "{}: backward", ty.name());
        }
    }

    #[test]
    fn weights_whose_rows_are_not_whole_blocks_are_refused() {
        let error = QuantizedWeight::new(GgmlType::Q4_0, 2, 40, vec![0; 36])
            .unwrap_err()
            .to_string();
        assert!(error.contains("not whole blocks of 32"), "{error}");
        let error = QuantizedWeight::new(GgmlType::Q8_0, 2, 32, vec![0; 30])
            .unwrap_err()
            .to_string();
        assert!(error.contains("need 34 bytes each"), "{error}");
    }
}
