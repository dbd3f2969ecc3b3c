#include "engine/app/evolve.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <sstream>

#include "engine/app/config.h"
#include "engine/app/hyp.h"
#include "engine/app/metrics.h"
#include "kernels/check.h"

namespace fs = std::filesystem;

namespace y5 {

const std::vector<EvolveMeta>& evolve_meta() {
    static const std::vector<EvolveMeta> m = {
        {"lr0", 1, 1e-5, 1e-1},        {"lrf", 1, 0.01, 1.0},           {"momentum", 0.3, 0.6, 0.98},
        {"weight_decay", 1, 0.0, 0.001}, {"warmup_epochs", 1, 0.0, 5.0},  {"warmup_momentum", 1, 0.0, 0.95},
        {"warmup_bias_lr", 1, 0.0, 0.2}, {"box", 1, 0.02, 0.2},           {"cls", 1, 0.2, 4.0},
        {"cls_pw", 1, 0.5, 2.0},       {"obj", 1, 0.2, 4.0},            {"obj_pw", 1, 0.5, 2.0},
        {"iou_t", 0, 0.1, 0.7},        {"anchor_t", 1, 2.0, 8.0},       {"anchors", 2, 2.0, 10.0},
        {"fl_gamma", 0, 0.0, 2.0},     {"hsv_h", 1, 0.0, 0.1},          {"hsv_s", 1, 0.0, 0.9},
        {"hsv_v", 1, 0.0, 0.9},        {"degrees", 1, 0.0, 45.0},       {"translate", 1, 0.0, 0.9},
        {"scale", 1, 0.0, 0.9},        {"shear", 1, 0.0, 10.0},         {"perspective", 0, 0.0, 0.001},
        {"flipud", 1, 0.0, 1.0},       {"fliplr", 0, 0.0, 1.0},         {"mosaic", 1, 0.0, 1.0},
        {"mixup", 1, 0.0, 1.0},        {"copy_paste", 1, 0.0, 1.0}};
    return m;
}

const EvolveMeta& evolve_meta(const std::string& key) {
    for (const EvolveMeta& m : evolve_meta())
        if (key == m.key) return m;
    Y5_FAIL("evolve: '%s' is not a hyperparameter train.py evolves", key.c_str());
}

static const char* kResultKeys[7] = {"metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
                                     "val/box_loss",      "val/obj_loss",   "val/cls_loss"};

static std::string strip(const std::string& s) {
    const size_t a = s.find_first_not_of(" \t\r"), b = s.find_last_not_of(" \t\r");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

EvolveCsv read_evolve_csv(const std::string& path) {
    std::ifstream in(path);
    Y5_CHECK(in, "%s: cannot read", path.c_str());
    EvolveCsv c;
    std::string line, f;
    Y5_CHECK(std::getline(in, line), "%s: empty, expected evolve.csv's header", path.c_str());
    for (std::stringstream ss(line); std::getline(ss, f, ',');) c.keys.push_back(strip(f));
    Y5_CHECK(c.keys.size() > 7, "%s: line 1: expected 7 result columns then the hyperparameters", path.c_str());
    for (int ln = 2; std::getline(in, line); ++ln) {
        if (strip(line).empty()) continue;
        std::vector<double> row;
        for (std::stringstream ss(line); std::getline(ss, f, ',');) {
            char* end = nullptr;
            const std::string t = strip(f);
            const double v = std::strtod(t.c_str(), &end);
            Y5_CHECK(!t.empty() && *end == 0, "%s: line %d: '%s' is not a number", path.c_str(), ln, t.c_str());
            row.push_back(v);
        }
        Y5_CHECK(row.size() == c.keys.size(), "%s: line %d: %zu values, the header has %zu columns", path.c_str(), ln,
                 row.size(), c.keys.size());
        c.rows.push_back(row);
    }
    Y5_CHECK(!c.rows.empty(), "%s: no generations", path.c_str());
    return c;
}

static double row_fitness(const std::vector<double>& r) { return fitness(r[0], r[1], r[2], r[3]); }

void evolve_top(const EvolveCsv& csv, int n, std::vector<int>* idx, std::vector<double>* w) {
    std::vector<int> order(csv.rows.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = (int)i;
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return row_fitness(csv.rows[a]) > row_fitness(csv.rows[b]); });
    order.resize(std::min<size_t>(n, order.size()));
    double lo = INFINITY;
    for (int i : order) lo = std::min(lo, row_fitness(csv.rows[i]));
    w->clear();
    for (int i : order) w->push_back(row_fitness(csv.rows[i]) - lo + 1e-6);
    *idx = order;
}

int weighted_choice(const std::vector<double>& w, Rng& rng) {
    double total = 0;
    for (double x : w) total += x;
    const double u = rng.uniform_double() * total;  // Python's random.choices: bisect the cumulative weights
    double cum = 0;
    for (size_t i = 0; i < w.size(); ++i)
        if (u < (cum += w[i])) return (int)i;
    return (int)w.size() - 1;
}

std::vector<double> mutation_factors(const std::vector<double>& gains, Rng& rng) {
    const double mp = 0.8, s = 0.2;  // mutation probability, sigma
    bool any = false;
    for (double g : gains) any = any || g != 0;
    std::vector<double> v(gains.size(), 1.0);
    while (any && std::all_of(v.begin(), v.end(), [](double x) { return x == 1.0; })) {
        std::vector<double> mask(gains.size()), nrm(gains.size());
        for (double& m : mask) m = rng.uniform_double() < mp;
        for (double& z : nrm) z = rng.normal();
        const double r = rng.uniform_double();  // one draw shared by all keys of the generation, as train.py's
        for (size_t i = 0; i < v.size(); ++i) v[i] = std::clamp(gains[i] * mask[i] * nrm[i] * r * s + 1, 0.3, 3.0);
    }
    return v;
}

// Python's round(x, 5): the correctly rounded decimal, ties to even, which is what glibc's printf produces.
static double round5(double x) {
    char b[64];
    snprintf(b, sizeof b, "%.5f", x);
    return std::strtod(b, nullptr);
}

double constrain(double x, const EvolveMeta& m) { return round5(std::min(std::max(x, m.lower), m.upper)); }

std::string py_float_repr(double x) {
    if (std::isnan(x)) return "nan";
    if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
    char b[64];
    int p = 1;
    for (; p < 17; ++p) {  // the fewest significant digits that read back as x
        snprintf(b, sizeof b, "%.*e", p - 1, x);
        if (std::strtod(b, nullptr) == x) break;
    }
    snprintf(b, sizeof b, "%.*e", p - 1, x);
    std::string s = b, sign;
    if (s[0] == '-') sign = "-", s = s.substr(1);
    const size_t e = s.find('e');
    const int exp10 = std::atoi(s.c_str() + e + 1);
    std::string digits = s.substr(0, 1) + (e > 2 ? s.substr(2, e - 2) : "");
    if (exp10 < -4 || exp10 >= 16) {  // repr's scientific form: 1e-05, 1.5e+16
        snprintf(b, sizeof b, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
        return sign + digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "") + b;
    }
    if (exp10 < 0) return sign + "0." + std::string(-exp10 - 1, '0') + digits;
    if ((int)digits.size() <= exp10 + 1) return sign + digits + std::string(exp10 + 1 - digits.size(), '0') + ".0";
    return sign + digits.substr(0, exp10 + 1) + "." + digits.substr(exp10 + 1);
}

std::string yaml_float(double x) {
    if (std::isnan(x)) return ".nan";
    if (std::isinf(x)) return x > 0 ? ".inf" : "-.inf";
    std::string s = py_float_repr(x);
    const size_t e = s.find('e');
    if (s.find('.') == std::string::npos && e != std::string::npos) s.insert(e, ".0");  // PyYAML: 1e-05 -> 1.0e-05
    return s;
}

static std::string g5_join(const std::vector<double>& v, const char* sep) {
    std::string s;
    char b[64];
    for (size_t i = 0; i < v.size(); ++i) {
        snprintf(b, sizeof b, "%20.5g", v[i]);
        s += (i ? sep : "") + std::string(b);
    }
    return s;
}

static std::string s20_join(const std::vector<std::string>& k, const char* sep) {
    std::string s;
    char b[256];
    for (size_t i = 0; i < k.size(); ++i) {
        snprintf(b, sizeof b, "%20s", k[i].c_str());
        s += (i ? sep : "") + std::string(b);
    }
    return s;
}

std::string print_mutation(const std::vector<double>& results, const std::vector<std::string>& hyp_keys,
                           const std::vector<double>& hyp_values, const std::string& save_dir) {
    Y5_CHECK(results.size() == 7 && hyp_keys.size() == hyp_values.size(), "print_mutation: 7 results and one value per key");
    const std::string csv = save_dir + "/evolve.csv", yaml = save_dir + "/hyp_evolve.yaml";
    std::vector<std::string> keys(kResultKeys, kResultKeys + 7);
    keys.insert(keys.end(), hyp_keys.begin(), hyp_keys.end());
    std::vector<double> vals = results;
    vals.insert(vals.end(), hyp_values.begin(), hyp_values.end());
    const bool fresh = !fs::exists(csv);
    {
        std::ofstream f(csv, std::ios::app);
        Y5_CHECK(f, "%s: cannot write", csv.c_str());
        if (fresh) f << s20_join(keys, ",") << "\n";
        f << g5_join(vals, ",") << "\n";
    }
    // hyp_evolve.yaml from the rows as written (5 significant digits), the first best row by fitness.
    const EvolveCsv c = read_evolve_csv(csv);
    size_t best = 0;
    for (size_t i = 1; i < c.rows.size(); ++i)
        if (row_fitness(c.rows[i]) > row_fitness(c.rows[best])) best = i;
    std::ostringstream y;
    y << "# YOLOv5 Hyperparameter Evolution Results\n# Best generation: " << best << "\n# Last generation: "
      << c.rows.size() - 1 << "\n# " << s20_join(std::vector<std::string>(keys.begin(), keys.begin() + 7), ", ") << "\n# "
      << g5_join(std::vector<double>(c.rows[best].begin(), c.rows[best].begin() + 7), ", ") << "\n\n";
    for (size_t k = 7; k < c.keys.size(); ++k) y << c.keys[k] << ": " << yaml_float(c.rows[best][k]) << "\n";
    std::ofstream(yaml) << y.str();
    Y5_CHECK(fs::exists(yaml), "%s: cannot write", yaml.c_str());
    return "evolve: " + std::to_string(c.rows.size()) + " generations finished, current result:\nevolve: " +
           s20_join(keys, ", ") + "\nevolve: " + g5_join(vals, ", ") + "\n\n";
}

void plot_evolve(const std::string& evolve_csv, const std::string& png) {
    const EvolveCsv c = read_evolve_csv(evolve_csv);
    const size_t n = c.rows.size();
    std::vector<double> f(n);
    for (size_t i = 0; i < n; ++i) f[i] = row_fitness(c.rows[i]);
    const size_t j = std::max_element(f.begin(), f.end()) - f.begin();
    const double flo = *std::min_element(f.begin(), f.end()), fhi = f[j];
    std::printf("Best results from row %zu of %s:\n", j, evolve_csv.c_str());
    const int cols = 5, pw = 300, ph = 250, m = 34;
    const int nk = (int)c.keys.size() - 7, rows = std::max(6, (nk + cols - 1) / cols);
    cv::Mat img(rows * ph, cols * pw, CV_8UC3, cv::Scalar(255, 255, 255));
    for (int k = 0; k < nk; ++k) {
        std::vector<double> v(n);
        for (size_t i = 0; i < n; ++i) v[i] = c.rows[i][7 + k];
        const double vlo = *std::min_element(v.begin(), v.end()), vhi = *std::max_element(v.begin(), v.end());
        // Density as YOLOv5's hist2d(v, f, 20): log of the count in the point's cell of a 19×19 grid over the ranges.
        auto cell = [](double x, double lo, double hi) {
            return hi > lo ? std::clamp((int)((x - lo) / (hi - lo) * 19), 0, 18) : 0;
        };
        std::map<std::pair<int, int>, int> count;
        for (size_t i = 0; i < n; ++i) ++count[{cell(v[i], vlo, vhi), cell(f[i], flo, fhi)}];
        int most = 1;
        for (const auto& kv : count) most = std::max(most, kv.second);
        const int ox = (k % cols) * pw, oy = (k / cols) * ph;
        cv::rectangle(img, cv::Rect(ox + m, oy + m, pw - 2 * m, ph - 2 * m), cv::Scalar(200, 200, 200), 1);
        auto pt = [&](double x, double y) {
            const double fx = vhi > vlo ? (x - vlo) / (vhi - vlo) : 0.5, fy = fhi > flo ? (y - flo) / (fhi - flo) : 0.5;
            return cv::Point(ox + m + 6 + (int)(fx * (pw - 2 * m - 12)), oy + ph - m - 6 - (int)(fy * (ph - 2 * m - 12)));
        };
        for (size_t i = 0; i < n; ++i) {
            const double d = std::log((double)count[{cell(v[i], vlo, vhi), cell(f[i], flo, fhi)}]) / std::log(most + 1e-9);
            cv::Mat grey(1, 1, CV_8UC1, cv::Scalar(std::clamp((int)(d * 255), 0, 255))), rgb;
            cv::applyColorMap(grey, rgb, cv::COLORMAP_VIRIDIS);
            const cv::Vec3b col = rgb.at<cv::Vec3b>(0, 0);
            cv::circle(img, pt(v[i], f[i]), 4, cv::Scalar(col[0], col[1], col[2]), cv::FILLED, cv::LINE_AA);
        }
        const cv::Point b = pt(v[j], fhi);
        cv::line(img, b - cv::Point(9, 0), b + cv::Point(9, 0), cv::Scalar(0, 0, 0), 2);
        cv::line(img, b - cv::Point(0, 9), b + cv::Point(0, 9), cv::Scalar(0, 0, 0), 2);
        char t[128];
        snprintf(t, sizeof t, "%s = %.3g", c.keys[7 + k].c_str(), v[j]);
        cv::putText(img, t, cv::Point(ox + m, oy + m - 10), cv::FONT_HERSHEY_SIMPLEX, 0.5, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
        for (int e = 0; e < 2; ++e) {  // the value range below the panel, the fitness range on the first column
            snprintf(t, sizeof t, "%.3g", e ? vhi : vlo);
            cv::putText(img, t, cv::Point(ox + m + (e ? pw - 2 * m - 40 : 0), oy + ph - m + 14), cv::FONT_HERSHEY_SIMPLEX,
                        0.35, cv::Scalar(90, 90, 90), 1, cv::LINE_AA);
            if (k % cols) continue;
            snprintf(t, sizeof t, "%.3g", e ? fhi : flo);
            cv::putText(img, t, cv::Point(ox + 2, e ? oy + m + 10 : oy + ph - m - 2), cv::FONT_HERSHEY_SIMPLEX, 0.35,
                        cv::Scalar(90, 90, 90), 1, cv::LINE_AA);
        }
        std::printf("%15s: %.3g\n", c.keys[7 + k].c_str(), v[j]);
    }
    Y5_CHECK(cv::imwrite(png, img), "%s: cannot write image", png.c_str());
    std::printf("Saved %s\n", png.c_str());
}

// The yaml's keys in its order (Hyp keeps a map), as train.py's hyp dict iterates them.
static std::vector<std::string> yaml_order(const std::string& path) {
    std::vector<std::string> keys;
    const YAML::Node y = YAML::LoadFile(path);
    for (auto it = y.begin(); it != y.end(); ++it) keys.push_back(it->first.as<std::string>());
    return keys;
}

std::string evolve(const TrainOptions& opt_in, int generations) {
    Y5_CHECK(generations >= 1, "--evolve %d: the number of generations must be at least 1", generations);
    TrainOptions opt = opt_in;
    if (opt.project == "runs/train") opt.project = "runs/evolve";  // train.py: the default project moves
    std::string save_dir = opt.project + "/" + opt.name;
    if (!opt.exist_ok && fs::exists(save_dir))  // train.py's increment_path: exp, exp2, exp3, ...
        for (int i = 2;; ++i)
            if (!fs::exists(save_dir = opt.project + "/" + opt.name + std::to_string(i))) break;
    fs::create_directories(save_dir);
    const std::string csv = save_dir + "/evolve.csv", hyp_path = resolve_config(
        opt.hyp.empty() ? "hyp.scratch-low.yaml" : opt.hyp, "hyps", "--hyp");

    // The hyp as train.py holds it: the yaml's keys in order, 'anchors' appended (3) when the yaml has none, dropped
    // with --noautoanchor (and from the constraints, as train.py deletes it from meta too).
    const Hyp loaded = load_hyp(hyp_path);
    std::vector<std::string> keys = yaml_order(hyp_path);
    std::map<std::string, double> hyp(loaded.v.begin(), loaded.v.end());
    if (!hyp.count("anchors")) hyp["anchors"] = 3, keys.push_back("anchors");
    if (opt.noautoanchor) hyp.erase("anchors"), keys.erase(std::find(keys.begin(), keys.end(), "anchors"));
    for (const std::string& k : keys) evolve_meta(k);
    if (fs::exists(csv)) {  // continue: the file's columns are the keys, in its order (its rows are appended to)
        const EvolveCsv c = read_evolve_csv(csv);
        std::vector<std::string> ck(c.keys.begin() + 7, c.keys.end()), a = ck, b = keys;
        std::sort(a.begin(), a.end()), std::sort(b.begin(), b.end());
        Y5_CHECK(a == b, "%s: its hyperparameter columns differ from %s's%s", csv.c_str(), hyp_path.c_str(),
                 opt.noautoanchor ? " without 'anchors' (--noautoanchor)" : "");
        keys = ck;
        std::printf("evolve: continuing %s (%zu generations)\n", csv.c_str(), c.rows.size());
    }
    Rng rng((uint64_t)std::time(nullptr), 0x65766f6c7665ULL);  // train.py seeds its mutation with the time too

    for (int gen = 0; gen < generations; ++gen) {
        if (fs::exists(csv)) {
            const EvolveCsv c = read_evolve_csv(csv);
            std::vector<int> idx;
            std::vector<double> w;
            evolve_top(c, 5, &idx, &w);
            const std::vector<double>& parent = c.rows[idx[weighted_choice(w, rng)]];
            std::vector<double> gains;
            for (const std::string& k : keys) gains.push_back(evolve_meta(k).gain);
            const std::vector<double> v = mutation_factors(gains, rng);
            for (size_t i = 0; i < keys.size(); ++i) {
                const size_t col = std::find(c.keys.begin() + 7, c.keys.end(), keys[i]) - c.keys.begin();
                hyp[keys[i]] = parent[col] * v[i];
            }
        }
        for (const std::string& k : keys) hyp[k] = constrain(hyp[k], evolve_meta(k));
        Y5_CHECK(hyp["fl_gamma"] == 0 && hyp["mixup"] == 0 && hyp["copy_paste"] == 0,
                 "%s: fl_gamma, mixup and copy_paste must stay 0 (y5 has no focal loss, mixup or copy-paste)", csv.c_str());
        TrainOptions t = opt;
        t.project = fs::path(save_dir).parent_path().string(), t.name = fs::path(save_dir).filename().string();
        t.exist_ok = t.noval = t.nosave = t.evolve = true;  // train.py: only validate the final epoch, save nothing
        t.resume.clear();
        t.hyp = hyp_path;
        t.hyp_values = hyp;
        std::vector<double> results;
        train(t, &results);
        std::vector<double> values;
        for (const std::string& k : keys) values.push_back(hyp[k]);
        std::printf("%s", print_mutation(results, keys, values, save_dir).c_str());
    }
    plot_evolve(csv, save_dir + "/evolve.png");
    std::printf("Hyperparameter evolution finished %d generations\nResults saved to %s\nUsage example: $ y5train --hyp "
                "%s/hyp_evolve.yaml\n", generations, save_dir.c_str(), save_dir.c_str());
    return save_dir;
}

}  // namespace y5
