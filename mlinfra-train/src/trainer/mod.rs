//! [`Trainer`]: the training loop over an mlinfra-loader (documented on the type).

mod metrics;
mod task;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use mlinfra_loader::{Loader, LoaderBuilder, Tensors};
use serde::{Deserialize, Serialize};

pub use metrics::{MetricsLog, read_metrics};
pub use task::{Classification, Classifier, EvalSums, Task};

use crate::checkpoint::{Checkpoint, CheckpointConfig, Checkpointer};
use crate::collective::Collective;
use crate::optim::OptimizerConfig;
use crate::rng::SplitMix64;
use crate::{DataParallel, Error, Result, StepOptions, StepReport};
use metrics::{Metrics, Progress};

/// How long and how a [`Trainer`] runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    /// Optimizer steps to reach (a resumed run continues up to the same number).
    pub steps: u64,
    /// Loader batches per optimizer step on each rank (gradient accumulation); at least 1.
    pub micro_batches: u64,
    /// Evaluate every this many steps (and after the last); `None`: only after the last.
    pub eval_every: Option<u64>,
    /// Checkpoints: where, and every how many steps (a final one is always written).
    pub checkpoint: Option<CheckpointSchedule>,
    /// Append metrics as JSON lines to this file (rank 0 only).
    pub metrics: Option<PathBuf>,
    /// Draw a progress bar on stderr (rank 0 only).
    pub progress: bool,
    /// Seed of the ranks' training generators (rank `r` starts from a stream derived from
    /// `seed` and `r`); restored from a checkpoint when resuming.
    pub seed: u64,
}

/// Where and how often a [`Trainer`] checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSchedule {
    /// Directory, retention and sync/async writes.
    pub config: CheckpointConfig,
    /// Save after every this many steps; 0 for only the final (and SIGTERM) checkpoint.
    pub every: u64,
    /// Resume from the newest valid checkpoint in the directory, if there is one. Without it,
    /// a directory that already holds complete checkpoints is refused
    /// ([`Error::CheckpointDirInUse`]): one run per directory.
    pub resume: bool,
}

/// What [`Trainer::fit`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Optimizer steps taken in all, including those before a resume.
    pub steps: u64,
    /// The step this run resumed from (`None`: a fresh start).
    pub resumed_from: Option<u64>,
    /// Samples trained on by this run, all ranks together.
    pub samples: u64,
    /// Wall time of this run's training loop.
    pub seconds: f64,
    /// `samples / seconds`.
    pub samples_per_s: f64,
    /// The mean loss of the last step.
    pub last_loss: f64,
    /// The final evaluation, if there is an evaluation loader.
    pub eval: Option<EvalSums>,
    /// Whether training stopped early on request ([`Trainer::stop_flag`]) after a final
    /// checkpoint.
    pub stopped: bool,
}

/// Builds the evaluation loader for `(rank, world)`.
pub type EvalLoader = Box<dyn FnMut(usize, usize) -> Result<Loader> + Send>;

/// A training loop: batches from an mlinfra-loader, a [`Task`]'s loss, a [`DataParallel`]
/// optimizer step, evaluation, metrics, a progress bar and checkpoints.
///
/// Each step takes [`TrainerConfig::micro_batches`] batches on every rank (starting the next
/// epoch when one ends), accumulates their gradients weighted by sample count, and steps.
/// Everything a step depends on is restored from a checkpoint: weights, optimizer state, step
/// (hence learning rate), loader position and the ranks' generators; so a run resumed from
/// step k ends with the same weights, bit for bit, as one that never stopped.
///
/// **Metrics** (rank 0, JSON lines appended to [`TrainerConfig::metrics`]):
/// `{"kind":"train","step","epoch","loss","grad_norm","clipped","lr","samples","samples_per_s","elapsed_s"}`
/// per step (plus the task's [`Task::step_metrics`]), `{"kind":"eval","step","loss","accuracy","samples"}` per evaluation,
/// `{"kind":"checkpoint","step","save_s"}` per save, and `{"kind":"resume","step"}`.
///
/// **Stopping.** Setting [`Trainer::stop_flag`] (from a SIGTERM handler, say) makes every rank
/// finish its step, write a checkpoint and return with [`Summary::stopped`].
///
/// Collective: every rank runs `fit` with the same configuration.
pub struct Trainer<C: Collective, M, T> {
    engine: DataParallel<C>,
    model: Option<M>,
    task: T,
    loader: Loader,
    eval: Option<EvalLoader>,
    checkpoints: Option<(Checkpointer, u64)>,
    rng: SplitMix64,
    config: TrainerConfig,
    stop: Arc<AtomicBool>,
    resumed_from: Option<u64>,
    /// The step of the last checkpoint this trainer saved or resumed from.
    saved_at: Option<u64>,
    device: Device,
}

