"""What an honest-but-curious FL server sees and knows about one client's step.

An :class:`Observation` is the only thing an attack receives. It holds the model the server sent
(architecture id and weights, i.e. white-box access), the client's answer (the per-parameter
gradient averaged over the client's batch, as an FL client sends it), and the side facts the server
is assumed to know, each with an explicit flag (batch size, labels, BatchNorm mode). Ground truth
(the private images) may travel with an observation for scoring, but it is kept apart in
:class:`GroundTruth` and removed by :meth:`Observation.attacker_view` before any attack runs.

``kind`` names what was observed: ``"gradient"`` (one step's averaged gradient, FedSGD) or
``"update"`` (FedAvg: the client trained locally for several steps, see
:mod:`gradleak.threat.local_training`; the observation holds the pseudo-gradient
``w_server - w_client``). ``clients`` > 1 makes it a secure aggregate: the mean of that many
clients' gradients or updates, each over an equal share of the images. ``defense`` records what
the client applied to its update before sending it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import stat
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gradleak.defenses.client import ClientBatch, defended_step
from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier, build_model
from gradleak.threat.local_training import LOCAL_FACTS, LocalTraining, train_locally

FORMAT = "gradleak.observation/1"
TRUTH_FORMAT = "gradleak.ground_truth/1"
BN_MODES = ("train", "eval")
KINDS = ("gradient", "update")
# Which entries of Observation.local each hideable fact covers.
_FACT_KEYS = {
    "lr": ("lr",),
    "steps": ("steps", "epochs"),
    "local_batch_size": ("batch_size",),
    "optimizer": ("optimizer", "momentum", "betas", "eps", "weight_decay"),
    "order": ("order", "shuffle", "order_seed"),
}


@dataclass
class GroundTruth:
    """The client's private batch: for evaluation only, never visible to attacks."""

    images: torch.Tensor  # (B, C, H, W) in [0, 1]
    labels: torch.Tensor  # (B,) int64
    ids: list[str] = field(default_factory=list)


