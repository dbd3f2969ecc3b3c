"""The peer of bench_step: the same yolov5n training step in Ultralytics YOLOv5 v7.0 (PyPI yolov5 7.0.13 + torch),
so y5's images/s and memory sit beside PyTorch's on the same machine. Not part of y5 or its tests; run it in a
venv with `pip install yolov5==7.0.13 torch`.

  python bench/peer_yolov5_step.py --device cpu --imgsz 640 --batch 4 --steps 3 --threads 2
  python bench/peer_yolov5_step.py --device 0 --batch 16 32 64 --amp both --channels-last both

Step (as bench_step's): upload, forward, loss (ComputeLoss), backward, clip at 10, SGD (nesterov, 3 groups as
train.py builds them), EMA; random pixels and 8 random boxes per image with 80 classes, drawn once. Prints
ms/step, images/s and the peak memory: peak RSS on the CPU (ru_maxrss, the whole process), and
torch.cuda.max_memory_allocated / max_memory_reserved on a GPU.
--amp (default: both on a GPU, off on the CPU) runs train.py's mixed precision: the forward and the loss under
torch.cuda.amp.autocast(amp), GradScaler(enabled=amp): scaler.scale(loss).backward(), scaler.unscale_(optimizer),
clip, scaler.step(optimizer), scaler.update(). --channels-last also converts the model and each batch to
torch.channels_last (train.py does not; cuDNN's tensor-core kernels prefer NHWC, so it shows what that layout buys).
"""

import argparse
import resource
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools' / 'golden'))
from common import shim_pkg_resources  # noqa: E402

shim_pkg_resources()

import torch  # noqa: E402
import yaml  # noqa: E402
import yolov5.models.yolo as yolo  # noqa: E402
from yolov5.utils.loss import ComputeLoss  # noqa: E402
from yolov5.utils.torch_utils import ModelEMA  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu', help='cpu or a CUDA index')
    ap.add_argument('--imgsz', type=int, default=640)
    ap.add_argument('--batch', type=int, nargs='+', default=[4])
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    ap.add_argument('--amp', choices=['off', 'on', 'both'], default=None, help='mixed precision (default: both on a '
                    'GPU, off on the CPU)')
    ap.add_argument('--channels-last', choices=['off', 'on', 'both'], default='off', help='NHWC model and batches')
    o = ap.parse_args()
    if o.threads:
        torch.set_num_threads(o.threads)
    dev = torch.device('cpu' if o.device == 'cpu' else f'cuda:{o.device}')
    torch.manual_seed(0)
    cuda = dev.type == 'cuda'
    amps = {'off': [False], 'on': [True], 'both': [False, True]}[o.amp or ('both' if cuda else 'off')]
    layouts = {'off': [False], 'on': [True], 'both': [False, True]}[o.channels_last]
    model = yolo.Model(str(REPO / 'config' / 'models' / 'yolov5n.yaml'), ch=3, nc=80).to(dev)
    hyp = yaml.safe_load(open(REPO / 'config' / 'hyps' / 'hyp.scratch-low.yaml'))
    model.hyp = hyp
    model.train()
    loss_fn = ComputeLoss(model)
    g = [], [], []  # train.py's smart_optimizer groups: BN weights (no decay), weights (decay), biases
    bn = tuple(v for k, v in torch.nn.__dict__.items() if 'Norm' in k)
    for m in model.modules():
        for p_name, p in m.named_parameters(recurse=False):
            if p_name == 'bias':
                g[2].append(p)
            elif p_name == 'weight' and isinstance(m, bn):
                g[1].append(p)
            else:
                g[0].append(p)
    opt = torch.optim.SGD(g[2], lr=0.01, momentum=0.937, nesterov=True)
    opt.add_param_group({'params': g[0], 'weight_decay': 5e-4})
    opt.add_param_group({'params': g[1], 'weight_decay': 0.0})
    ema = ModelEMA(model)
    print(f'YOLOv5 v7.0 (PyPI yolov5, torch {torch.__version__}), yolov5n, device {dev}, '
          f'{torch.get_num_threads()} CPU threads')
    print(f"\n{'batch':>6} {'prec':>5} {'NHWC':>5} {'steps':>6} {'ms/step':>10} {'images/s':>10} {'peak RSS':>10} "
          f"{'cuda alloc':>11} {'cuda rsvd':>10}")
    runs = [(bs, amp, cl) for bs in o.batch for cl in layouts for amp in amps]
    for bs, amp, cl in runs:
        fmt = torch.channels_last if cl else torch.contiguous_format
        model.to(memory_format=fmt)
        ema.ema.to(memory_format=fmt)
        scaler = torch.cuda.amp.GradScaler(enabled=amp) if cuda else torch.amp.GradScaler('cpu', enabled=amp)
        gen = torch.Generator().manual_seed(1)
        imgs = torch.randint(0, 256, (bs, 3, o.imgsz, o.imgsz), dtype=torch.uint8, generator=gen)
        t = torch.zeros(bs * 8, 6)
        t[:, 0] = torch.arange(bs).repeat_interleave(8)
        t[:, 1] = torch.randint(0, 80, (bs * 8,), generator=gen).float()
        t[:, 2:4] = torch.rand(bs * 8, 2, generator=gen) * 0.8 + 0.1
        t[:, 4:6] = torch.rand(bs * 8, 2, generator=gen) * 0.3 + 0.02
        if dev.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(dev)

        def step():
            x = (imgs.to(dev, non_blocking=True).float() / 255).contiguous(memory_format=fmt)
            with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                pred = model(x)
                loss, _ = loss_fn(pred, t.to(dev))
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            ema.update(model)

        for _ in range(o.warmup):
            step()
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(o.steps):
            step()
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)
        ms = (time.perf_counter() - t0) * 1000 / o.steps
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB → GB
        ca = torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == 'cuda' else 0.0
        cr = torch.cuda.max_memory_reserved(dev) / 1e9 if dev.type == 'cuda' else 0.0
        print(f"{bs:>6} {'amp' if amp else 'f32':>5} {'yes' if cl else 'no':>5} {o.steps:>6} {ms:>10.1f} "
              f"{bs * 1000 / ms:>10.1f} {rss:>8.2f}GB {ca:>9.2f}GB {cr:>8.2f}GB")


if __name__ == '__main__':
    main()
