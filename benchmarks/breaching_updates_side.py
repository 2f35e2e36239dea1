"""breaching's half of a FedAvg (multi-step local update) comparison: runs in breaching's venv.

breaching (PyPI 0.1.2, https://github.com/JonasGeiping/breaching) attacks a client's local
update with its ``invertinggradients`` attack and its multi-step objective. This script takes a
case written by gradleak's side, replays it with breaching's own FedAvg user as a check, runs
breaching's attack on the observed update and writes the result back into the case folder. It
imports gradleak's model definitions only (``pip install --no-deps -e /work/main`` into
breaching's venv: they need torch and safetensors), plus the helpers of ``breaching_side.py``::

    /work/venv-breaching/bin/python benchmarks/breaching_updates_side.py CASE_DIR
    /work/venv-breaching/bin/python benchmarks/breaching_updates_side.py --probe

The venv is made as in ``vs_breaching.py``'s docstring (``/work/shared/bench/breaching.md``).

What breaching 0.1.2 does with local updates (read from its installed source)
------------------------------------------------------------------------------
The user, ``breaching/cases/users.py: UserMultiStep.compute_local_updates`` (case
``4_fedavg_small_scale``, user config ``local_updates``):

- loads its ``num_data_points`` N examples once, in dataloader order, copies the server's
  parameters (and, when the server sends public buffers, the buffers, then ``eval()``; otherwise
  ``train()``: BatchNorm on batch statistics, running statistics updated on its own copy);
- takes ``num_local_updates`` K steps of plain ``torch.optim.SGD(lr=local_learning_rate)`` (no
  momentum, no weight decay) on the mean loss (``CrossEntropyLoss``) of SEQUENTIAL slices:
  step k uses ``data[s : s + b]`` with ``s`` advanced by ``b = num_data_per_local_update_step``
  and wrapped ``s %= N`` (no shuffling; a slice running past N is cut short, not wrapped);
- shares ``gradients = [p_local_after - p_server]``: the raw PARAMETER DIFFERENCE, the opposite
  sign of a gradient (``-lr * sum of step gradients`` to first order) and NOT divided by the lr
  or by K. gradleak's ``update`` (pseudo-gradient ``w_server - w_after``) is its negative;
- shares buffers only if ``provide_buffers`` (False in its configs), ``num_data_points`` if
  ``provide_num_data_points``, ``labels`` (all N, in data order, unsorted) only if
  ``provide_labels`` (False in ``local_updates``), and, if ``provide_local_hyperparams`` (True
  in ``local_updates``), ``local_hyperparams = {lr, steps, data_per_step, labels}`` where
  ``labels`` is a list of K tensors: each step's TRUE labels, SORTED within the step. So in
  breaching's own FedAvg case the per-step labels reach the server even with ``provide_labels``
  False.

The attack (``OptimizationBasedAttacker`` with the ``invertinggradients`` config: cosine
objective, TV 0.2, signed Adam lr 0.1, step decay, boxed, randn init, 1 restart, 24,000
iterations by default) calls ``objective.initialize(..., local_hyperparams)``; when
``local_hyperparams`` is not None the objective's gradient function is
``GradientLoss._grad_fn_multi_step`` (``breaching/attacks/auxiliaries/objectives.py``): it
makes the model functional, clones the initial parameters, and for K steps takes
``candidate[s : s + data_per_step]`` with the same sequential, wrapping slicing, the labels
``local_hyperparams["labels"][k]`` (the ``labels`` argument, i.e. the shared or recovered
labels, is IGNORED), the mean loss, ``torch.autograd.grad(..., create_graph=True)`` and
``params = params - lr * grad``; it returns ``params_after - params_initial``, the user's sign and
scale, and the cosine objective compares that with the shared difference (cosine is scale-free,
so only the sign convention matters). It assumes the user's data order (sequential slices),
known lr, K and b, and the per-step label multisets; the candidate's order inside a step pairs
with the step's sorted labels. BatchNorm: the attacker's model is in train mode with
``track_running_stats`` off when neither the user nor the server sends buffers, else eval mode.

Label recovery (``_BaseAttacker._recover_label_information``, run by ``prepare_attack`` only
when the shared ``metadata["labels"]`` is None): the config's ``label_strategy`` (default
``bias-corrected`` for every optimization attack: classes with negative last-layer bias
"gradient", then the lowest bias entries after subtracting an estimated per-example impact,
until N labels; others: iDLG, analytic, yin, wainakh-simple, wainakh-whitebox, random) applied
to the shared ``gradients`` AS THEY ARE, with no sign or multi-step handling; the result is
sorted and only used as ``labels`` (which the multi-step objective ignores) and in the returned
``labels``. On a multi-step update the sign is therefore wrong: the present classes have a
POSITIVE bias difference. breaching has no multi-step-specific label recovery.

What this script does for "labels hidden" (``labels_known`` false), ``--hidden-labels``:

- ``recover`` (default, the fair comparison): breaching's own ``_recover_label_information``
  with its default strategy (``bias-corrected``; ``--label-strategy`` picks another) on the
  sign-corrected update (gradleak's pseudo-gradient, a gradient-like quantity; the strategy is
  scale-free), giving N sorted labels; slot i of the candidate gets the i-th one, and step k's
  labels are its slots' labels (sorted, as breaching's user sends them). They go into
  ``local_hyperparams["labels"]`` and ``metadata["labels"]``; the true per-step labels go
  nowhere. The labels breaching's strategy gives on its literal, unsigned-corrected input are
  recorded too (``labels.literal_recovery``).
- ``leak``: exactly breaching's default FedAvg user with ``provide_labels`` False: the true
  per-step sorted labels travel in ``local_hyperparams`` and are what the objective uses.

Case folder (written by gradleak's side)
----------------------------------------
``case.json``::

    model ("lenet" | "convnet"), width (optional, the model's default), num_classes,
    image_shape [C, H, W], mean, std (the model's input normalization), local_steps K,
    local_batch_size b, lr, data_order (K lists of b data indices; breaching's user can only
    take sequential, wrapping slices of one fixed order: the concatenation must be
    perm[i % N] for a permutation perm of range(N), and N % b == 0 when K * b > N; the user's
    data is put in order perm), labels_known, iterations, seed, threads,
    snapshot_every (optional, default 50), bn_mode (optional: "train", the default, sends no
    buffers; "eval" sends the server's buffers, both sides then use them),
    tv_scale (optional; breaching's default 0.2 otherwise)

``case.safetensors``: ``weight/<name>`` the server's ``state_dict`` of the raw network (gradleak's
``model.net``), ``update/<name>`` per parameter the observed pseudo-gradient
``w_server - w_client_after``, ``labels`` (N,) the true labels in the client's data order,
``truth_images`` (N, C, H, W) in [0, 1], for the checks only.

Optional: ``update_f64/<name>``, the same update computed in float64 (makes check 1 exact).

Checks (a CHECK FAILED message and exit code 3 otherwise):

1. breaching's ``UserMultiStep``, fed the normalized truth images and labels in the data order
   (its ``_load_data`` replaced; payload: the server's parameters, buffers only for bn_mode
   "eval"), reproduces ``-update`` to a relative error < 1e-4 (whole vector), replayed at
   float32 and at float64 (against ``update_f64`` when given). float32 rounding can exceed
   that: a fresh ConvNet at lr 0.1 gives ~1e-3 between two valid float32 computations of one
   step (the pseudo-gradient is a difference of nearly equal weights), and diverges (its
   second step sees a loss of 93, the first 2.3) so that after 5 steps float32 and float64
   disagree by ~30 %.
   The check then passes as ``float32-limited`` when the float64 replay is within 3x the
   float32 replay's own rounding distance and that distance is < 1e-2, warning on stderr;
   above 1e-2 the update is numerically chaotic and the check fails unless
   ``--allow-unstable`` (recorded as ``unstable``). ``checks.user_check`` says which.
2. breaching builds its attack model in the BatchNorm mode of the case.
3. (reported, not enforced) breaching's multi-step objective on the truth images, arranged in
   slot order with each step's images sorted by label like the step's labels:
   ``checks.objective_at_truth`` (about 0 when the per-step labels are right), and on a random
   candidate.

Writes into ``CASE_DIR``: ``breaching_result.safetensors`` (``images`` (N, C, H, W) the
returned reconstruction in candidate-slot order, [0, 1] pixels; ``labels`` the label of each
slot that the objective used, -1 for slots no step uses; ``snapshots_best``,
``snapshots_current`` (S, N, C, H, W)) and
``breaching_result.json`` (seconds, seconds per iteration, snapshot iterations and seconds,
labels: recovered / used / true multiset, slot -> data index, checks, config, versions).
Seconds per iteration: from the end of step 1 to the last step (set-up and label recovery
excluded; snapshot copies subtracted), as in ``breaching_side.py``; ``seconds`` is the whole
``reconstruct`` call.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path

import torch
from breaching_side import (
    CHECK_TOLERANCE,
    CheckFailed,
    _container,
    _finite,
    _milestones,
    check_attack_config,
    import_breaching,
    relative_error,
    timed_reconstruct,
    versions,
)
from safetensors.torch import load_file, save_file

FORMAT = "breaching_updates_side/1"
MODELS = ("lenet", "convnet")
HIDDEN_LABELS = ("recover", "leak")
# breaching 0.1.2's label strategies for images ("random" and "exhaustive" aside).
LABEL_STRATEGIES = (
    "bias-corrected",
    "iDLG",
    "analytic",
    "yin",
    "wainakh-simple",
    "wainakh-whitebox",
)
RESULT_JSON = "breaching_result.json"
UNSTABLE = 1e-2  # float32-vs-float64 distance of the replayed update above which it is chaotic
RESULT_TENSORS = "breaching_result.safetensors"


def load_case(case_dir: Path) -> tuple[dict, dict]:
    case = json.loads((case_dir / "case.json").read_text())
    tensors = load_file(str(case_dir / "case.safetensors"))
    needed = [
        "model",
        "num_classes",
        "image_shape",
        "mean",
        "std",
        "local_steps",
        "local_batch_size",
        "lr",
        "data_order",
        "labels_known",
        "iterations",
        "seed",
        "threads",
    ]
    missing = [k for k in needed if k not in case]
    if missing:
        raise CheckFailed(f"case.json lacks {missing}")
    if case["model"] not in MODELS:
        raise CheckFailed(f"model {case['model']!r} is not one of {MODELS}")
    for key in ("labels", "truth_images"):
        if key not in tensors:
            raise CheckFailed(f"case.safetensors lacks '{key}'")
    return case, tensors


def slot_order(case: dict, n: int) -> list[int]:
    """The permutation ``perm`` such that breaching's sequential, wrapping slices of the data
    reordered by ``perm`` are the case's steps; CheckFailed if there is none."""
    steps, b = int(case["local_steps"]), int(case["local_batch_size"])
    order = [[int(i) for i in step] for step in case["data_order"]]
    if len(order) != steps or any(len(step) != b for step in order):
        raise CheckFailed(f"data_order must hold {steps} lists of {b} indices")
    flat = [i for step in order for i in step]
    first = flat[:n]
    if steps * b > n and n % b != 0:
        raise CheckFailed(
            f"breaching's user cuts a slice short at the end of its {n} examples when b={b} "
            f"does not divide N and the steps wrap; no equivalent order exists"
        )
    if steps * b >= n and sorted(first) != list(range(n)):
        raise CheckFailed("the first epoch of data_order is not a permutation of the data")
    if steps * b < n:
        if len(set(first)) != len(first) or not all(0 <= i < n for i in first):
            raise CheckFailed("data_order repeats an example within the first epoch")
        first = first + [i for i in range(n) if i not in set(first)]
    if any(flat[i] != first[i % n] for i in range(len(flat))):
        raise CheckFailed(
            "data_order is not breaching's sequential, wrapping order of one fixed permutation "
            "(the same examples in the same order every epoch)"
        )
    return first


