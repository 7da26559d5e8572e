//! One rank's checkpoint file: its shard of the fp32 master weights and of the optimizer state,
//! in burn's own container format (burnpack: a CBOR index, then 256-byte-aligned tensor data).

use burn::optim::StateSink;
use burn::tensor::TensorData;
use burn_pack::{Bytes, DType, Reader, Scalar};

use super::stream::{Container, Entry};

/// The tensor holding the master weights.
const MASTER: &str = "master";
/// Prefix of the optimizer's tensors and scalars.
const OPTIM: &str = "optim.";

/// Lays out this rank's file over the state's own bytes (nothing is copied here; the
/// [`Container`] streams them to disk). `master` holds the shard of the fp32 master weights
/// as little-endian bytes.
pub(crate) fn container<'a>(
    master: &'a [u8],
    optimizer: &'a StateSink,
    step: u64,
    rank: usize,
) -> Result<Container<'a>, String> {
    let mut entries = vec![Entry {
        name: MASTER.to_owned(),
        dtype: DType::F32,
        shape: vec![master.len() / 4],
        bytes: master,
    }];
    for (name, data) in &optimizer.tensors {
        entries.push(Entry {
            name: format!("{OPTIM}{name}"),
            dtype: data.dtype(),
            shape: data.shape().to_vec(),
            bytes: data.as_bytes(),
        });
    }
    let metadata = [
        ("producer", "mlinfra-train".to_owned()),
        ("step", step.to_string()),
        ("rank", rank.to_string()),
    ];
    let scalars = optimizer
        .scalars
        .iter()
        .map(|(name, value)| (format!("{OPTIM}{name}"), *value))
        .collect();
    Container::plan(entries, &metadata, scalars)
}

/// A decoded rank file.
pub(crate) struct RankFile {
    pub(crate) master: Vec<f32>,
    /// Optimizer tensors by name (without the prefix), in name order.
    pub(crate) tensors: Vec<(String, TensorData)>,
    pub(crate) scalars: Vec<(String, Scalar)>,
}

/// Decodes a rank file (already checked against its hash) holding `shard_len` elements.
pub(crate) fn decode(bytes: Vec<u8>, shard_len: usize) -> Result<RankFile, String> {
    let reader =
        Reader::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| format!("decoding: {e}"))?;
    let scalars: Vec<(String, Scalar)> = reader
        .scalars()
        .iter()
        .filter_map(|(name, v)| Some((name.strip_prefix(OPTIM)?.to_owned(), *v)))
        .collect();
    let mut master = None;
    let mut tensors = Vec::new();
    for tensor in reader
        .into_tensors()
        .map_err(|e| format!("decoding: {e}"))?
    {
        let (name, dtype, shape, _, bytes) =
            tensor.into_parts().map_err(|e| format!("decoding: {e}"))?;
        let dims = shape.to_vec();
        if dims != [shard_len] {
            return Err(format!(
                "tensor `{name}` has shape {dims:?}, expected [{shard_len}] (the shard)"
            ));
        }
        let data = TensorData::try_from_bytes(bytes, dims, dtype)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        if name == MASTER {
            let values = data
                .try_into_vec::<f32>()
                .map_err(|e| format!("tensor `{name}` is not f32: {e:?}"))?;
            master = Some(values);
        } else if let Some(state) = name.strip_prefix(OPTIM) {
            tensors.push((state.to_owned(), data));
        } else {
            return Err(format!("unexpected tensor `{name}`"));
        }
    }
    Ok(RankFile {
        master: master.ok_or("no `master` tensor")?,
        tensors,
        scalars,
    })
}
