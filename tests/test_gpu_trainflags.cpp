/*
 * --multi-scale's bilinear resize on the GPU (kernels/image.cu's images_resize_bilinear_cuda) against its CPU
 * reference (kernels/image.h, itself checked against F.interpolate in tests/test_trainflags.cpp), on random images,
 * down and up, uniform and not, odd sizes, several planes.
 */
#include <vector>

#include "kernels/image.h"
#include "tests/test_gpu.h"
#include "tests/test_util.h"

#if Y5_CUDA
using namespace y5;
using namespace y5test;

TEST_CASE("bilinear resize on the GPU equals the CPU reference", "[gpu][image][trainflags]") {
    Gpu& g = gpu();
    Rng rng(411);
    struct Case {
        int planes, h, w, oh, ow;
    };
    for (Case c : {Case{3, 64, 64, 96, 96}, Case{6, 64, 64, 32, 32}, Case{3, 37, 53, 20, 71}, Case{2, 1, 5, 3, 9},
                   Case{3, 48, 80, 48, 80}, Case{9, 31, 17, 64, 32}}) {
        DYNAMIC_SECTION(c.planes << "x" << c.h << "x" << c.w << " -> " << c.oh << "x" << c.ow) {
            g.reset();
            Tensor x = g.host.tensor({(int64_t)c.planes * c.h * c.w});
            for (int64_t i = 0; i < x.numel(); ++i) x.ptr<float>()[i] = rng.uniform(0.01f, 1.0f);
            Tensor dx = g.upload(x);
            Tensor dy = g.act.tensor({(int64_t)c.planes * c.oh * c.ow});
            images_resize_bilinear_cuda(dy.ptr<float>(), dx.ptr<float>(), c.planes, c.h, c.w, c.oh, c.ow, g.cuda->stream);
            Tensor want = g.host.tensor({(int64_t)c.planes * c.oh * c.ow});
            images_resize_bilinear_cpu(want.ptr<float>(), x.ptr<float>(), c.planes, c.h, c.w, c.oh, c.ow);
            require_close(g.download(dy), want, 0, 0, "bilinear resize");  // bit-identical: --fmad=false
            g.reset();
        }
    }
}
#endif
