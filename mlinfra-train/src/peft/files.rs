//! PEFT's adapter files: [`PeftAdapter`] reads and writes the directory `save_pretrained`
//! writes and `PeftModel.from_pretrained` reads, so adapters move between mlinfra and Hugging
//! Face PEFT without a conversion step.
//!
//! # The format
//!
//! - `adapter_model.safetensors`: per adapted linear layer at module path `P` (Hugging Face's
//!   layout, `model.layers.3.self_attn.q_proj`), `base_model.model.P.lora_A.weight` `[r, in]`,
//!   `base_model.model.P.lora_B.weight` `[out, r]` and, for DoRA,
//!   `base_model.model.P.lora_magnitude_vector` `[out]` (no `.weight`); F32 (F16 and BF16
//!   are read too), with the metadata `{"format": "pt"}` PEFT writes.
//! - `adapter_config.json`: PEFT's `LoraConfig` (`peft_type`, `r`, `lora_alpha`,
//!   `target_modules`, `lora_dropout`, `use_rslora`, `use_dora`, `base_model_name_or_path`,
//!   `task_type`, ...), keys sorted, indented by two spaces, as PEFT writes it.
//!
//! Reading refuses, naming the file and the field, what would change the computation without
//! being implemented here (`fan_in_fan_out`, a trained `bias`, per-layer `rank_pattern` or
//! `alpha_pattern`, `modules_to_save`, ...), rather than loading an adapter that computes
//! something else than PEFT does.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mlinfra_data::files;
use mlinfra_data::tensor::{SafetensorsFile, quoted};
use safetensors::{Dtype, tensor::TensorView};
use serde_json::{Map, Value, json};

use super::config::ALL_LINEAR;
use super::{LoraConfig, TargetModules};
use crate::{Error, Result};

/// The weights file's name.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The configuration file's name.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

/// The prefix PEFT's `PeftModelForCausalLM` puts before a module path.
const KEY_PREFIX: &str = "base_model.model.";
/// The largest `adapter_config.json` read (PEFT's are about 1 KB).
const CONFIG_LIMIT: u64 = 1 << 20;

/// One adapted layer's tensors, in PEFT's layout (row-major f32).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterTensors {
    /// The layer's input width.
    pub input: usize,
    /// The layer's output width.
    pub output: usize,
    /// The rank.
    pub r: usize,
    /// `lora_A.weight`, `[r, in]`.
    pub a: Vec<f32>,
    /// `lora_B.weight`, `[out, r]`.
    pub b: Vec<f32>,
    /// DoRA's `lora_magnitude_vector`, `[out]`.
    pub magnitude: Option<Vec<f32>>,
}

/// An adapter as PEFT stores it: its configuration and its tensors by module path.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftAdapter {
    /// The configuration.
    pub config: LoraConfig,
    /// `base_model_name_or_path`: where the base model came from (informational).
    pub base_model_name_or_path: Option<String>,
    /// The tensors of each adapted layer, by Hugging Face module path
    /// (`model.layers.0.self_attn.q_proj`).
    pub layers: BTreeMap<String, AdapterTensors>,
}

