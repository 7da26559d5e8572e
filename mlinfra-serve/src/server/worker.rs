//! The engine thread: owns the [`Engine`], takes submissions from the HTTP side, steps while
//! anything is live, and forwards each request's events to its HTTP handler.
//!
//! The engine is single-threaded and its steps are long (milliseconds of model compute), so it
//! runs on its own OS thread, never on the async runtime. Handlers talk to it through a
//! channel and get events back on a tokio channel per HTTP request.
//!
//! A client that goes away drops its handler, and with it the event receiver: the thread sees
//! the closed channel before the next step and aborts the request, returning its KV blocks
//! before that step runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, RequestHandle, RequestOptions, StreamEvent, TokenConstraint};
use crate::kv::PrefixKeys;
use crate::runner::ModelRunner;
use crate::sampling::SamplingParams;
use crate::{Error, Result};

use super::metrics::ServerMetrics;

/// One sequence to generate: a choice of a response.
pub(super) struct Choice {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Structured outputs' token mask.
    pub constraint: Option<Box<dyn TokenConstraint>>,
    /// The adapter it runs with, or the base model.
    pub adapter: Option<Box<str>>,
}

/// An engine event, tagged with the choice it belongs to.
#[derive(Debug, Clone)]
pub(super) struct ChoiceEvent {
    pub index: usize,
    pub event: StreamEvent,
}

