// What the shim adds for CUDA, called from src/runtime/cuda.rs: CUDA graphs and events, neither of which tch 0.24
// exposes (tch-rs issue 631).
//
// Graphs: a graph is
// captured from the ops issued on the calling thread between diffuse_graph_begin and diffuse_graph_end (backward
// passes included: autograd runs them on the streams their forward ops ran on), then replayed with one launch.
//
// Capture runs on a side stream (CUDA cannot capture the legacy default stream) that first waits for the work
// already queued; the graph allocates from its own memory pool, so the tensors made during capture keep their
// addresses on every replay. Replay runs on the current stream.
//
// Events: recorded on the current stream, they tell the host when the work queued before them is done, without
// waiting for it (the training loop reads its losses back that way).
//
// Built against libtorch's CUDA headers where the libtorch in use ships CUDA (DIFFUSE_CUDA); elsewhere every call
// reports that CUDA is not available. build.rs makes this file's references to libtorch_cuda and libc10_cuda weak,
// so diffuse_graph_available also asks the dynamic linker whether those libraries are loaded.
#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <dlfcn.h>

#ifdef DIFFUSE_CUDA
#include <ATen/core/CachingHostAllocator.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>

namespace {

thread_local std::string graph_error;

// Runs `body` and returns its result, or `failed` with the exception's text kept for diffuse_graph_error().
template <typename T, typename F>
T guarded_or(T failed, F body) {
    try {
        return body();
    } catch (const std::exception &e) {
        graph_error = e.what();
        return failed;
    }
}

// 0 when `body` ran, -1 when it threw.
template <typename F>
int guarded(F body) {
    return guarded_or(-1, [&] {
        body();
        return 0;
    });
}

// Runs `body`, ignoring a failure: for undoing steps that may already be undone, or were never done.
template <typename F>
void ignoring_failure(F body) noexcept {
    try {
        body();
    } catch (...) {
    }
}

#ifdef DIFFUSE_CUDA
// A CUDAGraph that can clean up after a failed capture, which CUDAGraph itself leaves registered with the caching
// allocator (capture_end throws before it stops allocating to the graph's pool, and reset() only releases the pool
// of a capture that ended).
struct Graph : at::cuda::CUDAGraph {
    // The calling thread's stream and device before the capture.
    std::optional<c10::cuda::CUDAStream> previous;
    c10::DeviceIndex previous_device = 0;

    void abandon_capture() noexcept {
        if (capture_dev_ == UNDEFINED_DEVICE) {  // capture_begin failed before it touched the allocator
            return;
        }
        // What capture_begin set up and a successful capture_end would undo: the device and pinned host allocators
        // allocating to the graph's pool, and the generators marked as capturing. Each step may already be undone
        // (or never done), so failures are ignored.
        at::HostAllocator *host = at::getHostAllocator(at::kCUDA);
        ignoring_failure([&] { c10::cuda::CUDACachingAllocator::endAllocateToPool(capture_dev_, mempool_id_); });
        ignoring_failure([&] { host->end_allocate_to_pool(mempool_id_); });
        if (!capture_ended_) {
            ignoring_failure([&] { c10::cuda::CUDACachingAllocator::releasePool(capture_dev_, mempool_id_); });
            ignoring_failure([&] { host->release_pool(mempool_id_); });
            for (auto &state : captured_generator_states_) {
                state.first->capturing_ = false;
            }
        }
    }

    // Runs `step` (capture_begin or capture_end); should it throw, undoes the capture and restores the thread's
    // stream and device before passing the exception on.
    template <typename F>
    void or_abandon(F step) {
        try {
            step();
        } catch (...) {
            abandon_capture();
            restore_stream();
            throw;
        }
    }

    void restore_stream() {
        if (previous) {
            c10::cuda::setCurrentCUDAStream(*previous);
            previous.reset();
            c10::cuda::set_device(previous_device);
        }
    }
};

// One capture stream per device for the whole process, as torch.cuda.graph keeps one: libraries that key state by
// stream (cuBLAS's workspace) then set it up once, not at every capture.
c10::cuda::CUDAStream capture_stream(c10::DeviceIndex device) {
    static std::mutex mutex;
    static std::map<c10::DeviceIndex, c10::cuda::CUDAStream> streams;
    const std::lock_guard<std::mutex> lock(mutex);
    auto found = streams.find(device);
    if (found == streams.end()) {
        found = streams.emplace(device, c10::cuda::getStreamFromPool(false, device)).first;
    }
    return found->second;
}

// `waiter` runs nothing queued after this call before `first`'s queued work is done (no host wait).
void wait_for(const c10::cuda::CUDAStream &first, const c10::cuda::CUDAStream &waiter) {
    c10::Event event(c10::DeviceType::CUDA);
    event.record(first.unwrap());
    event.block(waiter.unwrap());
}
#endif

}  // namespace