@dataclass
class Observation:
    """One observed client update plus the server's side knowledge.

    Attributes:
        model_config: kwargs that rebuild the architecture with :func:`gradleak.models.build_model`.
        weights: the network's state (parameters and buffers) the client trained from.
        gradients: per-parameter gradient of the mean loss over the batch, keyed like
            ``model.net.named_parameters()``.
        batch_size: the client's batch size (always recorded; ``knows_batch_size`` says whether
            attacks may use it).
        labels: the batch's labels if recorded (``knows_labels`` says whether attacks may use them).
        bn_mode: ``"train"`` (batch statistics, as in local training) or ``"eval"``.
        loss: the client's loss value, when it is shared.
        kind: what was observed: ``"gradient"`` (one step's averaged gradient) or ``"update"``
            (FedAvg: ``gradients`` then holds the pseudo-gradient ``w_server - w_client``).
        local: for updates, the client's local training (:class:`LocalTraining` fields) and
            ``order``, the indices of every local step into each client's images.
        knows_local: per fact of local training (``LOCAL_FACTS``) whether attacks may use it.
        clients: how many clients' gradients or updates the observation averages (secure
            aggregation); client c holds images ``c * n, ..., (c + 1) * n - 1``, n = B / clients.
        defense: description of a defense applied to the update, empty when none.
        metadata: free JSON (data source, seed, image ids).
        truth: evaluation-only ground truth, or None.
        bn_statistics: per BatchNorm layer (keyed by its module name in ``model.net``), the
            (2, C) mean and biased variance of the layer's input in the client's train-mode
            forward pass (empty for eval mode or a model without BatchNorm). For an update or a
            secure aggregate: the mean over every forward pass of the clients' step (each
            local step of each client, on its share of the images), which is what an attacker's
            replay of that step traces (:class:`gradleak.gradient.simulation.ClientSimulator`).
        knows_bn_statistics: whether attacks may use ``bn_statistics`` (Huang et al., NeurIPS
            2021, "BN_exact": the attacker is given the batch's BatchNorm statistics).
    """

    model_config: dict
    weights: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    batch_size: int
    labels: torch.Tensor | None = None
    bn_mode: str = "train"
    loss: float | None = None
    knows_labels: bool = True
    knows_batch_size: bool = True
    kind: str = "gradient"
    local: dict | None = None
    knows_local: dict = field(default_factory=dict)
    clients: int = 1
    defense: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    truth: GroundTruth | None = None
    bn_statistics: dict[str, torch.Tensor] = field(default_factory=dict)
    knows_bn_statistics: bool = False

    # ------------------------------------------------------------------ views
    def attacker_view(self) -> Observation:
        """The observation as the attacker may use it: no ground truth, hidden facts removed
        (a hidden fact of local training becomes None)."""
        local = None
        if self.local is not None:
            local = dict(self.local)
            for fact in self.hidden_local_facts:
                for key in _FACT_KEYS[fact]:
                    local[key] = None
        return dataclasses.replace(
            self,
            labels=self.labels if self.knows_labels else None,
            bn_statistics=dict(self.bn_statistics) if self.knows_bn_statistics else {},
            local=local,
            truth=None,
        )

    @property
    def hidden_local_facts(self) -> list[str]:
        """The facts of local training the threat model hides (empty for gradients). The data
        order lists every step's images, so hiding the steps or the local batch size hides it
        too."""
        if self.kind != "update":
            return []
        hidden = {fact for fact in LOCAL_FACTS if not self.knows_local.get(fact, True)}
        if hidden & {"steps", "local_batch_size"}:
            hidden.add("order")
        return [fact for fact in LOCAL_FACTS if fact in hidden]

    @property
    def images_per_client(self) -> int:
        return self.batch_size // max(1, self.clients)

    def single_step(self) -> bool:
        """Whether each client took one step over all its images (always, for a gradient); a
        hidden number of steps counts as several."""
        if self.kind == "gradient":
            return True
        local = self.local or {}
        size = local.get("batch_size")
        return (
            size is not None
            and size >= self.images_per_client
            and (local.get("steps") == 1 or local.get("epochs") == 1)
        )

    def is_scaled_gradient(self) -> bool:
        """Whether the observed tensors are a known multiple of one averaged gradient: a gradient,
        or a one-step plain-SGD update with known learning rate (``lr * gradient``)."""
        if self.kind == "gradient":
            return True
        local = self.local or {}
        return (
            self.single_step()
            and local.get("optimizer") == "sgd"
            and local.get("lr") is not None
            and not local.get("weight_decay")
        )

    def as_gradient(self) -> Observation:
        """This observation as the averaged gradient it is a multiple of (see
        :meth:`is_scaled_gradient`); GradleakError otherwise."""
        if not self.is_scaled_gradient():
            raise GradleakError(
                "this update is not one plain-SGD step over the whole batch with a known "
                "learning rate, so it is no multiple of a gradient"
            )
        return self.gradient_estimate()  # exact here: lr x the one step's gradient

    def gradient_estimate(self, lr_guess: float = 0.01) -> Observation:
        """A gradient observation approximating the client's mean gradient over its steps.

        For a gradient, itself. For an update, the pseudo-gradient divided by ``lr`` times the
        sum of the optimizer's weights on the steps' gradients (K for SGD; for momentum mu, step
        j's gradient enters ``(1 - mu^(K - j)) / (1 - mu)`` times): exact for one SGD step over
        the whole batch, a first-order approximation otherwise (the weights move between steps),
        and only a rough one for Adam (its steps are normalized: divided by ``lr K``). A hidden
        learning rate is replaced by ``lr_guess``. What label recovery reads from an update.
        """
        if self.kind == "gradient":
            return self
        local = self.local or {}
        lr = local.get("lr") or lr_guess
        n = self.images_per_client
        steps = local.get("steps")
        if steps is None:
            size = local.get("batch_size") or n
            steps = (local.get("epochs") or 1) * math.ceil(n / size)
        weight = float(steps)
        if local.get("optimizer") == "momentum":
            mu = float(local.get("momentum") or 0.0)
            weight = sum((1 - mu ** (steps - j)) / (1 - mu) for j in range(steps)) if mu else weight
        return dataclasses.replace(
            self,
            gradients={k: v / (lr * weight) for k, v in self.gradients.items()},
            kind="gradient",
            local=None,
            knows_local={},
        )

    def describe(self) -> str:
        """One line: what the server saw (for reports and notes)."""
        if self.kind == "gradient":
            what = f"the averaged gradient of a batch of {self.images_per_client}"
        else:
            local = self.local or {}
            if local.get("steps"):
                steps = f"{local['steps']} local steps"
            elif local.get("epochs"):
                steps = f"{local['epochs']} local epoch(s)"
            else:
                steps = "hidden local steps"
            what = (
                f"a FedAvg update ({local.get('optimizer') or 'hidden optimizer'}, {steps}, "
                f"local batch {local.get('batch_size') or 'hidden'}, "
                f"lr {local.get('lr') or 'hidden'}) over {self.images_per_client} images"
            )
        if self.clients > 1:
            return f"the mean of {self.clients} clients' results, each {what}"
        return what

    def build_model(self) -> ImageClassifier:
        """The server's copy of the model, with the observed weights loaded, in ``bn_mode``."""
        model = build_model(**self.model_config)
        _load_state(model.net, self.weights)
        model.train(self.bn_mode == "train")
        return model

    @property
    def known_batch_size(self) -> int | None:
        return self.batch_size if self.knows_batch_size else None

    def validate(self, model: ImageClassifier | None = None) -> None:
        """Check that the gradients fit the model and are finite; raise GradleakError if not."""
        if self.bn_mode not in BN_MODES:
            raise GradleakError(f"bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
        if self.kind not in KINDS:
            raise GradleakError(f"observation kind must be one of {KINDS}, got {self.kind!r}")
        if self.clients < 1 or self.batch_size % self.clients:
            raise GradleakError(
                f"{self.batch_size} images cannot be split evenly over {self.clients} clients"
            )
        if self.kind == "update":
            self._validate_local()
        model = model if model is not None else self.build_model()
        state = model.net.state_dict()
        for name, w in self.weights.items():
            if name in state and w.dtype != state[name].dtype:
                raise GradleakError(
                    f"observed weight '{name}' is {w.dtype}, the model holds {state[name].dtype}"
                )
            if w.is_floating_point() and not torch.isfinite(w).all():
                raise GradleakError(f"observed weight '{name}' contains NaN or inf values")
        parameters = dict(model.net.named_parameters())
        _check_fit(
            f"observed gradients do not fit model '{self.model_config.get('name')}'",
            expected={name: tuple(p.shape) for name, p in parameters.items()},
            got={name: tuple(g.shape) for name, g in self.gradients.items()},
        )
        for name, g in self.gradients.items():
            if not g.is_floating_point():
                raise GradleakError(f"observed gradient '{name}' is not a float tensor ({g.dtype})")
            if g.dtype != parameters[name].dtype:
                raise GradleakError(
                    f"observed gradient '{name}' is {g.dtype}, the model's parameter "
                    f"{parameters[name].dtype}"
                )
            if not torch.isfinite(g).all():
                raise GradleakError(f"observed gradient '{name}' contains NaN or inf values")
        if self.batch_size < 1:
            raise GradleakError(f"batch size must be >= 1, got {self.batch_size}")
        if self.labels is not None and (
            self.labels.shape != (self.batch_size,) or self.labels.dtype != torch.int64
        ):
            raise GradleakError(
                f"observation labels must be {self.batch_size} int64 values, got shape "
                f"{list(self.labels.shape)} and dtype {self.labels.dtype}"
            )
        classes = model.config["num_classes"]
        if self.labels is not None and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= classes
        ):
            raise GradleakError(
                f"observation labels must be classes of its model, in [0, {classes}); "
                f"got {_few([str(v) for v in self.labels.tolist() if not 0 <= v < classes])}"
            )

    def _validate_local(self) -> None:
        if not isinstance(self.local, dict):
            raise GradleakError("an update observation must record its local training")
        unknown = sorted(set(self.knows_local) - set(LOCAL_FACTS))
        if unknown:
            raise GradleakError(f"unknown local-training facts {unknown}; known: {LOCAL_FACTS}")
        if not all(isinstance(v, bool) for v in self.knows_local.values()):
            raise GradleakError("knows_local must map each local-training fact to true or false")
        _check_local_types(self.local)
        training = LocalTraining.from_dict(self.local)  # raises on bad values
        order = self.local.get("order")
        n = self.images_per_client
        if not isinstance(order, list) or not all(
            isinstance(step, list)
            and step
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in step)
            for step in order
        ):
            raise GradleakError(
                f"the local-training order must list, per step, indices into the {n} images "
                "of a client"
            )
        if len(order) != training.num_steps(n):
            raise GradleakError(
                f"the local-training order lists {len(order)} steps, its record "
                f"{training.num_steps(n)}"
            )


