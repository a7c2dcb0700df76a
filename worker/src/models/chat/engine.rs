//! The generation loop: one thread that owns the model's compute and runs
//! every active sequence one token per step, together (continuous batching).
//!
//! A request joins at the next step: its prompt is run in chunks alongside
//! the others' decode rows, so a long prompt does not stall the streams
//! already going. A sequence whose receiver is gone (the client hung up)
//! is dropped at the next step, freeing its slot.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::llama::{Logits, Step};
use super::schema::{Schema, SchemaState};
use super::{Cache, ChatModel};
use crate::models::bert::kernels::exp;
use crate::models::ModelError;

/// Most prompt tokens run in one step (beside the decoding sequences).
const PROMPT_CHUNK: usize = 256;

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (deterministic); higher flattens.
    pub temperature: f32,
    /// Nucleus: sample among the most likely tokens whose probabilities add
    /// up to this.
    pub top_p: f32,
    /// The random generator's seed.
    pub seed: u64,
    /// Taken from the logit of every token already generated (OpenAI's
    /// `presence_penalty`).
    pub presence_penalty: f32,
    /// Taken from a token's logit once for each time it was generated
    /// (OpenAI's `frequency_penalty`).
    pub frequency_penalty: f32,
    /// Added to these tokens' logits (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// Report each generated token's log-probability and those of this many
    /// likeliest tokens; `None` reports none.
    pub logprobs: Option<usize>,
    /// Sample among this many likeliest tokens only; 0: all (vLLM's and
    /// TGI's `top_k`).
    pub top_k: usize,
    /// Leave out tokens less likely than this fraction of the likeliest
    /// (vLLM's `min_p`); 0: none.
    pub min_p: f32,
    /// Divides the positive logits, and multiplies the negative ones, of
    /// every token of the prompt or generated so far (vLLM's and TGI's
    /// `repetition_penalty`, from CTRL); 1: none.
    pub repetition_penalty: f32,
    /// The turn cannot end before this many tokens (vLLM's `min_tokens`).
    pub min_tokens: usize,
    /// The turn never ends: only the length does (vLLM's `ignore_eos`, as
    /// benchmarks send it for a fixed output length).
    pub ignore_eos: bool,
    /// What the answer must be.
    pub format: Format,
}

/// What an answer must be (OpenAI's `response_format`).
#[derive(Debug, Clone, Default)]
pub enum Format {
    /// Anything.
    #[default]
    Text,
    /// A JSON object the schema admits (any object in JSON mode), and the
    /// turn ends with it ([`super::schema`]).
    Json(Arc<Schema>),
}

impl PartialEq for Format {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Format::Text, Format::Text) => true,
            (Format::Json(a), Format::Json(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Sampling {
    /// Picks the likeliest token, with no adjustment and no report.
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            logprobs: None,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            min_tokens: 0,
            ignore_eos: false,
            format: Format::Text,
        }
    }

    /// Whether a penalty looks at the tokens so far.
    fn penalizes(&self) -> bool {
        self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0
    }

    /// Whether the logits are changed before a token is picked.
    fn adjusts(&self) -> bool {
        self.penalizes() || !self.logit_bias.is_empty() || self.min_tokens > 0 || self.ignore_eos
    }
}

/// A generated token's log-probability under the model (its own
/// distribution: before temperature, penalties and bias, as vLLM reports
/// by default), and the likeliest tokens' at the same place.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    /// The generated token's.
    pub logprob: f32,
    /// The likeliest tokens and theirs, likeliest first.
    pub top: Vec<(u32, f32)>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its turn (or a stop sequence matched, upstream).
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What a generation sends back, in order: the prompt's echo if asked,
/// tokens, then one `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The prompt is read: the log-probability of each of its tokens from
    /// the second on, when asked (a [`Generation::echo`]).
    Prompt(Option<Arc<[Logprobs]>>),
    /// A generated token (end-of-turn tokens are not sent), with its
    /// log-probabilities when they were asked for.
    Token(u32, Option<Logprobs>),
    /// The end.
    Done(Finish),
    /// The model failed; nothing follows.
    Failed(String),
}

