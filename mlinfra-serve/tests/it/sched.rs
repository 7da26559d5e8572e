//! Continuous batching (`sched::Scheduler`): budget, chunked prefill, preemption, ordering,
//! and a randomized workload test against an unbatched reference.

use std::collections::{BTreeMap, HashMap, HashSet};

use mlinfra_serve::Error;
use mlinfra_serve::sched::{
    FinishReason, NewRequest, Policy, Request, RequestId, RequestStatus, Scheduler,
    SchedulerConfig, SchedulerOutput,
};
use mlinfra_test_utils::rng::SplitMix64;

use crate::fake_kv::FakeKv;

const VOCAB: u64 = 64;

/// The "model": the next token is a hash of the whole context as read back from KV, so a
/// request whose KV was mixed up, lost or stale generates different tokens.
fn next_token(context: &[u32]) -> u32 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &token in context {
        hash = (hash ^ u64::from(token)).wrapping_mul(0x100_0000_01b3);
    }
    (SplitMix64::new(hash).next_u64() % VOCAB) as u32
}

/// What a request generates when it runs alone, stopping at any of `stop_tokens`.
fn reference_output(new: &NewRequest, stop_tokens: &[u32]) -> (Vec<u32>, FinishReason) {
    let mut tokens = new.prompt.clone();
    loop {
        let token = next_token(&tokens);
        tokens.push(token);
        if stop_tokens.contains(&token) {
            return (tokens[new.prompt.len()..].to_vec(), FinishReason::Stop);
        }
        if tokens.len() - new.prompt.len() == new.max_tokens {
            return (tokens[new.prompt.len()..].to_vec(), FinishReason::Length);
        }
    }
}

/// Runs one step against the fake KV store, checking every scheduled request's computed
/// prefix reads back through its block table; returns the finished requests.
fn step(scheduler: &mut Scheduler, fake: &mut FakeKv) -> (SchedulerOutput, Vec<Request>) {
    step_stopping(scheduler, fake, &HashMap::new())
}

/// [`step`], where a request that samples one of its `stop_tokens` is told to stop (as the
/// engine's stop criteria would).
fn step_stopping(
    scheduler: &mut Scheduler,
    fake: &mut FakeKv,
    stop_tokens: &HashMap<RequestId, Vec<u32>>,
) -> (SchedulerOutput, Vec<Request>) {
    let plan = scheduler.schedule().unwrap();
    fake.copy(&plan.batch.copies);
    let mut sampled = Vec::new();
    let mut stopped = Vec::new();
    for work in &plan.scheduled {
        let request = scheduler.request(work.id).unwrap();
        let table = scheduler.kv().block_table(work.id).unwrap();
        let tokens = request.tokens();
        let before: Vec<u32> = fake
            .read(table, work.start)
            .into_iter()
            .map(|t| t.expect("computed KV slot"))
            .collect();
        assert_eq!(
            before,
            tokens[..work.start],
            "request {}: KV before the step",
            work.id
        );
        fake.write(table, tokens, work.start, work.start + work.len);
        if work.samples {
            let context: Vec<u32> = fake
                .read(table, work.start + work.len)
                .into_iter()
                .map(Option::unwrap)
                .collect();
            let token = next_token(&context);
            if stop_tokens
                .get(&work.id)
                .is_some_and(|stops| stops.contains(&token))
            {
                stopped.push((work.id, FinishReason::Stop));
            }
            sampled.push((work.id, vec![token]));
        }
    }
    let finished = scheduler.update_speculative(&sampled, &stopped).unwrap();
    (plan, finished)
}

fn config(num_blocks: usize, block_size: usize, budget: usize) -> SchedulerConfig {
    SchedulerConfig {
        num_blocks,
        block_size,
        max_batched_tokens: budget,
        watermark: 0.0,
        ..SchedulerConfig::default()
    }
}

