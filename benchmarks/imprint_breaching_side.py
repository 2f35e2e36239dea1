"""breaching's imprint attack ("Robbing the Fed", Fowl et al., ICLR 2022) on images we give it.

The breaching half of a side-by-side comparison with gradleak's own imprint attack. It runs in
breaching's own virtual environment and never imports gradleak (gradleak never imports it
either): only the standard library, torch, numpy, safetensors and ``breaching`` (PyPI 0.1.2,
https://github.com/JonasGeiping/breaching; torchvision is imported by breaching, through the
workaround of ``/work/shared/bench/breaching.md``):

    /work/venv-breaching/bin/python benchmarks/imprint_breaching_side.py CASE_DIR
    /work/venv-breaching/bin/python benchmarks/imprint_breaching_side.py --probe

``--probe`` prints JSON with the versions (exit 0), or with the reason breaching cannot run
(exit 1). ``CASE_DIR`` holds

- ``settings.json``: ``bins``, ``mean`` and ``std`` (3 floats each), ``seed``, ``threads``,
  ``num_classes``, ``clients``;
- ``images.safetensors``: ``images`` (B, 3, 32, 32) float32 in [0, 1] and ``labels`` (B,) int64.

What it does, with breaching's own objects wherever breaching has them:

1. ``torch.set_num_threads(threads)``; config ``breaching.get_config`` with ``case=1_single_image_
   small`` (CIFAR-10 shapes), ``case/server=malicious-model-rtf`` (breaching's "Robbing the Fed"
   server) and ``attack=imprint``, overriding only ``num_bins`` (= ``bins``), the classes and the
   data normalization (= ``mean``/``std``); every other server and attack value is breaching's
   default (``ImprintBlock``, linfunc ``fourier``, mode 32, gain 1.0, connection ``linear``,
   block before the first layer; ``breach_reduction: weight``, ``breach_padding: True``);
2. ``torch.manual_seed(seed)``, then the downstream classifier ``Sequential(Flatten(),
   Linear(3*32*32, num_classes))`` in breaching's ``VisionContainer`` (what breaching's own vision
   models are wrapped in; its users call ``model(inputs=..., labels=...)``);
3. ``breaching.cases.servers.construct_server`` builds the ``MaliciousModelServer`` and its
   ``vet_model`` inserts the ``ImprintBlock`` in front of the ``Flatten`` (the first candidate
   layer): ``model.0`` becomes ``Sequential(ImprintBlock, Flatten)``. The block is created after the
   classifier, from the same seeded generator (its ``linear0``/``linear2`` default inits draw
   random numbers; ``linear0`` is then overwritten deterministically, ``linear2.weight`` too, while
   ``linear2.bias`` keeps its random init shifted by minus the mean of the bin thresholds). The
   server's ``secrets["ImprintBlock"]`` (``weight_idx``, ``bias_idx``, ``shape``, ``structure``) are
   the ``server_secrets`` of the attack, and ``distribute_payload`` its ``server_payload``;
4. the gradient: breaching's ``UserSingleStep.compute_local_updates(payload, custom_data=...)`` on
   the normalized images ``(x - mean) / std`` with ``CrossEntropyLoss`` (mean over the batch; the
   model is in eval mode, as the server sends public buffers). With ``clients`` > 1 the batch is
   split into ``clients`` equal consecutive parts, one user each, and their gradients are averaged
   with equal weights (secure aggregation; breaching's own ``MultiUserAggregate`` is not used, as
   its running update ``agg += (g - agg) / n`` does not give the mean for n > 1);
5. ``breaching.attacks.prepare_attack`` (an ``ImprintAttacker``) and ``attacker.reconstruct(
   [payload], [shared_data], server_secrets, dryrun=False)`` with ``num_data_points`` = B and the
   (sorted) labels in the metadata. No report and no metric is computed (breaching's reports build
   LPIPS, which downloads weights);
6. writes ``CASE_DIR/breaching_imprint/reconstructions.safetensors`` (``images``: (N, 3, 32, 32)
   float32 pixels in [0, 1], breaching's normalization undone, clamped; N = B with breaching's
   padding/reduction) and ``CASE_DIR/breaching_imprint/result.json`` (seconds of the attack and of
   the gradient computation, the config used, the hits breaching reported, versions, threads, the
   model's parameter order and shapes and the block's bin thresholds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

# The torchvision workaround and the versions, shared with breaching's other side script (this
# folder is on sys.path when the script runs).
from breaching_side import import_breaching, versions
from safetensors.torch import load_file, save_file

FORMAT = "imprint_breaching_side/1"
OUT_DIR = "breaching_imprint"
IMAGE_SHAPE = (3, 32, 32)
ATTACK_LOGGER = "breaching.attacks.analytic_attack"


def build_config(breaching, settings: dict):
    """breaching's config for its "Robbing the Fed" server and imprint attack, defaults except for
    the number of bins, the classes and the data normalization."""
    overrides = [
        "case=1_single_image_small",
        "case/server=malicious-model-rtf",
        "attack=imprint",
        f"case.server.model_modification.num_bins={int(settings['bins'])}",
        f"case.data.classes={int(settings['num_classes'])}",
    ]
    with contextlib.redirect_stdout(sys.stderr):  # get_config prints the case
        cfg = breaching.get_config(overrides=overrides)
    cfg.case.data.mean = [float(v) for v in settings["mean"]]
    cfg.case.data.std = [float(v) for v in settings["std"]]
    if tuple(cfg.case.data.shape) != IMAGE_SHAPE:
        raise ValueError(f"breaching's data shape {list(cfg.case.data.shape)} is not {IMAGE_SHAPE}")
    return cfg, overrides


def build_malicious_model(breaching, cfg, settings: dict):
    """The seeded downstream classifier, made malicious by breaching's ``MaliciousModelServer``."""
    from breaching.cases.models.model_preparation import VisionContainer

    torch.manual_seed(int(settings["seed"]))
    classifier = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(int(np.prod(IMAGE_SHAPE)), int(settings["num_classes"]))
    )
    model = VisionContainer(classifier)
    model.name = "imprint-downstream-linear"  # breaching's servers print model.name
    loss_fn = torch.nn.CrossEntropyLoss()
    setup = dict(device=torch.device("cpu"), dtype=torch.float)
    server = breaching.cases.servers.construct_server(model, loss_fn, cfg.case, setup)
    if type(server).__name__ != "MaliciousModelServer":
        raise ValueError(f"breaching built a {type(server).__name__}, not a MaliciousModelServer")
    with contextlib.redirect_stdout(sys.stderr):  # vet_model prints the feature shape
        model = server.vet_model(model)
    return server, model, loss_fn, setup


