//! Dynamic batching: requests from many connections are packed into one
//! forward pass on a dedicated thread. The executor takes everything queued
//! when it becomes free (so a lone request waits for nobody), optionally
//! waits up to `max_wait` for more, and never packs more than
//! `max_batch_size` items into one pass. Padding, where a model needs it, is
//! the model's business: per batch, to the longest input.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::models::ModelError;

/// A model that runs a batch of inputs in one pass.
pub trait BatchModel: Send + 'static {
    /// One item of a request (a tokenized text, a feature row).
    type Input: Send + 'static;
    /// The model's answer for one item.
    type Output: Send + 'static;

    /// Runs one forward pass over `batch`, one output per input, in order.
    fn forward(&mut self, batch: &[Self::Input]) -> Result<Vec<Self::Output>, ModelError>;
}

/// The batching knobs.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most items in one forward pass.
    pub max_batch_size: usize,
    /// How long a non-full batch may wait for more items; zero runs at once
    /// with whatever is queued.
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 32,
            max_wait: Duration::ZERO,
        }
    }
}

struct Job<M: BatchModel> {
    items: Vec<M::Input>,
    reply: oneshot::Sender<Result<Vec<M::Output>, ModelError>>,
}

/// Where a queued request's outputs arrive.
pub type Reply<M> = oneshot::Receiver<Result<Vec<<M as BatchModel>::Output>, ModelError>>;

/// The handle requests use to reach the executor thread. Cloning is cheap;
/// the thread exits when the last handle is dropped.
pub struct Batcher<M: BatchModel> {
    tx: mpsc::Sender<Job<M>>,
}

impl<M: BatchModel> Clone for Batcher<M> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

impl<M: BatchModel> Batcher<M> {
    /// Moves `model` onto a new thread named `name` and returns the handle.
    pub fn spawn(model: M, config: BatchConfig, name: &str) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(model, config, rx))?;
        Ok(Batcher { tx })
    }

    /// Runs `items` through the model, batched with whatever else is queued.
    /// Dropping the returned future (a client that hung up) withdraws the
    /// items if they have not started.
    pub async fn submit(&self, items: Vec<M::Input>) -> Result<Vec<M::Output>, ModelError> {
        self.enqueue(items)?
            .await
            .map_err(|_| ModelError::Stopped)?
    }

    /// Queues `items` now and returns where the answer will arrive.
    pub fn enqueue(&self, items: Vec<M::Input>) -> Result<Reply<M>, ModelError> {
        let (reply, rx) = oneshot::channel();
        tracing::debug!(items = items.len(), "queued");
        self.tx
            .send(Job { items, reply })
            .map_err(|_| ModelError::Stopped)?;
        Ok(rx)
    }
}

fn run<M: BatchModel>(mut model: M, config: BatchConfig, rx: mpsc::Receiver<Job<M>>) {
    let max = config.max_batch_size.max(1);
    let mut carried: Option<Job<M>> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // every handle dropped: shut down
            },
        };
        let mut jobs = vec![first];
        let mut count = jobs[0].items.len();
        let deadline = Instant::now() + config.max_wait;
        while count < max {
            let next = match rx.try_recv() {
                Ok(job) => job,
                Err(mpsc::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left) {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => break,
            };
            if count + next.items.len() > max {
                carried = Some(next);
                break;
            }
            count += next.items.len();
            jobs.push(next);
        }
        run_jobs(&mut model, jobs, max);
    }
}