#[test]
fn long_prompts_are_chunked_and_never_stall_running_decodes() {
    let mut scheduler = Scheduler::new(config(64, 4, 32)).unwrap();
    let mut fake = FakeKv::new(64, 4);
    scheduler.add(NewRequest::new(1, vec![7; 5], 20)).unwrap();
    let (plan, _) = step(&mut scheduler, &mut fake);
    assert_eq!(plan.num_tokens, 5);
    scheduler
        .add(NewRequest::new(2, (0..100).collect(), 3))
        .unwrap();
    let mut chunks = Vec::new();
    for _ in 0..4 {
        let (plan, _) = step(&mut scheduler, &mut fake);
        assert_eq!(plan.scheduled[0].id, 1, "the running decode goes first");
        assert_eq!(plan.scheduled[0].len, 1);
        chunks.push((
            plan.scheduled[1].start,
            plan.scheduled[1].len,
            plan.scheduled[1].samples,
        ));
        assert!(plan.num_tokens <= 32);
    }
    assert_eq!(
        chunks,
        [
            (0, 31, false),
            (31, 31, false),
            (62, 31, false),
            (93, 7, true)
        ]
    );
}

#[test]
fn without_chunked_prefill_a_prompt_waits_for_a_whole_budget() {
    let mut config = config(64, 4, 32);
    config.chunked_prefill = false;
    let mut scheduler = Scheduler::new(config).unwrap();
    let mut fake = FakeKv::new(64, 4);
    scheduler.add(NewRequest::new(1, vec![1; 20], 4)).unwrap();
    scheduler.add(NewRequest::new(2, vec![2; 20], 4)).unwrap();
    let (plan, _) = step(&mut scheduler, &mut fake);
    assert_eq!(
        plan.scheduled.len(),
        1,
        "20 + 20 tokens exceed the budget of 32"
    );
    let (plan, _) = step(&mut scheduler, &mut fake);
    assert_eq!(
        plan.scheduled.iter().map(|s| s.len).collect::<Vec<_>>(),
        [1, 20]
    );
    let error = scheduler
        .add(NewRequest::new(3, vec![3; 33], 1))
        .unwrap_err();
    assert!(
        error.to_string().contains("without chunked prefill"),
        "{error}"
    );
}

#[test]
fn out_of_blocks_preempts_the_last_request_which_resumes_from_the_prefix_cache() {
    // 6 blocks of 4: two requests of 8-token prompts grow until both cannot fit.
    let mut scheduler = Scheduler::new(config(6, 4, 64)).unwrap();
    let mut fake = FakeKv::new(6, 4);
    let first = NewRequest::new(1, (0..8).collect(), 12);
    let second = NewRequest::new(2, (100..108).collect(), 12);
    scheduler.add(first.clone()).unwrap();
    scheduler.add(second.clone()).unwrap();
    let mut outputs = HashMap::new();
    let mut preempted = Vec::new();
    for _ in 0..100 {
        let (plan, finished) = step(&mut scheduler, &mut fake);
        preempted.extend(plan.preempted.iter().copied());
        for request in finished {
            outputs.insert(
                request.id(),
                (request.output().to_vec(), request.num_preemptions()),
            );
        }
        if scheduler.is_idle() {
            break;
        }
    }
    assert_eq!(
        preempted.first(),
        Some(&2),
        "the later request is the victim"
    );
    assert!(!preempted.contains(&1));
    assert_eq!(outputs[&1].0, reference_output(&first, &[]).0);
    assert_eq!(
        outputs[&2].0,
        reference_output(&second, &[]).0,
        "recompute gives the same tokens"
    );
    assert!(outputs[&2].1 >= 1);
    let stats = scheduler.stats();
    assert_eq!(stats.preemptions, preempted.len() as u64);
    assert!(
        stats.prefix.hit_tokens > 0,
        "the re-admitted request reused its cached prefix"
    );
    assert_eq!(scheduler.kv().pool().num_free(), 6);
}

