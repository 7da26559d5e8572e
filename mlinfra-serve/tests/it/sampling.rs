//! Sampling (`sampling::Sampler`) against f64 reference distributions.

use mlinfra_serve::Error;
use mlinfra_serve::sampling::{Sampler, SamplingParams};

/// Draws `n` tokens and returns the count of each.
fn histogram(params: SamplingParams, logits: &[f32], n: usize, seed: u64) -> Vec<usize> {
    let mut sampler = Sampler::new(params, &[], seed).unwrap();
    let mut counts = vec![0; logits.len()];
    for _ in 0..n {
        counts[sampler.sample(logits).unwrap().token as usize] += 1;
    }
    counts
}

/// Pearson's statistic of `counts` against `probs` (zero-probability tokens must not occur).
fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .map(|(&count, &p)| {
            if p == 0.0 {
                assert_eq!(count, 0, "a filtered-out token was sampled");
                0.0
            } else {
                let expected = p * n as f64;
                (count as f64 - expected).powi(2) / expected
            }
        })
        .sum()
}

/// softmax(logits / temperature) in f64, renormalised over `keep`.
fn reference(logits: &[f32], temperature: f64, keep: &[usize]) -> Vec<f64> {
    let weights: Vec<f64> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if keep.contains(&i) {
                (f64::from(l) / temperature).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

/// The 0.999 quantiles of chi-square with 1..=4 degrees of freedom.
const CRITICAL: [f64; 5] = [0.0, 10.83, 13.82, 16.27, 18.47];

#[test]
fn greedy_takes_the_argmax_and_the_lowest_id_on_ties() {
    let mut sampler = Sampler::new(SamplingParams::greedy(4), &[], 0).unwrap();
    assert_eq!(sampler.sample(&[0.1, 3.0, -2.0, 3.0]).unwrap().token, 1);
    assert_eq!(sampler.sample(&[f32::NEG_INFINITY, -5.0]).unwrap().token, 1);
}

#[test]
fn temperature_sampling_follows_the_softmax() {
    let logits = [2.0, 1.0, 0.5, 0.0, -1.0];
    for temperature in [0.5f32, 1.0, 1.7] {
        let params = SamplingParams {
            temperature,
            ..SamplingParams::default()
        };
        let counts = histogram(params, &logits, 20_000, 7);
        let probs = reference(&logits, f64::from(temperature), &[0, 1, 2, 3, 4]);
        let statistic = chi_square(&counts, &probs);
        assert!(
            statistic < CRITICAL[4],
            "T={temperature}: chi-square {statistic:.1}, counts {counts:?}"
        );
        // The test can fail: the same counts against the untempered softmax.
        if temperature != 1.0 {
            let wrong = chi_square(&counts, &reference(&logits, 1.0, &[0, 1, 2, 3, 4]));
            assert!(
                wrong > 100.0,
                "T={temperature}: indistinguishable from T=1 ({wrong:.1})"
            );
        }
    }
}

#[test]
fn top_k_top_p_and_min_p_keep_the_documented_sets() {
    // Probabilities 0.5, 0.3, 0.15, 0.05.
    let logits: Vec<f32> = [0.5f64, 0.3, 0.15, 0.05]
        .iter()
        .map(|p| p.ln() as f32)
        .collect();
    let cases = [
        (
            "top_k 2",
            SamplingParams {
                top_k: 2,
                ..SamplingParams::default()
            },
            vec![0, 1],
        ),
        (
            "top_k 3",
            SamplingParams {
                top_k: 3,
                ..SamplingParams::default()
            },
            vec![0, 1, 2],
        ),
        // 0.5 < 0.75 <= 0.5 + 0.3: two tokens reach the mass.
        (
            "top_p 0.75",
            SamplingParams {
                top_p: 0.75,
                ..SamplingParams::default()
            },
            vec![0, 1],
        ),
        (
            "top_p 0.9",
            SamplingParams {
                top_p: 0.9,
                ..SamplingParams::default()
            },
            vec![0, 1, 2],
        ),
        (
            "top_p 0.4",
            SamplingParams {
                top_p: 0.4,
                ..SamplingParams::default()
            },
            vec![0],
        ),
        // Kept: p >= 0.35 * 0.5 = 0.175.
        (
            "min_p 0.35",
            SamplingParams {
                min_p: 0.35,
                ..SamplingParams::default()
            },
            vec![0, 1],
        ),
        // top-p over what top-k kept: 0.5/0.8 = 0.625 >= 0.6.
        (
            "top_k 2 + top_p 0.6",
            SamplingParams {
                top_k: 2,
                top_p: 0.6,
                ..SamplingParams::default()
            },
            vec![0],
        ),
    ];
    for (name, params, keep) in cases {
        let counts = histogram(params, &logits, 10_000, 11);
        let probs = reference(&logits, 1.0, &keep);
        let statistic = chi_square(&counts, &probs);
        assert!(
            statistic < CRITICAL[keep.len().max(2) - 1],
            "{name}: chi-square {statistic:.1}, counts {counts:?}"
        );
    }
}

#[test]
fn penalties_change_the_logits_as_vllm_does() {
    let params = SamplingParams {
        repetition_penalty: 2.0,
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(params, &[0, 0], 0).unwrap();
    for token in [2, 2, 3] {
        sampler.observe(token);
    }
    let processed = sampler
        .processed_logits(&[1.0, -1.0, 2.0, 0.5, -3.0])
        .to_vec();
    // 0: in the prompt, positive: halved. 1: unseen. 2: generated twice: 2/2 - 2*0.5 - 0.25.
    // 3: generated once: 0.5/2 - 0.5 - 0.25. 4: unseen.
    assert_eq!(processed, [0.5, -1.0, -0.25, -0.5, -3.0]);

    let params = SamplingParams {
        repetition_penalty: 2.0,
        temperature: 0.5,
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(params, &[1], 0).unwrap();
    // Negative logits are multiplied, then everything is divided by the temperature, after a
    // shift that makes the largest 0 (softmax is unchanged): [1, -2] / 0.5 - 2.
    assert_eq!(sampler.processed_logits(&[1.0, -1.0]), [0.0, -6.0]);
}

#[test]
fn a_seed_fixes_the_samples() {
    let logits = [0.3, 0.2, 0.1, 0.0, 0.4, 0.1];
    let draw = |seed| {
        let mut sampler = Sampler::new(
            SamplingParams {
                top_p: 0.95,
                ..SamplingParams::default()
            },
            &[],
            seed,
        )
        .unwrap();
        (0..64)
            .map(|_| sampler.sample(&logits).unwrap().token)
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(5), draw(5));
    assert_ne!(draw(5), draw(6));
}

#[test]
fn logprobs_are_the_raw_log_softmax() {
    let logits = [1.5f32, -0.5, 3.0, 0.0, 2.9];
    let params = SamplingParams {
        logprobs: Some(3),
        repetition_penalty: 1.5,
        ..SamplingParams::greedy(1)
    };
    let mut sampler = Sampler::new(params, &[2], 0).unwrap();
    let sample = sampler.sample(&logits).unwrap();
    let log_z = logits.iter().map(|&l| f64::from(l).exp()).sum::<f64>().ln();
    let expected = |token: usize| (f64::from(logits[token]) - log_z) as f32;
    // The penalty moved the argmax to token 4, but logprobs describe the raw model.
    assert_eq!(sample.token, 4);
    assert!((sample.logprob.unwrap() - expected(4)).abs() < 1e-6);
    let top: Vec<u32> = sample.top_logprobs.iter().map(|&(t, _)| t).collect();
    assert_eq!(top, [2, 4, 0]);
    for &(token, logprob) in &sample.top_logprobs {
        assert!((logprob - expected(token as usize)).abs() < 1e-6);
    }
}

#[test]
fn bad_parameters_and_logits_are_typed_errors() {
    let bad = [
        SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: f32::NAN,
            ..SamplingParams::default()
        },
        SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            min_p: 1.5,
            ..SamplingParams::default()
        },
        SamplingParams {
            repetition_penalty: 0.0,
            ..SamplingParams::default()
        },
        SamplingParams {
            presence_penalty: 2.5,
            ..SamplingParams::default()
        },
        SamplingParams {
            max_tokens: 0,
            ..SamplingParams::default()
        },
        SamplingParams {
            logprobs: Some(21),
            ..SamplingParams::default()
        },
        SamplingParams {
            stop: vec![String::new()],
            ..SamplingParams::default()
        },
    ];
    for params in bad {
        let error = Sampler::new(params.clone(), &[], 0).unwrap_err();
        assert!(
            matches!(error, Error::InvalidSampling { .. }),
            "{params:?}: {error}"
        );
    }
    let mut sampler = Sampler::new(SamplingParams::default(), &[], 0).unwrap();
    assert!(matches!(
        sampler.sample(&[0.0, f32::NAN]),
        Err(Error::InvalidSampling { .. })
    ));
    assert!(matches!(
        sampler.sample(&[]),
        Err(Error::InvalidSampling { .. })
    ));
}

/// Issue 21, sibling of defect 2: a finite but tiny temperature (or repetition penalty) made
/// the scaled logits infinite, `inf - inf` turned the distribution into NaN, and the sampler
/// returned an arbitrary token. A tiny temperature is now the limit it approaches: the argmax,
/// on every draw and whatever the seed.
#[test]
fn a_tiny_temperature_samples_the_argmax() {
    let logits = [0.5, 2.0, -1.0, 1.999, f32::NEG_INFINITY];
    for temperature in [1e-38, f32::MIN_POSITIVE, 1e-45] {
        for seed in 0..50 {
            let params = SamplingParams {
                temperature,
                ..SamplingParams::default()
            };
            let mut sampler = Sampler::new(params.clone(), &[], seed).unwrap();
            assert_eq!(sampler.sample(&logits).unwrap().token, 1, "T={temperature}");
            let probs = sampler.probabilities(&logits).unwrap();
            assert_eq!(probs[1], 1.0, "T={temperature}: {probs:?}");
        }
    }
    // A tiny repetition penalty on a seen positive logit pushes it to the top, finitely.
    let params = SamplingParams {
        temperature: 0.5,
        repetition_penalty: 1e-38,
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(params, &[0], 1).unwrap();
    assert_eq!(sampler.sample(&logits).unwrap().token, 0);
    // Logits a broken model gives are refused, never sampled.
    for bad in [f32::NAN, f32::INFINITY] {
        let mut sampler = Sampler::new(SamplingParams::default(), &[], 0).unwrap();
        let error = sampler.sample(&[0.0, bad]).unwrap_err();
        assert!(matches!(error, Error::InvalidSampling { .. }), "{error}");
    }
}
