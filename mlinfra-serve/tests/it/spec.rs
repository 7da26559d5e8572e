//! Speculative decoding's acceptance rule (`spec::accept`): greedy equivalence, and a
//! chi-square test that sampled outputs follow the target distribution exactly.

use mlinfra_serve::Error;
use mlinfra_serve::spec::{NgramProposer, accept};
use mlinfra_train::SplitMix64;

const VOCAB: usize = 4;

/// Target model: a Markov chain, next-token distribution given the previous token.
const TARGET: [[f32; VOCAB]; VOCAB] = [
    [0.1, 0.6, 0.2, 0.1],
    [0.5, 0.1, 0.1, 0.3],
    [0.25, 0.25, 0.4, 0.1],
    [0.05, 0.15, 0.3, 0.5],
];

/// Draft model: a different chain (so many drafts are rejected).
const DRAFT: [[f32; VOCAB]; VOCAB] = [
    [0.4, 0.2, 0.2, 0.2],
    [0.1, 0.6, 0.2, 0.1],
    [0.25, 0.25, 0.25, 0.25],
    [0.7, 0.1, 0.1, 0.1],
];

fn draw(probs: &[f32], rng: &mut SplitMix64) -> u32 {
    let mut u = rng.uniform(0.0, 1.0);
    for (t, &p) in probs.iter().enumerate() {
        u -= f64::from(p);
        if u < 0.0 {
            return t as u32;
        }
    }
    (probs.len() - 1) as u32
}

/// An acceptance rule: `accept`'s signature, returning the tokens to append.
type Rule = fn(&[u32], &[Option<&[f32]>], &[&[f32]], &mut SplitMix64) -> Vec<u32>;

fn the_crates_rule(
    draft: &[u32],
    q: &[Option<&[f32]>],
    p: &[&[f32]],
    rng: &mut SplitMix64,
) -> Vec<u32> {
    accept(draft, q, p, rng).unwrap().tokens
}

/// The classic mistake, as the control: the same acceptance test, but a rejected position is
/// redrawn from the target `p` itself instead of the residual `max(0, p - q)`, which counts
/// the draft's mass twice.
fn without_the_correction(
    draft: &[u32],
    q: &[Option<&[f32]>],
    p: &[&[f32]],
    rng: &mut SplitMix64,
) -> Vec<u32> {
    let mut tokens = Vec::new();
    for (i, &token) in draft.iter().enumerate() {
        let q_token = q[i].map_or(1.0, |q| f64::from(q[token as usize]));
        let accept = (f64::from(p[i][token as usize]) / q_token).min(1.0);
        if rng.uniform(0.0, 1.0) < accept {
            tokens.push(token);
        } else {
            tokens.push(draw(p[i], rng));
            return tokens;
        }
    }
    tokens.push(draw(p[draft.len()], rng));
    tokens
}

/// Generates two tokens after token 0 with speculative steps of `k` drafted tokens, drafted
/// by the draft chain (`point_mass: false`) or as a fixed guess of token 3 (`true`), verified
/// by `rule`.
fn two_tokens(k: usize, point_mass: bool, rule: Rule, rng: &mut SplitMix64) -> (u32, u32) {
    let mut out: Vec<u32> = Vec::new();
    while out.len() < 2 {
        let mut last = out.last().copied().unwrap_or(0);
        let start = last;
        let mut draft = Vec::new();
        for _ in 0..k {
            let token = if point_mass {
                3
            } else {
                draw(&DRAFT[last as usize], rng)
            };
            draft.push(token);
            last = token;
        }
        let mut context = vec![start];
        context.extend(&draft);
        let target: Vec<&[f32]> = context.iter().map(|&t| &TARGET[t as usize][..]).collect();
        let q: Vec<Option<&[f32]>> = if point_mass {
            vec![None; k]
        } else {
            std::iter::once(start)
                .chain(draft[..k - 1].iter().copied())
                .map(|t| Some(&DRAFT[t as usize][..]))
                .collect()
        };
        out.extend(rule(&draft, &q, &target, rng));
    }
    (out[0], out[1])
}

fn chi_square(counts: &[usize], expected: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .zip(expected)
        .map(|(&c, &p)| (c as f64 - p * n as f64).powi(2) / (p * n as f64))
        .sum()
}

