//! Post-training tasks in TRL's terms, for the [`Trainer`](crate::Trainer):
//!
//! - [`Sft`]: supervised fine-tuning on packed chat rows (mlinfra-loader's
//!   [`Pack`](mlinfra_loader::Pack) collate of [`ChatTemplate`] tokens), the loss on the
//!   assistant's tokens only: TRL's `SFTTrainer` with `packing=True` and
//!   `assistant_only_loss=True`. Like TRL's `padding_free`, the padding of the packed rows
//!   is dropped before the model runs ([`Llama::packed_logits`](crate::models::Llama::packed_logits)).
//! - [`dpo`]: direct preference optimisation (TRL's `DPOTrainer`, sigmoid loss), with the
//!   policy's adapters disabled as the reference model.
//!
//! [`ChatTemplate`]: mlinfra_data::chat::ChatTemplate

pub mod dpo;
mod sft;

pub use dpo::{DEFAULT_BETA, Dpo, DpoSums, Preference, preference_batch};
pub use sft::Sft;

use mlinfra_loader::TensorBatch;

use crate::{Error, Result};

/// Takes column `name` out of `batch`, or says which columns it has.
pub(crate) fn take_column(batch: &mut TensorBatch, name: &str) -> Result<burn::tensor::TensorData> {
    let names: Vec<String> = batch.names().map(str::to_owned).collect();
    batch.remove(name).ok_or_else(|| Error::InvalidConfig {
        reason: format!("the batch has no column `{name}` (it has {names:?})").into(),
    })
}

/// The integer values of a column, as i64, whatever its integer type.
pub(crate) fn integers(data: burn::tensor::TensorData, name: &str) -> Result<Vec<i64>> {
    data.convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| Error::InvalidConfig {
            reason: format!("column `{name}` is not an integer column: {e:?}").into(),
        })
}
