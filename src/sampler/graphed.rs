//! A model as a [`Denoiser`] whose evaluations replay a CUDA graph (`--cuda-graphs on`): the network's several
//! hundred kernels go to the GPU in one launch per sampler step instead of one by one.
//!
//! A graph has fixed shapes, so there is one per batch size and conditioning seen (a guided sampler alternates
//! between N and 2N only where guidance is limited to an interval). The first evaluation of each shape runs eagerly
//! (it fills cuDNN's algorithm cache, which capture cannot); the second captures the forward pass into the graph and
//! every later one copies its inputs into the graph's and replays it. Should capture or replay fail, that shape runs
//! eagerly from then on, with a warning: the digits are the same either way.

use std::cell::RefCell;

use tch::{Device, Tensor};

use super::{time_vector, Denoiser};
use crate::model::Model;
use crate::runtime::cuda::{CudaError, CudaGraph};

pub struct Graphed<'a> {
    model: &'a Model,
    shapes: RefCell<Vec<Shape>>,
}

/// What the graphed evaluation of one input shape has reached.
struct Shape {
    n: i64,
    conditioned: bool,
    state: State,
}

enum State {
    /// Seen once, run eagerly.
    Warm,
    Captured(Captured),
    /// Capture or replay failed: eager from now on.
    Eager,
}

/// A captured forward pass and the tensors it reads and writes on every replay.
struct Captured {
    graph: CudaGraph,
    x: Tensor,
    t: Tensor,
    class: Option<Tensor>,
    out: Tensor,
}

impl<'a> Graphed<'a> {
    pub fn new(model: &'a Model) -> Self {
        Self {
            model,
            shapes: RefCell::new(Vec::new()),
        }
    }

    fn capture(&self, x: &Tensor, t: f64, class: Option<&Tensor>) -> Result<Captured, CudaError> {
        let (x, class) = (x.copy(), class.map(Tensor::copy));
        let t = time_vector(x.size()[0], t, x.device());
        let (graph, out) = CudaGraph::capture(self.model.device(), || {
            self.model.forward_t(&x, Some(&t), class.as_ref(), false)
        })?;
        tracing::info!(batch = x.size()[0], "network evaluation captured as a CUDA graph");
        Ok(Captured {
            graph,
            x,
            t,
            class,
            out,
        })
    }
}

impl Captured {
    fn replay(&mut self, x: &Tensor, t: f64, class: Option<&Tensor>) -> Result<Tensor, CudaError> {
        self.x.copy_(x);
        let _ = self.t.fill_(t);
        if let (Some(to), Some(from)) = (&mut self.class, class) {
            to.copy_(from);
        }
        self.graph.replay()?;
        // The next replay overwrites `out`; the sampler keeps this prediction.
        Ok(self.out.copy())
    }
}

impl Denoiser for Graphed<'_> {
    fn predict(&self, x: &Tensor, t: f64, class: Option<&Tensor>) -> Tensor {
        let (n, conditioned) = (x.size()[0], class.is_some());
        let mut shapes = self.shapes.borrow_mut();
        let Some(shape) = shapes.iter_mut().find(|s| s.n == n && s.conditioned == conditioned) else {
            shapes.push(Shape {
                n,
                conditioned,
                state: State::Warm,
            });
            return self.model.predict(x, t, class);
        };
        // Eager unless a graph is (or can now be) captured; a failure leaves the shape eager for good.
        let captured = match std::mem::replace(&mut shape.state, State::Eager) {
            State::Eager => return self.model.predict(x, t, class),
            State::Warm => self.capture(x, t, class),
            State::Captured(captured) => Ok(captured),
        };
        match captured.and_then(|mut captured| Ok((captured.replay(x, t, class)?, captured))) {
            Ok((out, captured)) => {
                shape.state = State::Captured(captured);
                out
            }
            Err(e) => {
                tracing::warn!("{e}; sampling on without a CUDA graph for batches of {n}");
                self.model.predict(x, t, class)
            }
        }
    }

    fn device(&self) -> Device {
        self.model.device()
    }
}
