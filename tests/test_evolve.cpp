/*
 * --evolve (engine/app/evolve.h) against YOLOv5 v7.0's rule and files: the mutation factor's distribution against
 * numpy draws of train.py's expression, limits and rounding, parent selection on an evolve.csv print_mutation wrote,
 * and evolve.csv / hyp_evolve.yaml text equal to print_mutation's for the same inputs
 * (tools/golden/make_evolve_fixtures.py writes tests/fixtures/evolve*).
 */
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "engine/app/evolve.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace y5;

static std::string fixture(const std::string& name) { return std::string(Y5_SOURCE_DIR) + "/tests/fixtures/" + name; }

static std::string slurp(const std::string& path) {
    std::ifstream in(path);
    REQUIRE(in);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

static std::vector<std::vector<double>> numbers(const std::string& path) {
    std::vector<std::vector<double>> rows;
    std::istringstream in(slurp(path));
    for (std::string line; std::getline(in, line);) {
        std::istringstream ls(line);
        std::vector<double> r;
        for (double x; ls >> x;) r.push_back(x);
        if (!r.empty()) rows.push_back(r);
    }
    return rows;
}

static double quantile(std::vector<double> v, double q) {  // numpy's default (linear) quantile
    std::sort(v.begin(), v.end());
    const double pos = q * (v.size() - 1);
    const size_t i = (size_t)pos;
    return i + 1 < v.size() ? v[i] + (pos - i) * (v[i + 1] - v[i]) : v[i];
}

TEST_CASE("evolve: Python's round(x, 5) and float repr as PyYAML writes it", "[evolve]") {
    const EvolveMeta wide{"x", 1, -100, 100};
    // (x, Python's round(x, 5)), printed by the venv's Python 3.
    const double cases[][2] = {{0.123455, 0.12345}, {1.49999e-05, 1e-05}, {2.675e-05, 3e-05}, {0.9485678272, 0.94857},
                               {1.000005, 1.00001}, {0.000125, 0.00013}, {3.14159265, 3.14159}, {4.999995, 5.0}};
    for (const auto& c : cases) CHECK(constrain(c[0], wide) == c[1]);
    const EvolveMeta& lr0 = evolve_meta("lr0");
    CHECK(constrain(1e-9, lr0) == 1e-5);
    CHECK(constrain(0.5, lr0) == 0.1);
    CHECK(evolve_meta("momentum").gain == 0.3);
    CHECK(evolve_meta("anchors").gain == 2);
    CHECK_THROWS(evolve_meta("not_a_hyp"));
    // yaml.safe_dump of Python floats
    const std::pair<double, const char*> reprs[] = {
        {1e-05, "1.0e-05"}, {0.0001, "0.0001"}, {3.0, "3.0"}, {0.00012, "0.00012"}, {1e16, "1.0e+16"},
        {123456.0, "123456.0"}, {1.5e-07, "1.5e-07"}, {0.1 + 0.2, "0.30000000000000004"}, {1e22, "1.0e+22"},
        {12345678901234567.0, "1.2345678901234568e+16"}, {0.5, "0.5"}, {0.0, "0.0"}, {-2.5, "-2.5"}};
    for (const auto& [x, s] : reprs) CHECK(yaml_float(x) == s);
    CHECK(py_float_repr(1e-05) == "1e-05");
}

TEST_CASE("evolve: mutation factors follow train.py's rule (numpy's statistics), limits and rounding hold", "[evolve]") {
    const auto& meta = evolve_meta();
    std::vector<double> gains;
    for (const EvolveMeta& m : meta) gains.push_back(m.gain);
    auto at = [&](const char* k) {
        for (size_t i = 0; i < meta.size(); ++i)
            if (std::string(meta[i].key) == k) return i;
        FAIL(k);
        return (size_t)0;
    };
    // The start: the fixture's first generation (hyp.scratch-low + anchors 3), mutated generation after generation
    // from a fixed parent, as train.py does from the selected row.
    const EvolveCsv csv = read_evolve_csv(fixture("evolve.csv"));
    std::vector<double> parent(meta.size());
    for (size_t i = 0; i < meta.size(); ++i)
        parent[i] = csv.rows[0][std::find(csv.keys.begin(), csv.keys.end(), meta[i].key) - csv.keys.begin()];
    Rng rng(123, 4);
    const int n = 100000;
    std::vector<double> v1, v03, v2;
    int changed_gens = 0;
    for (int g = 0; g < n; ++g) {
        const std::vector<double> v = mutation_factors(gains, rng);
        bool changed = false;
        for (size_t i = 0; i < v.size(); ++i) {
            REQUIRE(v[i] >= 0.3);
            REQUIRE(v[i] <= 3.0);
            changed = changed || v[i] != 1.0;
            if (meta[i].gain == 0) REQUIRE(v[i] == 1.0);
        }
        changed_gens += changed;
        v1.push_back(v[at("lr0")]), v03.push_back(v[at("momentum")]), v2.push_back(v[at("anchors")]);
        if (g < 3000) {
            for (size_t i = 0; i < v.size(); ++i) {
                const double h = constrain(parent[i] * v[i], meta[i]);
                REQUIRE(h >= meta[i].lower);
                REQUIRE(h <= meta[i].upper);
                REQUIRE(std::fabs(h * 1e5 - std::round(h * 1e5)) < 1e-6);  // 5 decimals
                if (meta[i].gain == 0) REQUIRE(h == constrain(parent[i], meta[i]));
            }
        }
    }
    CHECK(changed_gens == n);
    // numpy's statistics of the same expression: gain, mean, std, P(v == 1), quantiles 1 5 25 50 75 95 99 %.
    const auto stats = numbers(fixture("evolve_v.txt"));
    REQUIRE(stats.size() == 3);
    const double qs[] = {0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99};
    for (const auto& s : stats) {
        const std::vector<double>& v = s[0] == 1 ? v1 : s[0] == 0.3 ? v03 : v2;
        double mean = 0, var = 0, ones = 0;
        for (double x : v) mean += x, ones += x == 1.0;
        mean /= v.size();
        for (double x : v) var += (x - mean) * (x - mean);
        const double sd = std::sqrt(var / v.size());
        INFO("gain " << s[0] << ": mean " << mean << " sd " << sd << " P(v=1) " << ones / v.size());
        CHECK(std::fabs(mean - s[1]) < 6 * s[2] / std::sqrt((double)n) + 1e-4);  // ~6 standard errors
        CHECK(std::fabs(sd / s[2] - 1) < 0.03);
        CHECK(std::fabs(ones / v.size() - s[3]) < 0.006);  // 1 − mp: no mutation (sd of the estimate ~0.0013)
        for (int q = 0; q < 7; ++q) CHECK(std::fabs(quantile(v, qs[q]) - s[4 + q]) < 0.02 * s[0] + 1e-9);
    }
    // Every gain 0: nothing can change, and the loop must not spin.
    CHECK(mutation_factors({0, 0, 0}, rng) == std::vector<double>{1, 1, 1});
}

TEST_CASE("evolve: parent selection is train.py's top 5 by fitness, drawn by weight", "[evolve]") {
    const EvolveCsv csv = read_evolve_csv(fixture("evolve.csv"));
    REQUIRE(csv.rows.size() == 8);
    REQUIRE(csv.keys.size() == 36);
    CHECK(csv.keys[3] == "metrics/mAP_0.5:0.95");
    CHECK(csv.keys[35] == "anchors");
    const auto expect = numbers(fixture("evolve_select.txt"));  // numpy: argsort(-fitness)[:5] and w
    std::vector<int> idx;
    std::vector<double> w;
    evolve_top(csv, 5, &idx, &w);
    REQUIRE(idx.size() == 5);
    double total = 0;
    for (int i = 0; i < 5; ++i) {
        CHECK(idx[i] == (int)expect[0][i]);
        CHECK(std::fabs(w[i] - expect[1][i]) <= 1e-15);
        total += w[i];
    }
    Rng rng(9, 1);
    const int n = 200000;
    std::vector<int> count(5);
    for (int k = 0; k < n; ++k) ++count[weighted_choice(w, rng)];
    for (int i = 0; i < 5; ++i) {
        INFO("choice " << i << ": " << count[i] << " of " << n << ", weight " << w[i] / total);
        CHECK(std::fabs((double)count[i] / n - w[i] / total) < 0.005);
    }
    evolve_top(csv, 5, &idx, &w);
    std::vector<int> one;
    evolve_top(EvolveCsv{csv.keys, {csv.rows[3]}}, 5, &one, &w);  // one row: weight 1e-6, always chosen
    CHECK(one == std::vector<int>{0});
    CHECK(weighted_choice(w, rng) == 0);
}

TEST_CASE("evolve: evolve.csv and hyp_evolve.yaml are print_mutation's, and a YOLOv5 evolve.csv is continued", "[evolve]") {
    const EvolveCsv ref = read_evolve_csv(fixture("evolve.csv"));
    const std::vector<std::string> hyp_keys(ref.keys.begin() + 7, ref.keys.end());
    const auto inputs = numbers(fixture("evolve_inputs.txt"));
    REQUIRE(inputs.size() == 8);
    const fs::path dir = fs::temp_directory_path() / ("y5_evolve_test_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::string summary;
    for (const auto& row : inputs) {
        REQUIRE(row.size() == 36);
        summary = print_mutation(std::vector<double>(row.begin(), row.begin() + 7), hyp_keys,
                                 std::vector<double>(row.begin() + 7, row.end()), dir.string());
    }
    CHECK(slurp((dir / "evolve.csv").string()) == slurp(fixture("evolve.csv")));
    CHECK(slurp((dir / "hyp_evolve.yaml").string()) == slurp(fixture("hyp_evolve.yaml")));
    CHECK(summary.rfind("evolve: 8 generations finished, current result:\nevolve:    metrics/precision, ", 0) == 0);

    // Continue YOLOv5's file: a better 9th generation is appended and becomes the yaml's best.
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::copy_file(fixture("evolve.csv"), dir / "evolve.csv");
    std::vector<double> hyp(ref.rows[2].begin() + 7, ref.rows[2].end());
    hyp[0] = 1e-05;
    print_mutation({0.9, 0.9, 0.9, 0.7, 0.01, 0.02, 0.03}, hyp_keys, hyp, dir.string());
    const std::string csv = slurp((dir / "evolve.csv").string());
    CHECK(csv.rfind(slurp(fixture("evolve.csv")), 0) == 0);
    CHECK(read_evolve_csv((dir / "evolve.csv").string()).rows.size() == 9);
    const std::string yaml = slurp((dir / "hyp_evolve.yaml").string());
    CHECK(yaml.find("# Best generation: 8\n# Last generation: 8\n") != std::string::npos);
    CHECK(yaml.find("\n\nlr0: 1.0e-05\nlrf: 0.01031\n") != std::string::npos);
    plot_evolve((dir / "evolve.csv").string(), (dir / "evolve.png").string());
    CHECK(fs::file_size(dir / "evolve.png") > 10000);
    fs::remove_all(dir);
}

TEST_CASE("evolve: a malformed evolve.csv is an error naming the file and line", "[evolve]") {
    const fs::path p = fs::temp_directory_path() / ("y5_evolve_bad_" + std::to_string(::getpid()) + ".csv");
    std::ofstream(p) << "a,b,c,d,e,f,g,lr0\n1,2,3,4,5,6,7,0.01\n1,2,x,4,5,6,7,0.01\n";
    CHECK_THROWS_WITH(read_evolve_csv(p.string()), Catch::Matchers::Contains("line 3: 'x' is not a number"));
    fs::remove(p);
}