#[test]
fn abort_frees_blocks_at_once_even_mid_step() {
    let mut scheduler = Scheduler::new(config(16, 4, 64)).unwrap();
    let mut fake = FakeKv::new(16, 4);
    scheduler.add(NewRequest::new(1, vec![1; 10], 50)).unwrap();
    scheduler.add(NewRequest::new(2, vec![2; 10], 50)).unwrap();
    step(&mut scheduler, &mut fake);
    assert_eq!(scheduler.kv().pool().num_free(), 16 - 6);
    let aborted = scheduler.finish(1, FinishReason::Aborted).unwrap();
    assert_eq!(
        aborted.status(),
        RequestStatus::Finished(FinishReason::Aborted)
    );
    assert_eq!(scheduler.kv().pool().num_free(), 16 - 3);
    // Aborted between schedule and update: its token is ignored, its blocks are back.
    let plan = scheduler.schedule().unwrap();
    assert_eq!(plan.scheduled.len(), 1);
    scheduler.finish(2, FinishReason::Aborted).unwrap();
    assert_eq!(scheduler.kv().pool().num_free(), 16);
    assert!(scheduler.update(&[(2, 5)]).unwrap().is_empty());
    assert!(scheduler.is_idle());
    assert!(matches!(
        scheduler.finish(2, FinishReason::Aborted),
        Err(Error::InvalidRequest { request: 2, .. })
    ));
}

#[test]
fn requests_and_updates_that_cannot_work_are_refused() {
    let mut scheduler = Scheduler::new(config(4, 4, 64)).unwrap();
    let refused = |scheduler: &mut Scheduler, request: NewRequest, what: &str| {
        let error = scheduler.add(request).unwrap_err();
        assert!(matches!(error, Error::InvalidRequest { .. }), "{error}");
        assert!(error.to_string().contains(what), "{error}");
    };
    refused(
        &mut scheduler,
        NewRequest::new(1, vec![], 4),
        "needs a prompt",
    );
    refused(
        &mut scheduler,
        NewRequest::new(1, vec![1], 0),
        "max_tokens >= 1",
    );
    // 10 + 7 - 1 = 16 tokens fit in 4 blocks of 4; one more does not.
    scheduler.add(NewRequest::new(1, vec![1; 10], 7)).unwrap();
    refused(
        &mut scheduler,
        NewRequest::new(2, vec![1; 10], 8),
        "more than the 4 blocks",
    );
    refused(
        &mut scheduler,
        NewRequest::new(1, vec![1], 1),
        "already live",
    );
    assert!(matches!(
        scheduler.update(&[]),
        Err(Error::CallOrder { .. })
    ));
    scheduler.schedule().unwrap();
    assert!(matches!(scheduler.schedule(), Err(Error::CallOrder { .. })));
    let error = scheduler.update(&[]).unwrap_err();
    assert!(error.to_string().contains("has no token"), "{error}");
    let error = scheduler.update(&[(1, 1), (1, 2)]).unwrap_err();
    assert!(error.to_string().contains("two sampled tokens"), "{error}");
    assert_eq!(
        scheduler.update(&[(1, 3)]).unwrap().len(),
        0,
        "refused updates changed nothing"
    );
    assert_eq!(scheduler.request(1).unwrap().output(), [3]);
    assert!(
        Scheduler::new(SchedulerConfig {
            watermark: 1.0,
            ..config(4, 4, 64)
        })
        .is_err()
    );
    // A prompt chunk samples nothing.
    let mut scheduler = Scheduler::new(config(4, 4, 4)).unwrap();
    scheduler.add(NewRequest::new(1, vec![1; 10], 1)).unwrap();
    assert!(!scheduler.schedule().unwrap().scheduled[0].samples);
    let error = scheduler.update(&[(1, 1)]).unwrap_err();
    assert!(error.to_string().contains("did not sample"), "{error}");
    assert!(
        Scheduler::new(SchedulerConfig {
            max_batched_tokens: 0,
            ..config(4, 4, 64)
        })
        .is_err()
    );
}