impl PeftAdapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    ///
    /// # Errors
    ///
    /// [`Error::AdapterFile`] naming the file and the field or tensor: a config that is not
    /// JSON, a `peft_type` other than `LORA`, a rank of 0, a field this crate does not
    /// implement, a tensor name that is not PEFT's LoRA layout, a tensor whose shape disagrees
    /// with the rank or with its layer's other tensors, a layer missing `lora_A` or `lora_B`;
    /// [`Error::ModelFile`] when the safetensors file cannot be read or parsed.
    pub fn read(dir: impl AsRef<Path>) -> Result<PeftAdapter> {
        let dir = dir.as_ref();
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let bytes = files::read_regular(&config_path, CONFIG_LIMIT)
            .map_err(|e| adapter_error(&config_path, format!("cannot read: {e}")))?;
        let (config, base_model_name_or_path) = parse_config(&config_path, &bytes)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        let layers = read_tensors(&weights_path, &config)?;
        Ok(PeftAdapter {
            config,
            base_model_name_or_path,
            layers,
        })
    }

    /// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` (creating `dir`),
    /// each atomically: a reader sees the old file or the new one, never a part.
    ///
    /// # Errors
    ///
    /// [`Error::AdapterFile`] when `dir` cannot be created or a file cannot be written, or
    /// when a layer's tensors do not have the lengths its dimensions say.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| adapter_error(dir, format!("cannot create the directory: {e}")))?;
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        let weights = self.serialize_tensors(&weights_path)?;
        files::write_atomic(&weights_path, &weights)
            .map_err(|e| adapter_error(&weights_path, format!("cannot write: {e}")))?;
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let mut config =
            serde_json::to_string_pretty(&self.config_json()).expect("a JSON value serializes");
        config.push('\n');
        files::write_atomic(&config_path, config.as_bytes())
            .map_err(|e| adapter_error(&config_path, format!("cannot write: {e}")))
    }

    /// `adapter_config.json`'s content: the fields PEFT writes that define the computation,
    /// with PEFT's defaults for the rest that `from_pretrained` reads. Keys sort themselves
    /// (`serde_json`'s map is ordered), as PEFT's `sort_keys=True`.
    fn config_json(&self) -> Value {
        let config = &self.config;
        let target_modules = match &config.target_modules {
            TargetModules::Names(names) => json!(names),
            // PEFT expands "all-linear" to the layer names when it saves; so do we.
            TargetModules::Pattern(pattern) if pattern == ALL_LINEAR => {
                let mut names: Vec<&str> = self
                    .layers
                    .keys()
                    .map(|path| path.rsplit('.').next().unwrap_or(path))
                    .collect();
                names.sort_unstable();
                names.dedup();
                json!(names)
            }
            TargetModules::Pattern(pattern) => json!(pattern),
        };
        json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": config.init_lora_weights,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": config.alpha,
            "lora_dropout": config.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": config.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": target_modules,
            "task_type": "CAUSAL_LM",
            "use_dora": config.use_dora,
            "use_rslora": config.use_rslora,
        })
    }

    /// The safetensors bytes of every layer's tensors, with PEFT's names.
    fn serialize_tensors(&self, path: &Path) -> Result<Vec<u8>> {
        let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (module, t) in &self.layers {
            let mut push = |suffix: &str, shape: Vec<usize>, values: &[f32]| {
                let expected: usize = shape.iter().product();
                if values.len() != expected {
                    return Err(adapter_error(
                        path,
                        format!(
                            "layer {module}: {suffix} holds {} values, its shape {shape:?} needs \
                             {expected}",
                            values.len()
                        ),
                    ));
                }
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                named.push((format!("{KEY_PREFIX}{module}.{suffix}"), shape, bytes));
                Ok(())
            };
            push("lora_A.weight", vec![t.r, t.input], &t.a)?;
            push("lora_B.weight", vec![t.output, t.r], &t.b)?;
            if let Some(m) = &t.magnitude {
                push("lora_magnitude_vector", vec![t.output], m)?;
            }
        }
        let views = named
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|view| (name.as_str(), view))
                    .map_err(|e| adapter_error(path, format!("tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| adapter_error(path, format!("cannot serialize: {e}")))
    }
}

/// The [`LoraConfig`] and base model name of an `adapter_config.json`.
fn parse_config(path: &Path, bytes: &[u8]) -> Result<(LoraConfig, Option<String>)> {
    let fail = |reason: String| Err(adapter_error(path, reason));
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => return fail(format!("not JSON: {e}")),
    };
    let Value::Object(fields) = value else {
        return fail("not a JSON object".into());
    };
    let field = Fields { path, fields };
    match field.string("peft_type")?.as_deref() {
        Some("LORA") => {}
        Some(other) => {
            return fail(format!(
                "peft_type {other:?} is not supported: only LORA (with use_dora for DoRA) is"
            ));
        }
        None => return fail("peft_type is missing".into()),
    }
    let Some(r) = field.unsigned("r")? else {
        return fail("r is missing".into());
    };
    if r == 0 {
        return fail("r is 0: a LoRA rank must be at least 1".into());
    }
    let alpha = field.number("lora_alpha")?.unwrap_or(8.0);
    let target_modules = match field.fields.get("target_modules") {
        Some(Value::String(pattern)) => TargetModules::Pattern(pattern.clone()),
        Some(Value::Array(items)) => {
            let names = items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>();
            match names {
                Some(names) => TargetModules::Names(names),
                None => return fail("target_modules holds a value that is not a string".into()),
            }
        }
        None | Some(Value::Null) => {
            return fail(
                "target_modules is missing (PEFT's per-architecture default is not applied \
                 when loading)"
                    .into(),
            );
        }
        Some(other) => return fail(format!("target_modules is {other}, not a list or string")),
    };
    // What changes the computation without being implemented here: refused, not ignored.
    field.expect_default("fan_in_fan_out", |v| *v == Value::Bool(false))?;
    field.expect_default("bias", |v| v.as_str() == Some("none"))?;
    for name in ["rank_pattern", "alpha_pattern"] {
        field.expect_default(name, |v| v.as_object().is_some_and(Map::is_empty))?;
    }
    for name in [
        "modules_to_save",
        "layers_to_transform",
        "layers_pattern",
        "exclude_modules",
        "layer_replication",
        "target_parameters",
        "trainable_token_indices",
    ] {
        field.expect_default(name, |v| {
            v.is_null() || v.as_array().is_some_and(Vec::is_empty)
        })?;
    }
    for name in ["lora_bias", "use_qalora"] {
        field.expect_default(name, |v| *v == Value::Bool(false))?;
    }
    let config = LoraConfig::new(r, alpha)
        .with_target_modules(target_modules)
        .with_dropout(field.number("lora_dropout")?.unwrap_or(0.0))
        .with_rslora(field.boolean("use_rslora")?.unwrap_or(false))
        .with_dora(field.boolean("use_dora")?.unwrap_or(false))
        // A string (`"gaussian"`, `"pissa"`...) names an initialisation; the loaded weights
        // replace it either way.
        .with_init_lora_weights(field.boolean("init_lora_weights").unwrap_or(None) != Some(false));
    config
        .validate()
        .map_err(|e| adapter_error(path, e.to_string()))?;
    let base = field.string("base_model_name_or_path")?;
    Ok((config, base))
}