enum Command {
    /// Add every choice (all or none) and stream their events to `events`.
    Submit {
        choices: Vec<Choice>,
        events: mpsc::UnboundedSender<ChoiceEvent>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// End every live request now (the drain deadline passed).
    AbortAll,
    /// Load a PEFT adapter between steps.
    LoadAdapter {
        name: String,
        dir: PathBuf,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Unload an adapter no live request uses.
    UnloadAdapter {
        name: String,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// What the HTTP side knows about the engine, fixed at start.
#[derive(Debug, Clone, Copy)]
pub(super) struct EngineInfo {
    /// Longest prompt plus output a request may have (the model's context, or the KV
    /// pool's capacity when smaller).
    pub max_model_len: Option<usize>,
    /// Most requests in the running batch.
    pub max_running: usize,
}

/// The HTTP side's end of the engine thread.
pub(super) struct Worker {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    pub info: EngineInfo,
    /// The adapters loaded before the server started.
    pub initial_adapters: Vec<String>,
}

impl Worker {
    /// Starts the engine thread.
    pub(super) fn spawn<R>(engine: Engine<R>, metrics: Arc<ServerMetrics>) -> std::io::Result<Self>
    where
        R: ModelRunner + Send + 'static,
    {
        let scheduler = engine.scheduler();
        let info = EngineInfo {
            // What a request may ask for: the context, or less when KV memory is smaller.
            max_model_len: Some(scheduler.max_request_tokens()),
            max_running: scheduler.config().max_running,
        };
        let adapters = engine.adapters();
        let (commands, receiver) = channel();
        let thread = std::thread::Builder::new()
            .name("mlinfra-engine".into())
            .spawn(move || run(engine, &receiver, &metrics))?;
        Ok(Worker {
            commands,
            thread: Some(thread),
            info,
            initial_adapters: adapters,
        })
    }

    /// Adds `choices` to the engine, all or none; their events arrive on `events`.
    ///
    /// # Errors
    ///
    /// The engine's refusal of a choice (none of them is then added), or
    /// [`Error::CallOrder`] when the engine thread is gone.
    pub(super) async fn submit(
        &self,
        choices: Vec<Choice>,
        events: mpsc::UnboundedSender<ChoiceEvent>,
    ) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Submit {
                choices,
                events,
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Loads adapter `name` from `dir` between two steps.
    ///
    /// # Errors
    ///
    /// What [`Engine::load_adapter`] refuses.
    pub(super) async fn load_adapter(&self, name: String, dir: PathBuf) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::LoadAdapter { name, dir, reply })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Unloads adapter `name` between two steps.
    ///
    /// # Errors
    ///
    /// What [`Engine::unload_adapter`] refuses (an adapter in use).
    pub(super) async fn unload_adapter(&self, name: String) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::UnloadAdapter { name, reply })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Aborts every live request; their streams end with finish reason `abort`.
    pub(super) fn abort_all(&self) {
        let _ = self.commands.send(Command::AbortAll);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the command channel ends the thread once the engine is idle.
        let (closed, _) = channel();
        self.commands = closed;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn gone() -> Error {
    Error::CallOrder {
        reason: "the engine thread has stopped".into(),
    }
}

/// A request in flight, from the engine's handle to the HTTP handler's channel.
struct Flight {
    handle: RequestHandle,
    index: usize,
    events: mpsc::UnboundedSender<ChoiceEvent>,
    arrived: Instant,
    last_token: Option<Instant>,
    prompt_tokens: usize,
}

fn run<R: ModelRunner>(
    mut engine: Engine<R>,
    commands: &Receiver<Command>,
    metrics: &ServerMetrics,
) {
    let mut flights: Vec<Flight> = Vec::new();
    loop {
        // Block only when nothing is live; otherwise take what arrived during the last step.
        if engine.is_idle() && flights.is_empty() {
            match commands.recv() {
                Ok(command) => apply(&mut engine, command, &mut flights),
                Err(_) => return, // the server is gone and nothing is live
            }
        }
        for command in commands.try_iter() {
            apply(&mut engine, command, &mut flights);
        }
        // Clients that went away: their requests end now, blocks back in the pool before
        // the step (their `Finished` events are forwarded into the void, and counted).
        for flight in flights.iter().filter(|flight| flight.events.is_closed()) {
            let _ = engine.abort(flight.handle.id());
        }
        let stepped = !engine.is_idle();
        if stepped && let Err(error) = engine.step() {
            // A failed model run aborted its own requests; a failure before it (scheduling,
            // drafting) would repeat every step: end every request in flight rather than
            // leave their clients waiting on a loop.
            tracing::error!(%error, "engine step failed: aborting the requests in flight");
            for flight in &flights {
                let _ = engine.abort(flight.handle.id());
            }
        }
        forward(&mut flights, metrics);
        metrics.engine(&engine.scheduler().stats(), stepped);
    }
}

fn apply<R: ModelRunner>(engine: &mut Engine<R>, command: Command, flights: &mut Vec<Flight>) {
    match command {
        Command::Submit {
            choices,
            events,
            reply,
        } => {
            let arrived = Instant::now();
            let mut added = Vec::with_capacity(choices.len());
            let mut outcome = Ok(());
            for (index, choice) in choices.into_iter().enumerate() {
                let prompt_tokens = choice.prompt.len();
                let options = RequestOptions {
                    constraint: choice.constraint,
                    prefix_keys: PrefixKeys {
                        adapter: choice.adapter,
                        salt: None,
                    },
                    ..RequestOptions::default()
                };
                match engine.add_request_with(choice.prompt, choice.params, options) {
                    Ok(handle) => added.push(Flight {
                        handle,
                        index,
                        events: events.clone(),
                        arrived,
                        last_token: None,
                        prompt_tokens,
                    }),
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                }
            }
            if outcome.is_err() {
                for flight in added.drain(..) {
                    // Live a moment ago; nothing else can have ended it.
                    let _ = engine.abort(flight.handle.id());
                }
            }
            flights.extend(added);
            let _ = reply.send(outcome);
        }
        Command::AbortAll => {
            for flight in flights.iter() {
                let _ = engine.abort(flight.handle.id());
            }
        }
        Command::LoadAdapter { name, dir, reply } => {
            let _ = reply.send(engine.load_adapter(&name, &dir));
        }
        Command::UnloadAdapter { name, reply } => {
            let _ = reply.send(engine.unload_adapter(&name));
        }
    }
}

/// Moves every event the last step produced to its HTTP handler, recording latencies.
fn forward(flights: &mut Vec<Flight>, metrics: &ServerMetrics) {
    let now = Instant::now();
    flights.retain_mut(|flight| {
        while let Ok(event) = flight.handle.events().try_recv() {
            let done = match &event {
                StreamEvent::Token { .. } => {
                    if flight.last_token.is_none() {
                        metrics.first_token(now - flight.arrived);
                    }
                    metrics.token(flight.last_token.map(|last| now - last));
                    flight.last_token = Some(now);
                    false
                }
                StreamEvent::Finished { reason, .. } => {
                    metrics.finished(*reason, flight.prompt_tokens, now - flight.arrived);
                    true
                }
            };
            // A receiver gone is seen before the next step (`is_closed`).
            let _ = flight.events.send(ChoiceEvent {
                index: flight.index,
                event,
            });
            if done {
                return false;
            }
        }
        true
    })
}
