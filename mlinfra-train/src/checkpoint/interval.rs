//! How often to checkpoint: the intervals of Young (1974) and Daly (2006).
//!
//! With a checkpoint costing `cost` seconds and failures arriving at random with a mean time
//! between them of `mtbf` seconds, checkpointing every `T` seconds of work wastes about
//! `cost / T` (writing) plus `T / (2 mtbf)` (work redone after a failure). Young's interval
//! minimises the sum to first order; Daly's adds the higher-order terms (and the restart
//! cost does not change the optimum). Both take seconds and return seconds of compute between
//! the starts of two checkpoints.

/// Young's interval `sqrt(2 · cost · mtbf)`. `None` unless both are finite and > 0.
///
/// ```
/// // A 60 s checkpoint and a failure a day: checkpoint about every 54 minutes.
/// let t = mlinfra_train::checkpoint::young_interval(60.0, 86_400.0).unwrap();
/// assert!((t - 3_220.0).abs() < 1.0);
/// ```
pub fn young_interval(cost: f64, mtbf: f64) -> Option<f64> {
    valid(cost, mtbf).then(|| (2.0 * cost * mtbf).sqrt())
}

/// Daly's higher-order interval (J. T. Daly, "A higher order estimate of the optimum
/// checkpoint interval for restart dumps", FGCS 22, 2006, eq. 37):
/// `sqrt(2δM) · (1 + sqrt(δ/2M)/3 + (δ/2M)/9) − δ` for `δ < 2M`, else `M`.
/// `None` unless both are finite and > 0.
pub fn daly_interval(cost: f64, mtbf: f64) -> Option<f64> {
    if !valid(cost, mtbf) {
        return None;
    }
    if cost >= 2.0 * mtbf {
        return Some(mtbf);
    }
    let ratio = cost / (2.0 * mtbf);
    Some((2.0 * cost * mtbf).sqrt() * (1.0 + ratio.sqrt() / 3.0 + ratio / 9.0) - cost)
}

fn valid(cost: f64, mtbf: f64) -> bool {
    crate::optim::positive(cost) && crate::optim::positive(mtbf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The waste fraction of Daly's first-order model, minimised numerically: Young's interval
    /// must sit at its minimum, and Daly's must be close when the cost is small.
    #[test]
    fn young_minimises_the_first_order_waste() {
        let (cost, mtbf) = (30.0, 20_000.0);
        let waste = |t: f64| cost / t + t / (2.0 * mtbf);
        let best = (1..200_000)
            .map(|i| f64::from(i) * 0.1)
            .min_by(|a, b| waste(*a).total_cmp(&waste(*b)))
            .unwrap();
        let young = young_interval(cost, mtbf).unwrap();
        assert!((young - best).abs() < 0.2, "{young} vs {best}");
        // A checkpoint costing more than two MTBFs: checkpoint every MTBF.
        assert_eq!(daly_interval(500.0, 100.0), Some(100.0));
        assert_eq!(young_interval(0.0, 100.0), None);
        assert_eq!(daly_interval(1.0, f64::NAN), None);
    }

    /// Daly's model itself, minimised numerically: with exponential failures, the expected
    /// wall time per unit of work when checkpointing every `τ` is proportional to
    /// `(e^((τ + δ)/M) − 1) / τ` (Daly 2006, eq. 20, the restart cost a constant factor).
    /// Eq. 37 approximates its minimum to well under 0.1% for `δ < M/6`; Young's interval
    /// is off by 1.2% to 22% on the same cases, so returning it here fails (issue 21: the
    /// test used to allow 5% around Young's value, which Young's value passes).
    #[test]
    fn daly_lands_on_the_optimum_of_the_higher_order_model() {
        for (cost, mtbf) in [
            (30.0, 20_000.0),
            (300.0, 20_000.0),
            (60.0, 86_400.0),
            (600.0, 3_600.0),
        ] {
            let wall = |t: f64| (((t + cost) / mtbf).exp() - 1.0) / t;
            // Ternary search: `wall` is unimodal in τ > 0.
            let (mut lo, mut hi) = (1e-3, 10.0 * mtbf);
            for _ in 0..300 {
                let (a, b) = (lo + (hi - lo) / 3.0, hi - (hi - lo) / 3.0);
                if wall(a) < wall(b) {
                    hi = b;
                } else {
                    lo = a;
                }
            }
            let optimum = (lo + hi) / 2.0;
            let daly = daly_interval(cost, mtbf).unwrap();
            let young = young_interval(cost, mtbf).unwrap();
            let error = |t: f64| (t - optimum).abs() / optimum;
            assert!(
                error(daly) < 1e-3,
                "δ {cost}, M {mtbf}: Daly {daly} vs {optimum}"
            );
            assert!(
                error(young) > 1e-2,
                "δ {cost}, M {mtbf}: the cases must tell them apart"
            );
        }
    }
}
