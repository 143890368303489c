"""Detector recipe experiments on a prepared cache (plain torch, no Ray): train on the site-A
detector train split, report top-1 localization on every held-out site-A image (val + test) and
on the box-labelled eval rows of other sites.

    .venv/bin/python scripts/detector_experiments.py --prepared runs/dev/prepared --size 192 --epochs 30
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import pyarrow.compute as pc
import torch

from grounding.detection import detector as det
from grounding.detection import engine as eng
from grounding.data.prepared import read_prepared


def resized(samples: list[eng.Sample], size: int) -> list[eng.Sample]:
    out = []
    for s in samples:
        src = s.image.shape[-1]
        if src == size:
            out.append(s)
            continue
        img = torch.nn.functional.interpolate(s.image[None].float(), size=(size, size), mode="area")[0]
        out.append(eng.Sample(s.image_id, img.round().clamp(0, 255).to(torch.uint8), s.boxes * (size / src)))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prepared", default="runs/dev/prepared")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--fpn", type=int, default=128)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--opt", default="adamw")
    p.add_argument("--warmup", type=float, default=0.0, help="warmup epochs (cosine schedule when >= 0 and --cosine)")
    p.add_argument("--cosine", action="store_true")
    p.add_argument("--anchor-base", type=float, default=32.0)
    p.add_argument("--ratios", default="0.5,1,2")
    p.add_argument("--gn", action="store_true")
    p.add_argument("--box-loss", default="l1")
    p.add_argument("--hflip", action="store_true")
    p.add_argument("--photo", type=float, default=0.0)
    p.add_argument("--zoom", type=float, default=0.0)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-only", type=int, default=0, help="just time this many steps")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    cols = eng.TRAIN_COLUMNS + ["site"]
    table = read_prepared(a.prepared, columns=cols)
    site_a = eng.detector_rows(table)
    train = resized(eng.samples_from_table(site_a.filter(pc.equal(site_a["split"], "train"))), a.size)
    held = resized(eng.samples_from_table(site_a.filter(pc.not_equal(site_a["split"], "train"))), a.size)
    other = table.filter(pc.and_(pc.equal(table["purpose"], "eval"), pc.equal(table["has_boxes"], True)))
    other = resized(eng.samples_from_table(other), a.size)
    model = det.build_retinanet(a.backbone, a.fpn, a.size, 5, 0.05, 0.5, 10, anchor_base=a.anchor_base,
                                aspect_ratios=tuple(float(r) for r in a.ratios.split(",")), head_groupnorm=a.gn, box_loss=a.box_loss)
    opt = eng.make_optimizer(model.parameters(), a.opt, a.lr, a.wd)
    steps_per_epoch = -(-len(train) // a.batch)
    sched = eng.make_scheduler(opt, a.epochs * steps_per_epoch, int(a.warmup * steps_per_epoch)) if a.cosine else None
    gen = torch.Generator().manual_seed(a.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    if a.time_only:
        batches = eng.rank_batches(train, 0, 1, a.batch, a.seed, 0)[: a.time_only]
        st = eng.train_one_epoch(model, opt, batches, "cpu", 10.0, sched, a.hflip, a.photo, gen, a.zoom)
        print(json.dumps({"size": a.size, "fpn": a.fpn, "gn": a.gn, "img_per_s": st["images"] / st["seconds"],
                          "cpu_s": time.process_time() - c0}))
        return
    for epoch in range(a.epochs):
        st = eng.train_one_epoch(model, opt, eng.rank_batches(train, 0, 1, a.batch, a.seed, epoch), "cpu", 10.0,
                                 sched, a.hflip, a.photo, gen, a.zoom)
        line = f"ep {epoch + 1} loss {st['loss']:.3f} cls {st['loss_classification']:.3f} box {st['loss_box']:.3f}"
        if a.eval_every and ((epoch + 1) % a.eval_every == 0) and epoch + 1 < a.epochs:
            h = eng.evaluate(model, held)
            line += f" | held25 {h['hit_iou25']:.2f} held50 {h['hit_iou50']:.2f}"
        print(line, f"{time.perf_counter() - t0:.0f}s", flush=True)
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    res = {"args": vars(a), "train_wall_s": round(train_s, 1), "train_cpu_s": round(cpu_s, 1)}
    for name, samples in (("held_A", held), ("train_A", [s for s in train if len(s.boxes)][:40]), ("eval_B", other)):
        r = eng.evaluate(model, samples)
        res[name] = {k: round(float(v), 3) for k, v in r.items()}
    res["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps(res))


if __name__ == "__main__":
    main()