/// Typed access to a config's fields, with errors naming the file and the field.
struct Fields<'a> {
    path: &'a Path,
    fields: Map<String, Value>,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.fields.get(name).filter(|v| !v.is_null())
    }

    fn wrong(&self, name: &str, expected: &str) -> Error {
        adapter_error(
            self.path,
            format!("{name} is {}, not {expected}", self.fields[name]),
        )
    }

    fn string(&self, name: &str) -> Result<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong(name, "a string")),
        }
    }

    fn number(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong(name, "a number")),
        }
    }

    fn unsigned(&self, name: &str) -> Result<Option<usize>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.wrong(name, "a non-negative integer")),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong(name, "true or false")),
        }
    }

    /// Refuses a field set to anything but its default (absent counts as the default).
    fn expect_default(&self, name: &str, is_default: impl Fn(&Value) -> bool) -> Result<()> {
        match self.fields.get(name) {
            Some(value) if !is_default(value) => Err(adapter_error(
                self.path,
                format!("{name} is {value}: not supported (only PEFT's default is)"),
            )),
            _ => Ok(()),
        }
    }
}

/// Which tensor of a layer a safetensors key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    A,
    B,
    Magnitude,
}

/// A tensor's shape and values.
type Shaped = (Vec<usize>, Vec<f32>);

/// The adapter's tensors in `path`, grouped by layer, with their shapes checked against each
/// other and the rank.
fn read_tensors(path: &Path, config: &LoraConfig) -> Result<BTreeMap<String, AdapterTensors>> {
    let file = SafetensorsFile::open(path)?;
    let mut parts: BTreeMap<String, [Option<Shaped>; 3]> = BTreeMap::new();
    for info in file.tensors() {
        let name = info.name();
        let Some((module, part)) = split_key(name) else {
            return Err(adapter_error(
                path,
                format!(
                    "tensor {} is not a LoRA tensor in PEFT's layout \
                     (base_model.model.<module>.lora_A.weight, .lora_B.weight or \
                     .lora_magnitude_vector)",
                    quoted(name)
                ),
            ));
        };
        let values = file.tensor(name)?.to_f32()?;
        parts.entry(module.to_owned()).or_default()[part as usize] =
            Some((info.shape().to_vec(), values));
    }
    if parts.is_empty() {
        return Err(adapter_error(path, "holds no tensors".into()));
    }
    parts
        .into_iter()
        .map(|(module, [a, b, m])| {
            let layer = layer_tensors(path, &module, config, a, b, m)?;
            Ok((module, layer))
        })
        .collect()
}

