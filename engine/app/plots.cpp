#include "engine/app/plots.h"

#include <algorithm>
#include <cmath>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <fstream>
#include <sstream>

#include <plplot/plplot.h>

#include "kernels/check.h"

namespace y5 {

// YOLOv5's Colors palette (hex), BGR here.
cv::Scalar class_colour(int c) {
    static const char* hex[] = {"FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17",
                                "3DDB86", "1A9334", "00D4BB", "2C99A8", "00C2FF", "344593", "6473FF",
                                "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7"};
    const char* h = hex[c % 20];
    auto v = [&](int i) { return (int)std::stoul(std::string(h + i, 2), nullptr, 16); };
    return cv::Scalar(v(4), v(2), v(0));
}

static void plot_boxes(const Batch& b, const std::vector<std::array<float, 7>>& rows, const std::vector<std::string>& names,
                       const std::string& path, bool show_conf) {
    const int n = std::min(b.n, 16);
    Y5_CHECK(n > 0, "plot_batch: empty batch");
    const int ns = (int)std::ceil(std::sqrt((double)n));
    const double scale = std::min(1.0, 1920.0 / (ns * std::max(b.h, b.w)));
    const int th = (int)(b.h * scale), tw = (int)(b.w * scale);
    cv::Mat canvas(ns * th, ns * tw, CV_8UC3, cv::Scalar(255, 255, 255));
    for (int i = 0; i < n; ++i) {
        cv::Mat img(b.h, b.w, CV_8UC3);
        const uint8_t* src = b.images.data() + (size_t)i * 3 * b.h * b.w;
        for (int y = 0; y < b.h; ++y)
            for (int x = 0; x < b.w; ++x)
                for (int c = 0; c < 3; ++c) img.at<cv::Vec3b>(y, x)[2 - c] = src[((size_t)c * b.h + y) * b.w + x];
        cv::Mat tile;
        cv::resize(img, tile, cv::Size(tw, th));
        const int ox = (i % ns) * tw, oy = (i / ns) * th;
        tile.copyTo(canvas(cv::Rect(ox, oy, tw, th)));
        cv::rectangle(canvas, cv::Rect(ox, oy, tw, th), cv::Scalar(255, 255, 255), 2);
        for (const auto& row : rows) {
            const float* r = row.data();
            if ((int)r[0] != i) continue;
            const int cls = (int)r[1];
            const cv::Scalar col = class_colour(cls);
            const cv::Point p1(ox + (int)((r[2] - r[4] / 2) * tw), oy + (int)((r[3] - r[5] / 2) * th));
            const cv::Point p2(ox + (int)((r[2] + r[4] / 2) * tw), oy + (int)((r[3] + r[5] / 2) * th));
            cv::rectangle(canvas, p1, p2, col, 2);
            std::string label = cls < (int)names.size() ? names[cls] : std::to_string(cls);
            if (show_conf) {
                char c[16];
                snprintf(c, sizeof c, " %.1f", r[6]);
                label += c;
            }
            int base = 0;
            const cv::Size ts = cv::getTextSize(label, cv::FONT_HERSHEY_SIMPLEX, 0.4, 1, &base);
            cv::rectangle(canvas, cv::Point(p1.x, p1.y - ts.height - 4), cv::Point(p1.x + ts.width + 2, p1.y), col, cv::FILLED);
            cv::putText(canvas, label, cv::Point(p1.x + 1, p1.y - 3), cv::FONT_HERSHEY_SIMPLEX, 0.4, cv::Scalar(255, 255, 255), 1,
                        cv::LINE_AA);
        }
    }
    Y5_CHECK(cv::imwrite(path, canvas), "%s: cannot write image", path.c_str());
}

void plot_batch(const Batch& b, const std::vector<std::string>& names, const std::string& path) {
    std::vector<std::array<float, 7>> rows;
    for (int64_t t = 0; t < b.num_targets(); ++t) {
        const float* r = &b.targets[6 * t];
        rows.push_back({r[0], r[1], r[2], r[3], r[4], r[5], 1.0f});
    }
    plot_boxes(b, rows, names, path, false);
}

void plot_predictions(const Batch& b, const std::vector<std::array<float, 7>>& pred, const std::vector<std::string>& names,
                      const std::string& path) {
    plot_boxes(b, pred, names, path, true);
}

// ---- figures: PLplot's memcairo device draws (anti-aliased, fonts through pango) into an RGB image in memory,
// which OpenCV writes as PNG or JPEG. Coordinates: viewports in normalised device units (0..1, origin bottom left).

namespace {

struct Rgb {
    int r, g, b;
};
// matplotlib's tab10 cycle (C0..C9), and the 'blue'/'grey' YOLOv5 names for the mean and the many-class curves.
const Rgb kTab10[10] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},  {148, 103, 189},
                        {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
const Rgb kBlack{0, 0, 0}, kBlue{0, 0, 255}, kGrey{128, 128, 128}, kWhite{255, 255, 255};

void colour(Rgb c) {  // cmap0 slot 15 is the "current colour"
    plscol0(15, c.r, c.g, c.b);
    plcol0(15);
}

Rgb mix(Rgb a, Rgb b, double t) {
    return {(int)std::lround(a.r + (b.r - a.r) * t), (int)std::lround(a.g + (b.g - a.g) * t), (int)std::lround(a.b + (b.b - a.b) * t)};
}

// matplotlib's 'Blues' (ColorBrewer's 9 steps), t in [0, 1].
Rgb blues(double t) {
    static const Rgb s[9] = {{247, 251, 255}, {222, 235, 247}, {198, 219, 239}, {158, 202, 225}, {107, 174, 214},
                             {66, 146, 198},  {33, 113, 181},  {8, 81, 156},    {8, 48, 107}};
    t = std::clamp(t, 0.0, 1.0) * 8;
    const int k = std::min((int)t, 7);
    return mix(s[k], s[k + 1], t - k);
}

// One figure of w × h pixels; font and line sizes scale with dpi as matplotlib's points do.
class Figure {
public:
    Figure(int w, int h, double dpi) : w_(w), h_(h), img_(h, w, CV_8UC3, cv::Scalar(255, 255, 255)), pt_(dpi / 72.0) {
        static const bool have = [] {
            const char *menu[128], *devs[128];
            const char **m = menu, **d = devs;
            int n = 128;
            plgDevs(&m, &d, &n);
            for (int i = 0; i < n; ++i)
                if (std::string(devs[i]) == "memcairo") return true;
            return false;
        }();
        Y5_CHECK(have, "plots: PLplot has no 'memcairo' device (install Debian's plplot-driver-cairo: tools/setup.sh)");
        plsdev("memcairo");
        plsmem(w, h, img_.data);
        plscol0(0, 255, 255, 255);
        plscol0(1, 0, 0, 0);
        plinit();
        pladv(0);
        double def_mm, ht_mm, x0, x1, y0, y1;  // PLplot's default character height and page, in mm
        plgchr(&def_mm, &ht_mm);
        plgspa(&x0, &x1, &y0, &y1);
        px_per_mm_ = w / (x1 - x0);
        digit_px_ = def_mm * px_per_mm_;  // measured: cairo's digits are as tall as the character height
        plsmaj(3.5 * pt_ / px_per_mm_, 1.0);  // matplotlib's 3.5 pt major ticks
        plsmin(2.0 * pt_ / px_per_mm_, 1.0);
        font(10);
    }
    ~Figure() {
        if (open_) plend();
    }
    // matplotlib font size in points (DejaVu Sans digits are 0.73 of it tall).
    void font(double points) const { plschr(0, 0.73 * points * pt_ / digit_px_); }
    void line_width(double points) const { plwidth(points * pt_); }
    double px_per_pt() const { return pt_; }
    // Viewport from pixel insets (left, right, bottom, top from the figure's edges).
    void viewport_px(double x0, double x1, double y0, double y1) const { plvpor(x0 / w_, x1 / w_, y0 / h_, y1 / h_); }
    void save(const std::string& path) {
        plend();
        open_ = false;
        cv::Mat bgr;
        cv::cvtColor(img_, bgr, cv::COLOR_RGB2BGR);
        Y5_CHECK(cv::imwrite(path, bgr), "%s: cannot write image", path.c_str());
    }
    int w_, h_;

private:
    cv::Mat img_;
    double pt_, digit_px_ = 1, px_per_mm_ = 1;  // pixels per point; digit height at character scale 1
    bool open_ = true;
};

// Pixel size of one world unit in the current viewport and window.
void world_per_px(double& ax, double& ay, const Figure& f) {
    double x0, x1, y0, y1, wx0, wx1, wy0, wy1;
    plgvpd(&x0, &x1, &y0, &y1);
    plgvpw(&wx0, &wx1, &wy0, &wy1);
    ax = (wx1 - wx0) / ((x1 - x0) * f.w_);
    ay = (wy1 - wy0) / ((y1 - y0) * f.h_);
}

void rect(double x0, double y0, double x1, double y1, Rgb c) {
    const double x[4] = {x0, x1, x1, x0}, y[4] = {y0, y0, y1, y1};
    colour(c);
    plfill(4, x, y);
}

void polyline(const std::vector<double>& x, const std::vector<double>& y, Rgb c, double width_pt, const Figure& f,
              bool dotted = false) {
    colour(c);
    f.line_width(width_pt);
    if (dotted) {  // matplotlib ':' (dots 1 line width long, gaps 1.65)
        PLINT mark = (PLINT)(width_pt * 353), space = (PLINT)(width_pt * 583);  // micrometres (1 pt = 353 µm)
        plstyl(1, &mark, &space);
    }
    plline((PLINT)x.size(), x.data(), y.data());
    if (dotted) plstyl(0, nullptr, nullptr);
    f.line_width(0.8);
}

void dots(const std::vector<double>& x, const std::vector<double>& y, Rgb c, double diameter_pt, const Figure& f) {
    double ax, ay;
    world_per_px(ax, ay, f);
    const double r = diameter_pt * f.px_per_pt() / 2;
    colour(c);
    for (size_t i = 0; i < x.size(); ++i) plarc(x[i], y[i], r * ax, r * ay, 0, 360, 0, 1);
}

// Axes with matplotlib's look: a frame, outward ticks, numbers on the x and y axes unless turned off.
void axes(double xmin, double xmax, double ymin, double ymax, const Figure& f, bool xn = true, bool yn = true) {
    plwind(xmin, xmax, ymin, ymax);
    colour(kBlack);
    f.line_width(0.8);
    plbox("bc", 0, 0, "bc", 0, 0);  // the frame; ticks outward on the bottom and left only
    plbox(xn ? "bint" : "bit", 0, 0, yn ? "bintv" : "bitv", 0, 0);
}

void titles(const Figure& f, const std::string& title, const std::string& xlabel, const std::string& ylabel,
            double title_pt = 12) {
    colour(kBlack);
    f.font(title_pt);
    if (!title.empty()) plmtex("t", 0.8, 0.5, 0.5, title.c_str());
    f.font(10);
    if (!xlabel.empty()) plmtex("b", 3.0, 0.5, 0.5, xlabel.c_str());
    if (!ylabel.empty()) plmtex("l", 4.2, 0.5, 0.5, ylabel.c_str());
}

// matplotlib's default data margins: 5% of the range on each side.
void padded(const std::vector<double>& v, double& lo, double& hi) {
    lo = *std::min_element(v.begin(), v.end()), hi = *std::max_element(v.begin(), v.end());
    if (hi - lo < 1e-12) lo -= 0.055 * std::max(std::abs(lo), 1e-3), hi += 0.055 * std::max(std::abs(hi), 1e-3);
    const double m = 0.05 * (hi - lo);
    lo -= m, hi += m;
}

struct LegendItem {
    std::string text;
    Rgb c;
    double width_pt;
    bool dotted = false, marker = false;
};

// A legend box: at pixel (x, y_top) of the figure, one line per item.
void legend(const std::vector<LegendItem>& items, double x, double y_top, const Figure& f, double font_pt = 10) {
    if (items.empty()) return;
    const double row = font_pt * 1.4 * f.px_per_pt(), pad = 0.4 * font_pt * f.px_per_pt();
    const double line = 2 * font_pt * f.px_per_pt();
    size_t longest = 0;
    for (const auto& it : items) longest = std::max(longest, it.text.size());
    const double w = pad * 3 + line + 0.62 * font_pt * f.px_per_pt() * longest, h = row * items.size() + 2 * pad;
    f.viewport_px(x, x + w, y_top - h, y_top);
    plwind(0, w, 0, h);
    colour({204, 204, 204});
    f.line_width(0.8);
    plbox("bc", 0, 0, "bc", 0, 0);
    f.font(font_pt);
    for (size_t i = 0; i < items.size(); ++i) {
        const double yy = h - pad - row * (i + 0.5);
        polyline({pad, pad + line}, {yy, yy}, items[i].c, items[i].width_pt, f, items[i].dotted);
        if (items[i].marker) dots({pad + line / 2}, {yy}, items[i].c, 8, f);
        colour(kBlack);
        plptex(2 * pad + line, yy, 1, 0, 0, items[i].text.c_str());
    }
}

// seaborn's pmax: the count at which the largest bins holding 90% of all counts... saturate (_quantile_to_level).
double pmax_level(std::vector<double> counts, double pmax) {
    std::sort(counts.begin(), counts.end(), std::greater<double>());
    double total = 0;
    for (double c : counts) total += c;
    double cum = 0;
    for (double c : counts) {
        cum += c;
        if (cum / total >= 1 - pmax) return c;
    }
    return counts.back();
}

// A 2-D histogram (bins × bins over the data's range) as seaborn's histplot(x, y, pmax=0.9) draws it: empty bins
// blank, others from a light to a full C0 blue, saturated at the pmax level.
void hist2d(const std::vector<double>& x, const std::vector<double>& y, int bins, const Figure& f, bool xn = true,
            bool yn = true) {
    double x0 = *std::min_element(x.begin(), x.end()), x1 = *std::max_element(x.begin(), x.end());
    double y0 = *std::min_element(y.begin(), y.end()), y1 = *std::max_element(y.begin(), y.end());
    if (x1 - x0 < 1e-9) x0 -= 0.5, x1 += 0.5;
    if (y1 - y0 < 1e-9) y0 -= 0.5, y1 += 0.5;
    std::vector<double> n((size_t)bins * bins, 0.0);
    for (size_t i = 0; i < x.size(); ++i) {
        const int bx = std::min((int)((x[i] - x0) / (x1 - x0) * bins), bins - 1);
        const int by = std::min((int)((y[i] - y0) / (y1 - y0) * bins), bins - 1);
        n[(size_t)by * bins + bx] += 1;
    }
    std::vector<double> nz;
    for (double v : n)
        if (v > 0) nz.push_back(v);
    const double vmax = nz.empty() ? 1 : pmax_level(nz, 0.9);
    plwind(x0, x1, y0, y1);
    const double dx = (x1 - x0) / bins, dy = (y1 - y0) / bins;
    for (int by = 0; by < bins; ++by)
        for (int bx = 0; bx < bins; ++bx) {
            const double v = n[(size_t)by * bins + bx];
            if (v > 0)
                rect(x0 + bx * dx, y0 + by * dy, x0 + (bx + 1) * dx, y0 + (by + 1) * dy,
                     mix({229, 238, 246}, kTab10[0], std::min(v / vmax, 1.0)));
        }
    axes(x0, x1, y0, y1, f, xn, yn);
}

// A 1-D histogram (bins over the data's range) in C0 with white edges, as seaborn's diagonal.
void hist1d(const std::vector<double>& x, int bins, const Figure& f, bool xn = true, bool yn = true) {
    double x0 = *std::min_element(x.begin(), x.end()), x1 = *std::max_element(x.begin(), x.end());
    if (x1 - x0 < 1e-9) x0 -= 0.5, x1 += 0.5;
    std::vector<double> n(bins, 0.0);
    for (double v : x) n[std::min((int)((v - x0) / (x1 - x0) * bins), bins - 1)] += 1;
    const double top = *std::max_element(n.begin(), n.end()) * 1.05;
    plwind(x0, x1, 0, top);
    const double dx = (x1 - x0) / bins;
    for (int b = 0; b < bins; ++b) {
        if (n[b] <= 0) continue;
        rect(x0 + b * dx, 0, x0 + (b + 1) * dx, n[b], mix(kWhite, kTab10[0], 0.75));
        colour(kWhite);
        const double bx[5] = {x0 + b * dx, x0 + (b + 1) * dx, x0 + (b + 1) * dx, x0 + b * dx, x0 + b * dx};
        const double by[5] = {0, 0, n[b], n[b], 0};
        plline(5, bx, by);
    }
    axes(x0, x1, 0, top, f, xn, yn);
}

std::string fmt(const char* f, double v) {
    char b[64];
    snprintf(b, sizeof b, f, v);
    return b;
}

}  // namespace

void plot_results(const std::string& csv, const std::string& path) {
    std::ifstream in(csv);
    Y5_CHECK(in, "%s: cannot read", csv.c_str());
    std::string line;
    std::getline(in, line);
    std::vector<std::string> head;
    {
        std::stringstream ss(line);
        std::string h;
        while (std::getline(ss, h, ',')) head.push_back(h.substr(h.find_first_not_of(' ')));
    }
    Y5_CHECK(head.size() >= 11, "%s: %zu columns, YOLOv5's results.csv has at least 11", csv.c_str(), head.size());
    std::vector<std::vector<double>> cols(head.size());
    int row = 1;
    while (std::getline(in, line)) {
        ++row;
        std::stringstream ss(line);
        std::string v;
        for (size_t k = 0; k < head.size(); ++k) {
            Y5_CHECK(std::getline(ss, v, ','), "%s:%d: %zu values, expected %zu", csv.c_str(), row, k, head.size());
            cols[k].push_back(std::stod(v));
        }
    }
    Y5_CHECK(!cols[0].empty(), "%s: no epochs", csv.c_str());
    // Panels in YOLOv5's order: columns 1,2,3,4,5 on the top row, 8,9,10,6,7 below; figsize (12, 6) at dpi 200.
    const int order[10] = {1, 2, 3, 4, 5, 8, 9, 10, 6, 7};
    Figure f(2400, 1200, 200);
    const double pw = 2400 / 5.0, ph = 1200 / 2.0;
    for (int k = 0; k < 10; ++k) {
        const std::vector<double>& x = cols[0];
        const std::vector<double>& y = cols[order[k]];
        const std::vector<double> ys = gaussian_filter1d(y, 3.0);
        const double ox = (k % 5) * pw, oy = (1 - k / 5) * ph;  // pixel origin of the panel, bottom left
        f.viewport_px(ox + 110, ox + pw - 25, oy + 70, oy + ph - 70);
        double x0, x1, y0, y1;
        padded(x, x0, x1);
        std::vector<double> all = y;
        all.insert(all.end(), ys.begin(), ys.end());
        padded(all, y0, y1);
        f.font(10);
        axes(x0, x1, y0, y1, f);
        polyline(x, y, kTab10[0], 2, f);
        dots(x, y, kTab10[0], 4, f);
        polyline(x, ys, kTab10[1], 2, f, true);
        titles(f, head[order[k]], "", "");
        if (k == 1) legend({{"results", kTab10[0], 2, false, true}, {"smooth", kTab10[1], 2, true}}, ox + pw - 270, oy + ph - 90, f);
    }
    f.save(path);
}

void plot_labels(const Dataset& ds, const std::vector<std::string>& names, const std::string& save_dir) {
    std::vector<LabelRow> L;
    for (const ImageRecord& r : ds.records) L.insert(L.end(), r.labels.begin(), r.labels.end());
    if (L.empty()) return;  // nothing to draw (YOLOv5 would fail on an empty label array)
    std::printf("Plotting labels to %s/labels.jpg...\n", save_dir.c_str());
    std::vector<double> v[4];  // x, y, width, height
    int nc = 0;
    for (const LabelRow& l : L) {
        v[0].push_back(l.x), v[1].push_back(l.y), v[2].push_back(l.w), v[3].push_back(l.h);
        nc = std::max(nc, (int)l.cls + 1);
    }
    static const char* vn[4] = {"x", "y", "width", "height"};
    {
        // seaborn pairplot(corner=True, kind='hist'): 4 × 4, lower triangle, 8 × 8 inches at dpi 200.
        Figure f(1600, 1600, 200);
        const double cell = 1500 / 4.0, left = 90, bottom = 80;
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j <= i; ++j) {
                const double ox = left + j * cell, oy = bottom + (3 - i) * cell;
                f.viewport_px(ox + 12, ox + cell - 12, oy + 12, oy + cell - 12);
                f.font(8);
                // numbers on the outer axes only: x on the bottom row, y on the left column
                if (i == j) hist1d(v[i], 50, f, i == 3, j == 0);
                else hist2d(v[j], v[i], 50, f, i == 3, j == 0);
                colour(kBlack);
                f.font(10);
                if (i == 3) plmtex("b", 3.0, 0.5, 0.5, vn[j]);
                if (j == 0) plmtex("l", 4.2, 0.5, 0.5, i == 0 ? "count" : vn[i]);
            }
        f.save(save_dir + "/labels_correlogram.jpg");
    }
    // labels.jpg: 2 × 2 of 8 × 8 inches at dpi 200.
    Figure f(1600, 1600, 200);
    // [0] instances per class, bars coloured by class
    f.viewport_px(110, 760, 1000, 1540);
    std::vector<double> count(nc, 0.0);
    for (const LabelRow& l : L) count[(int)l.cls] += 1;
    const double top = *std::max_element(count.begin(), count.end()) * 1.05;
    plwind(-0.5 - 0.05 * nc, nc - 0.5 + 0.05 * nc, 0, top);
    for (int c = 0; c < nc; ++c) {
        const cv::Scalar bgr = class_colour(c);
        rect(c - 0.4, 0, c + 0.4, count[c], {(int)bgr[2], (int)bgr[1], (int)bgr[0]});
    }
    const bool named = !names.empty() && names.size() < 30;
    f.font(10);
    colour(kBlack);
    plbox(named ? "bit" : "bint", named ? 1.0 : 0, 0, "bintv", 0, 0);
    if (named)
        for (int c = 0; c < nc && c < (int)names.size(); ++c) {
            double x0, x1, y0, y1;
            plgvpw(&x0, &x1, &y0, &y1);
            plmtex("bv", 0.8, (c - x0) / (x1 - x0), 1.0, names[c].c_str());
        }
    plmtex("l", 4.2, 0.5, 0.5, "instances");
    if (!named) plmtex("b", 3.0, 0.5, 0.5, "classes");
    // [1] the first 1000 boxes, centred, as outlines on a square
    f.viewport_px(860, 1540, 900, 1580);
    plwind(0, 1, 1, 0);
    f.line_width(0.5);
    for (size_t k = 0; k < L.size() && k < 1000; ++k) {
        const cv::Scalar bgr = class_colour((int)L[k].cls);
        colour({(int)bgr[2], (int)bgr[1], (int)bgr[0]});
        const double x0 = 0.5 - L[k].w / 2, x1 = 0.5 + L[k].w / 2, y0 = 0.5 - L[k].h / 2, y1 = 0.5 + L[k].h / 2;
        const double bx[5] = {x0, x1, x1, x0, x0}, by[5] = {y0, y0, y1, y1, y0};
        plline(5, bx, by);
    }
    // [2] x against y, [3] width against height
    for (int p = 0; p < 2; ++p) {
        f.viewport_px(p == 0 ? 110 : 910, p == 0 ? 760 : 1540, 110, 740);
        f.font(10);
        hist2d(v[2 * p], v[2 * p + 1], 50, f);
        colour(kBlack);
        plmtex("b", 3.0, 0.5, 0.5, vn[2 * p]);
        plmtex("l", 5.0, 0.5, 0.5, vn[2 * p + 1]);
    }
    f.save(save_dir + "/labels.jpg");
}