/// One generation to run.
pub struct Generation {
    /// The prompt's token ids (checked against the context by the caller).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Where its events go; dropping the receiver cancels it.
    pub events: mpsc::UnboundedSender<Event>,
    /// More generations from the same prompt (OpenAI's `n`): each goes on
    /// from the prompt's cache, read once, and its logits.
    pub forks: Vec<Fork>,
    /// Send [`Event::Prompt`] (to the forks too) once the prompt is read,
    /// with its tokens' log-probabilities if `sampling.logprobs` asks.
    pub echo: bool,
}

/// Another generation from a [`Generation`]'s prompt.
pub struct Fork {
    /// Its token choice.
    pub sampling: Sampling,
    /// Where its events go; dropping the receiver cancels it.
    pub events: mpsc::UnboundedSender<Event>,
}

/// The handle to the generation thread.
#[derive(Clone)]
pub struct Engine {
    queue: std_mpsc::Sender<Generation>,
}

impl Engine {
    /// Starts the generation thread for `model`, running at most
    /// `max_sequences` at once (the others wait, in order).
    pub fn spawn(model: Arc<ChatModel>, max_sequences: usize, name: &str) -> std::io::Result<Self> {
        let (queue, requests) = std_mpsc::channel();
        let max_sequences = max_sequences.max(1);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(&model, &requests, max_sequences))?;
        Ok(Engine { queue })
    }

    /// Queues a generation.
    pub fn submit(&self, generation: Generation) -> Result<(), ModelError> {
        self.queue.send(generation).map_err(|_| ModelError::Stopped)
    }
}

/// A sequence being generated.
struct Active {
    generation: Generation,
    cache: Cache,
    /// Prompt tokens not yet run.
    unread: usize,
    /// The last token sampled, to run next.
    last: [u32; 1],
    generated: usize,
    rng: Rng,
    /// What the penalties look at (kept only when they are set).
    history: History,
    /// Held to JSON, where the answer is.
    json: Option<SchemaState>,
    /// The prompt's tokens' log-probabilities so far, from its second on
    /// (an echo that reports them).
    prompt_scores: Vec<Logprobs>,
}

impl Active {
    /// Whether the prompt's log-probabilities are reported with its echo.
    fn scores_prompt(&self) -> bool {
        self.generation.echo && self.generation.sampling.logprobs.is_some()
    }
}

/// The tokens so far, as the penalties see them.
#[derive(Debug, Default)]
struct History {
    /// How often each token was generated.
    counts: HashMap<u32, u32>,
    /// The prompt's tokens (for the repetition penalty only).
    prompt: Arc<HashSet<u32>>,
}

fn run(model: &ChatModel, requests: &std_mpsc::Receiver<Generation>, max_sequences: usize) {
    // thaw's CPU decoder splits its work on this pool; the device decoder
    // leaves the work to the device.
    let threads = match model.decoder {
        super::Decoder::Cpu(_) => candle_core::utils::get_num_threads(),
        super::Decoder::Device(_) => 1,
    };
    // Built here, in the thread that uses it (a forked child's engine starts
    // after the fork): the forward pass runs inside it, so its parallel
    // parts are joins among the pool's threads, not wake-ups of this one.
    let pool = if threads > 1 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("chat-compute-{i}"))
            .build()
            .ok()
    } else {
        None
    };
    let mut waiting: VecDeque<Generation> = VecDeque::new();
    // Forks with their prompt read, waiting for a slot (before `waiting`).
    let mut forked: VecDeque<Pending> = VecDeque::new();
    let mut active: Vec<Active> = Vec::new();
    loop {
        if active.is_empty() && waiting.is_empty() && forked.is_empty() {
            match requests.recv() {
                Ok(g) => waiting.push_back(g),
                Err(_) => return, // the API is gone
            }
        }
        waiting.extend(requests.try_iter());
        waiting.retain(|g| !g.events.is_closed());
        active.retain(|a| !a.generation.events.is_closed());
        forked.retain(|p| !p.fork.events.is_closed());
        while active.len() < max_sequences {
            if let Some(pending) = forked.pop_front() {
                // Its own cache only now, when it runs: the waiting forks
                // of a prompt share one.
                let (mut fork, logits) = pending.start();
                if !choose(model, &mut fork, logits) {
                    active.push(fork);
                }
                continue;
            }
            let Some(generation) = waiting.pop_front() else {
                break;
            };
            let rng = Rng::new(generation.sampling.seed);
            let mut history = History::default();
            if generation.sampling.repetition_penalty != 1.0 {
                history.prompt = Arc::new(generation.prompt.iter().copied().collect());
            }
            active.push(Active {
                json: json_state(&generation.sampling),
                prompt_scores: Vec::new(),
                unread: generation.prompt.len(),
                cache: model.decoder.new_cache(),
                last: [0],
                generated: 0,
                rng,
                history,
                generation,
            });
        }
        if active.is_empty() {
            continue;
        }
        step(model, pool.as_ref(), &mut active, &mut forked);
    }
}