def build_config(breaching, case: dict, n: int):
    overrides = [
        "case=4_fedavg_small_scale",
        "case/data=CIFAR10",
        "attack=invertinggradients",
        f"case.data.classes={int(case['num_classes'])}",
        f"attack.optim.max_iterations={int(case['iterations'])}",
        "attack.restarts.num_trials=1",
    ]
    if case.get("tv_scale") is not None:
        overrides.append(f"attack.regularization.total_variation.scale={float(case['tv_scale'])!r}")
    cfg = breaching.get_config(overrides=overrides)
    cfg.case.data.shape = [int(v) for v in case["image_shape"]]
    cfg.case.data.mean = [float(v) for v in case["mean"]]
    cfg.case.data.std = [float(v) for v in case["std"]]
    user = cfg.case.user
    user.num_data_points = n
    user.num_local_updates = int(case["local_steps"])
    user.num_data_per_local_update_step = int(case["local_batch_size"])
    user.local_learning_rate = float(case["lr"])
    user.provide_labels = bool(case["labels_known"])
    user.provide_local_hyperparams = True
    user.provide_num_data_points = True
    user.provide_buffers = False
    check_attack_config(cfg.attack)
    return cfg, overrides


def build_network(breaching, case: dict, tensors: dict):
    """gradleak's raw network with the server's weights, in breaching's ``VisionContainer``."""
    try:
        from gradleak.models import build_model
    except ImportError as err:
        raise CheckFailed(
            f"gradleak's model definitions are not importable here ({err}): "
            f"pip install --no-deps -e <gradleak checkout> into breaching's venv"
        ) from None
    channels, height, width = (int(v) for v in case["image_shape"])
    if height != width:
        raise CheckFailed(f"square images only, got {case['image_shape']}")
    net = build_model(
        case["model"],
        num_classes=int(case["num_classes"]),
        in_channels=channels,
        image_size=height,
        width=case.get("width"),
        mean=case["mean"],
        std=case["std"],
    ).net
    state = {k[len("weight/") :]: v for k, v in tensors.items() if k.startswith("weight/")}
    net.load_state_dict(state, strict=True)
    model = breaching.cases.models.model_preparation.VisionContainer(net)
    model.name = case["model"]
    return model


