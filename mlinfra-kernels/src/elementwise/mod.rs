//! Elementwise kernels: one unit per element, bound by memory traffic.
//!
//! The host side they share: the element types, uploads, outputs poisoned before a launch,
//! operand checks, the launch grid, and readback with typed errors.

use cubecl::prelude::*;

use crate::{Error, Result};

pub mod gelu;
pub mod swiglu;

/// Units per cube: a multiple of every vendor's warp/wavefront size.
const CUBE_DIM: u32 = 256;

pub use crate::device::Element;

pub(crate) fn upload<E: Element>(client: &Client, values: &[E]) -> cubecl::server::Handle {
    client.create_from_slice(E::as_bytes(values))
}

pub(crate) fn read<E: Element>(
    client: &Client,
    handle: cubecl::server::Handle,
    kernel: &'static str,
) -> Result<Vec<E>> {
    let bytes = client.read_one(handle).map_err(|source| Error::Device {
        kernel,
        source: Box::new(source),
    })?;
    Ok(E::from_bytes(&bytes).to_vec())
}

/// An output buffer of `len` elements, every bit set: NaN in f32, f16 and bf16 alike, so an
/// element a kernel fails to write cannot pass for a result.
pub(crate) fn poisoned<E: Element>(client: &Client, len: usize) -> cubecl::server::Handle {
    client.create_from_slice(&vec![0xFF; len * size_of::<E>()])
}

/// The operands' common length, after checking the runtime has the element type.
pub(crate) fn checked<E: Element>(
    client: &Client,
    kernel: &'static str,
    lengths: &[usize],
) -> Result<usize> {
    crate::device::supported::<E>(client, kernel)?;
    let len = lengths[0];
    if lengths.iter().any(|&l| l != len) {
        return Err(Error::Shape {
            kernel,
            reason: format!("operands of lengths {lengths:?}").into(),
        });
    }
    Ok(len)
}

/// One unit per element over `len` elements: the cube count and cube shape.
pub(crate) fn grid(client: &Client, len: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new_1d(CUBE_DIM);
    (
        cubecl::calculate_cube_count_elemwise(client, len, cube_dim),
        cube_dim,
    )
}
