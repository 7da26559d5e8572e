//! [`SplitMix64`]: the trainer's deterministic generator.

/// SplitMix64 (Steele, Lea & Flood 2014): 64 bits of state, passes BigCrush, trivially
/// reproducible on every platform, independent of burn's global RNG. Used for parameter
/// initialisation (the same seed gives the same weights on every rank) and as each rank's
/// training generator, whose whole state ([`SplitMix64::state`]) a checkpoint stores. Not for
/// cryptography.
///
/// `mlinfra-test-utils` has a twin for test inputs, because the layers below this one
/// (mlinfra-data, mlinfra-loader) cannot depend on it; both are checked against Vigna's
/// reference stream, so they cannot drift apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator with state `seed`; `SplitMix64::new(g.state())` continues `g` exactly.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The whole state.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high)`, from the top 53 bits.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        low + (high - low) * unit
    }

    /// Standard normal (Box–Muller; one draw per call, two uniforms each).
    pub fn normal(&mut self) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u = 1.0 - self.uniform(0.0, 1.0);
        let v = self.uniform(0.0, 1.0);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence_and_resumes_from_its_state() {
        // Vigna's splitmix64.c with seed 0: the first outputs.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut copy = SplitMix64::new(rng.state());
        assert_eq!(copy.next_u64(), rng.next_u64());
        // Normal draws: mean 0 and variance 1 within sampling error (n = 20 000).
        let draws: Vec<f64> = (0..20_000).map(|_| rng.normal()).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