/// One forward pass for every active sequence, then a token for each one
/// whose prompt is read.
fn step(
    model: &ChatModel,
    pool: Option<&rayon::ThreadPool>,
    active: &mut Vec<Active>,
    forked: &mut VecDeque<Pending>,
) {
    let mut budget = PROMPT_CHUNK;
    let mut steps = Vec::with_capacity(active.len());
    // Each sequence in this step: where its tokens begin in its prompt,
    // how many there are, and the logits it gets.
    let mut runs = Vec::with_capacity(active.len());
    for (i, a) in active.iter_mut().enumerate() {
        let scores = a.scores_prompt();
        let (tokens, start, logits): (&[u32], usize, Logits) = if a.unread > 0 {
            if budget == 0 {
                continue;
            }
            let start = a.generation.prompt.len() - a.unread;
            let n = a.unread.min(budget);
            budget -= n;
            a.unread -= n;
            let logits = match (scores, a.unread) {
                (true, _) => Logits::Every,
                (false, 0) => Logits::Last,
                (false, _) => Logits::None,
            };
            (&a.generation.prompt[start..start + n], start, logits)
        } else {
            (&a.last, 0, Logits::Last)
        };
        runs.push((i, start, tokens.len(), logits));
        steps.push(Step {
            cache: &mut a.cache,
            tokens,
            logits,
        });
    }
    let result = match pool {
        Some(pool) => pool.install(|| model.decoder.forward(&mut steps, true)),
        None => model.decoder.forward(&mut steps, false),
    };
    drop(steps);
    let logits = match result {
        Ok(logits) => logits,
        Err(e) => {
            for a in active.drain(..) {
                let _ = a.generation.events.send(Event::Failed(e.to_string()));
            }
            return;
        }
    };
    let mut rows = logits.into_iter();
    let mut finished = Vec::new();
    for (i, start, n, want) in runs {
        let a = &mut active[i];
        // The logits the next token is picked from, if this step read the
        // last of the prompt or decoded.
        let logits = match want {
            Logits::None => None,
            Logits::Last => rows.next(),
            Logits::Every => {
                // Each prompt token's log-probability after those before
                // it; the last row is what comes after the prompt.
                let k = a.generation.sampling.logprobs.unwrap_or(0);
                let mut last = None;
                for at in start + 1..=start + n {
                    let row = rows.next().expect("a row per token");
                    match a.generation.prompt.get(at) {
                        Some(&token) => a
                            .prompt_scores
                            .push(Report::new(&row, k, false).of(token, &row)),
                        None => last = Some(row),
                    }
                }
                last
            }
        };
        let Some(logits) = logits else {
            continue;
        };
        if a.generation.echo && a.generated == 0 {
            // The prompt is read (a decode step comes after a token): each
            // choice echoes it first.
            let scores: Option<Arc<[Logprobs]>> = a
                .scores_prompt()
                .then(|| std::mem::take(&mut a.prompt_scores).into());
            for fork in &a.generation.forks {
                let _ = fork.events.send(Event::Prompt(scores.clone()));
            }
            let _ = a.generation.events.send(Event::Prompt(scores));
        }
        // A prompt read for several generations: the others go on from
        // here, each with its own first token from the same logits, as a
        // slot frees.
        let forks = std::mem::take(&mut a.generation.forks);
        if !forks.is_empty() {
            let cache = Arc::new(a.cache.clone());
            let shared: Arc<[f32]> = Arc::from(logits.as_slice());
            forked.extend(forks.into_iter().map(|fork| Pending {
                fork,
                max_tokens: a.generation.max_tokens,
                cache: cache.clone(),
                logits: shared.clone(),
                prompt: a.history.prompt.clone(),
            }));
        }
        if choose(model, a, logits) {
            finished.push(i);
        }
    }
    for i in finished.into_iter().rev() {
        active.swap_remove(i);
    }
}

