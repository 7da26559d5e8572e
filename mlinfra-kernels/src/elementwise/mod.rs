//! Elementwise kernels: one unit per element, bound by memory traffic.
//!
//! The host side they share is the launch grid; buffers, element types and checks are
//! [`DeviceBuffer`](crate::DeviceBuffer)'s.

use cubecl::prelude::*;

pub mod gelu;
pub mod swiglu;

/// Units per cube: a multiple of every vendor's warp/wavefront size.
const CUBE_DIM: u32 = 256;

pub use crate::device::Element;

/// One unit per element over `len` elements: the cube count and cube shape.
pub(crate) fn grid(client: &Client, len: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new_1d(CUBE_DIM);
    (
        cubecl::calculate_cube_count_elemwise(client, len, cube_dim),
        cube_dim,
    )
}
