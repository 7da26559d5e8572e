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
    cube_reduce(shared, value, units, false)
}

/// The maximum of every unit's `value`, as [`cube_sum`].
#[cube]
pub(crate) fn cube_max(shared: &mut Shared<[f32]>, value: f32, #[comptime] units: usize) -> f32 {
    cube_reduce(shared, value, units, true)
}

#[cube]
fn cube_reduce(
    shared: &mut Shared<[f32]>,
    value: f32,
    #[comptime] units: usize,
    #[comptime] maximum: bool,
) -> f32 {
    let unit = UNIT_POS as usize;
    // The units still reading the previous reduction's result out of `shared[0]`.
    sync_cube();
    shared[unit] = value;
    sync_cube();
    tree(shared, unit, units, maximum);
    shared[0]
}

/// Folds each aligned run of `width` values of `shared` into its first (sum or maximum): the
/// unit owning `slot` (its value's index) works on its run's `slot % width`. Every unit of the
/// cube calls it (it synchronises); `width` is a power of two.
#[cube]
pub(crate) fn tree(
    shared: &mut Shared<[f32]>,
    slot: usize,
    #[comptime] width: usize,
    #[comptime] maximum: bool,
) {
    let lane = slot % width;
    let mut stride = comptime!(width / 2).runtime();
    while stride > 0 {
        if lane < stride {
            if comptime!(maximum) {
                shared[slot] = max(shared[slot], shared[slot + stride]);
            } else {
                shared[slot] += shared[slot + stride];
            }
        }
        sync_cube();
        stride /= 2;
    }
}
