//! A keyed pseudo-random permutation of `0..n` with O(1) random access, in both directions.
//!
//! # How
//!
//! A balanced Feistel network over the smallest domain of `2k` bits holding `n` (so at most
//! `4n` values), walked in cycles: a value that lands outside `0..n` is permuted again until it
//! lands inside (Black and Rogaway's cycle walking; the expected number of steps is below 4).
//! Six rounds, each a 64-bit mix of the half-block with a round key, make it a pseudo-random
//! permutation for shuffling purposes (Luby and Rackoff prove four rounds suffice for a
//! pseudo-random round function); it is not cryptography.
//!
//! # Why not Fisher–Yates
//!
//! A shuffled array costs 8 bytes per sample and must be rebuilt to resume: 800 MB for 100M
//! samples. This costs 48 bytes whatever `n`, and position `k` of the order is computed
//! directly, which is what makes resuming mid-epoch O(1).

/// Feistel rounds.
const ROUNDS: usize = 6;

/// A permutation of `0..n` chosen by a 256-bit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Permutation {
    n: u64,
    /// Bits of each half of the Feistel block.
    half_bits: u32,
    keys: [u64; ROUNDS],
}

impl Permutation {
    /// The permutation of `0..n` for `key`.
    pub(crate) fn new(n: u64, key: &[u8; 32]) -> Permutation {
        let mut keys = [0u64; ROUNDS];
        let mut hasher = blake3::Hasher::new_derive_key("mlinfra-loader permutation round keys");
        hasher.update(key);
        let mut stream = hasher.finalize_xof();
        for k in &mut keys {
            let mut bytes = [0u8; 8];
            stream.fill(&mut bytes);
            *k = u64::from_le_bytes(bytes);
        }
        Permutation {
            n,
            half_bits: half_bits(n),
            keys,
        }
    }

    /// A permutation of `0..n` keyed by this one's keys and `tweak`: a family of
    /// independent-looking permutations for the price of six 64-bit mixes, where
    /// [`Permutation::new`] hashes (about a microsecond). What per-group and per-pass
    /// permutations use, since they are made once per sample looked up.
    pub(crate) fn tweaked(&self, n: u64, tweak: u64) -> Permutation {
        let mut keys = self.keys;
        let tweak = mix64(tweak);
        for (round, key) in keys.iter_mut().enumerate() {
            *key = mix64(*key ^ tweak.rotate_left(round as u32 * 11));
        }
        Permutation {
            n,
            half_bits: half_bits(n),
            keys,
        }
    }

    /// The image of `i`, for `i < len()`.
    ///
    /// # Panics
    ///
    /// When `i >= len()` (a caller bug: positions are checked before they get here).
    pub(crate) fn apply(&self, i: u64) -> u64 {
        assert!(i < self.n, "position {i} outside 0..{}", self.n);
        let mut x = self.encrypt(i);
        while x >= self.n {
            x = self.encrypt(x);
        }
        x
    }

    /// The `i` with `apply(i) == y`, for `y < len()`.
    ///
    /// # Panics
    ///
    /// When `y >= len()`.
    pub(crate) fn invert(&self, y: u64) -> u64 {
        assert!(y < self.n, "value {y} outside 0..{}", self.n);
        let mut x = self.decrypt(y);
        while x >= self.n {
            x = self.decrypt(x);
        }
        x
    }

    fn mask(&self) -> u64 {
        (1u64 << self.half_bits) - 1
    }

    fn round(&self, round: usize, half: u64) -> u64 {
        mix64(half ^ self.keys[round]) & self.mask()
    }

    fn encrypt(&self, x: u64) -> u64 {
        let (mut left, mut right) = (x >> self.half_bits, x & self.mask());
        for round in 0..ROUNDS {
            (left, right) = (right, left ^ self.round(round, right));
        }
        (left << self.half_bits) | right
    }

    fn decrypt(&self, x: u64) -> u64 {
        let (mut left, mut right) = (x >> self.half_bits, x & self.mask());
        for round in (0..ROUNDS).rev() {
            (left, right) = (right ^ self.round(round, left), left);
        }
        (left << self.half_bits) | right
    }
}

/// Bits of each half of the smallest even-width Feistel domain holding `n` (at least two 1-bit
/// halves).
fn half_bits(n: u64) -> u32 {
    (64 - n.saturating_sub(1).leading_zeros())
        .max(2)
        .div_ceil(2)
}

/// SplitMix64's finaliser (Stafford's "Mix13"): a bijective 64-bit mix with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::Permutation;

    fn key(seed: u8) -> [u8; 32] {
        [seed; 32]
    }

    #[test]
    fn is_a_bijection_with_its_inverse_for_every_small_size() {
        for n in (1..=300).chain([1023, 1024, 1025, 4097, 65_537]) {
            let permutation = Permutation::new(n, &key(n as u8));
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let y = permutation.apply(i);
                assert!(y < n, "n={n}: {i} -> {y}");
                assert!(!seen[y as usize], "n={n}: {y} twice");
                seen[y as usize] = true;
                assert_eq!(permutation.invert(y), i, "n={n}");
            }
        }
    }

    #[test]
    fn the_key_decides_the_order() {
        let n = 10_000;
        let a = Permutation::new(n, &key(1));
        let b = Permutation::new(n, &key(2));
        assert_eq!(a, Permutation::new(n, &key(1)));
        let same = (0..n).filter(|&i| a.apply(i) == b.apply(i)).count();
        // Two independent permutations agree in about one place.
        assert!(same < 10, "{same} fixed agreements");
        // Not the identity, not a shift.
        let identity = (0..n).filter(|&i| a.apply(i) == i).count();
        assert!(identity < 10, "{identity} fixed points");
    }

    /// Where value 0 lands, over many keys, is uniform over 0..n: a chi-square test with
    /// 9 degrees of freedom at the 0.1 % level (critical value 27.88).
    #[test]
    fn positions_are_uniform_across_keys() {
        let (n, trials) = (10u64, 20_000u32);
        let mut counts = [0u32; 10];
        for trial in 0..trials {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&trial.to_le_bytes());
            counts[Permutation::new(n, &k).invert(0) as usize] += 1;
        }
        let expected = f64::from(trials) / n as f64;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 27.88, "chi-square {chi2:.1}: {counts:?}");
    }

    #[test]
    fn large_domains_need_no_memory() {
        let n = 1u64 << 40;
        let permutation = Permutation::new(n, &key(9));
        for i in [0, 1, n / 2, n - 1] {
            assert_eq!(permutation.invert(permutation.apply(i)), i);
        }
    }
}