# What each recorded fact of local training must be (None: absent or hidden is fine).
_LOCAL_TYPES = {
    "lr": "number", "batch_size": "count", "steps": "count?", "epochs": "count?",
    "optimizer": "text", "momentum": "fraction", "betas": "pair", "eps": "number",
    "weight_decay": "number0", "shuffle": "flag", "order_seed": "seed",
}  # fmt: skip


def _check_local_types(local: dict) -> None:
    """Every fact of a recorded local training has its type and a sane range (a file may hold
    anything)."""

    def number(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 10**9

    checks = {
        "number": lambda v: number(v) and v > 0,
        "number0": lambda v: number(v) and v >= 0,
        "count": count,
        "count?": lambda v: v is None or count(v),
        "text": lambda v: isinstance(v, str),
        "fraction": lambda v: number(v) and 0 <= v < 1,
        "pair": lambda v: (
            isinstance(v, list | tuple) and len(v) == 2 and all(number(b) and 0 <= b < 1 for b in v)
        ),
        "flag": lambda v: isinstance(v, bool),
        "seed": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63,
    }
    for key, kind in _LOCAL_TYPES.items():
        if key in local and not checks[kind](local[key]):
            raise GradleakError(
                f"the local-training record's {key!r} must be {_LOCAL_KINDS[kind]}, "
                f"got {_short(local[key])}"
            )


_LOCAL_KINDS = {
    "number": "a positive number", "number0": "a number >= 0", "count": "an integer >= 1",
    "count?": "an integer >= 1 or null", "text": "a string", "fraction": "a number in [0, 1)",
    "pair": "two numbers in [0, 1)", "flag": "true or false", "seed": "an integer >= 0",
}  # fmt: skip


# ---------------------------------------------------------------------- simulation
def observe(
    model: ImageClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    bn_mode: str = "train",
    knows_labels: bool = True,
    knows_batch_size: bool = True,
    knows_bn_statistics: bool = False,
    ids: list[str] | None = None,
    metadata: dict | None = None,
    local: LocalTraining | None = None,
    knows_local: dict[str, bool] | None = None,
    clients: int = 1,
    defenses: Sequence[tuple[str, dict]] = (),
    partners: torch.Tensor | None = None,
    partner_labels: torch.Tensor | None = None,
    defense_seed: int = 0,
) -> Observation:
    """Simulate what FL clients send: by default one client's averaged cross-entropy gradient.

    Args:
        local: local training (FedAvg): each client trains a copy of ``model`` with a real torch
            optimizer and sends its weights; the observation holds the pseudo-gradient
            ``w_server - w_client``. None: one gradient step (FedSGD).
        knows_local: per fact of local training (``LOCAL_FACTS``) whether the server knows it
            (default: all known).
        clients: split the images evenly over this many clients and observe the mean of their
            gradients or updates (secure aggregation).
        defenses: ``(name, params)`` of :mod:`gradleak.defenses` every client applies in its
            step (e.g. ``[("dp", {"noise_multiplier": 1.0})]``); recorded in ``defense``.
        partners: more of the clients' own images (not in the batch), which MixUp and InstaHide
            mix into the batch; ``partner_labels`` are their (P,) labels.
        defense_seed: seed of the defenses' randomness (noise, mixing coefficients).
        knows_bn_statistics: whether the server is given the batch's BatchNorm statistics
            (recorded in ``bn_statistics`` whenever ``bn_mode`` is ``"train"``).

    The weights recorded are those *before* the step (what the server sent); ``model`` itself is
    left unchanged (BatchNorm running statistics included).
    """
    labels = _check_batch(model, images, labels, bn_mode)
    if clients < 1 or len(images) % clients:
        raise GradleakError(
            f"{len(images)} images cannot be split evenly over {clients} clients; choose a "
            "number of images that is a multiple of the number of clients"
        )
    if knows_local and local is None:
        raise GradleakError("knows_local applies to update observations (give local training)")
    unknown = sorted(set(knows_local or {}) - set(LOCAL_FACTS))
    if unknown:
        raise GradleakError(f"unknown local-training facts {unknown}; choose from {LOCAL_FACTS}")
    weights = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    per_client = len(images) // clients
    order = local.order(per_client) if local is not None else None
    sums: dict[str, torch.Tensor] = {}
    losses = []
    records: list[dict] = []
    bn_passes: dict[str, list[torch.Tensor]] = {}  # every train-mode forward pass, per BN layer
    bn_token = _BN_PASSES.set(bn_passes if bn_mode == "train" else None)
    for c in range(clients):
        part = slice(c * per_client, (c + 1) * per_client)
        observed, loss, applied = defended_client(
            model,
            ClientBatch(
                model,
                images[part],
                labels[part],
                bn_mode,
                local,
                order,
                partners=partners,
                partner_labels=partner_labels,
            ),
            defenses,
            seed=defense_seed * 1_000_003 + c,
        )
        records = records or applied
        losses.append(loss)
        for name, value in observed.items():
            sums[name] = sums[name] + value if name in sums else value
    _BN_PASSES.reset(bn_token)
    record = None
    if local is not None:
        record = {**local.as_dict(), "order": order}
    return Observation(
        model_config=dict(model.config),
        weights=weights,
        gradients={name: (total / clients).cpu() for name, total in sums.items()},
        batch_size=len(images),
        labels=labels.clone().cpu(),
        bn_mode=bn_mode,
        loss=sum(losses) / len(losses),
        knows_labels=knows_labels,
        knows_batch_size=knows_batch_size,
        kind="gradient" if local is None else "update",
        local=record,
        knows_local={fact: True for fact in LOCAL_FACTS} | dict(knows_local or {})
        if local is not None
        else {},
        clients=clients,
        defense={"applied": records} if records else {},
        metadata=dict(metadata or {}),
        truth=GroundTruth(images.detach().clone().cpu(), labels.clone().cpu(), list(ids or [])),
        bn_statistics={name: torch.stack(seen).mean(0) for name, seen in bn_passes.items()},
        knows_bn_statistics=knows_bn_statistics,
    )


def _check_batch(
    model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor, bn_mode: str
) -> torch.Tensor:
    """Validate a client batch against ``model``; the labels as a (B,) int64 tensor."""
    if bn_mode not in BN_MODES:
        raise GradleakError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    if images.ndim != 4:
        raise GradleakError(f"images must be a (B, C, H, W) batch, got shape {list(images.shape)}")
    expected = tuple(model.input_shape)
    if tuple(images.shape[1:]) != expected:
        raise GradleakError(
            f"images of shape {list(images.shape[1:])} do not fit model "
            f"'{model.config['name']}' which takes {list(expected)}"
        )
    if len(images) == 0:
        raise GradleakError("the batch is empty: a client step needs at least one image")
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex():
        raise GradleakError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.long().reshape(-1).to(images.device)
    if len(labels) != len(images):
        raise GradleakError(f"{len(labels)} labels for {len(images)} images")
    num_classes = model.config["num_classes"]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise GradleakError(f"labels must lie in [0, {num_classes}), got {labels.tolist()}")
    return labels


def defended_client(
    model, client: ClientBatch, defenses, seed: int
) -> tuple[dict[str, torch.Tensor], float, list[dict]]:
    """One client's gradient or update with its defenses (:func:`defended_step`): what
    :func:`observe` records and what :mod:`gradleak.experiments.utility` trains on."""

    def compute(batch: ClientBatch):
        if batch.local is None:
            return _client_gradient(model, batch.images, batch.targets, batch.bn_mode)
        return _client_update(
            model, batch.images, batch.targets, batch.bn_mode, batch.local, batch.order
        )

    if not defenses:
        return (*compute(client), [])
    step = defended_step(client, defenses, compute, seed=seed)
    return step.gradients, step.loss, step.records


def _client_gradient(model, images, labels, bn_mode) -> tuple[dict[str, torch.Tensor], float]:
    """One client's averaged gradient (BatchNorm running statistics left untouched)."""
    was_training = model.training
    try:
        model.train(bn_mode == "train")
        named = list(model.net.named_parameters())
        with _frozen_bn_statistics(model), _recorded_bn_statistics(model):
            loss = nn.functional.cross_entropy(model(images), labels)
            grads = torch.autograd.grad(loss, [p for _, p in named])
    finally:
        model.train(was_training)
    gradients = {name: g.detach().clone() for (name, _), g in zip(named, grads, strict=True)}
    return gradients, float(loss.detach())


def _client_update(
    model, images, labels, bn_mode, local: LocalTraining, order
) -> tuple[dict[str, torch.Tensor], float]:
    """One client's FedAvg pseudo-gradient ``w_server - w_client`` after real local training."""
    client = copy.deepcopy(model)
    client.train(bn_mode == "train")
    with _recorded_bn_statistics(client):
        losses = train_locally(
            client.net,
            lambda x, y: nn.functional.cross_entropy(client(x), y),
            images,
            labels,
            local,
            order,
        )
    after = dict(client.net.named_parameters())
    update = {
        name: (p.detach() - after[name].detach()).clone()
        for name, p in model.net.named_parameters()
    }
    return update, losses[0]


# Set by ``observe`` while it runs the clients' steps: where their BatchNorm inputs' statistics go.
_BN_PASSES: ContextVar[dict[str, list[torch.Tensor]] | None] = ContextVar(
    "gradleak_bn_passes", default=None
)


class _recorded_bn_statistics:
    """Context manager: while ``observe`` collects them, every forward pass through a BatchNorm
    layer of ``model`` adds its input's (2, C) mean and biased variance under the layer's name
    in ``model.net``."""

    def __init__(self, model: ImageClassifier):
        self.model = model
        self.handles: list = []

    def __enter__(self):
        sink = _BN_PASSES.get()
        if sink is not None:
            for name, module in self.model.net.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    self.handles.append(module.register_forward_hook(_bn_recorder(sink, name)))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        return False


def _bn_recorder(sink: dict[str, list[torch.Tensor]], name: str):
    def record(_module, inputs, _output) -> None:
        features = inputs[0].detach()
        dims = [0, *range(2, features.dim())]
        mean, var = features.mean(dims), features.var(dims, unbiased=False)
        sink.setdefault(name, []).append(torch.stack([mean, var]).cpu())

    return record


class _frozen_bn_statistics:
    """Context manager: the forward pass may use batch statistics, buffers are restored after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.buffers = {k: v.clone() for k, v in self.model.named_buffers(remove_duplicate=False)}
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for k, v in self.model.named_buffers(remove_duplicate=False):
                v.copy_(self.buffers[k])
        return False


# ---------------------------------------------------------------------- files
def save_observation(observation: Observation, path: str | Path) -> Path:
    """Write ``path`` (safetensors: weights, gradients, labels; JSON header with the facts).

    Ground truth, when present, goes to a separate ``<stem>.truth.safetensors`` file marked
    evaluation-only, so that sharing the observation never shares the private images.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"weight/{k}": v.contiguous() for k, v in observation.weights.items()}
    tensors.update({f"grad/{k}": v.contiguous() for k, v in observation.gradients.items()})
    if observation.labels is not None:
        tensors["labels"] = observation.labels.contiguous()
    tensors.update({f"bn/{k}": v.contiguous() for k, v in observation.bn_statistics.items()})
    header = {
        "format": FORMAT,
        "model_config": observation.model_config,
        "weights_sha256": weights_sha256(observation.weights),
        "batch_size": observation.batch_size,
        "bn_mode": observation.bn_mode,
        "loss": observation.loss,
        "knows_labels": observation.knows_labels,
        "knows_batch_size": observation.knows_batch_size,
        "kind": observation.kind,
        "local": observation.local,
        "knows_local": observation.knows_local,
        "clients": observation.clients,
        "defense": observation.defense,
        "metadata": observation.metadata,
        "knows_bn_statistics": observation.knows_bn_statistics,
    }
    save_file(tensors, str(path), metadata={"gradleak": json.dumps(header)})
    truth_file = truth_path(path)
    if observation.truth is not None:
        save_truth(observation.truth, path)
    elif truth_file.exists():
        truth_file.unlink()
    return path