/// A fork whose prompt is read, waiting for a slot: the prompt's cache and
/// last logits, shared with the other forks of its prompt.
struct Pending {
    fork: Fork,
    max_tokens: usize,
    cache: Arc<Cache>,
    logits: Arc<[f32]>,
    /// The prompt's tokens, where the repetition penalty needs them.
    prompt: Arc<HashSet<u32>>,
}

impl Pending {
    /// The sequence, with a cache of its own, and the logits it picks its
    /// first token from.
    fn start(self) -> (Active, Vec<f32>) {
        let active = Active {
            rng: Rng::new(self.fork.sampling.seed),
            json: json_state(&self.fork.sampling),
            prompt_scores: Vec::new(),
            generation: Generation {
                prompt: Vec::new(),
                max_tokens: self.max_tokens,
                sampling: self.fork.sampling,
                events: self.fork.events,
                forks: Vec::new(),
                // Sent its echo with the prompt's.
                echo: false,
            },
            cache: (*self.cache).clone(),
            unread: 0,
            last: [0],
            generated: 0,
            history: History {
                counts: HashMap::new(),
                prompt: self.prompt,
            },
        };
        (active, self.logits.to_vec())
    }
}

/// Picks `a`'s next token from `logits` and sends it; whether `a` is done
/// (its turn ended, its length reached, its client gone).
fn choose(model: &ChatModel, a: &mut Active, mut logits: Vec<f32>) -> bool {
    if a.generated >= a.generation.max_tokens {
        // Nothing to generate (an echoed prompt scored, `max_tokens: 0`).
        let _ = a.generation.events.send(Event::Done(Finish::Length));
        return true;
    }
    let sampling = &a.generation.sampling;
    // Reported from the model's own distribution, before any change.
    let report = sampling
        .logprobs
        .map(|k| Report::new(&logits, k, sampling.adjusts()));
    if sampling.adjusts() {
        // Before its minimum (ever, ignoring the end), the turn cannot end.
        let stops = if a.generated < sampling.min_tokens || sampling.ignore_eos {
            model.tokenizer.stop_ids()
        } else {
            &[]
        };
        adjust(&mut logits, sampling, &a.history, stops);
    }
    let events = &a.generation.events;
    if let (Format::Json(schema), Some(state)) = (&sampling.format, &a.json) {
        if !constrain(model, schema, state, &mut logits) {
            // Nothing may come: the object is whole and `min_tokens` holds
            // off the end. The grammar wins.
            let _ = events.send(Event::Done(Finish::Stop));
            return true;
        }
    }
    let token = sample(&mut logits, sampling, &mut a.rng);
    if model.tokenizer.stop_ids().contains(&token) {
        let _ = events.send(Event::Done(Finish::Stop));
        return true;
    }
    if let (Format::Json(schema), Some(state)) = (&sampling.format, &mut a.json) {
        let bytes = model.tokenizer.token_bytes(token).unwrap_or_default();
        *state = schema
            .feed(state, bytes)
            .expect("only tokens that continue the JSON are sampled");
    }
    a.generated += 1;
    a.last = [token];
    if sampling.penalizes() {
        *a.history.counts.entry(token).or_default() += 1;
    }
    let logprobs = report.map(|r| r.of(token, &logits));
    if events.send(Event::Token(token, logprobs)).is_err() {
        return true; // hung up
    }
    let context = model.decoder.config().context;
    if a.generated >= a.generation.max_tokens || a.cache.len() + 1 >= context {
        let _ = events.send(Event::Done(Finish::Length));
        return true;
    }
    false
}

