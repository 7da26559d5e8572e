//! [`Mixture`]: several sources drawn from in fixed proportions, as one source.
//!
//! # Contract
//!
//! An epoch of a mixture has `samples` samples; part `i` with weight `wᵢ` contributes exactly
//! `countᵢ` of them, `samples × wᵢ / Σw` apportioned by largest remainder (so the counts sum to
//! `samples`). Within an epoch the parts are interleaved by a seeded permutation: every window
//! of the mixture holds the parts in their proportions up to sampling noise, with
//! [`Shuffle::None`](crate::Shuffle::None) as with a shuffle on top.
//!
//! A part is drawn in passes: each pass is a fresh seeded permutation of all its samples. A
//! part weighted below its size (`countᵢ < lenᵢ`) continues the pass where the last epoch
//! stopped, so over consecutive epochs it delivers every sample before repeating any; a part
//! weighted above its size repeats, every sample once per pass. Which row sample `id` of epoch
//! `e` is, is a pure function of (parts' fingerprints, weights, samples, seed, `e`, `id`) and
//! costs O(1) ([`Mixture::locate`]): resuming a mixture is as cheap as resuming one dataset.
//!
//! Hugging Face's `interleave_datasets(probabilities, seed)` and MosaicML Streaming's stream
//! proportions are the same idea; unlike a sampler drawing each sample at random, the counts
//! here are exact in every epoch.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use mlinfra_data::RowRefs;

use crate::plan::Permutation;
use crate::source::{Source, SourceCounters};
use crate::{Error, Result};

/// Several sources mixed in fixed proportions; see the [module docs](self).
///
/// ```no_run
/// use std::sync::Arc;
/// use mlinfra_data::IpcCache;
/// use mlinfra_loader::{Loader, Mixture, Shuffle, Source};
///
/// let web: Arc<dyn Source> = Arc::new(IpcCache::open("cache/web")?);
/// let code: Arc<dyn Source> = Arc::new(IpcCache::open("cache/code")?);
/// // 1M samples an epoch, 70% web and 30% code.
/// let mixture = Mixture::new(vec![(web, 0.7), (code, 0.3)], 1_000_000, 17)?;
/// let loader = Loader::builder(mixture, 256).shuffle(Shuffle::Exact).build()?;
/// # let _ = loader;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Mixture {
    parts: Vec<Part>,
    samples: u64,
    seed: u64,
    fingerprint: String,
    schema: SchemaRef,
    interleave: Permutation,
    /// The keys every part's per-pass permutations are tweaked from.
    passes: Permutation,
}

struct Part {
    source: Arc<dyn Source>,
    weight: f64,
    /// Rows in the source.
    len: u64,
    /// Samples drawn from it per epoch, and the first of them in the interleaved id space.
    count: u64,
    start: u64,
}

