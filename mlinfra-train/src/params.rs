//! A module's float parameters as one flat `f32` vector, keyed by module path.
//!
//! burn identifies parameters by [`ParamId`](burn::module::ParamId)s drawn at random per
//! process, so two ranks (or a run and its restart) name the same weight differently. The
//! trainer therefore addresses parameters by their *module path* (`layers.0.weight`), the
//! names the `#[derive(Module)]` fields give them, and lays them out back to back in visit
//! order. That flat layout is what collectives reduce, what optimizer shards cut into
//! ranges, and what checkpoints store: the same on every rank of every run of a model.
//!
//! Moving between the module and the flat vector costs one host copy of the parameters
//! (or gradients) each way per step.
//!
//! **Frozen parameters.** [`ParamLayout::trainable`] leaves out parameters frozen with
//! `Param::set_require_grad(false)` on an autodiff device (the base weights under adapters):
//! the training engine lays out, reduces, optimizes and checkpoints only what trains, and a
//! frozen weight costs it nothing. [`ParamLayout::of`] keeps every float parameter.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor, TensorData};

use crate::{Error, Result};

/// Where one parameter lives in the flat vector.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamSlot {
    /// Module path, fields joined with `.`: `hidden.0.weight`.
    pub path: String,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// First element in the flat vector.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl ParamSlot {
    /// The slot's elements in a flat vector.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// The flat layout of a module's float parameters: every one, in visit order, with its path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamLayout {
    slots: Vec<ParamSlot>,
    len: usize,
    /// Which parameters the layout holds (and every pass over a module skips the others).
    #[serde(default, skip_serializing_if = "Selection::is_all")]
    selection: Selection,
}

/// Which of a module's float parameters a [`ParamLayout`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Selection {
    /// Every one.
    #[default]
    All,
    /// Those not frozen: see the [module docs](self).
    Trainable,
}

impl Selection {
    fn is_all(&self) -> bool {
        *self == Selection::All
    }

    /// Whether `param` belongs to a layout of this selection.
    fn holds<const D: usize>(self, param: &Param<Tensor<D>>) -> bool {
        match self {
            Selection::All => true,
            Selection::Trainable => {
                let tensor = param.val();
                !tensor.is_autodiff() || tensor.is_require_grad()
            }
        }
    }
}

impl ParamLayout {
    /// The layout of `module`'s float parameters. Reads shapes only: no tensor data is touched.
    ///
    /// # Errors
    ///
    /// [`Error::ModelLayout`] when two parameters share a path (a module visited twice).
    pub fn of<M: Module>(module: &M) -> Result<ParamLayout> {
        Self::select(module, Selection::All)
    }

    /// The layout of `module`'s trainable float parameters: every float parameter but those
    /// frozen with `Param::set_require_grad(false)` on an autodiff device (on other devices
    /// nothing is frozen). What the training engine uses.
    ///
    /// # Errors
    ///
    /// As [`ParamLayout::of`].
    pub fn trainable<M: Module>(module: &M) -> Result<ParamLayout> {
        Self::select(module, Selection::Trainable)
    }