/// Where a generation held to JSON starts; `None` for text.
fn json_state(sampling: &Sampling) -> Option<SchemaState> {
    match &sampling.format {
        Format::Text => None,
        Format::Json(schema) => Some(schema.start()),
    }
}

/// Leaves in `logits` only the tokens that can come after `state`: the
/// end of the turn once the object is whole, the tokens that continue it
/// before. Whether any is left.
fn constrain(model: &ChatModel, schema: &Schema, state: &SchemaState, logits: &mut [f32]) -> bool {
    let tokenizer = &model.tokenizer;
    let mut allowed = vec![false; logits.len()];
    if state.done() {
        for &id in tokenizer.stop_ids() {
            allowed[id as usize] = true;
        }
    } else {
        tokenizer
            .json_tokens()
            .allowed(schema, *state, |id| allowed[id as usize] = true);
    }
    let mut any = false;
    for (l, allowed) in logits.iter_mut().zip(allowed) {
        if !allowed {
            *l = f32::NEG_INFINITY;
        }
        any |= *l > f32::NEG_INFINITY;
    }
    any
}

/// Applies the bias, bans the `banned` tokens, then the penalties for the
/// tokens so far (in vLLM's order: repetition, then frequency and
/// presence).
fn adjust(logits: &mut [f32], sampling: &Sampling, history: &History, banned: &[u32]) {
    for &(id, bias) in &sampling.logit_bias {
        if let Some(l) = logits.get_mut(id as usize) {
            *l += bias;
        }
    }
    for &id in banned {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
    let rp = sampling.repetition_penalty;
    if rp != 1.0 {
        let generated = history
            .counts
            .keys()
            .filter(|id| !history.prompt.contains(id));
        for &id in history.prompt.iter().chain(generated) {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 { *l / rp } else { *l * rp };
            }
        }
    }
    for (&id, &n) in &history.counts {
        if let Some(l) = logits.get_mut(id as usize) {
            *l -= sampling.presence_penalty + n as f32 * sampling.frequency_penalty;
        }
    }
}

/// The log-probabilities of one place, taken before its logits change.
struct Report {
    /// log Σ exp(logit): a token's log-probability is its logit less this.
    log_total: f32,
    /// The logits as they were, where they are changed before a token is
    /// picked (its own logit is read from here once it is known).
    unchanged: Option<Vec<f32>>,
    top: Vec<(u32, f32)>,
}

impl Report {
    /// The report of `logits`; `changing` keeps a copy of them, which the
    /// bias or the penalties are about to change.
    fn new(logits: &[f32], k: usize, changing: bool) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Σ e^(l - max) in eight lanes of f32 (the vectorized exp, within
        // 2 ulp; each term at most 1), added up in f64.
        let mut lanes = [0.0f32; 8];
        let blocks = logits.chunks_exact(8);
        let rest: f64 = blocks
            .remainder()
            .iter()
            .map(|&l| f64::from(exp(l - max)))
            .sum();
        for block in blocks {
            for (lane, &l) in lanes.iter_mut().zip(block) {
                *lane += exp(l - max);
            }
        }
        let sum = lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + rest;
        let log_total = max + sum.ln() as f32;
        // The k largest, kept in order in a short list.
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        if k > 0 {
            for (id, &l) in logits.iter().enumerate() {
                if top.len() == k && l <= top[k - 1].1 {
                    continue;
                }
                let at = top.partition_point(|&(_, v)| v >= l);
                top.insert(at, (id as u32, l));
                top.truncate(k);
            }
        }
        Report {
            log_total,
            unchanged: changing.then(|| logits.to_vec()),
            top,
        }
    }

