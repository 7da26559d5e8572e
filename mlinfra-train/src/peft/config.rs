//! [`LoraConfig`]: what an adapter is (rank, scale, targets, DoRA), with PEFT's names and
//! defaults, and [`TargetModules`]: which linear layers it adapts.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Default rank: 8, PEFT's.
pub const DEFAULT_RANK: usize = 8;
/// Default `lora_alpha`: 8, PEFT's.
pub const DEFAULT_ALPHA: f64 = 8.0;

/// One adapter's shape and scaling, as PEFT's `LoraConfig` names them.
///
/// ```
/// use mlinfra_train::peft::{LoraConfig, TargetModules};
///
/// let config = LoraConfig::new(16, 32.0)
///     .with_target_modules(TargetModules::names(["q_proj", "v_proj"]))
///     .with_dora(true);
/// assert_eq!(config.scaling(), 2.0);
/// # Ok::<(), mlinfra_train::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LoraConfig {
    /// Rank `r` of the update `B·A` (at least 1).
    pub r: usize,
    /// `lora_alpha`: the update is scaled by `alpha / r` (`alpha / sqrt(r)` with rsLoRA).
    pub alpha: f64,
    /// Dropout on the adapter's input while training, in `[0, 1)`.
    pub dropout: f64,
    /// The linear layers adapted.
    pub target_modules: TargetModules,
    /// Rank-stabilized scaling `alpha / sqrt(r)` (Kalajdzievski 2023) instead of `alpha / r`.
    pub use_rslora: bool,
    /// Weight-decomposed adaptation (DoRA, Liu et al. 2024): a trained magnitude per output
    /// over the column-normalised direction `W + s·B·A`.
    pub use_dora: bool,
    /// PEFT's `init_lora_weights`: `true` starts `B` at zero (the adapter changes nothing
    /// until it trains); `false` draws `B` like `A` (uniform in ±1/sqrt(r)), which is what
    /// tests of merging use.
    pub init_lora_weights: bool,
}

impl LoraConfig {
    /// Rank `r` and `alpha`, adapting `q_proj` and `v_proj` (PEFT's default for Llama), no
    /// dropout, plain LoRA.
    pub fn new(r: usize, alpha: f64) -> Self {
        LoraConfig {
            r,
            alpha,
            dropout: 0.0,
            target_modules: TargetModules::names(["q_proj", "v_proj"]),
            use_rslora: false,
            use_dora: false,
            init_lora_weights: true,
        }
    }

    /// Whether `B` starts at zero. Defaults to `true`.
    #[must_use]
    pub fn with_init_lora_weights(mut self, init_lora_weights: bool) -> Self {
        self.init_lora_weights = init_lora_weights;
        self
    }

    /// The layers to adapt. Defaults to `q_proj` and `v_proj`.
    #[must_use]
    pub fn with_target_modules(mut self, targets: TargetModules) -> Self {
        self.target_modules = targets;
        self
    }

    /// Dropout on the adapter's input while training. Defaults to 0.
    #[must_use]
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// Rank-stabilized scaling. Defaults to `false`.
    #[must_use]
    pub fn with_rslora(mut self, use_rslora: bool) -> Self {
        self.use_rslora = use_rslora;
        self
    }

    /// DoRA. Defaults to `false`.
    #[must_use]
    pub fn with_dora(mut self, use_dora: bool) -> Self {
        self.use_dora = use_dora;
        self
    }

    /// The factor `s` of the update `s·B·A`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Checks the values a layer cannot be built with.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the field: a rank of 0, a non-finite alpha, a dropout
    /// outside `[0, 1)`, an empty or malformed target list.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| {
            Err(Error::InvalidConfig {
                reason: reason.into(),
            })
        };
        if self.r == 0 {
            return invalid("LoRA r must be at least 1".into());
        }
        if !self.alpha.is_finite() {
            return invalid(format!(
                "LoRA lora_alpha must be finite, got {}",
                self.alpha
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid(format!(
                "LoRA lora_dropout must be in [0, 1), got {}",
                self.dropout
            ));
        }
        self.target_modules.compile().map(|_| ())
    }
}