    fn select<M: Module>(module: &M, selection: Selection) -> Result<ParamLayout> {
        let mut visitor = PathVisitor::with(SlotCollector {
            slots: Vec::new(),
            selection,
        });
        module.visit(&mut visitor);
        let slots = visitor.inner.slots;
        let mut paths: Vec<&str> = slots.iter().map(|slot| slot.path.as_str()).collect();
        paths.sort_unstable();
        if let Some(pair) = paths.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(Error::ModelLayout {
                reason: format!("two parameters have the path `{}`", pair[0]).into(),
            });
        }
        let len = slots.last().map_or(0, |slot| slot.offset + slot.len);
        Ok(ParamLayout {
            slots,
            len,
            selection,
        })
    }

    /// The parameters, in flat order.
    pub fn slots(&self) -> &[ParamSlot] {
        &self.slots
    }

    /// The slot of the parameter at `path`.
    pub fn slot(&self, path: &str) -> Option<&ParamSlot> {
        self.slots.iter().find(|slot| slot.path == path)
    }

    /// Elements in the flat vector (the model's parameter count).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the model has no float parameters.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `module`'s parameter values, flat, as `f32` (converted from the module's dtype).
    ///
    /// # Errors
    ///
    /// [`Error::ModelLayout`] when `module` does not have this layout; [`Error::Tensor`] when
    /// the device cannot read a tensor back.
    pub fn values<M: Module>(&self, module: &M) -> Result<Vec<f32>> {
        let mut gather = Gather::new(self, None);
        let mut visitor = PathVisitor::with(&mut gather);
        module.visit(&mut visitor);
        gather.finish()
    }

    /// The gradients `grads` holds for `module`'s parameters, flat, as `f32`; zeros for a
    /// parameter the loss does not depend on.
    ///
    /// # Errors
    ///
    /// As [`ParamLayout::values`].
    pub fn grads<M: Module>(&self, module: &M, grads: &Gradients) -> Result<Vec<f32>> {
        let mut gather = Gather::new(self, Some(grads));
        let mut visitor = PathVisitor::with(&mut gather);
        module.visit(&mut visitor);
        gather.finish()
    }

    /// `module` with its parameters replaced by `values` (flat, in this layout), each in the
    /// parameter's own dtype and on its device, keeping its id and whether it requires a
    /// gradient.
    ///
    /// # Errors
    ///
    /// [`Error::ModelLayout`] when `values` or `module` do not match this layout.
    pub fn load<M: Module>(&self, module: M, values: &[f32]) -> Result<M> {
        if values.len() != self.len {
            return Err(Error::ModelLayout {
                reason: format!(
                    "{} values for a layout of {} parameters",
                    values.len(),
                    self.len
                )
                .into(),
            });
        }
        let mut scatter = Scatter {
            layout: self,
            values,
            next: 0,
            error: None,
        };
        let mut mapper = PathVisitor::with(&mut scatter);
        let module = module.map(&mut mapper);
        match scatter.error {
            Some(error) => Err(error),
            None if scatter.next != self.slots.len() => Err(missing(self, scatter.next)),
            None => Ok(module),
        }
    }
}

fn missing(layout: &ParamLayout, next: usize) -> Error {
    Error::ModelLayout {
        reason: format!(
            "the module has {next} parameters, the layout {} (first missing: `{}`)",
            layout.slots.len(),
            layout.slots[next].path
        )
        .into(),
    }
}

/// Something that is handed each float parameter with its path.
trait OnParam {
    fn on_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>);
}

/// Tracks the module path through `enter_module`/`exit_module` and calls `inner` with it.
#[derive(Default)]
struct PathVisitor<T> {
    inner: T,
    path: Vec<String>,
}

impl<T> PathVisitor<T> {
    fn with(inner: T) -> Self {
        PathVisitor {
            inner,
            path: Vec::new(),
        }
    }

    fn joined(&self) -> String {
        self.path.join(".")
    }
}

impl<T: OnParam> ModuleVisitor for PathVisitor<T> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.joined();
        self.inner.on_float(&path, param);
    }
}

impl<T: OnParam> OnParam for &mut T {
    fn on_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
        (**self).on_float(path, param);
    }
}

struct SlotCollector {
    slots: Vec<ParamSlot>,
    selection: Selection,
}

impl OnParam for SlotCollector {
    fn on_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
        if !self.selection.holds(param) {
            return;
        }
        let shape = param.lazy_shape().as_slice().to_vec();
        let len = shape.iter().product();
        let offset = self.slots.last().map_or(0, |slot| slot.offset + slot.len);
        self.slots.push(ParamSlot {
            path: path.to_owned(),
            shape,
            offset,
            len,
        });
    }
}

/// Copies values (or gradients) into the flat vector, checking each against the layout.
struct Gather<'a> {
    layout: &'a ParamLayout,
    grads: Option<&'a Gradients>,
    out: Vec<f32>,
    next: usize,
    error: Option<Error>,
}

impl<'a> Gather<'a> {
    fn new(layout: &'a ParamLayout, grads: Option<&'a Gradients>) -> Self {
        Gather {
            layout,
            grads,
            out: vec![0.0; layout.len],
            next: 0,
            error: None,
        }
    }

