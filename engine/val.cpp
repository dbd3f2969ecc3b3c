#include "engine/val.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "engine/check.h"
#include "engine/plots.h"

namespace y5 {

Tensor batch_images(Ctx& c, const Batch& b) {
    Tensor x = c.act->tensor(Shape{b.n, 3, b.h, b.w});
    float* p = x.ptr<float>();
    const size_t n = b.images.size();
    for (size_t i = 0; i < n; ++i) p[i] = b.images[i] / 255.0f;
    return x;
}

Tensor batch_targets(Ctx& c, const Batch& b) {
    Tensor t = c.act->tensor(Shape{b.num_targets(), 6});
    if (b.num_targets()) std::memcpy(t.data, b.targets.data(), t.bytes());
    return t;
}

// scale_boxes: from the letterboxed batch image back to the original, then clip_boxes.
static void to_original(float* xyxy, const std::array<double, 6>& s) {
    const double gain = s[2], padw = s[4], padh = s[5], h0 = s[0], w0 = s[1];
    xyxy[0] = (float)std::clamp((xyxy[0] - padw) / gain, 0.0, w0);
    xyxy[2] = (float)std::clamp((xyxy[2] - padw) / gain, 0.0, w0);
    xyxy[1] = (float)std::clamp((xyxy[1] - padh) / gain, 0.0, h0);
    xyxy[3] = (float)std::clamp((xyxy[3] - padh) / gain, 0.0, h0);
}

ValResult validate(Model& m, DataLoader& loader, Ctx& c, const LossHyp& hyp, const ValOptions& o, ConfusionMatrix* cm) {
    ValResult R;
    std::vector<std::array<bool, kIouThresholds>> tp;
    std::vector<double> conf;
    std::vector<int> pcls, tcls;
    NmsParams np;
    np.conf_thres = o.conf_thres, np.iou_thres = o.iou_thres, np.multi_label = true, np.agnostic = o.single_cls;
    np.max_det = o.max_det;
    const Tensor anchors = m.params.find("model." + std::to_string(m.detect->index) + ".anchors")->value;
    NoGrad ng(*c.tape);
    loader.start_epoch(0);
    Batch b;
    int batches = 0;
    while (loader.next(b)) {
        c.act->reset();
        Tensor x = batch_images(c, b), t = batch_targets(c, b);
        Model::Output out = m.forward(c, Tape::constant(x), false);
        YoloLoss L = yolo_loss(c, out.maps, t, anchors, hyp);
        R.loss[0] += L.items.lbox, R.loss[1] += L.items.lobj, R.loss[2] += L.items.lcls;
        ++batches;
        const int64_t N = out.decoded.dim(1), no = out.decoded.dim(2);
        const bool plot = !o.plot_dir.empty() && batches <= 3;
        std::vector<std::array<float, 7>> plotted;  // predictions over 0.25, normalised to the batch image
        for (int i = 0; i < b.n; ++i) {
            std::vector<Detection> det = nms_image(out.decoded.ptr<float>() + i * N * no, (int)N, (int)no, np);
            if (plot)
                for (const Detection& d : det)
                    if (d[4] > 0.25f)
                        plotted.push_back({(float)i, d[5], (d[0] + d[2]) / 2 / b.w, (d[1] + d[3]) / 2 / b.h,
                                           (d[2] - d[0]) / b.w, (d[3] - d[1]) / b.h, d[4]});
            std::vector<Label> lab;
            for (int64_t k = 0; k < b.num_targets(); ++k) {
                const float* r = &b.targets[6 * k];
                if ((int)r[0] != i) continue;
                float box[4] = {(r[2] - r[4] / 2) * b.w, (r[3] - r[5] / 2) * b.h, (r[2] + r[4] / 2) * b.w, (r[3] + r[5] / 2) * b.h};
                to_original(box, b.shapes[i]);
                lab.push_back({(int)r[1], box[0], box[1], box[2], box[3]});
                tcls.push_back((int)r[1]);
            }
            R.images++;
            R.instances += (int64_t)lab.size();
            if (det.empty()) {
                if (!lab.empty() && cm) cm->process_batch(nullptr, lab);
                continue;
            }
            if (o.single_cls)
                for (Detection& d : det) d[5] = 0;
            for (Detection& d : det) to_original(d.data(), b.shapes[i]);
            std::vector<std::array<bool, kIouThresholds>> correct(det.size());
            for (auto& x : correct) x.fill(false);
            if (!lab.empty()) {
                correct = match_predictions(det, lab);
                if (cm) cm->process_batch(&det, lab);
            }
            for (size_t k = 0; k < det.size(); ++k) {
                tp.push_back(correct[k]);
                conf.push_back(det[k][4]);
                pcls.push_back((int)det[k][5]);
            }
        }
        if (plot) {
            static const std::vector<std::string> none;
            const std::string base = o.plot_dir + "/val_batch" + std::to_string(batches - 1);
            plot_batch(b, o.names ? *o.names : none, base + "_labels.jpg");
            plot_predictions(b, plotted, o.names ? *o.names : none, base + "_pred.jpg");
        }
    }
    for (double& l : R.loss) l /= std::max(batches, 1);
    bool any = false;
    for (const auto& r : tp) any = any || r[0];
    if (any) {
        R.per_class = ap_per_class(tp, conf, pcls, tcls);
        R.mp = R.per_class.mp, R.mr = R.per_class.mr, R.map50 = R.per_class.map50, R.map = R.per_class.map;
    }
    int maxc = 0;
    for (int cl : tcls) maxc = std::max(maxc, cl + 1);
    R.class_instances.assign(maxc, 0);
    for (int cl : tcls) R.class_instances[cl]++;
    return R;
}

std::string val_table(const ValResult& r, const std::vector<std::string>& names, bool per_class) {
    std::string s;
    char line[256];
    snprintf(line, sizeof line, "%22s%11s%11s%11s%11s%11s%11s\n", "Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95");
    s += line;
    snprintf(line, sizeof line, "%22s%11d%11lld%11.3g%11.3g%11.3g%11.3g\n", "all", r.images, (long long)r.instances, r.mp,
             r.mr, r.map50, r.map);
    s += line;
    for (size_t i = 0; per_class && i < r.per_class.classes.size(); ++i) {
        const int c = r.per_class.classes[i];
        double ap = 0;
        for (int t = 0; t < kIouThresholds; ++t) ap += r.per_class.ap[i][t] / kIouThresholds;
        snprintf(line, sizeof line, "%22s%11d%11lld%11.3g%11.3g%11.3g%11.3g\n",
                 c < (int)names.size() ? names[c].c_str() : std::to_string(c).c_str(), r.images,
                 (long long)(c < (int)r.class_instances.size() ? r.class_instances[c] : 0), r.per_class.p[i], r.per_class.r[i],
                 r.per_class.ap[i][0], ap);
        s += line;
    }
    return s;
}

}  // namespace y5

