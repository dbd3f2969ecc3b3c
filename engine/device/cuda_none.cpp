/* engine/device/device.h for a build without CUDA (-DY5_CUDA=OFF): there is no device, and asking for one is a
 * clear error rather than a link failure or a crash. */
#include "kernels/check.h"
#include "engine/device/device.h"

namespace y5 {

static const char* kNoCuda = "y5 was built without CUDA (-DY5_CUDA=OFF); use --device cpu or rebuild with CUDA";

bool cuda_available(std::string* why) {
    if (why) *why = "built without CUDA";
    return false;
}
void* host_alloc_pinned(size_t) { return nullptr; }
void host_free_pinned(void*) {}
CudaContext* cuda_context_create(int) { Y5_FAIL("%s", kNoCuda); }
void cuda_context_destroy(CudaContext*) {}
void* device_alloc(size_t, const char*) { Y5_FAIL("%s", kNoCuda); }
void device_free(void*) {}
void copy_host_to_device(void*, const void*, size_t, CudaContext*) { Y5_FAIL("%s", kNoCuda); }
void copy_device_to_host(void*, const void*, size_t, CudaContext*) { Y5_FAIL("%s", kNoCuda); }
void copy_device_to_device(void*, const void*, size_t, CudaContext*) { Y5_FAIL("%s", kNoCuda); }
void device_memset(void*, int, size_t, CudaContext*) { Y5_FAIL("%s", kNoCuda); }
void device_synchronize(CudaContext*) {}
cudaStream_t cuda_stream(CudaContext*) { Y5_FAIL("%s", kNoCuda); }
DeviceEvent* event_create() { return nullptr; }
void event_destroy(DeviceEvent*) {}
void event_record(DeviceEvent*, CudaContext*, bool) { Y5_FAIL("%s", kNoCuda); }
void event_wait(DeviceEvent*) {}
void capture_begin(CudaContext*) { Y5_FAIL("%s", kNoCuda); }
DeviceGraph* capture_end(CudaContext*) { Y5_FAIL("%s", kNoCuda); }
void capture_abandon(CudaContext*) {}
void graph_launch(DeviceGraph*, CudaContext*) { Y5_FAIL("%s", kNoCuda); }
void graph_destroy(DeviceGraph*) {}
void stream_wait(CudaContext*, DeviceEvent*, bool) { Y5_FAIL("%s", kNoCuda); }
void copy_host_to_device_staged(void*, const void*, size_t, CudaContext*) { Y5_FAIL("%s", kNoCuda); }
void copy_host_to_device_async(void*, const void*, size_t, CudaContext*) { Y5_FAIL("%s", kNoCuda); }
void copy_device_to_host_async(void*, const void*, size_t, CudaContext*) { Y5_FAIL("%s", kNoCuda); }
int cuda_device_count() { return 0; }
bool device_memory_info(size_t* free_bytes, size_t* total_bytes) {
    *free_bytes = *total_bytes = 0;
    return false;
}

}  // namespace y5