/// Runs the live jobs as one pass (or, for a single job larger than the batch
/// limit, as several) and answers each.
fn run_jobs<M: BatchModel>(model: &mut M, jobs: Vec<Job<M>>, max: usize) {
    let jobs: Vec<Job<M>> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if jobs.is_empty() {
        return;
    }
    let sizes: Vec<usize> = jobs.iter().map(|j| j.items.len()).collect();
    let (items, replies): (Vec<Vec<M::Input>>, Vec<_>) =
        jobs.into_iter().map(|j| (j.items, j.reply)).unzip();
    let items: Vec<M::Input> = items.into_iter().flatten().collect();

    let mut outputs = Vec::with_capacity(items.len());
    let mut failure = None;
    for chunk in items.chunks(max) {
        match guarded_forward(model, chunk) {
            Ok(out) => outputs.extend(out),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure {
        for reply in replies {
            // A client that left does not need the error either.
            let _ = reply.send(Err(e.clone()));
        }
        return;
    }
    let mut outputs = outputs.into_iter();
    for (reply, n) in replies.into_iter().zip(sizes) {
        let _ = reply.send(Ok(outputs.by_ref().take(n).collect()));
    }
}

/// A forward pass that cannot take the executor down: a panic becomes an
/// error for this batch, and a short answer is caught here rather than
/// misassigning outputs to requests.
fn guarded_forward<M: BatchModel>(
    model: &mut M,
    chunk: &[M::Input],
) -> Result<Vec<M::Output>, ModelError> {
    let out = std::panic::catch_unwind(AssertUnwindSafe(|| model.forward(chunk)))
        .map_err(|_| ModelError::Inference("the model panicked on this batch".into()))??;
    if out.len() != chunk.len() {
        return Err(ModelError::Inference(format!(
            "model returned {} outputs for {} inputs",
            out.len(),
            chunk.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Doubles its inputs and records the size of every batch it ran. With a
    /// gate, its first pass says it started and then waits to be let go.
    struct Recorder {
        batches: Arc<Mutex<Vec<usize>>>,
        gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    }

    impl BatchModel for Recorder {
        type Input = u32;
        type Output = u32;
        fn forward(&mut self, batch: &[u32]) -> Result<Vec<u32>, ModelError> {
            if let Some((started, go)) = self.gate.take() {
                let _ = started.send(());
                let _ = go.recv();
            }
            self.batches.lock().expect("lock").push(batch.len());
            if batch.contains(&13) {
                panic!("unlucky input");
            }
            Ok(batch.iter().map(|x| x * 2).collect())
        }
    }

    fn recorder() -> (Recorder, Arc<Mutex<Vec<usize>>>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let model = Recorder {
            batches: batches.clone(),
            gate: None,
        };
        (model, batches)
    }

    fn config(max_batch_size: usize) -> BatchConfig {
        BatchConfig {
            max_batch_size,
            max_wait: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn queued_requests_share_a_pass_and_get_their_own_outputs() {
        let (mut model, batches) = recorder();
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        model.gate = Some((started_tx, go_rx));
        let batcher = Batcher::spawn(model, config(8), "test-batcher").expect("spawn");

        // The first request occupies the executor while five more queue up.
        let first = batcher.enqueue(vec![1]).expect("queued");
        started.recv().expect("first pass started");
        let rest: Vec<_> = (0..5u32)
            .map(|i| batcher.enqueue(vec![10 * i, 10 * i + 1]).expect("queued"))
            .collect();
        go.send(()).expect("gate");

        assert_eq!(first.await.expect("reply").expect("ok"), vec![2]);
        for (i, reply) in rest.into_iter().enumerate() {
            let i = i as u32;
            let out = reply.await.expect("reply").expect("ok");
            assert_eq!(out, vec![20 * i, 20 * i + 2]);
        }
        // Four queued requests fill a pass of 8; the fifth is carried over.
        assert_eq!(*batches.lock().expect("lock"), vec![1, 8, 2]);
    }

    #[tokio::test]
    async fn a_request_larger_than_the_cap_is_chunked() {
        let (model, batches) = recorder();
        let batcher = Batcher::spawn(model, config(4), "test-batcher").expect("spawn");
        let out = batcher.submit((0..10).collect()).await.expect("ok");
        assert_eq!(out, (0..10).map(|x| x * 2).collect::<Vec<_>>());
        assert_eq!(*batches.lock().expect("lock"), vec![4, 4, 2]);
    }

    #[tokio::test]
    async fn a_withdrawn_request_costs_no_model_work() {
        let (mut model, batches) = recorder();
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        model.gate = Some((started_tx, go_rx));
        let batcher = Batcher::spawn(model, config(8), "test-batcher").expect("spawn");
        let first = batcher.enqueue(vec![1]).expect("queued");
        started.recv().expect("first pass started");
        drop(batcher.enqueue(vec![5, 6, 7]).expect("queued")); // client left
        let kept = batcher.enqueue(vec![2]).expect("queued");
        go.send(()).expect("gate");
        assert_eq!(first.await.expect("reply").expect("ok"), vec![2]);
        assert_eq!(kept.await.expect("reply").expect("ok"), vec![4]);
        assert_eq!(*batches.lock().expect("lock"), vec![1, 1]);
    }

    #[tokio::test]
    async fn a_panicking_batch_is_an_error_and_the_executor_lives_on() {
        let (model, _) = recorder();
        let batcher = Batcher::spawn(model, config(8), "test-batcher").expect("spawn");
        let err = batcher
            .submit(vec![13])
            .await
            .expect_err("panic becomes an error");
        assert!(matches!(err, ModelError::Inference(_)), "{err:?}");
        assert_eq!(
            batcher.submit(vec![3]).await.expect("still serving"),
            vec![6]
        );
    }
}
