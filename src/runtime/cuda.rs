//! CUDA graphs (`--cuda-graphs on`), through the shim (`csrc/cuda.cpp`): the kernels of a whole training step,
//! or of one network evaluation while sampling, are captured once and then replayed with a single launch, instead
//! of the host launching several hundred small kernels one by one.
//!
//! A graph reads its inputs from, and writes its outputs to, the same memory on every replay, so its callers keep
//! static input tensors (copied into before each replay) and read its outputs before the next replay. Everything
//! else a step needs from the host (the learning rate) is fixed when the graph is captured.
//!
//! Also CUDA events ([`Event`]), which tell the host that queued work is done without waiting for it: the training
//! loop reads its losses back with them.

use std::any::Any;
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use tch::Device;
use thiserror::Error;

extern "C" {
    fn diffuse_graph_available() -> i32;
    fn diffuse_graph_new() -> *mut c_void;
    fn diffuse_graph_free(graph: *mut c_void);
    fn diffuse_graph_begin(graph: *mut c_void, device: i32) -> i32;
    fn diffuse_graph_end(graph: *mut c_void) -> i32;
    fn diffuse_graph_replay(graph: *mut c_void) -> i32;
    fn diffuse_graph_error() -> *const c_char;
    fn diffuse_event_record(device: i32) -> *mut c_void;
    fn diffuse_event_query(event: *mut c_void) -> i32;
    fn diffuse_event_wait(event: *mut c_void) -> i32;
    fn diffuse_event_free(event: *mut c_void);
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// The `--cuda-graphs` flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Graphs {
    Off,
    #[default]
    On,
}

/// Turns graphs on or off for this process (the `--cuda-graphs` flag). They only ever apply on CUDA.
pub fn set(graphs: Graphs) {
    ENABLED.store(graphs == Graphs::On, Ordering::Relaxed);
}

/// Whether this process can capture graphs: built with CUDA, and libtorch's CUDA libraries are loaded (the CPU
/// release bundle leaves them out).
pub fn available() -> bool {
    // SAFETY: a query without arguments.
    unsafe { diffuse_graph_available() == 1 }
}

/// Whether work on `device` should run through graphs: asked for, on CUDA, and available.
pub fn applies(device: Device) -> bool {
    ENABLED.load(Ordering::Relaxed) && device.is_cuda() && available()
}

#[derive(Debug, Error)]
#[error("CUDA {what} failed: {message}")]
pub struct CudaError {
    what: &'static str,
    message: String,
}

fn check(status: i32, what: &'static str) -> Result<(), CudaError> {
    match status {
        0 => Ok(()),
        _ => Err(CudaError {
            what,
            message: error_text(),
        }),
    }
}

/// The shim's description of its last failure on this thread.
fn error_text() -> String {
    // SAFETY: the shim's error is a NUL-terminated thread-local string, valid until its next failing call.
    unsafe { CStr::from_ptr(diffuse_graph_error()) }
        .to_string_lossy()
        .into_owned()
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    match (payload.downcast_ref::<String>(), payload.downcast_ref::<&str>()) {
        (Some(text), _) => text.clone(),
        (None, Some(text)) => text.to_string(),
        (None, None) => "a panic without a message".into(),
    }
}

/// A captured graph, ready to replay.
pub struct CudaGraph {
    handle: *mut c_void,
}

// SAFETY: a captured CUDA graph may be replayed and freed from any thread; the handle is owned by this value alone.
unsafe impl Send for CudaGraph {}

