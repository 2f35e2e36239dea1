"""What an honest-but-curious FL server sees and knows about one client's step.

An :class:`Observation` is the only thing an attack receives. It holds the model the server sent
(architecture id and weights, i.e. white-box access), the client's answer (the per-parameter
gradient averaged over the client's batch, as an FL client sends it), and the side facts the server
is assumed to know, each with an explicit flag (batch size, labels, BatchNorm mode). Ground truth
(the private images) may travel with an observation for scoring, but it is kept apart in
:class:`GroundTruth` and removed by :meth:`Observation.attacker_view` before any attack runs.

Later threat models plug in here without changing attacks: ``kind`` names what was observed
(``"gradient"`` today; FedAvg updates and secure-aggregation sums are new kinds) and ``defense``
records what the client applied to its update before sending it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier, build_model

FORMAT = "gradleak.observation/1"
TRUTH_FORMAT = "gradleak.ground_truth/1"
BN_MODES = ("train", "eval")


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
        kind: what was observed; ``"gradient"`` for one step's averaged gradient.
        defense: description of a defense applied to the update, empty when none.
        metadata: free JSON (data source, seed, image ids).
        truth: evaluation-only ground truth, or None.
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
    defense: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    truth: GroundTruth | None = None

    # ------------------------------------------------------------------ views
    def attacker_view(self) -> Observation:
        """The observation as the attacker may use it: no ground truth, hidden facts removed."""
        return dataclasses.replace(
            self,
            labels=self.labels if self.knows_labels else None,
            truth=None,
        )

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
        model = model if model is not None else self.build_model()
        for name, w in self.weights.items():
            if w.is_floating_point() and not torch.isfinite(w).all():
                raise GradleakError(f"observed weight '{name}' contains NaN or inf values")
        _check_fit(
            f"observed gradients do not fit model '{self.model_config.get('name')}'",
            expected={name: tuple(p.shape) for name, p in model.net.named_parameters()},
            got={name: tuple(g.shape) for name, g in self.gradients.items()},
        )
        for name, g in self.gradients.items():
            if not g.is_floating_point():
                raise GradleakError(f"observed gradient '{name}' is not a float tensor ({g.dtype})")
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


# ---------------------------------------------------------------------- simulation
def observe(
    model: ImageClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    bn_mode: str = "train",
    knows_labels: bool = True,
    knows_batch_size: bool = True,
    ids: list[str] | None = None,
    metadata: dict | None = None,
) -> Observation:
    """Simulate one FL client step: the averaged cross-entropy gradient of ``model`` on a batch.

    The weights recorded are those *before* the step (what the server sent). BatchNorm running
    statistics are not changed by the simulation.
    """
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
    labels = labels.long().reshape(-1)
    if len(labels) != len(images):
        raise GradleakError(f"{len(labels)} labels for {len(images)} images")
    num_classes = model.config["num_classes"]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise GradleakError(f"labels must lie in [0, {num_classes}), got {labels.tolist()}")
    weights = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    was_training = model.training
    try:
        model.train(bn_mode == "train")
        params = [p for _, p in model.net.named_parameters()]
        with _frozen_bn_statistics(model):
            loss = nn.functional.cross_entropy(model(images), labels)
            grads = torch.autograd.grad(loss, params)
    finally:
        model.train(was_training)
    gradients = {
        name: g.detach().clone()
        for (name, _), g in zip(model.net.named_parameters(), grads, strict=True)
    }
    return Observation(
        model_config=dict(model.config),
        weights=weights,
        gradients=gradients,
        batch_size=len(images),
        labels=labels.clone(),
        bn_mode=bn_mode,
        loss=float(loss.detach()),
        knows_labels=knows_labels,
        knows_batch_size=knows_batch_size,
        metadata=dict(metadata or {}),
        truth=GroundTruth(images.detach().clone(), labels.clone(), list(ids or [])),
    )


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
    header = {
        "format": FORMAT,
        "model_config": observation.model_config,
        "batch_size": observation.batch_size,
        "bn_mode": observation.bn_mode,
        "loss": observation.loss,
        "knows_labels": observation.knows_labels,
        "knows_batch_size": observation.knows_batch_size,
        "kind": observation.kind,
        "defense": observation.defense,
        "metadata": observation.metadata,
    }
    save_file(tensors, str(path), metadata={"gradleak": json.dumps(header)})
    truth_file = truth_path(path)
    if observation.truth is not None:
        truth = observation.truth
        save_file(
            {"images": truth.images.contiguous(), "labels": truth.labels.contiguous()},
            str(truth_file),
            metadata={
                "gradleak": json.dumps(
                    {"format": TRUTH_FORMAT, "evaluation_only": True, "ids": truth.ids}
                )
            },
        )
    elif truth_file.exists():
        truth_file.unlink()
    return path


def truth_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name.removesuffix(".safetensors") + ".truth.safetensors")


def load_observation(path: str | Path, *, with_truth: bool = True) -> Observation:
    """Read an observation written by :func:`save_observation` and validate it against its model.

    Raises GradleakError if the file is missing, not a gradleak observation, or its gradients do
    not fit the model it names.
    """
    path = Path(path)
    tensors, header = _read_safetensors(path, FORMAT)
    weights = {k[len("weight/") :]: v for k, v in tensors.items() if k.startswith("weight/")}
    gradients = {k[len("grad/") :]: v for k, v in tensors.items() if k.startswith("grad/")}
    try:
        observation = Observation(
            model_config=header["model_config"],
            weights=weights,
            gradients=gradients,
            batch_size=int(header["batch_size"]),
            labels=tensors.get("labels"),
            bn_mode=header["bn_mode"],
            loss=header.get("loss"),
            knows_labels=bool(header["knows_labels"]),
            knows_batch_size=bool(header["knows_batch_size"]),
            kind=header.get("kind", "gradient"),
            defense=header.get("defense") or {},
            metadata=header.get("metadata") or {},
        )
    except (KeyError, TypeError, ValueError) as err:
        raise GradleakError(f"{path}: malformed observation header ({err})") from None
    if observation.kind != "gradient":
        raise GradleakError(f"{path}: observation kind {observation.kind!r} is not supported")
    if not isinstance(observation.model_config, dict):
        raise GradleakError(f"{path}: malformed observation header (model_config is not a dict)")
    try:
        model = observation.build_model()
    except GradleakError as err:
        raise GradleakError(f"{path}: {err}") from None
    except (TypeError, ValueError) as err:
        raise GradleakError(f"{path}: cannot rebuild the model it names ({err})") from None
    try:
        observation.validate(model)
    except GradleakError as err:
        raise GradleakError(f"{path}: {err}") from None
    truth_file = truth_path(path)
    if with_truth and truth_file.exists():
        truth_tensors, truth_header = _read_safetensors(truth_file, TRUTH_FORMAT)
        if "images" not in truth_tensors or "labels" not in truth_tensors:
            raise GradleakError(f"{truth_file}: ground-truth file lacks images or labels")
        observation.truth = GroundTruth(
            truth_tensors["images"], truth_tensors["labels"], list(truth_header.get("ids", []))
        )
    return observation


def _read_safetensors(path: Path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict]:
    if not path.exists():
        raise GradleakError(f"no such file: {path}")
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
    except json.JSONDecodeError:
        raise GradleakError(f"{path}: corrupt JSON header") from None
    if not isinstance(header, dict):
        raise GradleakError(f"{path}: corrupt JSON header (not an object)")
    if header.get("format") != expected_format:
        raise GradleakError(
            f"{path}: expected a {expected_format} file, found {header.get('format')!r}"
        )
    return tensors, header


def _load_state(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = net.state_dict()
    _check_fit(
        "observed weights do not fit the model",
        expected={k: tuple(v.shape) for k, v in own.items()},
        got={k: tuple(v.shape) for k, v in state.items()},
        optional=("num_batches_tracked",),
    )
    net.load_state_dict(state, strict=False)


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