def save_truth(truth: GroundTruth, path: str | Path) -> Path:
    """Write the evaluation-only ground truth of the observation file ``path`` beside it
    (``<stem>.truth.safetensors``): for observations captured where the truth is not known,
    e.g. on an FL server, and scored later by whoever holds the images."""
    truth_file = truth_path(path)
    save_file(
        {"images": truth.images.contiguous(), "labels": truth.labels.contiguous()},
        str(truth_file),
        metadata={
            "gradleak": json.dumps(
                {"format": TRUTH_FORMAT, "evaluation_only": True, "ids": truth.ids}
            )
        },
    )
    return truth_file


def truth_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name.removesuffix(".safetensors") + ".truth.safetensors")


def load_observation(
    path: str | Path, *, with_truth: bool = True, model: str | None = None
) -> Observation:
    """Read an observation written by :func:`save_observation` and validate it against its model.

    An observation made on your own model (``path/to/file.py:factory``) records that spec, never
    code: loading it imports nothing unless ``model`` names the same factory again, and then
    the network it builds must have the recorded architecture.

    A file is data from anyone: every size it states is bounded before anything is allocated
    (the model's sizes by :data:`gradleak.limits.SIZE_LIMITS`, the tensors the model
    it names would hold must be those the file stores, one forward pass of its batch at most
    :data:`MAX_FORWARD_ELEMENTS` values), its labels must be classes of its model, and a truth
    file beside it must hold its batch.

    Raises GradleakError if the file is missing, not a regular file, not a gradleak observation,
    its gradients do not fit the model it names, its weights do not match their recorded
    sha256, its model is your own and ``model`` does not name it, or its truth file does not
    match it.
    """
    path = Path(path)
    tensors, header = _read_safetensors(path, FORMAT)
    weights = {k[len("weight/") :]: v for k, v in tensors.items() if k.startswith("weight/")}
    gradients = {k[len("grad/") :]: v for k, v in tensors.items() if k.startswith("grad/")}
    bn_statistics = {k[len("bn/") :]: v for k, v in tensors.items() if k.startswith("bn/")}
    try:
        observation = Observation(
            model_config=_model_config(header),
            weights=weights,
            gradients=gradients,
            batch_size=_header_int(header, "batch_size"),
            labels=tensors.get("labels"),
            bn_mode=_header_value(header, "bn_mode", str),
            loss=_header_loss(header),
            knows_labels=_header_value(header, "knows_labels", bool),
            knows_batch_size=_header_value(header, "knows_batch_size", bool),
            kind=_header_value(header, "kind", str, "gradient"),
            local=_header_value(header, "local", dict, None),
            knows_local=_header_value(header, "knows_local", dict, None) or {},
            clients=_header_int(header, "clients", 1),
            defense=_header_value(header, "defense", dict, None) or {},
            metadata=_header_value(header, "metadata", dict, None) or {},
            bn_statistics=bn_statistics,
            knows_bn_statistics=_header_value(header, "knows_bn_statistics", bool, False),
        )
    except _HeaderEntry as err:
        raise GradleakError(
            f"{path}: malformed observation header ('{err.key}'): {err.problem}"
        ) from None
    except GradleakError as err:
        raise GradleakError(f"{path}: malformed observation header ({err})") from None
    if observation.kind not in KINDS:
        raise GradleakError(
            f"{path}: observation kind {observation.kind!r} is not supported; known: {KINDS}"
        )
    unexpected = sorted(k for k in tensors if k != "labels" and not k.startswith(_PREFIXES))
    if unexpected:
        raise GradleakError(f"{path}: unexpected tensors {_few(unexpected)} in the file")
    _check_named_model(path, observation, model)
    try:
        _check_declared_model(observation)
        model = observation.build_model()
        _check_forward_size(observation, model)
    except GradleakError as err:
        raise GradleakError(f"{path}: {err}") from None
    except (TypeError, ValueError) as err:
        raise GradleakError(f"{path}: cannot rebuild the model it names ({err})") from None
    try:
        observation.validate(model)
        _check_bn_statistics(observation.bn_statistics, model)
    except GradleakError as err:
        raise GradleakError(f"{path}: {err}") from None
    recorded = header.get("weights_sha256")  # files written before it was recorded lack it
    if recorded is not None and recorded != weights_sha256(weights):
        raise GradleakError(
            f"{path}: its weights do not match the sha256 recorded in its header "
            f"({str(recorded)[:16]}..., the file holds {weights_sha256(weights)[:16]}...): "
            "the file is corrupt or was edited"
        )
    truth_file = truth_path(path)
    if with_truth and truth_file.exists():
        observation.truth = _load_truth(truth_file, path, observation, model)
    return observation