impl CudaGraph {
    /// Captures the work `body` queues on `device` (a CUDA device) from this thread. Nothing of it runs now: replay
    /// the graph to run it. The tensors `body` returns live in the graph's memory and hold its results after
    /// each replay.
    pub fn capture<T>(device: Device, body: impl FnOnce() -> T) -> Result<(Self, T), CudaError> {
        let Device::Cuda(index) = device else {
            return Err(CudaError {
                what: "graph capture",
                message: format!("{device:?} is not a CUDA device"),
            });
        };
        // SAFETY: no arguments; a null handle means graphs are not available in this build.
        let handle = unsafe { diffuse_graph_new() };
        if handle.is_null() {
            return Err(CudaError {
                what: "graph capture",
                message: "this build of diffuse has no CUDA graphs".into(),
            });
        }
        let graph = Self { handle };
        // SAFETY: a live handle from diffuse_graph_new.
        check(
            unsafe { diffuse_graph_begin(graph.handle, index as i32) },
            "graph capture",
        )?;
        // A libtorch error inside the capture (tch panics on one) ends the capture and comes back as an error, so
        // the caller can go on without a graph.
        let out = catch_unwind(AssertUnwindSafe(body));
        // SAFETY: the live handle, in capture since diffuse_graph_begin; ending restores the thread's stream.
        let ended = check(unsafe { diffuse_graph_end(graph.handle) }, "graph capture");
        let out = out.map_err(|payload| CudaError {
            what: "graph capture",
            message: panic_message(payload.as_ref()),
        })?;
        ended?;
        Ok((graph, out))
    }

    /// Queues one run of the captured work on the current stream.
    pub fn replay(&self) -> Result<(), CudaError> {
        // SAFETY: a live handle whose capture ended successfully (only `capture` makes a CudaGraph).
        check(unsafe { diffuse_graph_replay(self.handle) }, "graph replay")
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: the handle is owned by this value and freed once.
        unsafe { diffuse_graph_free(self.handle) }
    }
}

/// A mark in a CUDA device's queue of work: done once everything queued before it is. Lets the host read results
/// back when they are there, instead of waiting for the whole queue.
pub struct Event {
    handle: *mut c_void,
}

// SAFETY: a CUDA event may be queried, waited on and freed from any thread; the handle is owned by this value alone.
unsafe impl Send for Event {}

impl Event {
    /// Marks the current end of `device`'s queue (a CUDA device).
    pub fn record(device: Device) -> Result<Self, CudaError> {
        let failed = |message: String| CudaError { what: "event", message };
        let Device::Cuda(index) = device else {
            return Err(failed(format!("{device:?} is not a CUDA device")));
        };
        // SAFETY: a plain call; null means failure (or no CUDA in this build), described by the shim's error.
        let handle = unsafe { diffuse_event_record(index as i32) };
        if handle.is_null() {
            return Err(failed(error_text()));
        }
        Ok(Self { handle })
    }

    /// Whether the work queued before the mark is done; never waits.
    pub fn is_done(&self) -> Result<bool, CudaError> {
        // SAFETY: a live handle from diffuse_event_record.
        match unsafe { diffuse_event_query(self.handle) } {
            -1 => check(-1, "event").map(|()| false),
            status => Ok(status == 1),
        }
    }

    /// Waits until the work queued before the mark is done.
    pub fn wait(&self) -> Result<(), CudaError> {
        // SAFETY: a live handle from diffuse_event_record.
        check(unsafe { diffuse_event_wait(self.handle) }, "event")
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the handle is owned by this value and freed once.
        unsafe { diffuse_event_free(self.handle) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// build.rs makes the shim's references to libtorch_cuda weak (and says so with the `diffuse_cuda` cfg);
    /// this checks the shim still finds them wherever that library is loaded (here: linked by build.rs whenever the
    /// libtorch in use ships it).
    #[test]
    fn available_exactly_where_built_with_them_and_libtorch_cuda_is_loaded() {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
        assert_eq!(available(), cfg!(diffuse_cuda) && maps.contains("libtorch_cuda.so"));
    }

    #[test]
    fn no_event_off_cuda() {
        let err = Event::record(Device::Cpu).err().expect("a CPU event is refused");
        assert!(err.to_string().contains("not a CUDA device"), "{err}");
    }

    #[test]
    fn never_applies_off_cuda_and_refuses_to_capture_there() {
        assert!(!applies(Device::Cpu));
        let err = CudaGraph::capture(Device::Cpu, || ())
            .err()
            .expect("a CPU capture is refused");
        assert!(err.to_string().contains("not a CUDA device"), "{err}");
    }
}