    /// With the token picked from `logits` (as they are now).
    fn of(self, token: u32, logits: &[f32]) -> Logprobs {
        let log_total = self.log_total;
        let logit = self
            .unchanged
            .as_deref()
            .unwrap_or(logits)
            .get(token as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        Logprobs {
            logprob: logit - log_total,
            top: self
                .top
                .into_iter()
                .map(|(id, l)| (id, l - log_total))
                .collect(),
        }
    }
}

/// Picks a token from `logits` (changed in place).
pub fn sample(logits: &mut [f32], sampling: &Sampling, rng: &mut Rng) -> u32 {
    let (best, max) =
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            });
    if sampling.temperature <= 1e-5 {
        return best as u32;
    }
    // Tokens more than 30 nats below the best have probability under 1e-13
    // of the best's: left out before sorting.
    let floor = max - 30.0 * sampling.temperature;
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, &v)| v >= floor)
        .map(|(i, &v)| (i as u32, ((v - max) / sampling.temperature).exp()))
        .collect();
    candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    if sampling.top_k > 0 {
        candidates.truncate(sampling.top_k);
    }
    let total: f32 = candidates.iter().map(|c| c.1).sum();
    // The nucleus: the fewest tokens whose mass reaches top_p.
    let mut kept = 0;
    let mut mass = 0.0;
    for c in &candidates {
        kept += 1;
        mass += c.1 / total;
        if mass >= sampling.top_p {
            break;
        }
    }
    candidates.truncate(kept.max(1));
    // min_p, against the likeliest (whose weight is e^0 = 1).
    let least = sampling.min_p * candidates[0].1;
    candidates.retain(|c| c.1 >= least);
    let total: f32 = candidates.iter().map(|c| c.1).sum();
    let mut target = rng.next_f32() * total;
    for &(id, p) in &candidates {
        if target < p {
            return id;
        }
        target -= p;
    }
    candidates.last().map_or(best as u32, |c| c.0)
}

