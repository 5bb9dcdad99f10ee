//! The model worker: one thread owns the model, takes queued jobs, and runs compatible ones as one batch.
//!
//! Jobs that share sampler, steps and guidance are concatenated (up to [`MAX_BATCH`] digits) into one sampler run;
//! each job keeps its own noise stream ([`PerRequestNoise`]), so a request's digits depend on its seed, not on what
//! it was batched with. Memory stays bounded: the queue has a fixed capacity and a batch a fixed size. Jobs whose
//! caller already gave up (timeout, disconnect) are dropped before any work is spent on them.

use std::collections::VecDeque;
use std::time::Instant;

use tch::{Device, Tensor};
use tokio::sync::{mpsc, oneshot};

use crate::generate::{generate_with_noise, GenerateOptions, Request};
use crate::precision::Precision;
use crate::pretrained::Loaded;
use crate::rng::RunRng;
use crate::sampler::PerRequestNoise;

use super::params::GenerateParams;

/// Most digits run through the model at once.
pub const MAX_BATCH: usize = 64;
/// Animation frames per reverse process.
const GIF_FRAMES: usize = 30;

pub struct Job {
    pub params: GenerateParams,
    pub reply: oneshot::Sender<Result<JobOutput, String>>,
}

/// What a job gets back, on the CPU.
pub struct JobOutput {
    /// [n, 1, 28, 28] in [0, 1]
    pub images: Tensor,
    /// Reverse-process frames, each [n, 1, 28, 28], when frames were recorded for its batch.
    pub frames: Vec<Tensor>,
    /// Wall time of the batch this job ran in.
    pub ms: f64,
    /// How many digits shared the batch.
    pub batch_digits: usize,
}

/// Jobs batch together when these agree.
fn batch_key(p: &GenerateParams) -> (crate::generate::SamplerKind, Option<usize>, u64) {
    (p.sampler, p.steps, p.guidance.to_bits())
}

fn wants_frames(p: &GenerateParams) -> bool {
    p.format == super::params::Format::Gif || p.animate
}

/// Runs the worker loop on the current thread until every sender is gone.
pub fn run(loaded: Loaded, mut jobs: mpsc::Receiver<Job>, precision: Precision) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        let first = match pending.pop_front() {
            Some(job) => job,
            None => match jobs.blocking_recv() {
                Some(job) => job,
                None => return,
            },
        };
        let key = batch_key(&first.params);
        let mut batch = vec![first];
        let mut digits = batch[0].params.n;
        // Take whatever else is already waiting and fits; keep the rest for the next round, in order.
        let mut skipped = VecDeque::new();
        while let Some(job) = pending.pop_front().or_else(|| jobs.try_recv().ok()) {
            if batch_key(&job.params) == key && digits + job.params.n <= MAX_BATCH {
                digits += job.params.n;
                batch.push(job);
            } else {
                skipped.push_back(job);
                if skipped.len() >= MAX_BATCH {
                    break;
                }
            }
        }
        pending = skipped;
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        run_batch(&loaded, batch, precision);
    }
}

fn run_batch(loaded: &Loaded, batch: Vec<Job>, precision: Precision) {
    let started = Instant::now();
    let first = &batch[0].params;
    let frames = batch.iter().any(|j| wants_frames(&j.params));
    let class_cond = loaded.config.model.class_cond;
    // Conditioned requests ask for a digit; "any" uses the no-class input (a zero one-hot), which the guided
    // sampler leaves unguided.
    let request = if class_cond {
        Request::Mixed(
            batch
                .iter()
                .flat_map(|j| std::iter::repeat_n(j.params.digit, j.params.n))
                .collect(),
        )
    } else {
        Request::Unconditional(batch.iter().map(|j| j.params.n).sum())
    };
    let mut noise = PerRequestNoise(
        batch
            .iter()
            .map(|j| (RunRng::new(j.params.seed), j.params.n as i64))
            .collect(),
    );
    let options = GenerateOptions {
        sampler: Some(first.sampler),
        steps: first.steps,
        guidance: first.guidance,
        seed: 0,
        frame_every: None,
        precision,
    };
    let steps = crate::generate::step_count(&loaded.config, &options);
    let options = GenerateOptions {
        frame_every: frames.then_some((steps / GIF_FRAMES).max(1)),
        ..options
    };
    let result = generate_with_noise(&loaded.model, &loaded.config, &request, &options, &mut noise);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let digits: usize = batch.iter().map(|j| j.params.n).sum();
    match result {
        Ok(output) => {
            let images = output.images.to_device(Device::Cpu);
            let mut offset = 0;
            for job in batch {
                let n = job.params.n as i64;
                let take = |t: &Tensor| t.narrow(0, offset, n).copy();
                let frames = if wants_frames(&job.params) {
                    output.frames.iter().map(take).collect()
                } else {
                    Vec::new()
                };
                let out = JobOutput {
                    images: take(&images),
                    frames,
                    ms,
                    batch_digits: digits,
                };
                offset += n;
                let _ = job.reply.send(Ok(out));
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.reply.send(Err(e.to_string()));
            }
        }
    }
}
