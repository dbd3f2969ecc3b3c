/*
 * Training data pipeline throughput: images/s of the full augmented pipeline (decode, mosaic,
 * random_perspective, HSV, flips, CHW batches) on a dataset at --imgsz, with 1, 2 and 4 workers.
 *   ./build/bench_loader [--data ../shared/data/coco128/coco128.yaml] [--imgsz 640] [--batch 16] [--epochs 2]
 * Prints a table; the first epoch warms the page cache and is not timed.
 */
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <thread>

#include "engine/app/main.h"
#include "kernels/check.h"
#include "engine/data/dataset.h"
#include "engine/data/loader.h"

int main(int argc, char** argv) {
    CLI::App app{"bench_loader: images/s of the training data pipeline"};
    std::string data = "../shared/data/coco128/coco128.yaml";
    int imgsz = 640, batch = 16, epochs = 2;
    std::vector<int> workers = {1, 2, 4};
    bool cache_ram = false;
    app.add_option("--data", data)->capture_default_str();
    app.add_option("--imgsz", imgsz)->capture_default_str();
    app.add_option("--batch", batch)->capture_default_str();
    app.add_option("--epochs", epochs, "timed epochs per setting")->capture_default_str();
    app.add_option("--workers", workers, "worker counts to try")->capture_default_str();
    app.add_flag("--cache-ram", cache_ram, "keep resized images in memory");
    CLI11_PARSE(app, argc, argv);
    try {
        y5::DataConfig cfg = y5::load_data_yaml(data);
        y5::Dataset d = y5::scan_dataset(cfg.splits.at("train"), 0, false);
        std::printf("dataset %s: %d images; imgsz %d, batch %d, %u hardware threads, cache %s\n", data.c_str(),
                    d.stats.images, imgsz, batch, std::thread::hardware_concurrency(), cache_ram ? "ram" : "none");
        std::printf("%8s %12s %12s %12s\n", "workers", "images/s", "ms/batch", "batches");
        for (int w : workers) {
            y5::LoaderOptions o;
            o.img_size = imgsz;
            o.batch_size = batch;
            o.workers = w;
            o.augment = o.shuffle = true;
            o.cache_ram = cache_ram;
            y5::DataLoader loader(d, o);
            y5::Batch b;
            loader.start_epoch(0);  // warm-up
            while (loader.next(b)) {}
            int64_t images = 0, batches = 0;
            const auto t0 = std::chrono::steady_clock::now();
            for (int e = 1; e <= epochs; ++e) {
                loader.start_epoch(e);
                while (loader.next(b)) images += b.n, ++batches;
            }
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            std::printf("%8d %12.1f %12.1f %12lld\n", w, images / s, 1000 * s / batches, (long long)batches);
        }
        return 0;
    } catch (...) {
        return y5::error_exit("bench_loader");
    }
}