    fn finish(self) -> Result<Vec<f32>> {
        match self.error {
            Some(error) => Err(error),
            None if self.next != self.layout.slots.len() => Err(missing(self.layout, self.next)),
            None => Ok(self.out),
        }
    }
}

impl OnParam for Gather<'_> {
    fn on_float<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
        if self.error.is_some() || !self.layout.selection.holds(param) {
            return;
        }
        let slot = match check_slot(self.layout, self.next, path, param.lazy_shape().as_slice()) {
            Ok(slot) => slot,
            Err(error) => return self.error = Some(error),
        };
        self.next += 1;
        let tensor = match self.grads {
            None => Some(param.val()),
            // No gradient: the loss does not depend on it; its slot stays zero.
            Some(grads) => param.val().grad(grads),
        };
        let Some(tensor) = tensor else { return };
        if let Err(error) = read_f32_into(&tensor, path, &mut self.out[slot.range()]) {
            self.error = Some(error);
        }
    }
}

fn check_slot<'a>(
    layout: &'a ParamLayout,
    next: usize,
    path: &str,
    shape: &[usize],
) -> Result<&'a ParamSlot> {
    let slot = layout.slots.get(next).ok_or_else(|| Error::ModelLayout {
        reason: format!(
            "the module has more parameters than the layout's {} (first extra: `{path}`)",
            layout.slots.len()
        )
        .into(),
    })?;
    if slot.path != path || slot.shape != shape {
        return Err(Error::ModelLayout {
            reason: format!(
                "parameter {next} is `{path}` {shape:?} in the module but `{}` {:?} in the layout",
                slot.path, slot.shape
            )
            .into(),
        });
    }
    Ok(slot)
}

/// `tensor`'s values as `f32` on the host; `path` names it in the error.
pub(crate) fn read_f32<const D: usize>(tensor: &Tensor<D>, path: &str) -> Result<Vec<f32>> {
    let mut values = vec![0.0; tensor.shape().num_elements()];
    read_f32_into(tensor, path, &mut values)?;
    Ok(values)
}

/// Copies `tensor`'s values, as `f32`, into `out` (of the same length): one copy out of
/// burn's read-back buffer, where collecting into a `Vec` first costs a second pass over the
/// values (much of a step's per-parameter time goes to such passes).
pub(crate) fn read_f32_into<const D: usize>(
    tensor: &Tensor<D>,
    path: &str,
    out: &mut [f32],
) -> Result<()> {
    let copied = tensor
        .try_to_data_as::<f32>()
        .map_err(|e| e.to_string())
        .and_then(|data| {
            let values = data.as_slice::<f32>().map_err(|e| format!("{e:?}"))?;
            if values.len() != out.len() {
                return Err(format!("{} values for {} slots", values.len(), out.len()));
            }
            out.copy_from_slice(values);
            Ok(())
        });
    copied.map_err(|reason| Error::Tensor {
        reason: format!("reading `{path}`: {reason}").into(),
    })
}

/// Replaces each parameter with its slice of the flat vector.
struct Scatter<'a> {
    layout: &'a ParamLayout,
    values: &'a [f32],
    next: usize,
    error: Option<Error>,
}

impl<T: OnParamMut> ModuleMapper for PathVisitor<T> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.joined();
        self.inner.map_float(&path, param)
    }
}

/// Something that replaces each float parameter, given its path.
trait OnParamMut {
    fn map_float<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>>;
}

impl<T: OnParamMut> OnParamMut for &mut T {
    fn map_float<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        (**self).map_float(path, param)
    }
}

impl OnParamMut for Scatter<'_> {
    fn map_float<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        if self.error.is_some() || !self.layout.selection.holds(&param) {
            return param;
        }
        let slot = match check_slot(self.layout, self.next, path, param.lazy_shape().as_slice()) {
            Ok(slot) => slot.clone(),
            Err(error) => {
                self.error = Some(error);
                return param;
            }
        };
        self.next += 1;
        let values = self.values[slot.range()].to_vec();
        param.map(|tensor| {
            let (device, dtype) = (tensor.device(), tensor.dtype());
            let require_grad = tensor.is_require_grad();
            let data = TensorData::new(values, slot.shape.clone());
            Tensor::from_data(data, (&device, dtype)).set_require_grad(require_grad)
        })
    }
}
