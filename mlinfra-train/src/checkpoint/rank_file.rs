//! One rank's checkpoint file: its shard of the fp32 master weights and of the optimizer state,
//! in burn's own container format (burnpack: a CBOR index, then 256-byte-aligned tensor data).

use burn::optim::StateSink;
use burn::tensor::TensorData;
use burn_pack::{Bytes, DType, Reader, Scalar, Tensor, Writer};

use super::direct::AlignedBuffer;

/// The tensor holding the master weights.
const MASTER: &str = "master";
/// Prefix of the optimizer's tensors and scalars.
const OPTIM: &str = "optim.";

/// Encodes a rank file into `buffer`, whose [`as_slice`](AlignedBuffer::as_slice) ends up
/// holding exactly the file's bytes, aligned for direct I/O.
///
/// The buffer is the caller's so it can be reused across saves: a fresh 100 MB+ allocation
/// costs more in page faults than the copy into it. The master weights and the optimizer's
/// tensors are moved in, not copied (cloning a `TensorData`'s bytes would copy them), so the
/// one copy is into `buffer`.
pub(crate) fn encode_into(
    master: Vec<f32>,
    optimizer: StateSink,
    step: u64,
    rank: usize,
    buffer: &mut AlignedBuffer,
) -> Result<(), String> {
    let len = master.len();
    let mut tensors = vec![Tensor::new(
        MASTER.to_owned(),
        DType::F32,
        vec![len],
        None,
        Bytes::from_elems(master),
    )];
    let StateSink {
        tensors: optimizer_tensors,
        scalars,
    } = optimizer;
    for (name, data) in optimizer_tensors {
        let (dtype, shape) = (data.dtype(), data.shape().to_vec());
        tensors.push(Tensor::new(
            format!("{OPTIM}{name}"),
            dtype,
            shape,
            None,
            data.into_bytes(),
        ));
    }
    let mut writer = Writer::new(tensors)
        .with_metadata("producer", "mlinfra-train")
        .with_metadata("step", &step.to_string())
        .with_metadata("rank", &rank.to_string());
    for (name, value) in scalars {
        writer = writer.with_scalar(&format!("{OPTIM}{name}"), value);
    }
    let size = writer.size().map_err(|e| format!("encoding: {e}"))?;
    // No need to zero a reused buffer: `write_into` writes every byte of the container,
    // padding included, so the file's bytes depend only on the state.
    writer
        .write_into(buffer.resize(size))
        .map_err(|e| format!("encoding: {e}"))
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