def replay_user(breaching, model, loss_fn, cfg, payload, inputs, labels, dtype):
    """breaching's ``UserMultiStep.compute_local_updates`` on ``inputs``/``labels`` (its
    ``_load_data`` replaced), at ``dtype``; returns its shared data and the model's mode."""
    setup = dict(device=torch.device("cpu"), dtype=dtype)
    user = breaching.cases.users.UserMultiStep(
        model, loss_fn, None, setup, idx=0, cfg_user=cfg.case.user
    )

    def load_truth(setup=None):
        user.data_key = "inputs"
        return dict(inputs=inputs.to(dtype).clone(), labels=labels.clone())

    user._load_data = load_truth
    shared, _ = user.compute_local_updates(payload)
    shared["gradients"] = [g.double() for g in shared["gradients"]]
    return shared, "train" if user.model.training else "eval"


def check_user(
    breaching,
    model,
    loss_fn,
    cfg,
    payload,
    inputs,
    labels,
    tensors,
    names,
    difference,
    allow_unstable,
):
    """Check (b): breaching's user replays the observed update.

    The replay runs at float32 (the attack's precision) and at float64. It passes when either
    replay is within ``CHECK_TOLERANCE`` of ``-update`` or, if the case holds a float64
    ``update_f64/<name>``, when the float64 replay is within it of that. Otherwise float32
    rounding may be the cause (a fresh ConvNet at lr 0.1 drifts apart under rounding: its
    float32 and float64 updates differ by ~1e-3 after one step and by tens of percent after a
    few): it passes as ``float32-limited`` when the float64 replay is within 3x the float32
    replay's own rounding error (their distance) and that is below ``UNSTABLE``; above it the
    update is numerically chaotic and the check fails unless ``allow_unstable``.
    """
    shared32, mode = replay_user(
        breaching, model, loss_fn, cfg, payload, inputs, labels, torch.float32
    )
    shared64, _ = replay_user(
        breaching, model, loss_fn, cfg, payload, inputs, labels, torch.float64
    )
    target = [d.double() for d in difference]
    err32 = relative_error(shared32["gradients"], target)
    err64 = relative_error(shared64["gradients"], target)
    rounding = relative_error(shared32["gradients"], shared64["gradients"])
    flat64 = torch.cat([g.flatten() for g in shared64["gradients"]])
    flat = torch.cat([g.flatten() for g in target])
    checks = {
        "user_update_relative_error": err32,
        "user_update_relative_error_float64": err64,
        "user_update_relative_error_max_layer": max(
            relative_error([g], [w]) for g, w in zip(shared32["gradients"], target, strict=True)
        ),
        "user_float32_rounding": rounding,
        "user_update_cosine_float64": float(flat64 @ flat / (flat64.norm() * flat.norm())),
        "update_norm": float(flat.norm()),
        "tolerance": CHECK_TOLERANCE,
        "user_model_mode": mode,
    }
    if all(f"update_f64/{name}" in tensors for name in names):
        exact = [-tensors[f"update_f64/{name}"].double() for name in names]
        checks["user_update_relative_error_vs_f64_update"] = relative_error(
            shared64["gradients"], exact
        )
        verdict = (
            "exact"
            if checks["user_update_relative_error_vs_f64_update"] < CHECK_TOLERANCE
            else None
        )
    elif min(err32, err64) < CHECK_TOLERANCE:
        verdict = "exact"
    elif err64 <= max(CHECK_TOLERANCE, 3 * rounding) and rounding < UNSTABLE:
        verdict = "float32-limited"
    elif err64 <= max(CHECK_TOLERANCE, 3 * rounding) and allow_unstable:
        verdict = "unstable"
    else:
        verdict = None
    checks["user_check"] = verdict
    if verdict is None:
        why = (
            f"float32 rounding alone moves breaching's replay by {rounding:.3g} (>= {UNSTABLE}): "
            f"the local training is numerically chaotic; --allow-unstable runs anyway"
            if err64 <= max(CHECK_TOLERANCE, 3 * rounding)
            else "sign, lr, order, labels, BN mode or architecture differ"
        )
        raise CheckFailed(
            f"breaching's UserMultiStep on the truth images does not reproduce -update "
            f"(relative error {err32:.3g} at float32, {err64:.3g} at float64, cosine "
            f"{checks['user_update_cosine_float64']:.4f}): {why}"
        )
    if verdict != "exact":
        print(
            f"WARNING: user check {verdict}: relative error {err32:.3g} (float32), {err64:.3g} "
            f"(float64), float32 rounding {rounding:.3g}",
            file=sys.stderr,
            flush=True,
        )
    return checks, shared32