impl std::fmt::Debug for Mixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mixture")
            .field("samples", &self.samples)
            .field("seed", &self.seed)
            .field("counts", &self.counts())
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Mixture {
    /// `samples` samples an epoch from `parts`, in proportion to their weights, interleaved by
    /// `seed`.
    ///
    /// Asks every part for its fingerprint (see [`Source::fingerprint`] for the cost).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPlan`] for no parts, a weight that is negative or not finite, weights
    /// that sum to 0, `samples` of 0, a part with a positive weight and no rows, or parts whose
    /// columns differ (project them alike first); a part's error computing its fingerprint.
    pub fn new(parts: Vec<(Arc<dyn Source>, f64)>, samples: u64, seed: u64) -> Result<Mixture> {
        let invalid = |reason: String| Error::InvalidPlan {
            reason: format!("mixture: {reason}").into(),
        };
        let Some((first, _)) = parts.first() else {
            return Err(invalid("no parts".into()));
        };
        let schema = first.schema();
        let total_weight: f64 = parts.iter().map(|(_, w)| w).sum();
        for (i, (source, weight)) in parts.iter().enumerate() {
            if !weight.is_finite() || *weight < 0.0 {
                return Err(invalid(format!("part {i} has weight {weight}")));
            }
            if source.schema().fields() != schema.fields() {
                return Err(invalid(format!(
                    "part {i} has other columns than part 0; project every part alike"
                )));
            }
        }
        if total_weight == 0.0 {
            return Err(invalid("the weights sum to 0".into()));
        }
        if !total_weight.is_finite() {
            return Err(invalid("the weights sum past f64's range".into()));
        }
        if samples == 0 {
            return Err(invalid("0 samples an epoch".into()));
        }
        let counts = apportion(samples, parts.iter().map(|(_, w)| *w / total_weight));
        let mut hasher = blake3::Hasher::new_derive_key("mlinfra-loader mixture");
        hasher.update(&samples.to_le_bytes());
        hasher.update(&seed.to_le_bytes());
        let mut start = 0;
        let mut mixed = Vec::with_capacity(parts.len());
        for (i, ((source, weight), count)) in parts.into_iter().zip(counts).enumerate() {
            let len = source.num_samples();
            if count > 0 && len == 0 {
                return Err(invalid(format!("part {i} has weight {weight} but no rows")));
            }
            let fingerprint = source.fingerprint()?;
            hasher.update(&(fingerprint.len() as u64).to_le_bytes());
            hasher.update(fingerprint.as_bytes());
            hasher.update(&weight.to_le_bytes());
            hasher.update(&count.to_le_bytes());
            mixed.push(Part {
                source,
                weight,
                len,
                count,
                start,
            });
            start += count;
        }
        let interleave = Permutation::new(samples, &key(seed, b"interleave", &[]));
        Ok(Mixture {
            parts: mixed,
            samples,
            seed,
            fingerprint: format!("mixture:{}", hasher.finalize().to_hex()),
            schema,
            interleave,
            passes: Permutation::new(1, &key(seed, b"pass", &[])),
        })
    }

    /// Samples each part contributes to an epoch, in part order.
    pub fn counts(&self) -> Vec<u64> {
        self.parts.iter().map(|part| part.count).collect()
    }

    /// The weights, as given.
    pub fn weights(&self) -> Vec<f64> {
        self.parts.iter().map(|part| part.weight).collect()
    }

    /// Which part sample `id` of epoch `epoch` comes from, and its row there; `None` for an id
    /// past the epoch. O(1).
    pub fn locate(&self, epoch: u64, id: u64) -> Option<(usize, u64)> {
        let draw = self.draw(epoch, id)?;
        Some((draw.part, self.row_of(&draw, &mut None)))
    }

    /// The part of `id` and its draw: the how-manieth sample of that part over all epochs.
    fn draw(&self, epoch: u64, id: u64) -> Option<Draw> {
        if id >= self.samples {
            return None;
        }
        let slot = self.interleave.apply(id);
        let part = self.parts.partition_point(|p| p.start <= slot) - 1;
        let p = &self.parts[part];
        let draw = epoch
            .checked_mul(p.count)
            .and_then(|d| d.checked_add(slot - p.start))?;
        Some(Draw {
            part,
            pass: draw / p.len,
            within: draw % p.len,
        })
    }

    /// The row of a draw; `cache` keeps the last pass's permutation (draws of one batch mostly
    /// share passes).
    fn row_of(&self, draw: &Draw, cache: &mut Option<(usize, u64, Permutation)>) -> u64 {
        let fresh =
            !matches!(cache, Some((part, pass, _)) if *part == draw.part && *pass == draw.pass);
        if fresh {
            let len = self.parts[draw.part].len;
            // One tweak per (part, pass): parts below 2^16, passes below 2^48 in practice.
            let tweak = draw.pass.rotate_left(16) ^ draw.part as u64;
            let permutation = self.passes.tweaked(len, tweak);
            *cache = Some((draw.part, draw.pass, permutation));
        }
        let (_, _, permutation) = cache.as_ref().expect("filled above");
        permutation.apply(draw.within)
    }
}

struct Draw {
    part: usize,
    pass: u64,
    within: u64,
}

impl Source for Mixture {
    fn num_samples(&self) -> u64 {
        self.samples
    }