/// Random workloads (arrivals over time, shared prefixes, stop tokens, priorities, tight KV
/// memory and budgets): every step stays within the budget, the sequence limit and KV
/// capacity; every request's KV reads back intact; admission and preemption follow the
/// documented order; every request finishes with exactly the tokens it generates alone; and
/// no block leaks.
#[test]
fn random_workloads_finish_in_order_with_unbatched_outputs() {
    // Totals over the seeds: the workloads must exercise what the test is about.
    let (mut preemptions, mut hit_tokens, mut chunks) = (0, 0, 0);
    for seed in 0..60 {
        let mut rng = SplitMix64::new(seed);
        let block_size = [1, 4, 16][(seed % 3) as usize];
        let num_blocks = 8 + (rng.next_u64() % 40) as usize;
        let policy = if seed % 2 == 0 {
            Policy::Fcfs
        } else {
            Policy::Priority
        };
        let config = SchedulerConfig {
            num_blocks,
            block_size,
            max_batched_tokens: 8 + (rng.next_u64() % 64) as usize,
            max_running: 1 + (rng.next_u64() % 8) as usize,
            chunked_prefill: seed % 5 != 0,
            prefix_caching: seed % 7 != 0,
            watermark: [0.0, 0.01, 0.1][(seed % 3) as usize],
            policy,
            max_model_len: None,
        };
        let budget = config.max_batched_tokens;
        let usable = (num_blocks - (config.watermark * num_blocks as f64) as usize) * block_size;
        let max_running = config.max_running;
        let mut scheduler = Scheduler::new(config.clone()).unwrap();
        let mut fake = FakeKv::new(num_blocks, block_size);
        let shared: Vec<u32> = (0..40).map(|i| 500 + i).collect();

        let mut pending: Vec<(usize, NewRequest, Vec<u32>)> = (0..30)
            .map(|id| {
                let at_step = (rng.next_u64() % 60) as usize;
                let mut prompt: Vec<u32> = if rng.next_u64().is_multiple_of(2) {
                    shared[..1 + (rng.next_u64() % 40) as usize].to_vec()
                } else {
                    Vec::new()
                };
                let own = 1 + (rng.next_u64() % 30) as usize;
                prompt.extend((0..own).map(|_| (rng.next_u64() % VOCAB) as u32));
                // Every request must fit alone (the scheduler refuses the others).
                prompt.truncate(usable / 2);
                if !config.chunked_prefill {
                    prompt.truncate(budget);
                }
                let mut new = NewRequest::new(id, prompt, 1 + (rng.next_u64() % 40) as usize);
                new.max_tokens = new.max_tokens.min(usable / 2);
                let stops = if rng.next_u64().is_multiple_of(2) {
                    vec![0, 1]
                } else {
                    Vec::new()
                };
                new.priority = (rng.next_u64() % 3) as i32;
                (at_step, new, stops)
            })
            .collect();
        pending.sort_by_key(|(at, _, _)| *at);
        let expected: HashMap<RequestId, (Vec<u32>, FinishReason)> = pending
            .iter()
            .map(|(_, new, stops)| (new.id, reference_output(new, stops)))
            .collect();
        let stop_tokens: HashMap<RequestId, Vec<u32>> = pending
            .iter()
            .map(|(_, new, stops)| (new.id, stops.clone()))
            .collect();
        // (priority as scheduled, arrival) of each request, to check the order.
        let mut order_key: HashMap<RequestId, (i32, usize)> = HashMap::new();
        let mut finished: BTreeMap<RequestId, Request> = BTreeMap::new();
        let mut next = 0;
        let mut steps = 0;
        while next < pending.len() || !scheduler.is_idle() {
            while next < pending.len() && pending[next].0 <= steps {
                let new = pending[next].1.clone();
                let priority = if policy == Policy::Priority {
                    new.priority
                } else {
                    0
                };
                order_key.insert(new.id, (priority, next));
                scheduler.add(new).unwrap();
                next += 1;
            }
            let was_running: HashSet<RequestId> = scheduler.running().collect();
            let (plan, done) = step_stopping(&mut scheduler, &mut fake, &stop_tokens);
            steps += 1;
            assert!(steps < 20_000, "seed {seed}: no progress");

            assert!(plan.num_tokens <= budget, "seed {seed}");
            chunks += plan.scheduled.iter().filter(|s| !s.samples).count();
            assert_eq!(
                plan.num_tokens,
                plan.scheduled.iter().map(|s| s.len).sum::<usize>()
            );
            let pool = scheduler.kv().pool();
            assert!(pool.num_free() <= num_blocks);
            let running: Vec<RequestId> = scheduler.running().collect();
            assert!(running.len() <= max_running, "seed {seed}");
            // Admitted this step: nothing still waiting was ahead of it.
            for work in &plan.scheduled {
                if !was_running.contains(&work.id) {
                    for waiting in scheduler.waiting() {
                        assert!(
                            order_key[&waiting] > order_key[&work.id],
                            "seed {seed}: {} admitted before {waiting}",
                            work.id
                        );
                    }
                }
            }
            // Preempted this step: after every request still running.
            for &victim in &plan.preempted {
                assert!(plan.scheduled.iter().all(|s| s.id != victim), "seed {seed}");
                for &other in &running {
                    assert!(
                        order_key[&other] < order_key[&victim],
                        "seed {seed}: preempted {victim} before {other}"
                    );
                }
            }
            for request in done {
                finished.insert(request.id(), request);
            }
        }
        assert_eq!(
            finished.len(),
            pending.len(),
            "seed {seed}: every request finishes"
        );
        for (id, request) in &finished {
            let (tokens, reason) = &expected[id];
            assert_eq!(
                request.output(),
                tokens.as_slice(),
                "seed {seed}: request {id}"
            );
            assert_eq!(
                request.status(),
                RequestStatus::Finished(*reason),
                "seed {seed}"
            );
        }
        assert_eq!(
            scheduler.kv().pool().num_free(),
            num_blocks,
            "seed {seed}: blocks leaked"
        );
        assert_eq!(scheduler.kv().num_sequences(), 0);
        preemptions += scheduler.stats().preemptions;
        hit_tokens += scheduler.stats().prefix.hit_tokens;
    }
    eprintln!("{preemptions} preemptions, {hit_tokens} prefix-hit tokens, {chunks} prompt chunks");
    assert!(preemptions > 50 && hit_tokens > 1000 && chunks > 50);
}

