/*
 * y5data: checks a YOLO-format dataset the way training will read it, or writes the built-in synthetic one.
 *   y5data --data data.yaml [--split train|val|test|all] [--workers N] [--no-cache]
 *       scans (with the label cache beside the labels folder, as YOLOv5's labels.cache), prints every warning, the summary line and instances per class;
 *       exits 1 if a label's class id is ≥ nc (training would stop there too).
 *       --show N [--imgsz 640] [--out DIR] writes N augmented training batches as YOLOv5's train_batchN.jpg.
 *   y5data --synthetic DIR [--images N] [--seed S]
 *       writes the synthetic shapes dataset and its data.yaml.
 */
#include <CLI/CLI.hpp>
#include <cstdio>

#include "engine/app/main.h"
#include "kernels/check.h"
#include "engine/data/dataset.h"
#include "engine/data/loader.h"
#include "engine/app/plots.h"
#include "engine/data/synthetic.h"

int main(int argc, char** argv) {
    CLI::App app{"y5data: scan and validate a YOLO-format dataset, or write the built-in synthetic one"};
    std::string data, synthetic, split = "all";
    int workers = 0, images = 64, imgsz = 640, show = 0;
    std::string out_dir = ".";
    bool no_cache = false;
    uint64_t seed = 0;
    app.add_option("--data", data, "dataset yaml (path, train, val, names)");
    app.add_option("--split", split, "which split to scan: train, val, test or all")
        ->capture_default_str()->check(CLI::IsMember({"train", "val", "test", "all"}));
    app.add_option("--workers", workers, "scanning threads (0: one per core)")->capture_default_str();
    app.add_option("--imgsz,--img-size", imgsz, "training image size for --show")->capture_default_str();
    app.add_option("--show", show, "write this many augmented training batches (mosaics, boxes drawn) as train_batchN.jpg")
        ->capture_default_str();
    app.add_option("--out", out_dir, "folder for the --show pictures")->capture_default_str();
    app.add_flag("--no-cache", no_cache, "neither read nor write the label cache (<labels folder>.y5cache)");
    app.add_option("--synthetic", synthetic, "write the synthetic dataset into this folder and exit");
    app.add_option("--images", images, "training images of the synthetic dataset (validation: a quarter)")->capture_default_str();
    app.add_option("--seed", seed, "seed of the synthetic dataset")->capture_default_str();
    if (const int rc = y5::parse_flags(app, argc, argv, "y5data"); rc >= 0) return rc;
    try {
        workers = y5::cap_workers(workers, 1 << 30);
        Y5_CHECK(images >= 1 && images <= 1000000, "--images %d: must be from 1 to 1000000", images);
        Y5_CHECK(show >= 0, "--show %d: must be 0 or more", show);
        if (show > 0) imgsz = y5::check_img_size(imgsz, 32, 64);
        if (!synthetic.empty()) {
            y5::SyntheticSpec spec;
            spec.train_images = images;
            spec.val_images = std::max(1, images / 4);
            spec.seed = seed;
            std::string yaml = y5::make_synthetic_dataset(synthetic, spec);
            std::printf("wrote %d training and %d validation images to %s\n", spec.train_images, spec.val_images,
                        yaml.c_str());
            return 0;
        }
        if (data.empty()) {
            std::fprintf(stderr, "y5data: error: give --data X.yaml or --synthetic DIR (see --help)\n");
            return 2;
        }
        y5::DataConfig cfg = y5::load_data_yaml(data);
        if (!cfg.root_note.empty()) std::printf("%s\n", cfg.root_note.c_str());
        int status = 0;
        for (const char* s : {"train", "val", "test"}) {
            if ((split != "all" && split != s) || !cfg.splits.count(s)) continue;
            y5::Dataset d = y5::scan_dataset(cfg.splits[s], workers, !no_cache);
            for (const std::string& w : d.stats.warnings) std::printf("%s\n", w.c_str());
            const y5::ScanStats& st = d.stats;
            std::printf("%s: %s%s... %d images, %d backgrounds, %d corrupt, %lld instances%s\n", s,
                        st.from_cache ? "Scanning cache " : "Scanning ", st.from_cache ? d.cache_path.c_str() : cfg.splits[s][0].c_str(),
                        st.images, st.backgrounds, st.corrupt, (long long)st.instances,
                        st.warnings.empty() ? "" : (" (" + std::to_string(st.warnings.size()) + " warnings)").c_str());
            std::vector<int64_t> counts = y5::class_counts(d, cfg.nc);
            std::printf("%22s %10s\n", "class", "instances");
            for (int c = 0; c < cfg.nc; ++c)
                if (counts[c]) std::printf("%22s %10lld\n", cfg.names[c].c_str(), (long long)counts[c]);
            std::vector<std::string> bad = y5::check_classes(d, cfg.nc);
            for (const std::string& b : bad) std::fprintf(stderr, "y5data: error: %s\n", b.c_str());
            if (!bad.empty()) status = 1;
            if (show > 0 && std::string(s) == "train") {
                y5::LoaderOptions o;
                o.img_size = imgsz;
                o.batch_size = 16;
                o.augment = o.shuffle = true;
                o.workers = workers > 0 ? workers : 2;
                y5::DataLoader loader(d, o);
                loader.start_epoch(0);
                y5::Batch b;
                for (int i = 0; i < show && loader.next(b); ++i) {
                    const std::string path = out_dir + "/train_batch" + std::to_string(i) + ".jpg";
                    y5::plot_batch(b, cfg.names, path);
                    std::printf("wrote %s (%d images, %lld boxes)\n", path.c_str(), b.n, (long long)b.num_targets());
                }
            }
        }
        return status;
    } catch (...) {
        return y5::error_exit("y5data");
    }
}