extern "C" {

const char *diffuse_graph_error() { return graph_error.c_str(); }

// A new event recorded on `device`'s current stream (nullptr, with diffuse_graph_error(), on a failure).
void *diffuse_event_record(int device) {
    return guarded_or<void *>(nullptr, [&] {
        // Through c10's device-generic interface, which CUDA registers when libtorch_cuda is loaded: this needs no
        // CUDA headers, so events work in every build (without CUDA it throws "not linked with support for cuda").
        const c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
        auto event = std::make_unique<c10::Event>(c10::DeviceType::CUDA);
        event->record(cuda.getStream(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device))));
        return static_cast<void *>(event.release());
    });
}

// 1 when the work queued before the event is done, 0 while it is not, -1 on an error. Never waits.
int diffuse_event_query(void *event) {
    return guarded_or(-1, [&] { return static_cast<c10::Event *>(event)->query() ? 1 : 0; });
}

// Waits until the work queued before the event is done. 0, or -1 with diffuse_graph_error().
int diffuse_event_wait(void *event) {
    return guarded([&] { static_cast<c10::Event *>(event)->synchronize(); });
}

void diffuse_event_free(void *event) { delete static_cast<c10::Event *>(event); }

#ifdef DIFFUSE_CUDA

// 1 when this process can capture CUDA graphs: built with CUDA, and libtorch's CUDA libraries are loaded.
int diffuse_graph_available() {
    // One symbol of each library this file calls into (libtorch_cuda, libc10_cuda).
    static const bool loaded = dlsym(RTLD_DEFAULT, "_ZN2at4cuda17graph_pool_handleEv") != nullptr &&
                               dlsym(RTLD_DEFAULT, "_ZN3c104cuda18device_synchronizeEv") != nullptr;
    return loaded ? 1 : 0;
}

// A new, empty graph; nullptr where graphs are not available (or with diffuse_graph_error() on a failure).
void *diffuse_graph_new() {
    return guarded_or<void *>(nullptr, [] { return diffuse_graph_available() ? new Graph() : nullptr; });
}

void diffuse_graph_free(void *graph) { delete static_cast<Graph *>(graph); }

// Starts capturing the calling thread's work on `device` into `graph`. 0, or -1 with diffuse_graph_error().
int diffuse_graph_begin(void *graph, int device) {
    return guarded([&] {
        Graph &g = *static_cast<Graph *>(graph);
        const auto index = static_cast<c10::DeviceIndex>(device);
        // As torch.cuda.graph does: nothing queued before (a replay of the graph this one replaces, whose memory
        // has just been handed back) is still running when capture starts. Once a capture, not once a step.
        g.previous_device = c10::cuda::current_device();
        c10::cuda::set_device(index);
        c10::cuda::device_synchronize();
        const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(index);
        const c10::cuda::CUDAStream side = capture_stream(index);
        wait_for(current, side);
        c10::cuda::setCurrentCUDAStream(side);
        g.previous = current;
        g.or_abandon([&] { g.capture_begin(); });
    });
}

// Ends the capture begun by diffuse_graph_begin and makes the graph ready to replay; the calling thread's stream is
// the one it was before, whether or not the capture succeeded. 0, or -1 with diffuse_graph_error().
int diffuse_graph_end(void *graph) {
    return guarded([&] {
        Graph &g = *static_cast<Graph *>(graph);
        if (!g.previous) {
            throw std::runtime_error("diffuse_graph_end without diffuse_graph_begin");
        }
        const c10::cuda::CUDAStream side = c10::cuda::getCurrentCUDAStream();
        g.or_abandon([&] { g.capture_end(); });
        const c10::cuda::CUDAStream previous = *g.previous;
        g.restore_stream();
        wait_for(side, previous);
    });
}

// Queues one replay of a captured graph on the current stream. 0, or -1 with diffuse_graph_error().
int diffuse_graph_replay(void *graph) {
    return guarded([&] { static_cast<Graph *>(graph)->replay(); });
}

#else  // no CUDA headers: no graph can be made

int diffuse_graph_available() { return 0; }
void *diffuse_graph_new() { return nullptr; }
void diffuse_graph_free(void *) {}
int diffuse_graph_begin(void *, int) { return guarded([] { throw std::runtime_error("this build has no CUDA graphs"); }); }
int diffuse_graph_end(void *) { return diffuse_graph_begin(nullptr, 0); }
int diffuse_graph_replay(void *) { return diffuse_graph_begin(nullptr, 0); }

#endif
}