/// One layer's tensors from its parts, checked.
fn layer_tensors(
    path: &Path,
    module: &str,
    config: &LoraConfig,
    a: Option<Shaped>,
    b: Option<Shaped>,
    magnitude: Option<Shaped>,
) -> Result<AdapterTensors> {
    let fail = |reason: String| Err(adapter_error(path, format!("layer {module}: {reason}")));
    let (Some((a_shape, a)), Some((b_shape, b))) = (a, b) else {
        return fail("lora_A.weight and lora_B.weight must both be present".into());
    };
    let (&[ra, input], &[output, rb]) = (a_shape.as_slice(), b_shape.as_slice()) else {
        return fail(format!(
            "lora_A.weight {a_shape:?} and lora_B.weight {b_shape:?} must be matrices"
        ));
    };
    if ra != config.r || rb != config.r {
        return fail(format!(
            "lora_A.weight {a_shape:?} and lora_B.weight {b_shape:?} do not have rank r = {} \
             of adapter_config.json",
            config.r
        ));
    }
    let magnitude = match (magnitude, config.use_dora) {
        (Some((shape, values)), true) if shape == [output] => Some(values),
        (Some((shape, _)), true) => {
            return fail(format!(
                "lora_magnitude_vector has shape {shape:?}, lora_B.weight says [{output}]"
            ));
        }
        (None, true) => {
            return fail("use_dora is true but lora_magnitude_vector is missing".into());
        }
        (Some(_), false) => {
            return fail("lora_magnitude_vector is present but use_dora is false".into());
        }
        (None, false) => None,
    };
    Ok(AdapterTensors {
        input,
        output,
        r: config.r,
        a,
        b,
        magnitude,
    })
}

/// `base_model.model.<module>.lora_A.weight` and the like, split into the module path and the
/// part.
fn split_key(name: &str) -> Option<(&str, Part)> {
    let rest = name.strip_prefix(KEY_PREFIX)?;
    [
        (".lora_A.weight", Part::A),
        (".lora_B.weight", Part::B),
        (".lora_magnitude_vector", Part::Magnitude),
        // PEFT before 0.14 wrote the magnitude with `.weight`; it still reads both.
        (".lora_magnitude_vector.weight", Part::Magnitude),
    ]
    .into_iter()
    .find_map(|(suffix, part)| {
        rest.strip_suffix(suffix)
            .filter(|module| !module.is_empty())
            .map(|module| (module, part))
    })
}