    fn fingerprint(&self) -> Result<String> {
        Ok(self.fingerprint.clone())
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn rows(&self, ids: &[u64]) -> Result<RowRefs> {
        self.rows_in_epoch(0, ids)
    }

    fn rows_in_epoch(&self, epoch: u64, ids: &[u64]) -> Result<RowRefs> {
        // Each id's part and row; then one request per part, and the answers merged back into
        // the requested order.
        let mut requests: Vec<Vec<u64>> = vec![Vec::new(); self.parts.len()];
        let mut order = Vec::with_capacity(ids.len());
        let mut cache = None;
        for &id in ids {
            let draw = self
                .draw(epoch, id)
                .ok_or(mlinfra_data::Error::RowOutOfRange {
                    index: id,
                    rows: self.samples,
                })?;
            let row = self.row_of(&draw, &mut cache);
            order.push((draw.part, requests[draw.part].len()));
            requests[draw.part].push(row);
        }
        let answers = self
            .parts
            .iter()
            .zip(&requests)
            .map(|(part, rows)| {
                if rows.is_empty() {
                    // A part this batch draws nothing from is not asked (weight 0 included).
                    Ok(RowRefs::empty(self.schema.clone()))
                } else {
                    part.source.rows_in_epoch(epoch, rows)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        RowRefs::merge(answers, &order).ok_or_else(|| Error::InvalidPlan {
            reason: "mixture: a part answered with other columns or fewer rows than asked".into(),
        })
    }

    fn prefetch(&self, epoch: u64, ids: &[u64]) {
        let mut rows: Vec<Vec<u64>> = vec![Vec::new(); self.parts.len()];
        let mut cache = None;
        for &id in ids {
            if let Some(draw) = self.draw(epoch, id) {
                rows[draw.part].push(self.row_of(&draw, &mut cache));
            }
        }
        for (part, rows) in self.parts.iter().zip(&rows) {
            if !rows.is_empty() {
                part.source.prefetch(epoch, rows);
            }
        }
    }

    fn wants_prefetch(&self) -> bool {
        self.parts.iter().any(|part| part.source.wants_prefetch())
    }

    fn counters(&self) -> SourceCounters {
        self.parts.iter().map(|part| part.source.counters()).fold(
            SourceCounters::default(),
            |sum, c| SourceCounters {
                bytes_read: sum.bytes_read + c.bytes_read,
                cache_hits: sum.cache_hits + c.cache_hits,
                cache_evictions: sum.cache_evictions + c.cache_evictions,
            },
        )
    }
}

/// A 256-bit key for one of the mixture's permutations.
fn key(seed: u64, purpose: &[u8], context: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("mlinfra-loader mixture permutation");
    hasher.update(&seed.to_le_bytes());
    for part in [purpose, context] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    *hasher.finalize().as_bytes()
}

/// `total` seats shared by `shares` (summing to 1) by largest remainder; ties go to the
/// earlier part. The result sums to `total`.
fn apportion(total: u64, shares: impl Iterator<Item = f64>) -> Vec<u64> {
    let quotas: Vec<f64> = shares.map(|share| share * total as f64).collect();
    let mut counts: Vec<u64> = quotas.iter().map(|q| q.floor() as u64).collect();
    let given: u64 = counts.iter().sum();
    let mut by_remainder: Vec<usize> = (0..quotas.len()).collect();
    by_remainder.sort_by(|&a, &b| {
        let (ra, rb) = (quotas[a] - quotas[a].floor(), quotas[b] - quotas[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    // Rounding can leave the floors a seat or two off `total` either way; settle it here.
    let mut left = total.saturating_sub(given);
    for &i in by_remainder.iter().cycle().take(quotas.len() * 2) {
        if left == 0 {
            break;
        }
        if quotas[i] > 0.0 {
            counts[i] += 1;
            left -= 1;
        }
    }
    let mut excess = counts.iter().sum::<u64>().saturating_sub(total);
    for &i in by_remainder.iter().rev() {
        if excess == 0 {
            break;
        }
        if counts[i] > 0 {
            counts[i] -= 1;
            excess -= 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportionment_sums_to_the_total_and_follows_the_shares() {
        assert_eq!(
            apportion(1000, [0.5, 0.3, 0.2].into_iter()),
            [500, 300, 200]
        );
        assert_eq!(apportion(10, [1.0 / 3.0; 3].into_iter()), [4, 3, 3]);
        assert_eq!(apportion(7, [0.0, 1.0].into_iter()), [0, 7]);
        for total in [1, 2, 3, 97, 1_000_003] {
            let shares = [0.123, 0.456, 0.0, 0.421];
            let counts = apportion(total, shares.into_iter());
            assert_eq!(counts.iter().sum::<u64>(), total);
            for (count, share) in counts.iter().zip(shares) {
                assert!((*count as f64 - share * total as f64).abs() < 1.0 + 1e-9);
            }
        }
    }
}
