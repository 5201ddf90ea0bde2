"""Scoring: faces/s of batched scoring against one face at a time, same model, same crops.

Usage::

    python benchmarks/scoring.py [--faces 512] [--batch-sizes 1 8 16 32 128 256] [--threads N]
                                 [--devices cpu cuda]

The crops are the demo world's aligned labeled faces (112×112 JPEGs, decoded once; repeated to
``--faces``). Each batch size scores all of them through ``omnifer.curation.scoring.Scorer.score``
with ``batch_size=B`` (flip TTA, embeddings, similarity: exactly what the ingest does); batch size
1 is the one-face-at-a-time baseline, called once per face as a naive loop would.

One table per device: the CPU always, and a CUDA GPU when torch sees one (``--devices``); and
per device, the ingest's batch size there with the model's batch norms folded into its
convolutions (what ``Scorer`` runs: ``omnifer.models.inference.fold_batch_norm``) against the
model as trained.
Target (issue 22): on a **GPU worker** the ingest's batch size there (``score_batch_size``
unset: ``GPU_BATCH_SIZE``, 128) ≥ 3× batch size 1, where a call's fixed cost (kernel
launches, transfers) is what batching saves. On a CPU, scoring is bound by arithmetic
(measured: one face at a time already keeps a core busy) and large batches fall out of cache,
so the CPU table has no target: it shows what batching gives there (the ingest's CPU default
is ``CPU_BATCH_SIZE``, 16).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from _common import DEFAULT_WORK, ensure_model, ensure_world, machine, print_table

from omnifer.curation.scoring import Scorer
from omnifer.models.checkpoints import load_checkpoint


def load_crops(world: Path, n: int) -> np.ndarray:
    files = sorted((world / "labeled" / "Image" / "aligned").glob("*.jpg"))
    crops = [cv2.imread(str(f)) for f in files]
    crops = [c for c in crops if c is not None]
    reps = -(-n // len(crops))
    return np.stack((crops * reps)[:n])


def faces_per_s(scorer: Scorer, crops: np.ndarray, one_at_a_time: bool, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        if one_at_a_time:
            for i in range(len(crops)):
                scorer.score(crops[i : i + 1])
        else:
            scorer.score(crops)
        best = min(best, time.perf_counter() - start)
    return len(crops) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=int, default=512)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32, 128, 256])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N passes")
    ap.add_argument("--devices", nargs="+", default=None,
                    help="default: cpu, and cuda when torch sees a GPU")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}", flush=True)

    world = ensure_world(work, 2000)
    crops = load_crops(world, args.faces)
    loaded = load_checkpoint(ensure_model(work))
    for device in devices:
        rows, base = [], None
        for b in args.batch_sizes:
            scorer = Scorer(loaded, batch_size=b, device=device)
            scorer.score(crops[: min(b, len(crops))])  # warm-up
            rate = faces_per_s(scorer, crops, one_at_a_time=b == 1, repeat=args.repeat)
            base = base or (rate if b == 1 else None)
            rows.append([b, rate, rate / base if base else "-", 1000 / rate])
            print(f"{device} batch {b}: {rate:.0f} faces/s", flush=True)
        target = ("target: batch 128 >= 3x batch 1" if device != "cpu"
                  else "no target on CPU: compute-bound")
        print_table(f"Scoring {len(crops)} crops on {device}, model {loaded.card.arch} at "
                    f"{loaded.card.input_size}px, flip TTA ({target})",
                    ["batch", "faces/s", "x one-at-a-time", "ms/face"], rows)
        # Batch norm folded into the convolutions (what Scorer does) against the model as
        # trained, at the ingest's batch size on this device, interleaved pass by pass.
        folded = Scorer(loaded, batch_size=None, device=device)
        as_trained = Scorer(loaded, batch_size=None, device=device)
        as_trained.model = loaded.model.to(as_trained.device).eval()
        rates: dict[str, float] = {"folded": 0.0, "as trained": 0.0}
        for scorer in (folded, as_trained):
            scorer.score(crops[:128])
        for _ in range(args.repeat):
            for name, scorer in (("folded", folded), ("as trained", as_trained)):
                rates[name] = max(rates[name], faces_per_s(scorer, crops, False, 1))
        print_table(f"Batch norm folded into the convolutions, batch {folded.batch_size} on "
                    f"{device}",
                    ["model", "faces/s", "x as trained"],
                    [[name, rate, rate / rates["as trained"]] for name, rate in rates.items()])
    if "cuda" not in devices:
        print("\nNo GPU here (torch.cuda.is_available() is False): the GPU target (batch 128 "
              ">= 3x one at a time) is measured on a `gpu` pool worker.")


if __name__ == "__main__":
    main()