/// SplitMix64: small, fast, and the same sequence for the same seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_p: f32) -> Sampling {
        Sampling {
            temperature,
            top_p,
            seed: 7,
            ..Sampling::greedy()
        }
    }

    #[test]
    fn temperature_zero_takes_the_best() {
        let mut rng = Rng::new(1);
        let mut logits = vec![0.1, 3.0, 2.9, -1.0];
        assert_eq!(sample(&mut logits, &sampling(0.0, 1.0), &mut rng), 1);
    }

    #[test]
    fn a_small_nucleus_keeps_only_the_best() {
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let mut logits = vec![0.0, 5.0, 4.0, 1.0];
            assert_eq!(sample(&mut logits, &sampling(1.0, 0.1), &mut rng), 1);
            // top_p = 0 (OpenAI allows it): greedy.
            let mut logits = vec![0.0, 5.0, 4.9, 1.0];
            assert_eq!(sample(&mut logits, &sampling(1.5, 0.0), &mut rng), 1);
        }
    }

    #[test]
    fn log_probabilities_are_the_model_own_before_any_change() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let total: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let want = |id: usize| (f64::from(logits[id]) - total.ln()) as f32;
        let report = Report::new(&logits, 3, false);
        let got = report.of(4, &logits);
        assert!((got.logprob - want(4)).abs() < 1e-6, "{got:?}");
        // The likeliest first; of two equal, the lower id first.
        let ids: Vec<u32> = got.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 0]);
        for (id, lp) in got.top {
            assert!((lp - want(id as usize)).abs() < 1e-6);
        }
        assert!(Report::new(&logits, 0, false).of(1, &logits).top.is_empty());
        // More asked for than there are tokens: all of them.
        assert_eq!(Report::new(&logits, 9, false).of(1, &logits).top.len(), 5);
        // Logits changed after the report: the token's own is as it was.
        let got = Report::new(&logits, 1, true).of(2, &[0.0; 5]);
        assert!((got.logprob - want(2)).abs() < 1e-6, "{got:?}");
        // Many tokens (the lanes and the rest): as in f64.
        let many: Vec<f32> = (0..49_157).map(|i| (i % 97) as f32 * 0.31 - 9.0).collect();
        let total: f64 = many.iter().map(|&l| f64::from(l).exp()).sum();
        let got = Report::new(&many, 0, false).of(5, &many);
        let want = (f64::from(many[5]) - total.ln()) as f32;
        assert!(
            (got.logprob - want).abs() < 1e-5,
            "{} against {want}",
            got.logprob
        );
    }

    #[test]
    fn bias_and_penalties_change_the_logits_as_openai_defines_them() {
        let s = Sampling {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            logit_bias: vec![(0, -100.0), (2, 1.0), (99, 5.0)],
            ..Sampling::greedy()
        };
        let history = History {
            counts: HashMap::from([(1, 3), (2, 1)]),
            prompt: Arc::default(),
        };
        let mut logits = [2.0f32, 2.0, 2.0, 2.0];
        adjust(&mut logits, &s, &history, &[]);
        // 0: banned; 1: 3 times (0.5 + 3 × 0.25); 2: +1, once (0.5 + 0.25);
        // 3: untouched; 99 is beyond the vocabulary and ignored.
        assert_eq!(logits, [-98.0, 0.75, 2.25, 2.0]);
        let mut rng = Rng::new(1);
        assert_eq!(sample(&mut logits, &s, &mut rng), 2);
    }

    #[test]
    fn the_repetition_penalty_and_a_minimum_length_as_vllm_applies_them() {
        let s = Sampling {
            repetition_penalty: 2.0,
            ..Sampling::greedy()
        };
        // Token 0 in the prompt, 1 generated, 3 banned (the end of a turn
        // before min_tokens); 2 untouched.
        let history = History {
            counts: HashMap::from([(1, 1)]),
            prompt: Arc::new(HashSet::from([0])),
        };
        let mut logits = [3.0f32, -1.0, 1.0, 5.0];
        adjust(&mut logits, &s, &history, &[3]);
        assert_eq!(logits, [1.5, -2.0, 1.0, f32::NEG_INFINITY]);
        assert_eq!(sample(&mut logits, &s, &mut Rng::new(1)), 0);
    }

    #[test]
    fn top_k_and_min_p_narrow_the_choice() {
        // Probabilities ∝ e^l: 1, e^-1 ≈ 0.37, e^-2 ≈ 0.14, e^-5.
        let logits = [0.0f32, -1.0, -2.0, -5.0];
        let drawn = |s: &Sampling| {
            let mut rng = Rng::new(9);
            let mut seen = HashSet::new();
            for _ in 0..2000 {
                seen.insert(sample(&mut logits.clone(), s, &mut rng));
            }
            let mut seen: Vec<u32> = seen.into_iter().collect();
            seen.sort_unstable();
            seen
        };
        let all = sampling(1.0, 1.0);
        assert_eq!(drawn(&all), [0, 1, 2, 3]);
        assert_eq!(
            drawn(&Sampling {
                top_k: 2,
                ..all.clone()
            }),
            [0, 1]
        );
        assert_eq!(
            drawn(&Sampling {
                top_k: 1,
                ..all.clone()
            }),
            [0]
        );
        // 0.2 of the likeliest: e^-1 is in, e^-2 is not.
        assert_eq!(
            drawn(&Sampling {
                min_p: 0.2,
                ..all.clone()
            }),
            [0, 1]
        );
    }

    #[test]
    fn sampling_follows_the_probabilities_and_the_seed() {
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..4000)
                .map(|_| sample(&mut [0.0, 0.0, 2f32.ln()], &sampling(1.0, 1.0), &mut rng))
                .collect::<Vec<_>>()
        };
        let a = draw(3);
        assert_eq!(a, draw(3), "same seed, same tokens");
        assert_ne!(a, draw(4));
        // Probabilities 1/4, 1/4, 1/2.
        let twos = a.iter().filter(|&&t| t == 2).count() as f64 / a.len() as f64;
        assert!((twos - 0.5).abs() < 0.04, "{twos}");
    }
}
