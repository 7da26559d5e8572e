//! Fused operations a device's kernels take over: RMSNorm, SwiGLU's gate and softmax
//! cross-entropy, the three Liger Kernel fuses in a Llama training step.
//!
//! A kernel crate implements [`FusedOps`] and [`install`]s it, once per process (as Liger's
//! `apply_liger_kernel_to_llama()` patches a model's modules): from then on the Llama decoder's
//! norms, gates and losses offer their tensors to the installed implementations first, in
//! installation order. An implementation answers `None` for tensors that are not its own (on
//! another device, in a dtype it lacks), and the decoder then runs its own code: the CPU
//! backend's fused steps, or burn's composed ops. `mlinfra_kernels::fused` is the
//! implementation for burn's cubecl backends.
//!
//! [`without_fused_ops`] runs a closure with the installed implementations bypassed on its
//! thread: the reference a fused step is checked against.

use std::cell::Cell;
use std::sync::{Arc, RwLock};

use burn::tensor::{Int, Tensor};

/// Fused implementations of the decoder's memory-bound steps, for the tensors an
/// implementation recognises. Each method returns `None` to decline.
///
/// Contract: a returned tensor is what the composed ops compute, up to the rounding stated by
/// the implementation, and under autodiff it carries the step's gradients.
pub trait FusedOps: Send + Sync {
    /// What runs, for logs.
    fn describe(&self) -> String;

    /// RMSNorm over the last dimension of `x` (`[rows, cols]`) with weight `gamma` (`cols`):
    /// `x / √(mean(x²) + epsilon) · gamma`.
    fn rms_norm(&self, x: &Tensor<2>, gamma: &Tensor<1>, epsilon: f64) -> Option<Tensor<2>>;

    /// SwiGLU's gate, `silu(gate) · up`, elementwise over two `[rows, cols]` tensors.
    fn swiglu(&self, gate: &Tensor<2>, up: &Tensor<2>) -> Option<Tensor<2>>;

    /// The mean softmax cross-entropy of `logits` (`[rows, vocab]`) against `targets`
    /// (`rows` token ids), as burn's `CrossEntropyLoss` computes it: a one-element tensor.
    fn cross_entropy(&self, logits: &Tensor<2>, targets: &Tensor<1, Int>) -> Option<Tensor<1>>;
}

static INSTALLED: RwLock<Vec<Arc<dyn FusedOps>>> = RwLock::new(Vec::new());

thread_local! {
    static BYPASSED: Cell<bool> = const { Cell::new(false) };
}

/// Installs `ops` for the rest of the process, after those already installed.
pub fn install(ops: Arc<dyn FusedOps>) {
    INSTALLED
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(ops);
}

/// What is installed ([`FusedOps::describe`] of each), in order.
pub fn installed() -> Vec<String> {
    current().iter().map(|ops| ops.describe()).collect()
}

/// Runs `f` with the installed implementations bypassed on this thread (nested calls
/// included).
pub fn without_fused_ops<R>(f: impl FnOnce() -> R) -> R {
    let before = BYPASSED.with(|b| b.replace(true));
    let result = f();
    BYPASSED.with(|b| b.set(before));
    result
}

fn current() -> Vec<Arc<dyn FusedOps>> {
    if BYPASSED.with(Cell::get) {
        return Vec::new();
    }
    INSTALLED
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// The first installed implementation's answer, if any answers.
fn first<T>(call: impl Fn(&dyn FusedOps) -> Option<T>) -> Option<T> {
    current().iter().find_map(|ops| call(ops.as_ref()))
}

/// RMSNorm of `x` over its last dimension by an installed implementation.
pub(crate) fn rms_norm<const D: usize>(
    x: &Tensor<D>,
    gamma: &Tensor<1>,
    epsilon: f64,
) -> Option<Tensor<D>> {
    let dims = x.dims();
    let cols = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let flat = x.clone().reshape([rows, cols]);
    first(|ops| ops.rms_norm(&flat, gamma, epsilon)).map(|out| out.reshape(dims))
}

/// `silu(gate) · up` by an installed implementation.
pub(crate) fn swiglu<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    let dims = gate.dims();
    if up.dims() != dims {
        return None;
    }
    let cols = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let (gate_flat, up_flat) = (
        gate.clone().reshape([rows, cols]),
        up.clone().reshape([rows, cols]),
    );
    first(|ops| ops.swiglu(&gate_flat, &up_flat)).map(|out| out.reshape(dims))
}

/// The mean cross-entropy by an installed implementation, else burn's `CrossEntropyLoss`.
pub(crate) fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    if let Some(loss) = first(|ops| ops.cross_entropy(&logits, &targets)) {
        return loss;
    }
    burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, targets)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;

    /// Declines everything but counts the offers.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl FusedOps for Counting {
        fn describe(&self) -> String {
            "counting".into()
        }
        fn rms_norm(&self, x: &Tensor<2>, _: &Tensor<1>, _: f64) -> Option<Tensor<2>> {
            // Only this test's shape: other tests' norms run concurrently.
            if x.dims() == [21, 5] {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            None
        }
        fn swiglu(&self, _: &Tensor<2>, _: &Tensor<2>) -> Option<Tensor<2>> {
            None
        }
        fn cross_entropy(&self, _: &Tensor<2>, _: &Tensor<1, Int>) -> Option<Tensor<1>> {
            None
        }
    }

    /// Offers reach installed implementations as 2-D tensors, not when bypassed; a declined
    /// loss is burn's.
    #[test]
    fn installed_ops_are_offered_the_flattened_tensors_unless_bypassed() {
        let counting = Arc::new(Counting::default());
        install(counting.clone());
        assert!(installed().contains(&"counting".to_string()));
        let device = Device::flex();
        let x = Tensor::<3>::ones([7, 3, 5], &device);
        let gamma = Tensor::<1>::ones([5], &device);
        assert!(rms_norm(&x, &gamma, 1e-5).is_none());
        let offered = counting.0.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(offered, 1);
        without_fused_ops(|| assert!(rms_norm(&x, &gamma, 1e-5).is_none()));
        assert_eq!(
            counting.0.load(std::sync::atomic::Ordering::SeqCst),
            offered
        );

        let logits = Tensor::<2>::from_data(TensorData::new(vec![0f32, 0.0], [1, 2]), &device);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64], [1]), &device);
        let loss = cross_entropy(logits, targets).into_scalar::<f32>();
        assert!((loss - std::f32::consts::LN_2).abs() < 1e-6, "{loss}");
    }
}