void plot_confusion_matrix(const ConfusionMatrix& cm, const std::vector<std::string>& names, const std::string& save_dir) {
    const int nc = cm.nc(), n = nc + 1;
    // Columns (true classes) normalised; cells under 0.005 are NaN in YOLOv5 (blank, not annotated).
    std::vector<double> a((size_t)n * n);
    double vmax = 0;
    for (int col = 0; col < n; ++col) {
        double s = 0;
        for (int row = 0; row < n; ++row) s += cm.at(row, col);
        for (int row = 0; row < n; ++row) {
            double& v = a[(size_t)row * n + col];
            v = cm.at(row, col) / (s + 1e-9);
            if (v < 0.005) v = NAN;
            else vmax = std::max(vmax, v);
        }
    }
    if (vmax <= 0) vmax = 1;
    const bool labels = !names.empty() && names.size() < 99 && (int)names.size() == nc;
    const bool annot = nc < 30;
    // figsize (12, 9) at dpi 250; a square heatmap, the colour bar to its right.
    Figure f(3000, 2250, 250);
    const double side = 2250 - 200 - 330, x0 = 3000 / 2.0 - side / 2 - 100, y0 = 330;
    f.viewport_px(x0, x0 + side, y0, y0 + side);
    plwind(0, n, n, 0);  // row 0 at the top, as seaborn
    for (int row = 0; row < n; ++row)
        for (int col = 0; col < n; ++col) {
            const double v = a[(size_t)row * n + col];
            if (std::isnan(v)) continue;
            const Rgb c = blues(v / vmax);
            rect(col, row, col + 1, row + 1, c);
            if (annot) {
                const double lum = 0.2126 * c.r / 255 + 0.7152 * c.g / 255 + 0.0722 * c.b / 255;
                colour(lum > 0.408 ? kBlack : kWhite);
                f.font(8);
                plptex(col + 0.5, row + 0.5, 1, 0, 0.5, fmt("%.2f", v).c_str());
            }
        }
    colour(kBlack);
    const double tick_pt = nc < 50 ? 10 : 8 * 0.8;
    f.font(tick_pt);
    const int step = labels ? 1 : std::max(1, n / 20);
    for (int k = 0; k < n; k += step) {
        const std::string t = labels ? (k < nc ? names[k] : "background") : std::to_string(k);
        const double pos = (k + 0.5) / n;
        plmtex(n > 10 ? "bv" : "b", n > 10 ? 0.5 : 1.2, pos, n > 10 ? 1.0 : 0.5, t.c_str());
        plmtex("lv", 0.5, 1 - pos, 1.0, t.c_str());
    }
    f.font(12);
    plmtex("t", 1.0, 0.5, 0.5, "Confusion Matrix");
    f.font(10);
    {  // axis names, away from the tick labels
        size_t longest = 1;
        for (int k = 0; k < n; k += step) longest = std::max(longest, labels ? (k < nc ? names[k].size() : 10) : 3);
        const double off = n > 10 ? 0.6 * longest * tick_pt / 10 + 1.5 : 3.0;
        plmtex("b", off, 0.5, 0.5, "True");
        plmtex("l", 0.6 * longest * tick_pt / 10 + 1.5, 0.5, 0.5, "Predicted");
    }
    // colour bar
    f.viewport_px(x0 + side + 60, x0 + side + 120, y0, y0 + side);
    plwind(0, 1, 0, vmax);
    for (int k = 0; k < 256; ++k) rect(0, vmax * k / 256, 1, vmax * (k + 1) / 256, blues((k + 0.5) / 256));
    colour(kBlack);
    f.font(10);
    plbox("bc", 0, 0, "bcmtv", 0, 0);
    f.save(save_dir + "/confusion_matrix.png");
}