#: The most values one forward pass of an observation's batch may hold, as estimated by
#: :func:`gradleak.models._shape.forward_elements` (2^33: 32 GiB of float32; a CIFAR ResNet-20
#: batch of 64 holds about 2^26). A file asking for more is refused before any attack runs.
MAX_FORWARD_ELEMENTS = 2**33
_PREFIXES = ("weight/", "grad/", "bn/")
_MISSING = object()


class _HeaderEntry(GradleakError):
    """A bad entry of an observation's JSON header: its key and what is wrong with it."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"'{key}': {problem}")
        self.key, self.problem = key, problem


def _header_value(header: dict, key: str, kind: type, default=_MISSING):
    """``header[key]``, which must be a ``kind`` (or None when the default is None)."""
    value = header.get(key, default)
    if value is _MISSING:
        raise _HeaderEntry(key, "missing")
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _HeaderEntry(key, f"must be {_KINDS[kind]}, got {_short(value)}")
    return value


_KINDS = {int: "an integer", str: "a string", bool: "true or false", dict: "an object"}


def _header_int(header: dict, key: str, default=_MISSING) -> int:
    value = _header_value(header, key, int, default)
    if not 1 <= value <= 10**9:
        raise _HeaderEntry(key, f"must lie in [1, 1e9], got {value}")
    return value


def _header_loss(header: dict) -> float | None:
    value = header.get("loss")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise _HeaderEntry("loss", f"must be a finite number, got {_short(value)}")
    return float(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_config(header: dict) -> dict:
    config = _header_value(header, "model_config", dict)
    from gradleak.models.registry import CONFIG_KEYS

    unknown = sorted(str(k) for k in config if k not in CONFIG_KEYS)
    if unknown:
        raise GradleakError(f"model_config has unknown entries {_few(unknown)}")
    if not isinstance(config.get("name"), str):
        raise GradleakError(f"model_config names no model (name {_short(config.get('name'))})")
    return config


def _check_declared_model(observation: Observation) -> None:
    """The tensors a registry model's config declares must be those the file stores: sized on
    the meta device, before the model is built (a file cannot ask for more memory than it
    holds). Your own model is built and compared by :func:`_check_named_model`."""
    from gradleak.models import custom
    from gradleak.models.registry import planned_state

    config = observation.model_config
    if custom.is_own_model(config["name"]):
        return
    _check_fit(
        "observed weights do not fit the model",
        expected=planned_state(**config),
        got={k: tuple(v.shape) for k, v in observation.weights.items()},
        optional=("num_batches_tracked",),
    )


def _check_forward_size(observation: Observation, model: ImageClassifier) -> None:
    from gradleak.models._shape import forward_elements

    per_image = forward_elements(model.net, model.input_shape)
    if observation.batch_size * per_image > MAX_FORWARD_ELEMENTS:
        raise GradleakError(
            f"a forward pass of its batch of {observation.batch_size} images of "
            f"{'x'.join(map(str, model.input_shape))} through {observation.model_config['name']} "
            f"would hold about {observation.batch_size * per_image:.3g} values, more than the "
            f"limit of {MAX_FORWARD_ELEMENTS:.3g}"
        )


def _load_truth(
    truth_file: Path, path: Path, observation: Observation, model: ImageClassifier
) -> GroundTruth:
    """The ground truth beside ``path``, which must hold the observation's batch for
    ``model``."""
    tensors, header = _read_safetensors(truth_file, TRUTH_FORMAT, "a ground-truth file")
    if "images" not in tensors or "labels" not in tensors:
        raise GradleakError(f"{truth_file}: ground-truth file lacks images or labels")
    images, labels = tensors["images"], tensors["labels"]
    n = observation.batch_size
    shape = (n, *model.input_shape)
    problem = None
    if tuple(images.shape) != shape or not images.is_floating_point():
        problem = (
            f"it holds images {list(images.shape)} ({images.dtype}), the observation a batch "
            f"of {list(shape)} floats"
        )
    elif images.dtype != torch.float32 or not torch.isfinite(images).all():
        problem = f"its images must be finite float32 values, got {images.dtype}"
    elif tuple(labels.shape) != (n,) or labels.dtype != torch.int64:
        problem = (
            f"it holds labels {list(labels.shape)} ({labels.dtype}), the observation "
            f"{n} int64 labels"
        )
    else:
        classes = model.config["num_classes"]
        if n and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            problem = f"its labels must lie in [0, {classes}), got {_few(labels.tolist())}"
    ids = header.get("ids", [])
    if problem is None and (
        not isinstance(ids, list)
        or len(ids) not in (0, n)
        or not all(isinstance(i, str) for i in ids)
    ):
        problem = f"its ids must be {n} strings"
    if problem is not None:
        raise GradleakError(
            f"ground truth {truth_file} does not match observation {path}: {problem}"
        )
    return GroundTruth(images, labels, list(ids))


def _read_safetensors(
    path: Path, expected_format: str, what: str = "an observation file"
) -> tuple[dict[str, torch.Tensor], dict]:
    _check_regular_file(path, what)
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            raw = (handle.metadata() or {}).get("gradleak")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise GradleakError(f"{path} is not a valid safetensors file ({err})") from None
    if raw is None:
        raise GradleakError(f"{path} is a safetensors file but not a gradleak file")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise GradleakError(f"{path}: corrupt JSON header") from None
    if not isinstance(header, dict):
        raise GradleakError(f"{path}: corrupt JSON header (not an object)")
    if header.get("format") != expected_format:
        raise GradleakError(
            f"{path}: expected a {expected_format} file, found {_short(header.get('format'))}"
        )
    return tensors, header


def check_observation_file(path: str | Path) -> None:
    """Raise GradleakError unless ``path`` is a regular file (missing, a folder, a FIFO, a
    socket or a device: each named), without opening it: for callers that read an
    observation file themselves (a FIFO would make them wait forever)."""
    _check_regular_file(Path(path), "an observation file")


def _check_regular_file(path: Path, what: str) -> None:
    """``path`` must be a regular file: a folder, FIFO, socket or device is refused before it
    is opened (reading a FIFO would wait for a writer forever)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise GradleakError(f"no such file: {path}") from None
    except OSError as err:
        raise GradleakError(f"cannot read {path}: {err.strerror or err}") from None
    if stat.S_ISDIR(mode):
        raise GradleakError(f"{path} is a folder, not {what}")
    if not stat.S_ISREG(mode):
        kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        raise GradleakError(f"{path} is a {kind}, not {what} (a regular file)")