fn adapter_error(path: &Path, reason: String) -> Error {
    Error::AdapterFile {
        path: PathBuf::from(path).into_boxed_path(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(dora: bool) -> PeftAdapter {
        let layer = |input: usize, output: usize| AdapterTensors {
            input,
            output,
            r: 2,
            a: (0..2 * input).map(|i| i as f32 * 0.5).collect(),
            b: (0..output * 2).map(|i| -(i as f32)).collect(),
            magnitude: dora.then(|| (0..output).map(|i| 1.0 + i as f32).collect()),
        };
        PeftAdapter {
            config: LoraConfig::new(2, 4.0).with_dora(dora),
            base_model_name_or_path: Some("SmolLM2-135M-Instruct".into()),
            layers: BTreeMap::from([
                ("model.layers.0.self_attn.q_proj".to_owned(), layer(4, 4)),
                ("model.layers.0.self_attn.v_proj".to_owned(), layer(4, 2)),
            ]),
        }
    }

    #[test]
    fn an_adapter_survives_writing_and_reading() {
        for dora in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let written = adapter(dora);
            written.write(dir.path()).unwrap();
            assert_eq!(PeftAdapter::read(dir.path()).unwrap(), written);
            let weights = SafetensorsFile::open(dir.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
            let a = weights
                .tensor_info("base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight")
                .unwrap();
            assert_eq!(a.shape(), [2, 4]);
            let b = weights
                .tensor_info("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight")
                .unwrap();
            assert_eq!(b.shape(), [2, 2]);
            assert_eq!(
                weights
                    .tensor_info(
                        "base_model.model.model.layers.0.self_attn.v_proj.lora_magnitude_vector"
                    )
                    .is_some(),
                dora
            );
            assert_eq!(weights.metadata().get("format").map(|v| &**v), Some("pt"));
        }
    }

    fn config_error(config: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        adapter(false).write(dir.path()).unwrap();
        std::fs::write(dir.path().join(ADAPTER_CONFIG_FILE), config).unwrap();
        let error = PeftAdapter::read(dir.path()).unwrap_err().to_string();
        assert!(error.contains(ADAPTER_CONFIG_FILE), "{error}");
        error
    }

    #[test]
    fn configs_that_do_not_fit_are_refused_naming_the_field() {
        let base = r#""r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]"#;
        let cases = [
            (
                r#"{"peft_type": "IA3", "r": 2}"#.to_owned(),
                "peft_type \"IA3\"",
            ),
            (r#"{"r": 2}"#.to_owned(), "peft_type is missing"),
            (
                r#"{"peft_type": "LORA", "r": 0, "target_modules": ["q_proj"]}"#.to_owned(),
                "r is 0",
            ),
            (
                format!(r#"{{"peft_type": "LORA", {base}, "fan_in_fan_out": true}}"#),
                "fan_in_fan_out",
            ),
            (
                format!(r#"{{"peft_type": "LORA", {base}, "rank_pattern": {{"q_proj": 4}}}}"#),
                "rank_pattern",
            ),
            (
                format!(r#"{{"peft_type": "LORA", {base}, "bias": "all"}}"#),
                "bias",
            ),
            (
                r#"{"peft_type": "LORA", "r": 2, "target_modules": 3}"#.to_owned(),
                "target_modules is 3",
            ),
            (
                format!(r#"{{"peft_type": "LORA", {base}, "lora_dropout": "x"}}"#),
                "lora_dropout",
            ),
            ("[1, 2]".to_owned(), "not a JSON object"),
            ("{".to_owned(), "not JSON"),
        ];
        for (config, expected) in cases {
            let error = config_error(&config);
            assert!(error.contains(expected), "{config}: {error}");
        }
    }

    #[test]
    fn tensors_that_do_not_fit_are_refused_naming_the_tensor() {
        type Change = fn(&mut PeftAdapter);
        let cases: [(Change, &str); 3] = [
            (
                |a| a.config = LoraConfig::new(3, 4.0),
                "do not have rank r = 3",
            ),
            (
                |a| a.config = a.config.clone().with_dora(true),
                "lora_magnitude_vector is missing",
            ),
            (
                |a| {
                    let layer = a.layers.values_mut().next().unwrap();
                    layer.magnitude = Some(vec![1.0; layer.output]);
                },
                "use_dora is false",
            ),
        ];
        for (change, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut written = adapter(false);
            written.write(dir.path()).unwrap();
            change(&mut written);
            // The tensors of the first, the config of the second.
            let config = serde_json::to_string(&written.config_json()).unwrap();
            std::fs::write(dir.path().join(ADAPTER_CONFIG_FILE), config).unwrap();
            if written.layers.values().any(|l| l.magnitude.is_some()) {
                let bytes = written
                    .serialize_tensors(&dir.path().join(ADAPTER_WEIGHTS_FILE))
                    .unwrap();
                std::fs::write(dir.path().join(ADAPTER_WEIGHTS_FILE), bytes).unwrap();
            }
            let error = PeftAdapter::read(dir.path()).unwrap_err().to_string();
            assert!(
                error.contains(expected) && error.contains(ADAPTER_WEIGHTS_FILE),
                "{error}"
            );
        }
        assert_eq!(split_key("model.layers.0.q_proj.lora_A.weight"), None);
        assert_eq!(
            split_key("base_model.model.x.lora_B.weight"),
            Some(("x", Part::B))
        );
        assert_eq!(split_key("base_model.model.lora_B.weight"), None);
    }
}