#[test]
fn drafts_are_verified_and_rejected_tokens_give_their_blocks_back() {
    let mut scheduler = Scheduler::new(config(16, 4, 64)).unwrap();
    let mut fake = FakeKv::new(16, 4);
    scheduler.add(NewRequest::new(1, vec![1; 7], 20)).unwrap();
    step(&mut scheduler, &mut fake); // prefill: 7 tokens computed, 1 generated
    assert!(scheduler.request(1).unwrap().is_decoding());
    assert_eq!(scheduler.set_draft(1, vec![5, 6, 7, 8, 9, 10]).unwrap(), 6);
    let plan = scheduler.schedule().unwrap();
    assert_eq!(
        (
            plan.scheduled[0].start,
            plan.scheduled[0].len,
            plan.scheduled[0].draft
        ),
        (7, 7, 6)
    );
    // The step batch is complete on its own: the last known token and the draft at
    // positions 7..14, the block table as the KV manager has it, and 7 logit rows (the last
    // known token's and one per draft token).
    let batch = &plan.batch;
    let generated = scheduler.request(1).unwrap().output()[0];
    assert_eq!(batch.tokens, [generated, 5, 6, 7, 8, 9, 10]);
    assert_eq!(batch.positions, (7..14).collect::<Vec<_>>());
    assert_eq!(batch.logit_rows, (0..7).collect::<Vec<_>>());
    assert_eq!(batch.seqs.len(), 1);
    let seq = &batch.seqs[0];
    assert_eq!(
        (seq.id, seq.query_start, seq.query_len, seq.context_len),
        (1, 0, 7, 14)
    );
    assert_eq!(seq.block_table, scheduler.kv().block_table(1).unwrap());
    assert_eq!(scheduler.kv().num_tokens(1), 14);
    let request = scheduler.request(1).unwrap();
    let mut with_draft = request.tokens().to_vec();
    with_draft.extend(request.draft());
    fake.write(scheduler.kv().block_table(1).unwrap(), &with_draft, 7, 14);
    assert_eq!(scheduler.kv().block_table(1).unwrap().len(), 4);
    // Not a prefix of the draft: refused, nothing changes.
    let error = scheduler
        .update_speculative(&[(1, vec![5, 9, 3])], &[])
        .unwrap_err();
    assert!(error.to_string().contains("accepted prefix"), "{error}");
    // Two accepted, then a correction: 7 + 1 + 2 computed, 3 tokens appended.
    assert!(
        scheduler
            .update_speculative(&[(1, vec![5, 6, 42])], &[])
            .unwrap()
            .is_empty()
    );
    let request = scheduler.request(1).unwrap();
    assert_eq!(request.output()[1..], [5, 6, 42]);
    assert_eq!(request.num_computed(), 10);
    assert_eq!(
        scheduler.kv().block_table(1).unwrap().len(),
        3,
        "the rejected tail's block is free"
    );
    // A draft is cut so that accepted tokens plus one stay within max_tokens (20 - 4 - 1).
    assert_eq!(scheduler.set_draft(1, vec![0; 40]).unwrap(), 15);
    // A stop among the accepted tokens (the sampler's decision) ends the request there.
    scheduler.add(NewRequest::new(2, vec![2; 3], 20)).unwrap();
    scheduler.set_draft(1, Vec::new()).unwrap();
    step(&mut scheduler, &mut fake);
    scheduler.set_draft(2, vec![7, 99, 8]).unwrap();
    let plan = scheduler.schedule().unwrap();
    let tokens: Vec<(u64, Vec<u32>)> = plan
        .scheduled
        .iter()
        .map(|s| {
            if s.id == 2 {
                (2, vec![7, 99])
            } else {
                (s.id, vec![3])
            }
        })
        .collect();
    let finished = scheduler
        .update_speculative(&tokens, &[(2, FinishReason::Stop)])
        .unwrap();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].output()[1..], [7, 99]);
    assert_eq!(
        finished[0].status(),
        RequestStatus::Finished(FinishReason::Stop)
    );
}

