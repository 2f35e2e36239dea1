"""Benchmark (optional, not in CI): trained networks, breaching's full budget against gradleak.

The realistic case of gradient inversion: a *trained* network (He et al.'s CIFAR ResNet-20,
91.8 % top-1, the shared pretrained weights; BatchNorm in eval mode, the server sends its
buffers), held-out CIFAR-10 test images (JPEG copies, within-class index >= 500; everything
below 500 is the attacker's auxiliary data), labels known.

Two phases, both resumable (a case or configuration that is done is skipped on a rerun):

``reference``
    breaching 0.1.2's Inverting Gradients at its default budget, 24,000 signed-Adam steps, on
    every case, run by ``breaching_side.py`` in breaching's own environment on the same weights
    (its logits and gradient on the true images are checked against gradleak's). Each case's
    trajectory (best-so-far PSNR every ``--snapshot-every`` steps, wall seconds) is kept in
    ``OUT/runs/realistic/<case>/breaching/``. Several processes may run disjoint ``--cases``.

``compare``
    gradleak's configurations on the same observations, then the headline figures
    (``OUT/realistic.json`` and ``OUT/realistic.md``)::

        python benchmarks/realistic.py reference --cases r20-1a,r20-1b,r20-4a --threads 1
        python benchmarks/realistic.py reference --cases r20-1c,r20-1d,r20-4b --threads 1
        python benchmarks/realistic.py compare --threads 1

Cases are ``r20-<B><letter>``: batch size B, the letter seeds the held-out draw.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import vs_breaching as vb  # noqa: E402  (the case files and breaching's side are shared)

from gradleak.data import ImageSet, load_images, shared_data_dir  # noqa: E402
from gradleak.models import build_model  # noqa: E402

DATA = "cifar10/test_jpeg_q75.npz"
HELD_OUT_FROM = 500  # within-class index: below it, the attacker's auxiliary images
MODEL = "resnet20"
CASES = ("r20-1a", "r20-1b", "r20-1c", "r20-1d", "r20-4a", "r20-4b")
BREACHING_ITERATIONS = 24_000  # breaching's attack/invertinggradients.yaml default
BN_MODE = "eval"


def parse_case(case: str) -> tuple[int, int]:
    """``r20-<B><letter>`` -> (batch size, draw index)."""
    prefix, _, rest = case.partition("-")
    if prefix != "r20" or len(rest) < 2 or not rest[:-1].isdigit() or not rest[-1].isalpha():
        raise SystemExit(f"case {case!r}: expected r20-<batch size><letter>, e.g. r20-1a")
    return int(rest[:-1]), ord(rest[-1].lower()) - ord("a")


def held_out_images() -> tuple[ImageSet, torch.Tensor]:
    """The shared JPEG CIFAR-10 test copies and the mask of held-out ones."""
    path = shared_data_dir() / DATA
    within = np.load(path, allow_pickle=False)["within_class_index"]
    return load_images(path), torch.as_tensor(within >= HELD_OUT_FROM)


def case_batch(case: str, images: ImageSet, held_out: torch.Tensor) -> ImageSet:
    """A random batch of held-out images, drawn by the case's letter and batch size."""
    batch_size, draw = parse_case(case)
    pool = torch.nonzero(held_out).flatten()
    generator = torch.Generator().manual_seed(1_000 * batch_size + draw)
    index = pool[torch.randperm(len(pool), generator=generator)[:batch_size]]
    return images.subset(index)


def trained_model():
    return build_model(MODEL, weights="pretrained")


def breaching_tv() -> tuple[float, float]:
    """breaching's TV scale (its default) and gradleak's equivalent weight."""
    scale = vb.BREACHING_TV_DEFAULT
    return scale, scale * vb.tv_factor([], 32)


def reference(args) -> None:
    """breaching's 24,000-step run on each case, skipping those already done."""
    images, held_out = held_out_images()
    scale, tv = breaching_tv()
    probe = vb.probe_breaching(args.breaching_python)
    if not probe["ok"]:
        raise SystemExit(f"breaching cannot be run: {probe['reason']}")
    run = {
        "iterations": args.iterations,
        "seed": 0,
        "snapshot_every": args.snapshot_every,
        "threads": args.threads,
    }
    for case in args.cases:
        case_dir = args.out / "runs" / "realistic" / case
        done = case_dir / "breaching" / "result.json"
        if done.exists():
            settings = json.loads(done.read_text())["settings"]
            if settings["iterations"] == args.iterations:
                print(f"{case}: breaching done already", flush=True)
                continue
        batch = case_batch(case, images, held_out)
        vb.write_case(MODEL, trained_model(), batch, BN_MODE, run, tv, scale, case_dir)
        print(f"{case}: breaching, {args.iterations} steps, images {batch.ids} ...", flush=True)
        load = os.getloadavg()
        raw = vb.run_breaching(args.breaching_python, case_dir, args.threads)
        if "error" in raw:
            print(f"{case}: breaching failed: {raw['error']}", file=sys.stderr, flush=True)
            continue
        raw["load_average_before"] = list(load)
        done.write_text(json.dumps(raw, indent=2) + "\n")
        print(
            f"{case}: breaching {raw['total_seconds']:.0f} s, "
            f"{raw['seconds_per_iteration']:.4f} s/step",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("reference", "compare"))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--iterations", type=int, default=BREACHING_ITERATIONS)
    parser.add_argument("--snapshot-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--breaching-python", default="/work/venv-breaching/bin/python")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for case in args.cases:
        parse_case(case)
    torch.set_num_threads(args.threads)
    if args.phase == "reference":
        reference(args)
    else:
        compare(args)


def compare(args) -> None:
    raise SystemExit("compare: not written yet")


if __name__ == "__main__":
    main()