// One of plot_pr_curve / plot_mc_curve: per-class curves (coloured and named when fewer than 21 classes, else
// grey), the mean in thick blue, the legend to the right of the axes; figsize (9, 6) at dpi 250.
static void curve_figure(const std::vector<double>& px, const std::vector<const std::vector<double>*>& curves,
                         const std::vector<std::string>& curve_names, const std::vector<double>& mean, const std::string& mean_label,
                         const std::string& xlabel, const std::string& ylabel, const std::string& title, const std::string& path) {
    Figure f(2250, 1500, 250);
    const bool each = !curves.empty() && curves.size() < 21;
    std::vector<LegendItem> items;
    size_t longest = mean_label.size();
    for (size_t i = 0; each && i < curves.size(); ++i) longest = std::max(longest, curve_names[i].size());
    const double legend_w = 60 + 0.62 * 10 * f.px_per_pt() * longest + 80;
    const double right = 2250 - legend_w - 40;
    f.viewport_px(150, right, 130, 1500 - 90);
    f.font(10);
    axes(0, 1, 0, 1, f);
    for (size_t i = 0; i < curves.size(); ++i) {
        const Rgb c = each ? kTab10[i % 10] : kGrey;
        polyline(px, *curves[i], c, 1, f);
        if (each) items.push_back({curve_names[i], c, 1});
    }
    polyline(px, mean, kBlue, 3, f);
    items.push_back({mean_label, kBlue, 3});
    titles(f, title, xlabel, ylabel);
    legend(items, right + 0.04 * (right - 150), 1500 - 90, f);
    f.save(path);
}

