"""From what a Flower server holds to a gradleak observation: the arrays it sent a client and the
arrays the client returned, plus the facts of the client's local training the server knows.

This module needs no Flower: it works on ``{name: tensor}`` dictionaries (what
``ArrayRecord.to_torch_state_dict()`` returns), so that the same code turns arrays captured by
:class:`gradleak.flower.AuditStrategy`, or saved by any other FL framework, into an update
observation (:class:`gradleak.threat.Observation`, ``kind="update"``).

The observation holds the pseudo-gradient ``w_sent - w_returned`` of every parameter (McMahan et
al. 2017's FedAvg update, as :func:`gradleak.threat.observe` records it for a simulated client),
the weights sent (parameters and buffers), the number of images the client reported, and which
local-training facts the server knows (``knows_local``); labels are unknown to a Flower server.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier
from gradleak.threat import LOCAL_FACTS, LocalTraining, Observation

#: The manifest of a capture folder: every update recorded, or why it was not.
CAPTURES = "captures.json"
CAPTURES_FORMAT = "gradleak.flower.captures/1"


def align_arrays(model: ImageClassifier, arrays: Mapping[str, torch.Tensor], what: str) -> dict:
    """``arrays`` keyed like ``model.net.state_dict()``.

    Arrays with the state dict's own names are taken by name (``num_batches_tracked`` may be
    missing). Arrays under other names (Flower's legacy ``NumPyClient`` sends a list, which an
    ``ArrayRecord`` keys ``"0"``, ``"1"``, ...) are taken in order when their number and shapes
    match the state dict's. GradleakError names the first mismatch otherwise.
    """
    state = model.net.state_dict()
    name = model.config.get("name")
    if set(arrays) <= set(state) and all(
        key in arrays for key in state if not key.endswith("num_batches_tracked")
    ):
        aligned = {}
        for key, value in arrays.items():
            value = torch.as_tensor(value)
            if tuple(value.shape) != tuple(state[key].shape):
                raise GradleakError(
                    f"{what}: array {key!r} has shape {list(value.shape)}, model '{name}' has "
                    f"{list(state[key].shape)}"
                )
            aligned[key] = value
        return aligned
    values = [torch.as_tensor(v) for v in arrays.values()]
    keys = list(state)
    if len(values) == len(keys) and all(
        tuple(v.shape) == tuple(state[k].shape) for v, k in zip(values, keys, strict=True)
    ):
        return dict(zip(keys, values, strict=True))
    missing = [k for k in keys if k not in arrays]
    extra = [k for k in arrays if k not in state]
    raise GradleakError(
        f"{what} do not fit model '{name}': {len(arrays)} arrays for its {len(keys)} "
        f"state entries (missing {missing[:3]}, unexpected {extra[:3]}), and not in its order "
        "with its shapes either; give the model the client trains"
    )


def update_observation(
    model: ImageClassifier,
    sent: Mapping[str, torch.Tensor],
    returned: Mapping[str, torch.Tensor],
    *,
    images: int,
    local: LocalTraining,
    hidden: Sequence[str] = (),
    knows_batch_size: bool = True,
    bn_mode: str = "train",
    metadata: dict | None = None,
) -> Observation:
    """The update observation of one client in one round.

    Args:
        model: the model the federation trains (architecture; its weights are not used).
        sent: the arrays the server sent the client (the global model of the round).
        returned: the arrays the client sent back.
        images: how many images the client trained on (Flower's ``num-examples``).
        local: the client's local training as the run configures it (learning rate, local
            batch size, steps or epochs, optimizer); the data order is the run's walk through
            the ``images`` (:meth:`LocalTraining.order`).
        hidden: facts of ``LOCAL_FACTS`` the server does not know (the attacker replays the
            update without them); the others are known.
        knows_batch_size: whether the attacker may use ``images``.
        bn_mode: the client's BatchNorm mode during local training.
        metadata: recorded with the observation (round, node, the client's metrics).

    Raises:
        GradleakError: arrays that do not fit the model, a non-finite update, an update that
            is zero (the client did not train), or facts that contradict each other.
    """
    unknown = sorted(set(hidden) - set(LOCAL_FACTS))
    if unknown:
        raise GradleakError(f"unknown local-training facts {unknown}; choose from {LOCAL_FACTS}")
    if not isinstance(images, int) or isinstance(images, bool) or images < 1:
        raise GradleakError(f"the client reported {images!r} training images; need at least 1")
    before = align_arrays(model, sent, "the arrays sent")
    after = align_arrays(model, returned, "the arrays returned")
    parameters = [name for name, _ in model.net.named_parameters()]
    update = {}
    for name in parameters:
        if name not in before or name not in after:
            raise GradleakError(f"parameter {name!r} is missing from the arrays exchanged")
        delta = before[name].float() - after[name].float()
        if not torch.isfinite(delta).all():
            raise GradleakError(f"the update of {name!r} contains NaN or inf values")
        update[name] = delta.contiguous()
    if all(float(d.abs().max()) == 0.0 for d in update.values() if d.numel()):
        raise GradleakError("the returned arrays equal the ones sent: the client did not train")
    weights = {k: v.clone().contiguous() for k, v in before.items()}
    for key, value in model.net.state_dict().items():  # e.g. num_batches_tracked left out
        weights.setdefault(key, value.detach().clone())
    order = local.order(images)
    observation = Observation(
        model_config=dict(model.config),
        weights=weights,
        gradients=update,
        batch_size=images,
        labels=None,
        bn_mode=bn_mode,
        knows_labels=False,
        knows_batch_size=knows_batch_size,
        kind="update",
        local={**local.as_dict(), "order": order},
        knows_local={fact: fact not in hidden for fact in LOCAL_FACTS},
        metadata=dict(metadata or {}),
    )
    observation.validate(model)
    return observation


# ---------------------------------------------------------------------- out-of-band attacks
def background_worker() -> None:
    """Initializer of the process that attacks captures while the federation runs: lowest CPU
    priority and one thread, so that it takes only what the clients and the server leave."""
    with contextlib.suppress(OSError, AttributeError):  # not every platform has nice()
        os.nice(19)
    torch.set_num_threads(1)


def attack_capture(
    path: str, root: str, attacks: Sequence[str], settings: Mapping, own_model: str | None = None
) -> dict[str, dict]:
    """Run ``attacks`` on the observation file ``path`` (under ``root``), saving each
    reconstruction beside it as ``<stem>.<attack>.safetensors``; per attack its status
    (done, skipped with the reason, failed with the error), never an exception."""
    from gradleak.attacks import get_attack, save_reconstruction
    from gradleak.threat import load_observation

    results: dict[str, dict] = {}
    observation = None
    for name in attacks:
        started = time.perf_counter()
        try:
            if observation is None:
                observation = load_observation(path, with_truth=False, model=own_model)
            attack = get_attack(name, **dict(settings.get(name, {})))
            problems = attack.check(observation)
            if problems:
                result = {"status": "skipped", "reason": "; ".join(problems)}
            else:
                reconstruction = attack(observation, seed=0)
                file = Path(path).with_name(
                    Path(path).name.replace(".safetensors", f".{name}.safetensors")
                )
                save_reconstruction(reconstruction, file)
                result = {
                    "status": "done",
                    "file": file.relative_to(root).as_posix(),
                    "labels": reconstruction.labels.tolist(),
                    "gradient_distance": reconstruction.gradient_distance,
                }
        except Exception as err:  # noqa: BLE001 - recorded, never raised into the federation
            result = {"status": "failed", "error": short_error(err)}
        result["seconds"] = round(time.perf_counter() - started, 3)
        results[name] = result
    return results


def short_error(err: BaseException) -> str:
    """One line: the exception, its message and where it was raised."""
    frame = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    where = f" ({Path(frame[0].filename).name}:{frame[0].lineno})" if frame else ""
    return f"{type(err).__name__}: {err}{where}"