/// The joint distribution of the first two tokens is the target's, p(a|0)·p(b|a), for
/// sampled and point-mass drafts and several draft lengths (chi-square, 15 degrees of
/// freedom, 0.999 quantile 37.70). Without the correction step it is not: the same procedure
/// with the rejected token redrawn from p fails the same test on every case (issue 21: the
/// control used to compare against the draft chain, never the rule without the correction).
#[test]
fn speculative_samples_follow_the_target_distribution() {
    let expected: Vec<f64> = (0..VOCAB * VOCAB)
        .map(|i| f64::from(TARGET[0][i / VOCAB]) * f64::from(TARGET[i / VOCAB][i % VOCAB]))
        .collect();
    let statistic = |k: usize, point_mass: bool, rule: Rule| {
        let mut rng = SplitMix64::new(42 + k as u64);
        let mut counts = vec![0; VOCAB * VOCAB];
        for _ in 0..40_000 {
            let (a, b) = two_tokens(k, point_mass, rule, &mut rng);
            counts[a as usize * VOCAB + b as usize] += 1;
        }
        chi_square(&counts, &expected)
    };
    for (k, point_mass) in [(1, false), (3, false), (2, true)] {
        let with = statistic(k, point_mass, the_crates_rule);
        assert!(
            with < 37.70,
            "k={k} point_mass={point_mass}: chi-square {with:.1}"
        );
        let without = statistic(k, point_mass, without_the_correction);
        assert!(
            without > 37.70,
            "k={k} point_mass={point_mass}: the uncorrected rule passes too ({without:.1}), \
             so this test cannot tell them apart"
        );
    }
    // The test has power: the draft chain's own joint distribution is far off.
    let mut rng = SplitMix64::new(7);
    let mut counts = vec![0; VOCAB * VOCAB];
    for _ in 0..40_000 {
        let a = draw(&DRAFT[0], &mut rng);
        let b = draw(&DRAFT[a as usize], &mut rng);
        counts[a as usize * VOCAB + b as usize] += 1;
    }
    assert!(chi_square(&counts, &expected) > 1000.0);
}

/// With one-hot (greedy) targets and n-gram drafts, speculative output equals plain greedy
/// output, and repetitive text is accepted in long runs.
#[test]
fn greedy_speculation_equals_greedy_decoding() {
    // A deterministic "model" whose greedy output cycles with period 5 after a while.
    let next = |context: &[u32]| -> u32 {
        let last = *context.last().unwrap();
        if context.len() < 8 {
            (last * 7 + 3) % 11
        } else {
            (last + 1) % 5
        }
    };
    let one_hot =
        |token: u32| -> Vec<f32> { (0..11).map(|t| f32::from(u8::from(t == token))).collect() };
    let mut plain = vec![1u32, 2];
    while plain.len() < 60 {
        plain.push(next(&plain));
    }
    let proposer = NgramProposer {
        min_n: 1,
        max_n: 3,
        k: 4,
    };
    let mut rng = SplitMix64::new(0);
    let mut spec = vec![1u32, 2];
    let (mut steps, mut accepted) = (0, 0);
    while spec.len() < 60 {
        let draft = proposer.propose(&spec);
        let mut context = spec.clone();
        let mut targets = Vec::new();
        for i in 0..=draft.len() {
            targets.push(one_hot(next(&context)));
            if i < draft.len() {
                context.push(draft[i]);
            }
        }
        let target: Vec<&[f32]> = targets.iter().map(Vec::as_slice).collect();
        let verified = accept(&draft, &vec![None; draft.len()], &target, &mut rng).unwrap();
        accepted += verified.accepted;
        spec.extend(verified.tokens);
        steps += 1;
    }
    assert_eq!(spec[..60], plain[..60]);
    assert!(
        accepted > 20 && steps < 30,
        "{accepted} accepted in {steps} steps"
    );
}

#[test]
fn mismatched_inputs_are_typed_errors() {
    let mut rng = SplitMix64::new(0);
    let p = [0.5f32, 0.5];
    // (draft, draft distributions, target distributions)
    type Case<'a> = (&'a [u32], Vec<Option<&'a [f32]>>, Vec<&'a [f32]>);
    let cases: [Case<'_>; 4] = [
        (&[0], vec![None], vec![&p]),
        (&[0], vec![], vec![&p, &p]),
        (&[5], vec![None], vec![&p, &p]),
        (&[0], vec![None], vec![&p, &[0.0, 0.0]]),
    ];
    for (draft, q, target) in cases {
        assert!(matches!(
            accept(draft, &q, &target, &mut rng),
            Err(Error::InvalidSampling { .. })
        ));
    }
}