def run(
    case_dir: Path, hidden_labels: str, label_strategy: str | None, allow_unstable: bool = False
) -> dict:
    case, tensors = load_case(case_dir)
    threads = int(case["threads"])
    torch.set_num_threads(threads)
    breaching = import_breaching()

    true_labels = tensors["labels"].long()
    truth = tensors["truth_images"].to(torch.float32)
    n = len(true_labels)
    steps, b, lr = int(case["local_steps"]), int(case["local_batch_size"]), float(case["lr"])
    perm = slot_order(case, n)
    cfg, overrides = build_config(breaching, case, n)
    if label_strategy is not None:
        cfg.attack.label_strategy = label_strategy
    model = build_network(breaching, case, tensors)
    loss_fn = torch.jit.script(torch.nn.CrossEntropyLoss())  # as construct_model builds it
    setup = dict(device=torch.device("cpu"), dtype=torch.float)
    dm = torch.as_tensor(cfg.case.data.mean, dtype=torch.float)[None, :, None, None]
    ds = torch.as_tensor(cfg.case.data.std, dtype=torch.float)[None, :, None, None]

    names = [name for name, _ in model.model.named_parameters()]
    missing = [name for name in names if f"update/{name}" not in tensors]
    if missing:
        raise CheckFailed(f"case.safetensors lacks the update of {missing}")
    pseudo_gradient = [tensors[f"update/{name}"].to(torch.float32) for name in names]
    # breaching's convention: p_local_after - p_server.
    difference = [-g for g in pseudo_gradient]

    bn_mode = case.get("bn_mode", "train")
    if bn_mode not in ("train", "eval"):
        raise CheckFailed(f"bn_mode must be 'train' or 'eval', got {bn_mode!r}")
    server_payload = dict(
        parameters=[p.detach().clone() for p in model.parameters()],
        buffers=None if bn_mode == "train" else [t.detach().clone() for t in model.buffers()],
        metadata=cfg.case.data,
    )

    # (b) breaching's own FedAvg user on the truth, in slot order, reproduces the update.
    user_inputs = ((truth - dm) / ds)[perm]
    user_labels = true_labels[perm]
    checks, user_shared = check_user(
        breaching,
        model,
        loss_fn,
        cfg,
        server_payload,
        user_inputs,
        user_labels,
        tensors,
        names,
        difference,
        allow_unstable,
    )
    true_step_labels = [t.clone() for t in user_shared["metadata"]["local_hyperparams"]["labels"]]

    attacker = breaching.attacks.prepare_attack(model, loss_fn, cfg.attack, setup)
    rec_models = attacker._construct_models_from_payload_and_buffers(
        [server_payload], [dict(buffers=None)]
    )
    if (bn_mode == "train") != rec_models[0].training:
        raise CheckFailed(f"breaching built its attack model in the wrong mode for {bn_mode}")

    # Labels.
    attacker.data_shape = tuple(cfg.case.data.shape)  # set by prepare_attack; whitebox needs it

    def recover(gradients, strategy: str | None = None) -> torch.Tensor:
        torch.manual_seed(int(case["seed"]))  # random padding, if the strategy pads
        query = dict(
            gradients=[g.clone() for g in gradients],
            buffers=None,
            metadata=dict(num_data_points=n, labels=None, local_hyperparams=None),
        )
        configured = attacker.cfg.label_strategy
        attacker.cfg.label_strategy = strategy or configured
        try:
            labels = attacker._recover_label_information([query], [server_payload], rec_models)
        finally:
            attacker.cfg.label_strategy = configured
        return labels.long()

    labels_info: dict = {"true_multiset": sorted(true_labels.tolist())}
    recovered = None
    if case["labels_known"]:
        mode = "known"
        step_labels, metadata_labels = true_step_labels, user_labels.clone()
    elif hidden_labels == "leak":
        mode = "leak"
        step_labels, metadata_labels = true_step_labels, None
    else:
        mode = "recover"
        recovered = recover(pseudo_gradient)
        step_labels = [
            recovered[[(k * b + j) % n for j in range(b)]].sort()[0] for k in range(steps)
        ]
        metadata_labels = recovered.clone()
    if not case["labels_known"]:
        literal = recover(difference)
        labels_info["strategy"] = cfg.attack.label_strategy
        labels_info["literal_recovery"] = literal.tolist()
        labels_info["literal_recovery_correct"] = _multiset_hits(literal, true_labels)
        if recovered is not None:
            labels_info["recovered"] = recovered.tolist()
            labels_info["recovered_correct"] = _multiset_hits(recovered, true_labels)
        # For the record only (choosing a strategy by these would use the truth).
        labels_info["all_strategies"] = {}
        for strategy in LABEL_STRATEGIES:
            try:
                got = recover(pseudo_gradient, strategy)
            except Exception as err:  # wainakh-whitebox: float class labels in 0.1.2
                labels_info["all_strategies"][strategy] = {
                    "error": str(err).strip().splitlines()[-1]
                }
                continue
            labels_info["all_strategies"][strategy] = {
                "labels": got.tolist(),
                "correct": _multiset_hits(got, true_labels),
            }
    labels_info["mode"] = mode
    labels_info["per_step"] = [t.tolist() for t in step_labels]
    labels_info["per_step_true"] = [t.tolist() for t in true_step_labels]
    slot_labels = torch.full((n,), -1, dtype=torch.long)
    for k, labels in enumerate(step_labels):
        for j in range(b):
            slot_labels[(k * b + j) % n] = labels[j]

    shared_data = dict(
        gradients=[g.clone() for g in difference],
        buffers=None,
        metadata=dict(
            num_data_points=n,
            labels=metadata_labels,
            local_hyperparams=dict(lr=lr, steps=steps, data_per_step=b, labels=step_labels),
            data_key="inputs",
        ),
    )

    # breaching's objective on the truth, arranged as its slots expect.
    arranged = user_inputs.clone()
    for k in range(min(steps, -(-n // b))):
        slots = [(k * b + j) % n for j in range(b)]
        ranks = user_labels[slots].argsort(stable=True)
        arranged[slots] = user_inputs[slots][ranks]
    attacker.objective.initialize(
        attacker.loss_fn, attacker.cfg.impl, shared_data["metadata"]["local_hyperparams"]
    )
    for name, candidate in (("truth", arranged), ("random", torch.randn_like(arranged))):
        candidate = candidate.clone().requires_grad_(True)
        value, _ = attacker.objective(
            copy.deepcopy(rec_models[0]), shared_data["gradients"], candidate, None
        )
        tv = sum(float(r(candidate.detach())) for r in attacker.regularizers)
        checks[f"objective_at_{name}"] = {"cosine": float(value.detach()), "tv": tv}
    del truth, arranged

    iterations = int(case["iterations"])
    timed = timed_reconstruct(
        attacker,
        server_payload,
        shared_data,
        iterations=iterations,
        snapshot_every=int(case.get("snapshot_every", 50)),
        seed=int(case["seed"]),
        dm=dm,
        ds=ds,
    )
    reconstruction, trajectory = timed["reconstruction"], timed["trajectory"]
    done = trajectory.iterations
    save_file(
        {
            "images": trajectory.pixels(reconstruction["data"]).contiguous(),
            "labels": slot_labels.contiguous(),
            "snapshots_best": torch.stack(trajectory.best_images).contiguous(),
            "snapshots_current": torch.stack(trajectory.current_images).contiguous(),
        },
        str(case_dir / RESULT_TENSORS),
    )
    seconds = trajectory.iteration_seconds
    result = {
        "format": FORMAT,
        "versions": versions(),
        "threads": threads,
        "case": case,
        "overrides": overrides,
        "attack_config": _container(cfg.attack),
        "user_config": _container(cfg.case.user),
        "bn_mode": bn_mode,
        "lr_milestones": sorted(float(m) for m in _milestones(iterations, "step-lr")),
        "slot_data_index": perm,
        "labels": labels_info,
        "returned_labels": reconstruction["labels"].long().tolist(),
        "checks": checks,
        "iterations": done,
        "seconds": timed["total_seconds"],
        "seconds_per_iteration": timed["seconds_per_iteration"],
        "output_seconds": seconds[done],
        "measurement_overhead_seconds": trajectory.overhead,
        "snapshot_iterations": trajectory.snapshot_iterations,
        "snapshot_seconds": trajectory.snapshot_seconds,
        "iteration_seconds": [seconds[k] for k in sorted(seconds)],
        "objective_values": trajectory.objective_values,
        "best_objective": trajectory.best_value,
    }
    (case_dir / RESULT_JSON).write_text(json.dumps(_finite(result), indent=2) + "\n")
    return result


def _multiset_hits(predicted: torch.Tensor, truth: torch.Tensor) -> int:
    left = truth.tolist()
    hits = 0
    for label in predicted.tolist():
        if label in left:
            left.remove(label)
            hits += 1
    return hits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case_dir", type=Path, nargs="?")
    parser.add_argument("--probe", action="store_true", help="print versions as JSON and exit")
    parser.add_argument(
        "--hidden-labels",
        choices=HIDDEN_LABELS,
        default="recover",
        help="labels_known false: 'recover' them with breaching's strategy (default) or 'leak' "
        "the true per-step labels as breaching's own FedAvg user does",
    )
    parser.add_argument(
        "--label-strategy", default=None, help="breaching's label_strategy (default: its config's)"
    )
    parser.add_argument(
        "--allow-unstable",
        action="store_true",
        help="run even when float32 rounding alone changes the replayed update by >= 1%%",
    )
    args = parser.parse_args()
    if args.probe:
        import_breaching()
        print(json.dumps(versions()))
        return 0
    if args.case_dir is None:
        parser.error("CASE_DIR is required unless --probe")
    start = time.perf_counter()
    try:
        result = run(args.case_dir, args.hidden_labels, args.label_strategy, args.allow_unstable)
    except CheckFailed as err:
        print(f"CHECK FAILED: {err}", file=sys.stderr)
        return 3
    except Exception:
        traceback.print_exc()
        return 1
    checks, labels = result["checks"], result["labels"]
    print(
        f"breaching (local updates): {result['iterations']} iterations, "
        f"{result['seconds_per_iteration']:.4f} s/iteration, {result['seconds']:.1f} s "
        f"({time.perf_counter() - start:.1f} s in all); user check "
        f"{checks['user_update_relative_error']:.2e}, objective at truth "
        f"{checks['objective_at_truth']['cosine']:.2e}; labels {labels['mode']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
