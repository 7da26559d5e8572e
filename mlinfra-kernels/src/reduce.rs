//! Reductions across a cube's units through shared memory: the building block of the row
//! kernels (norms, losses, attention).
//!
//! A tree over shared memory, not plane (warp) shuffles: lavapipe, the CI adapter, has no plane
//! operations, and one code path is what the tests prove. On a GPU the tree costs
//! `log2(units)` barriers per reduction, small beside the row's memory traffic.

use cubecl::prelude::*;

/// The sum of every unit's `value`, returned to every unit. `units` is the cube's unit count, a
/// power of two; `shared` holds at least `units` values and is free for the caller again once
/// the function returns.
#[cube]
pub(crate) fn cube_sum(shared: &mut Shared<[f32]>, value: f32, #[comptime] units: usize) -> f32 {
    let unit = UNIT_POS as usize;
    // The units still reading the previous reduction's result out of `shared[0]`.
    sync_cube();
    shared[unit] = value;
    sync_cube();
    let mut stride = comptime!(units / 2).runtime();
    while stride > 0 {
        if unit < stride {
            shared[unit] += shared[unit + stride];
        }
        sync_cube();
        stride /= 2;
    }
    shared[0]
}

/// The maximum of every unit's `value`, as [`cube_sum`].
#[cube]
pub(crate) fn cube_max(shared: &mut Shared<[f32]>, value: f32, #[comptime] units: usize) -> f32 {
    let unit = UNIT_POS as usize;
    sync_cube();
    shared[unit] = value;
    sync_cube();
    let mut stride = comptime!(units / 2).runtime();
    while stride > 0 {
        if unit < stride {
            shared[unit] = max(shared[unit], shared[unit + stride]);
        }
        sync_cube();
        stride /= 2;
    }
    shared[0]
}