/// Which linear layers an adapter targets, with PEFT's `target_modules` semantics.
///
/// A layer is named by its module path in Hugging Face's layout
/// (`model.layers.3.self_attn.q_proj`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Names: a layer matches when its path equals one, or ends with `.` and one
    /// (`q_proj` matches every layer's query projection).
    Names(Vec<String>),
    /// A regular expression that must match the whole path (PEFT's `re.fullmatch`); PEFT's
    /// `"all-linear"` is every linear layer but the output projection.
    Pattern(String),
}

impl TargetModules {
    /// Layers named `names` (see [`TargetModules::Names`]).
    pub fn names<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        TargetModules::Names(names.into_iter().map(Into::into).collect())
    }

    /// Every linear layer but the output projection: PEFT's `"all-linear"`.
    pub fn all_linear() -> Self {
        TargetModules::Pattern(ALL_LINEAR.to_owned())
    }

    /// The matcher, checked.
    pub(crate) fn compile(&self) -> Result<Matcher> {
        let invalid = |reason: String| {
            Err(Error::InvalidConfig {
                reason: reason.into(),
            })
        };
        match self {
            TargetModules::Names(names) if names.is_empty() => {
                invalid("LoRA target_modules is an empty list".into())
            }
            TargetModules::Names(names) => Ok(Matcher::Names(names.clone())),
            TargetModules::Pattern(pattern) if pattern == ALL_LINEAR => Ok(Matcher::AllLinear),
            TargetModules::Pattern(pattern) => {
                match regex::Regex::new(&format!("^(?:{pattern})$")) {
                    Ok(regex) => Ok(Matcher::Regex(regex)),
                    Err(error) => invalid(format!(
                        "LoRA target_modules {pattern:?} is not a regular expression: {error}"
                    )),
                }
            }
        }
    }
}

/// PEFT's name for every linear layer but the output projection.
pub(crate) const ALL_LINEAR: &str = "all-linear";

/// A compiled [`TargetModules`].
#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    Names(Vec<String>),
    Regex(regex::Regex),
    AllLinear,
}

impl Matcher {
    /// Whether the linear layer at `path` (Hugging Face layout) is targeted.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            Matcher::Names(names) => names.iter().any(|name| {
                path == name
                    || path
                        .strip_suffix(name.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }),
            Matcher::Regex(regex) => regex.is_match(path),
            Matcher::AllLinear => !path.ends_with("lm_head"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_a_whole_last_component_and_patterns_the_whole_path() {
        let names = TargetModules::names(["q_proj", "mlp.up_proj"])
            .compile()
            .unwrap();
        assert!(names.matches("model.layers.0.self_attn.q_proj"));
        assert!(names.matches("q_proj"));
        assert!(names.matches("model.layers.7.mlp.up_proj"));
        assert!(!names.matches("model.layers.0.self_attn.qq_proj"));
        assert!(!names.matches("model.layers.0.self_attn.k_proj"));
        let pattern = TargetModules::Pattern(r"model\.layers\.[01]\..*_proj".into())
            .compile()
            .unwrap();
        assert!(pattern.matches("model.layers.1.mlp.gate_proj"));
        assert!(!pattern.matches("model.layers.2.mlp.gate_proj"));
        assert!(
            !pattern.matches("xmodel.layers.1.mlp.gate_proj"),
            "anchored"
        );
        let all = TargetModules::all_linear().compile().unwrap();
        assert!(all.matches("model.layers.5.self_attn.o_proj"));
        assert!(!all.matches("lm_head"));
    }

    #[test]
    fn configs_that_cannot_work_are_refused_by_field() {
        let refused = |config: LoraConfig, field: &str| {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(field), "{error}");
        };
        refused(LoraConfig::new(0, 8.0), "r must be at least 1");
        refused(LoraConfig::new(8, f64::NAN), "lora_alpha");
        refused(LoraConfig::new(8, 8.0).with_dropout(1.0), "lora_dropout");
        refused(
            LoraConfig::new(8, 8.0).with_target_modules(TargetModules::Names(vec![])),
            "empty list",
        );
        refused(
            LoraConfig::new(8, 8.0).with_target_modules(TargetModules::Pattern("(".into())),
            "not a regular expression",
        );
        assert_eq!(LoraConfig::new(16, 32.0).with_rslora(true).scaling(), 8.0);
    }
}