void plot_val_curves(const ApResult& r, const std::vector<std::string>& names, const std::string& save_dir) {
    const int nc = (int)r.classes.size();
    if (nc == 0 || r.px.empty()) return;
    auto name = [&](int i) {
        const int c = r.classes[i];
        return c < (int)names.size() ? names[c] : std::to_string(c);
    };
    const std::vector<double>& px = r.px;
    {  // PR: the classes that had predictions; the mean over them, mAP@0.5 over all classes
        std::vector<const std::vector<double>*> cv;
        std::vector<std::string> cn;
        std::vector<double> mean(px.size(), 0.0);
        double map50 = 0;
        for (int i = 0; i < nc; ++i) {
            map50 += r.ap[i][0] / nc;
            if (r.pr_curve[i].empty()) continue;
            cv.push_back(&r.pr_curve[i]);
            cn.push_back(name(i) + fmt(" %.3f", r.ap[i][0]));
            for (size_t k = 0; k < px.size(); ++k) mean[k] += r.pr_curve[i][k];
        }
        for (double& m : mean) m /= std::max<size_t>(cv.size(), 1);
        curve_figure(px, cv, cn, mean, fmt("all classes %.3f mAP@0.5", map50), "Recall", "Precision", "Precision-Recall Curve",
                     save_dir + "/PR_curve.png");
    }
    const struct {
        const std::vector<std::vector<double>>* y;
        const char *file, *label;
    } mc[3] = {{&r.f1_curve, "F1_curve.png", "F1"}, {&r.p_curve, "P_curve.png", "Precision"}, {&r.r_curve, "R_curve.png", "Recall"}};
    for (const auto& m : mc) {
        std::vector<const std::vector<double>*> cv;
        std::vector<std::string> cn;
        std::vector<double> mean(px.size(), 0.0);
        for (int i = 0; i < nc; ++i) {
            cv.push_back(&(*m.y)[i]);
            cn.push_back(name(i));
            for (size_t k = 0; k < px.size(); ++k) mean[k] += (*m.y)[i][k] / nc;
        }
        const std::vector<double> sm = box_smooth(mean, 0.05);
        const size_t best = (size_t)(std::max_element(sm.begin(), sm.end()) - sm.begin());
        char label[96];
        snprintf(label, sizeof label, "all classes %.2f at %.3f", sm[best], px[best]);
        curve_figure(px, cv, cn, sm, label, "Confidence", m.label, std::string(m.label) + "-Confidence Curve",
                     save_dir + "/" + m.file);
    }
}

}  // namespace y5