def _load_state(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = net.state_dict()
    _check_fit(
        "observed weights do not fit the model",
        expected={k: tuple(v.shape) for k, v in own.items()},
        got={k: tuple(v.shape) for k, v in state.items()},
        optional=("num_batches_tracked",),
    )
    net.load_state_dict(state, strict=False)


def _check_bn_statistics(statistics: dict[str, torch.Tensor], model: ImageClassifier) -> None:
    """Recorded BatchNorm statistics must name BatchNorm layers of ``model``, each (2, C)."""
    layers = {
        name: module
        for name, module in model.net.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    }
    for name, value in statistics.items():
        if name not in layers:
            raise GradleakError(f"BatchNorm statistics recorded for '{name}', no BatchNorm layer")
        if tuple(value.shape) != (2, layers[name].num_features) or value.dtype != torch.float32:
            raise GradleakError(
                f"BatchNorm statistics of '{name}' must be (2, {layers[name].num_features}) "
                f"float32 values (mean, variance), got {list(value.shape)} {value.dtype}"
            )
        if not torch.isfinite(value).all() or bool((value[1] < 0).any()):
            raise GradleakError(
                f"BatchNorm statistics of '{name}' must be finite, with variances >= 0"
            )


def _check_fit(
    problem: str,
    expected: dict[str, tuple],
    got: dict[str, tuple],
    optional: tuple[str, ...] = (),
) -> None:
    """Raise GradleakError naming missing, unexpected or mis-shaped tensors."""
    missing = [k for k in expected if k not in got and not k.endswith(optional)]
    extra = [k for k in got if k not in expected]
    if missing or extra:
        raise GradleakError(f"{problem}: missing {_few(missing)}, unexpected {_few(extra)}")
    for name, shape in expected.items():
        if name in got and got[name] != shape:
            raise GradleakError(
                f"{problem}: '{name}' has shape {list(got[name])}, the model expects {list(shape)}"
            )


def _few(names: list[str], limit: int = 3) -> str:
    if not names:
        return "none"
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def weights_sha256(weights: dict[str, torch.Tensor]) -> str:
    """The fingerprint of observed weights: sha256 over every tensor in name order (its name,
    shape, dtype and bytes)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        value = weights[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, list(value.shape), str(value.dtype)]).encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_named_model(path: Path, observation: Observation, named: str | None) -> None:
    """Your own model is rebuilt only when the user names it again (an observation file is
    data, not code); a name given must be the recorded one, and builds the recorded tensors."""
    from gradleak.models import custom

    config = observation.model_config
    recorded = config.get("name")
    own = custom.is_own_model(recorded)
    if named is None:
        if own:
            raise GradleakError(
                f"{path}: its model was built by your own code '{recorded}'; name it again "
                f"with --model {recorded} (an observation file is data, not code)"
            )
        return
    same = custom.canonical(named) == recorded if custom.is_own_model(named) else named == recorded
    if not same:
        raise GradleakError(
            f"{path}: observation was made with model '{recorded}', you named '{named}'"
        )
    if not own:
        return
    expected = config.get("architecture")
    try:
        net = build_model(**{k: v for k, v in config.items() if k != "architecture"}).net
    except GradleakError as err:
        raise GradleakError(f"{path}: {err}") from None
    except TypeError as err:
        raise GradleakError(f"{path}: cannot rebuild the model it names ({err})") from None
    built = custom.architecture_digest(net.state_dict())
    if built != expected:
        difference = custom.first_difference(net.state_dict(), observation.weights)
        raise GradleakError(
            f"{path}: {recorded} now builds architecture {built}, the observation was made "
            f"with {expected}" + (f" ({difference})" if difference else "")
        )
