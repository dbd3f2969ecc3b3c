/*
 * Hyperparameter evolution, as YOLOv5 v7.0's `train.py --evolve [N]` (its main()'s evolve branch,
 * utils/general.py print_mutation, utils/plots.py plot_evolve):
 *   per generation: if save_dir/evolve.csv exists, pick a parent among its top min(5, rows) rows by fitness
 *   (weighted random choice, weights fitness − min + 1e-6), multiply each hyp by
 *     v = (gain · (U < 0.8) · N(0,1) · U' · 0.2 + 1).clip(0.3, 3.0)      (U' one draw for all keys; redrawn while all v = 1)
 *   clip every key to its [lower, upper] and round to 5 decimals, train opt.epochs (validating and saving only at
 *   the end, no checkpoints), append (P, R, mAP50, mAP50-95, val box/obj/cls loss, hyps...) to evolve.csv and
 *   rewrite hyp_evolve.yaml with the best row; after the last, evolve.png.
 * Runs go to runs/evolve/expN. An existing evolve.csv is continued (`--exist-ok --name X`, or train.py's
 * `--resume`), whether y5 or YOLOv5 wrote it. y5's random streams are its own (engine/core/rng.h): the same rule,
 * not numpy's numbers.
 */
#pragma once
#include <string>
#include <vector>

#include "engine/app/train.h"
#include "engine/core/rng.h"

namespace y5 {

// train.py's meta: mutation gain (0: never mutated), lower and upper limit, for every key it evolves.
struct EvolveMeta {
    const char* key;
    double gain, lower, upper;
};
const std::vector<EvolveMeta>& evolve_meta();
const EvolveMeta& evolve_meta(const std::string& key);  // an unknown key is an error

// evolve.csv: the 7 result columns then the hyp columns, names stripped of their padding.
struct EvolveCsv {
    std::vector<std::string> keys;
    std::vector<std::vector<double>> rows;
};
EvolveCsv read_evolve_csv(const std::string& path);  // YOLOv5's or y5's; a malformed line is an error naming it

// The rows' indices by fitness (0.1·mAP50 + 0.9·mAP50-95), best first, at most n of them, and train.py's weights
// w = fitness − min(fitness of those) + 1e-6.
void evolve_top(const EvolveCsv& csv, int n, std::vector<int>* idx, std::vector<double>* w);
// random.choices(range(n), weights=w)[0]: index i with probability w[i] / Σw.
int weighted_choice(const std::vector<double>& w, Rng& rng);

// One generation's factors v (one per gain), as above; at least one differs from 1 unless every gain is 0.
std::vector<double> mutation_factors(const std::vector<double>& gains, Rng& rng);
// max(lower), min(upper), then Python's round(x, 5).
double constrain(double x, const EvolveMeta& m);

// Python's repr of a float (shortest round trip: 0.01, 3.0, 1e-05, 1e+16) and PyYAML's form of it (1.0e-05).
std::string py_float_repr(double x);
std::string yaml_float(double x);

// print_mutation: appends one row (header first when the file is new) to save_dir/evolve.csv in '%20.5g', rewrites
// save_dir/hyp_evolve.yaml from the best row read back, and returns the summary train.py prints.
std::string print_mutation(const std::vector<double>& results, const std::vector<std::string>& hyp_keys,
                           const std::vector<double>& hyp_values, const std::string& save_dir);

// evolve.png: one scatter per hyp of its values against fitness, coloured by density, the best row marked with a +;
// prints the best row's values as plot_evolve does.
void plot_evolve(const std::string& evolve_csv, const std::string& png);

// The whole evolution: `generations` trainings with opt's settings (opt.hyp the starting yaml). Returns save_dir.
std::string evolve(const TrainOptions& opt, int generations);

}  // namespace y5
