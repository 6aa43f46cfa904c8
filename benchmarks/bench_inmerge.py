"""InMerge's cost per training step against the same step without it, measured in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_inmerge.py [--rounds 10] [--steps 5]

Model and batch of the chapter's ``cpu`` profile (smallcnn, batch 128, 28 px, AdamW, L_s 4,
alpha 0.8, p 0.3, tau 0.3). Each round times blocks of steps in the order plain, merging,
merging, plain, so load drifts on a shared machine hit both alike; the overhead is the median over
rounds of each round's ratio. Target: overhead <= 3%.

Beside it, one merge pass timed alone, vectorised (:func:`medsoup.merging.inmerge.merge_layers`) and
as the per-kernel Python loop with ``.item()`` per pair of the paper's public code, on the cpu
model and on the paper's VGG19 (L_s 10: 6 layers of 512 kernels).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from medsoup.chapters.inmerge import INMERGE
from medsoup.core.models import create_model
from medsoup.merging.inmerge import forward_conv_layers, merge_layers
from medsoup.runs.provenance import code_version


def loop_merge(layers, first_layer, alpha, p, tau, generator):
    """The per-kernel formulation: a Python loop over kernels, ``.item()`` per pair (reference only)."""
    with torch.no_grad():
        for _, conv in layers[first_layer:]:
            weight = conv.weight
            original = weight.clone()
            n = weight.shape[0]
            for i in range(n):
                if torch.rand(1, generator=generator).item() < p:
                    j = (i + int(torch.randint(1, n, (1,), generator=generator).item())) % n
                    sim = F.cosine_similarity(original[i].flatten(), original[j].flatten(), dim=0).item()
                    if sim > tau:
                        weight[i] = alpha * original[i] + (1 - alpha) * original[j]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="training steps per block")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    s = INMERGE["cpu"]
    torch.manual_seed(0)
    model = create_model(s["model"], 2, 3, s["size"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    images = torch.randn(s["batch_size"], 3, s["size"], s["size"])
    targets = torch.randint(0, 2, (s["batch_size"],))
    layers = forward_conv_layers(model, images[:1])
    generator = torch.Generator().manual_seed(0)
    merge = dict(first_layer=s["first_layer"], alpha=s["alpha"], p=s["p"], tau=s["tau"], generator=generator)

    def step(with_merge: bool) -> None:
        loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if with_merge:
            merge_layers(layers, **merge)

    def block(fn, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n

    model.train()
    for _ in range(3):  # warm-up
        step(True)
    plain, merged, ratios, vector, loop = [], [], [], [], []
    for _ in range(args.rounds):
        a1 = block(lambda: step(False), args.steps)
        b1 = block(lambda: step(True), args.steps)
        b2 = block(lambda: step(True), args.steps)
        a2 = block(lambda: step(False), args.steps)
        plain.append((a1 + a2) / 2)
        merged.append((b1 + b2) / 2)
        ratios.append((b1 + b2) / (a1 + a2))
        vector.append(block(lambda: merge_layers(layers, **merge), 20))
        loop.append(block(lambda: loop_merge(layers, **merge), 2))
    t_plain, t_merged = statistics.median(plain), statistics.median(merged)
    t_vector, t_loop = statistics.median(vector), statistics.median(loop)
    quartiles = statistics.quantiles(ratios, n=4)
    n_kernels = sum(conv.weight.shape[0] for _, conv in layers[s["first_layer"]:])
    print(f"bench_inmerge  code {code_version()}  torch {torch.__version__}  {platform.processor() or platform.machine()}"
          f"  threads {args.threads}")
    print(f"model {s['model']}, batch {s['batch_size']} x 3 x {s['size']} x {s['size']}, L_s {s['first_layer']} "
          f"({len(layers) - s['first_layer']} of {len(layers)} conv layers, {n_kernels} kernels merged per step at most)")
    print(f"rounds {args.rounds} x {args.steps} steps per block; medians over rounds")
    print(f"training step without InMerge : {t_plain * 1e3:9.2f} ms")
    print(f"training step with InMerge    : {t_merged * 1e3:9.2f} ms")
    print(f"overhead, median of per-round ratios - 1 : {100 * (statistics.median(ratios) - 1):+7.2f} %   "
          f"(quartiles {100 * (quartiles[0] - 1):+.2f} %, {100 * (quartiles[2] - 1):+.2f} %; target <= 3 %)")
    print(f"merge pass alone, vectorised  : {t_vector * 1e3:9.3f} ms  ({100 * t_vector / t_plain:.2f} % of a plain step)")
    print(f"merge pass alone, per-kernel loop with .item(): {t_loop * 1e3:9.3f} ms  "
          f"({t_loop / t_vector:.1f}x the vectorised pass, {100 * t_loop / t_plain:.1f} % of a plain step)")
    vgg = create_model("vgg19", 2, 3, 64)
    vgg_layers = forward_conv_layers(vgg, torch.randn(1, 3, 64, 64))
    vgg_merge = dict(merge, first_layer=10)
    t_vgg_vector = statistics.median(block(lambda: merge_layers(vgg_layers, **vgg_merge), 5) for _ in range(3))
    t_vgg_loop = statistics.median(block(lambda: loop_merge(vgg_layers, **vgg_merge), 1) for _ in range(3))
    print(f"VGG19 (L_s 10, {len(vgg_layers) - 10} layers, "
          f"{sum(c.weight.shape[0] for _, c in vgg_layers[10:])} kernels), merge pass alone: vectorised "
          f"{t_vgg_vector * 1e3:.2f} ms, per-kernel loop {t_vgg_loop * 1e3:.2f} ms ({t_vgg_loop / t_vgg_vector:.1f}x)")


if __name__ == "__main__":
    main()