def compute_gradient(breaching, cfg, server, model, loss_fn, setup, images, labels, clients):
    """Each client's update from breaching's ``UserSingleStep`` and their equal-weight mean."""
    from breaching.cases.users import UserSingleStep

    batch = len(labels)
    if clients < 1 or batch % clients:
        raise ValueError(f"{batch} images cannot be split into {clients} equal clients")
    per_client = batch // clients
    cfg.case.user.num_data_points = per_client
    payload = server.distribute_payload()
    updates, client_labels = [], []
    for index in range(clients):
        part = slice(index * per_client, (index + 1) * per_client)
        user = UserSingleStep(model, loss_fn, None, setup, index, cfg.case.user)
        # compute_local_updates(custom_data=...) reads data_key, which only _load_data sets.
        user.data_key = "inputs"
        shared, _ = user.compute_local_updates(
            payload, custom_data=dict(inputs=images[part].clone(), labels=labels[part].clone())
        )
        updates.append([g.detach() for g in shared["gradients"]])
        client_labels.append(labels[part])
    gradients = [torch.stack(parts).mean(dim=0) for parts in zip(*updates, strict=True)]
    shared_data = dict(
        gradients=gradients,
        buffers=None,
        metadata=dict(
            num_data_points=batch,
            labels=torch.cat(client_labels).sort()[0],
            local_hyperparams=None,
        ),
    )
    return payload, shared_data, user.model.training