/// Issue 21, defect 2: `max_tokens = usize::MAX` wrapped `prompt + max_tokens - 1` to a small
/// number, so the request passed the "can it ever fit" check, filled the KV cache, preempted
/// itself and was never re-admitted, while the engine spun and everything behind it starved.
/// The sum is checked, and a request that could outgrow the model's context is refused when
/// added, not found mid-run (where the error aborted every request of the step).
#[test]
fn requests_that_could_never_finish_are_refused_when_added() {
    let mut scheduler = Scheduler::new(config(64, 4, 64)).unwrap();
    for max_tokens in [usize::MAX, usize::MAX - 1, usize::MAX / 2] {
        let error = scheduler
            .add(NewRequest::new(1, vec![1, 2, 3], max_tokens))
            .unwrap_err();
        assert!(matches!(error, Error::InvalidRequest { .. }), "{error}");
    }
    // What is left runs to the end: nothing was admitted by the refused requests.
    scheduler.add(NewRequest::new(2, vec![1, 2, 3], 4)).unwrap();
    let mut steps = 0;
    while !scheduler.is_idle() {
        let plan = scheduler.schedule().unwrap();
        let sampled: Vec<(u64, u32)> = plan
            .scheduled
            .iter()
            .filter(|w| w.samples)
            .map(|w| (w.id, 5))
            .collect();
        scheduler.update(&sampled).unwrap();
        steps += 1;
        assert!(steps < 100, "the scheduler does not finish");
    }

    let mut limited = Scheduler::new(SchedulerConfig {
        max_model_len: Some(16),
        ..config(64, 4, 64)
    })
    .unwrap();
    // 10 + 7 - 1 = 16 positions: fits; one more token does not.
    limited.add(NewRequest::new(1, vec![1; 10], 7)).unwrap();
    let error = limited.add(NewRequest::new(2, vec![1; 10], 8)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("past the model's 16-token context"),
        "{error}"
    );
}