impl<C: Collective, M, T> std::fmt::Debug for Trainer<C, M, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("engine", &self.engine)
            .field("config", &self.config)
            .field("resumed_from", &self.resumed_from)
            .finish_non_exhaustive()
    }
}

/// A run that does not resume must not share its checkpoint directory with another run's
/// complete checkpoints (see the [checkpoint module](crate::checkpoint)). Collective: every
/// rank lists the directory it sees, and all fail if any finds checkpoints.
fn refuse_dir_in_use<C: Collective + ?Sized>(
    dir: &std::path::Path,
    collective: &mut C,
) -> Result<()> {
    let newest = crate::checkpoint::complete_steps(dir)?.first().copied();
    let mine = newest.map_or([0, 0], |step| [1, step]);
    let all = crate::collective::all_gather_u64(collective, &mine)?;
    match all
        .chunks_exact(2)
        .filter(|p| p[0] == 1)
        .map(|p| p[1])
        .max()
    {
        Some(newest) => Err(Error::CheckpointDirInUse {
            dir: dir.into(),
            newest,
        }),
        None => Ok(()),
    }
}

impl<C, M, T> Trainer<C, M, T>
where
    C: Collective,
    M: Module,
    T: Task<M>,
{
    /// A trainer of `model` (on an autodiff device) for `task` on batches from `loader`
    /// (configured but not built: the trainer sets this rank and world, and the resume point).
    /// With checkpoints and `resume`, it continues from the newest valid checkpoint.
    ///
    /// # Errors
    ///
    /// Invalid configuration; checkpoint errors ([`Error::CheckpointMismatch`] for a checkpoint
    /// of another model or optimizer); loader errors (a checkpoint of another dataset);
    /// collective errors.
    pub fn new(
        mut collective: C,
        model: M,
        task: T,
        loader: LoaderBuilder<Tensors>,
        optimizer: &OptimizerConfig,
        options: StepOptions,
        config: TrainerConfig,
    ) -> Result<Self> {
        if config.micro_batches == 0 {
            return Err(Error::InvalidConfig {
                reason: "micro_batches must be at least 1".into(),
            });
        }
        let (rank, world) = (collective.rank(), collective.world());
        let device = model
            .devices()
            .into_iter()
            .next()
            .unwrap_or_else(|| Device::flex().autodiff());
        let mut checkpoints = None;
        let mut restored = None;
        if let Some(schedule) = &config.checkpoint {
            if schedule.resume {
                restored = Checkpoint::latest(&schedule.config.dir, &mut collective)?;
            } else {
                refuse_dir_in_use(&schedule.config.dir, &mut collective)?;
            }
            checkpoints = Some((Checkpointer::new(schedule.config.clone())?, schedule.every));
        }
        let mut loader = loader.rank(rank as u64, world as u64);
        let (engine, model, rng) = match &restored {
            Some(checkpoint) => {
                if let Some(state) = &checkpoint.manifest().loader {
                    loader = loader.resume(state.clone());
                }
                let rng = SplitMix64::new(checkpoint.rng(rank));
                let (engine, model) =
                    DataParallel::resume(collective, model, optimizer, options, checkpoint)?;
                (engine, model, rng)
            }
            None => {
                let mut seeds = SplitMix64::new(config.seed);
                let rng = SplitMix64::new((0..=rank).map(|_| seeds.next_u64()).last().unwrap_or(0));
                let (engine, model) = DataParallel::new(collective, model, optimizer, options)?;
                (engine, model, rng)
            }
        };
        Ok(Trainer {
            engine,
            model: Some(model),
            task,
            loader: loader.build()?,
            eval: None,
            checkpoints,
            rng,
            resumed_from: restored.as_ref().map(Checkpoint::step),
            saved_at: restored.as_ref().map(Checkpoint::step),
            config,
            stop: Arc::new(AtomicBool::new(false)),
            device,
        })
    }

    /// Evaluates on the loaders `eval` builds (each rank its share; sums are all-reduced).
    pub fn with_eval(
        mut self,
        eval: impl FnMut(usize, usize) -> Result<Loader> + Send + 'static,
    ) -> Self {
        self.eval = Some(Box::new(eval));
        self
    }

    /// Set it to stop after the current step with a final checkpoint (signal handlers can hold
    /// it: it is an `Arc<AtomicBool>`).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Uses `flag` as the stop flag (see [`Trainer::stop_flag`]): share one flag between a
    /// signal handler and the trainer before training starts.
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = flag;
        self
    }

    /// The step this trainer resumed from, if it did.
    pub fn resumed_from(&self) -> Option<u64> {
        self.resumed_from
    }

    /// The model (with the latest weights).
    pub fn model(&self) -> &M {
        self.model
            .as_ref()
            .expect("the model is only out during a step")
    }

    /// The optimizer engine.
    pub fn engine(&self) -> &DataParallel<C> {
        &self.engine
    }

    /// This rank's training loader's counters: samples and tokens delivered, packing
    /// efficiency, time waiting for data.
    pub fn loader_stats(&self) -> mlinfra_loader::LoaderStats {
        self.loader.stats()
    }

    /// Trains up to [`TrainerConfig::steps`], evaluating and checkpointing as configured.
    ///
    /// # Errors
    ///
    /// Loader, task, collective and checkpoint errors; the step at which it failed has not been
    /// applied, and checkpoints written before stay valid.
    pub fn fit(&mut self) -> Result<Summary> {
        let rank = self.engine.collective().rank();
        let mut metrics = Metrics::open(self.config.metrics.as_deref(), rank)?;
        let mut progress = Progress::new(
            self.config.progress && rank == 0,
            self.engine.steps(),
            self.config.steps,
        );
        if let Some(step) = self.resumed_from {
            metrics.resume(step)?;
        }
        let started = Instant::now();
        let mut samples = 0u64;
        let mut last_loss = f64::NAN;
        let mut stopped = false;
        // A supervisor with a liveness timeout hears from every step (a no-op otherwise).
        let heartbeat = crate::supervisor::Heartbeat::from_env();
        while self.engine.steps() < self.config.steps {
            if self.stop_requested()? {
                stopped = true;
                break;
            }
            let step_started = Instant::now();
            let report = self.step()?;
            heartbeat.beat();
            let step_time = step_started.elapsed();
            samples += report.samples;
            last_loss = report.loss;
            let extra = self.task.step_metrics();
            metrics.train(
                &report,
                self.loader.epoch(),
                step_time,
                started.elapsed(),
                &extra,
            )?;
            progress.step(&report);
            let done = self.engine.steps();
            if let Some((checkpointer, every)) = &mut self.checkpoints {
                if *every > 0 && done.is_multiple_of(*every) && done < self.config.steps {
                    let save_started = Instant::now();
                    let snapshot = self
                        .engine
                        .snapshot_deferred(Some(self.loader.state().clone()), self.rng.state())?;
                    checkpointer.save(self.engine.collective(), snapshot)?;
                    metrics.checkpoint(done, save_started.elapsed())?;
                    self.saved_at = Some(done);
                } else {
                    checkpointer.poll(self.engine.collective())?;
                }
            }
            if self.config.eval_every.is_some_and(|every| {
                every > 0 && done.is_multiple_of(every) && done < self.config.steps
            }) {
                let sums = self.evaluate()?;
                if let Some(sums) = sums {
                    metrics.eval(done, &sums)?;
                }
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        progress.finish();
        self.final_checkpoint(&mut metrics)?;
        let eval = if stopped { None } else { self.evaluate()? };
        if let Some(sums) = &eval {
            metrics.eval(self.engine.steps(), sums)?;
        }
        Ok(Summary {
            steps: self.engine.steps(),
            resumed_from: self.resumed_from,
            samples,
            seconds,
            samples_per_s: samples as f64 / seconds.max(1e-9),
            last_loss,
            eval,
            stopped,
        })
    }

    /// Whether any rank was asked to stop (one tiny all-reduce when there are several ranks).
    fn stop_requested(&mut self) -> Result<bool> {
        let mut flag = [f64::from(u8::from(self.stop.load(Ordering::Relaxed)))];
        if self.engine.collective().world() > 1 {
            self.engine.collective().all_reduce_f64(&mut flag)?;
        }
        Ok(flag[0] > 0.0)
    }

    /// One optimizer step over `micro_batches` loader batches. The model is taken out for the
    /// step and put back on every path, failures included: after an error, [`Trainer::model`]
    /// still returns it (with the weights of the last step that completed).
    fn step(&mut self) -> Result<StepReport> {
        let model = self
            .model
            .take()
            .expect("the model is only out during a step");
        let outcome = self.accumulate_micro_batches(&model);
        if let Err(error) = outcome {
            self.model = Some(model);
            return Err(error);
        }
        crate::fault::point("step.mid", "");
        match self.engine.try_step(model) {
            Ok((model, report)) => {
                self.model = Some(model);
                Ok(report)
            }
            Err((model, error)) => {
                self.model = Some(model);
                Err(error)
            }
        }
    }

    /// The forward and backward passes of one step's `micro_batches` loader batches, their
    /// gradients added to the engine.
    fn accumulate_micro_batches(&mut self, model: &M) -> Result<()> {
        let mut micro = 0;
        let mut empty_epochs = 0;
        while micro < self.config.micro_batches {
            let Some(batch) = self.loader.next() else {
                empty_epochs += 1;
                if empty_epochs > 1 {
                    return Err(Error::InvalidConfig {
                        reason: "the loader delivers no batches (dataset smaller than a batch?)"
                            .into(),
                    });
                }
                self.loader.next_epoch()?;
                continue;
            };
            empty_epochs = 0;
            let (loss, samples) =
                self.task
                    .loss(model, batch?.data, &self.device, &mut self.rng)?;
            let mean = loss
                .clone()
                .try_into_scalar::<f32>()
                .map_err(|e| Error::Tensor {
                    reason: format!("reading the loss: {e:?}").into(),
                })?;
            // Loss scaling: the engine divides the scale out of the gradients.
            let scale = self.engine.loss_scale();
            let grads = if scale == 1.0 {
                loss.backward()
            } else {
                (loss * scale).backward()
            };
            self.engine.accumulate(model, &grads, samples)?;
            self.engine.record_loss(f64::from(mean), samples);
            micro += 1;
        }
        Ok(())
    }

    /// Evaluation over every rank's share of the eval loader, summed over ranks.
    fn evaluate(&mut self) -> Result<Option<EvalSums>> {
        if self.eval.is_none() {
            return Ok(None);
        }
        let (rank, world) = (
            self.engine.collective().rank(),
            self.engine.collective().world(),
        );
        let model = self.model().valid();
        let eval = self.eval.as_mut().expect("checked above");
        let device = self.device.clone().inner();
        let mut local = EvalSums::default();
        for batch in eval(rank, world)? {
            let sums = self.task.evaluate(&model, batch?.data, &device)?;
            local.loss_sum += sums.loss_sum;
            local.correct += sums.correct;
            local.samples += sums.samples;
        }
        let mut all = [local.loss_sum, local.correct as f64, local.samples as f64];
        self.engine.collective().all_reduce_f64(&mut all)?;
        Ok(Some(EvalSums {
            loss_sum: all[0],
            correct: all[1] as u64,
            samples: all[2] as u64,
        }))
    }

    /// The checkpoint at the end of `fit` (finished or stopped), then waits for every write.
    fn final_checkpoint(&mut self, metrics: &mut Metrics) -> Result<()> {
        let Some((checkpointer, _)) = &mut self.checkpoints else {
            return Ok(());
        };
        let step = self.engine.steps();
        let save_started = Instant::now();
        checkpointer.wait(self.engine.collective())?;
        if self.saved_at != Some(step) {
            let snapshot = self
                .engine
                .snapshot_deferred(Some(self.loader.state().clone()), self.rng.state())?;
            checkpointer.save(self.engine.collective(), snapshot)?;
            checkpointer.wait(self.engine.collective())?;
            metrics.checkpoint(step, save_started.elapsed())?;
            self.saved_at = Some(step);
        }
        Ok(())
    }
}