class _HitCounter(logging.Handler):
    """Catches ``ImprintAttacker.reduce_hits``'s "Initially produced N hits." log line."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.hits: int | None = None
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        found = re.search(r"Initially produced (\d+) hits", message)
        if found:
            self.hits = int(found.group(1))


@contextlib.contextmanager
def counting_hits():
    logger = logging.getLogger(ATTACK_LOGGER)
    counter = _HitCounter()
    saved = logger.level, logger.propagate
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.level, logger.propagate = saved


def _container(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def run(case_dir: Path) -> dict:
    settings = json.loads((case_dir / "settings.json").read_text())
    threads = int(settings["threads"])
    clients = int(settings.get("clients", 1))
    torch.set_num_threads(threads)
    breaching = import_breaching()
    cfg, overrides = build_config(breaching, settings)

    data = load_file(str(case_dir / "images.safetensors"))
    pixels = data["images"].to(torch.float32)
    labels = data["labels"].long()
    if tuple(pixels.shape[1:]) != IMAGE_SHAPE or len(pixels) != len(labels):
        raise ValueError(f"images {list(pixels.shape)} / labels {list(labels.shape)} do not fit")
    dm = torch.as_tensor(cfg.case.data.mean, dtype=torch.float)[None, :, None, None]
    ds = torch.as_tensor(cfg.case.data.std, dtype=torch.float)[None, :, None, None]
    inputs = (pixels - dm) / ds  # breaching's data pipeline: ToTensor, then Normalize

    server, model, loss_fn, setup = build_malicious_model(breaching, cfg, settings)
    secrets = server.secrets
    block = next(m for m in model.modules() if type(m).__name__ == "ImprintBlock")

    start = time.perf_counter()
    payload, shared_data, user_training = compute_gradient(
        breaching, cfg, server, model, loss_fn, setup, inputs, labels, clients
    )
    gradient_seconds = time.perf_counter() - start

    attacker = breaching.attacks.prepare_attack(model, loss_fn, cfg.attack, setup)
    with counting_hits() as counter:
        start = time.perf_counter()
        reconstruction, _stats = attacker.reconstruct(
            [payload], [shared_data], secrets, dryrun=False
        )
        attack_seconds = time.perf_counter() - start
    output = (reconstruction["data"].detach().float() * ds + dm).clamp(0, 1).contiguous()

    out_dir = case_dir / OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({"images": output}, str(out_dir / "reconstructions.safetensors"))
    modification = _container(cfg.case.server.model_modification)
    result = {
        "format": FORMAT,
        "versions": versions(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "settings": settings,
        "overrides": overrides,
        "config": {
            "block": modification["type"],
            "linfunc": modification["linfunc"],
            "mode": modification["mode"],
            "gain": modification["gain"],
            "connection": modification["connection"],
            "bins": modification["num_bins"],
            "position": modification["position"],
            "model_gain": cfg.case.server.model_gain,
            "normalize_rounds": cfg.case.server.normalize_rounds,
            "provide_public_buffers": cfg.case.server.provide_public_buffers,
            "breach_reduction": cfg.attack.breach_reduction,
            "breach_padding": cfg.attack.breach_padding,
            "sort_by_bias": cfg.attack.sort_by_bias,
            "attack_dtype": cfg.attack.impl.dtype,
        },
        "server_config": _container(cfg.case.server),
        "attack_config": _container(cfg.attack),
        "data_normalization": {"mean": list(cfg.case.data.mean), "std": list(cfg.case.data.std)},
        "server_secrets": {
            key: (list(value) if isinstance(value, tuple | torch.Size) else value)
            for key, value in secrets["ImprintBlock"].items()
        },
        "parameters": [[name, list(p.shape)] for name, p in model.named_parameters()],
        "bin_thresholds": [float(b) for b in block.bins],
        "user_model_mode": "train" if user_training else "eval",
        "batch_size": len(labels),
        "clients": clients,
        "hits": counter.hits,
        "attack_log": counter.messages,
        "reconstructions": len(output),
        "gradient_seconds": gradient_seconds,
        "attack_seconds": attack_seconds,
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def probe() -> int:
    """Versions as JSON (exit 0), or why breaching cannot run (exit 1)."""
    try:
        breaching = import_breaching()
        cfg, _ = build_config(
            breaching,
            {"bins": 128, "num_classes": 10, "mean": [0.0] * 3, "std": [1.0] * 3},
        )
        if cfg.attack.attack_type != "imprint-readout":
            raise ValueError(f"attack=imprint gives attack_type {cfg.attack.attack_type!r}")
    except Exception as err:  # report any failure, not only ImportError
        print(json.dumps({"ok": False, "error": f"{type(err).__name__}: {err}", **versions()}))
        return 1
    print(json.dumps({"ok": True, **versions()}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case_dir", type=Path, nargs="?")
    parser.add_argument("--probe", action="store_true", help="print versions as JSON and exit")
    args = parser.parse_args()
    if args.probe:
        return probe()
    if args.case_dir is None:
        parser.error("CASE_DIR is required unless --probe")
    try:
        result = run(args.case_dir)
    except Exception:
        traceback.print_exc()
        return 1
    print(
        f"breaching imprint: {result['batch_size']} images, {result['clients']} client(s), "
        f"{result['config']['bins']} bins, {result['hits']} hits, {result['reconstructions']} "
        f"reconstructions; gradient {result['gradient_seconds']:.3f} s, attack "
        f"{result['attack_seconds']:.3f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
