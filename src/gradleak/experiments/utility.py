"""What a defense costs: the test accuracy of a model trained with it, at a fixed budget.

A defense is only worth its leakage numbers next to its price in accuracy (Huang et al.,
"Evaluating Gradient Inversion Attacks and Defenses in Federated Learning", NeurIPS 2021,
Sec. 5 and Table 3, report both for every defense). :func:`defense_accuracy` trains a copy of a
model by plain federated SGD with one client per step: at each step the client draws a seeded
batch of its training images and computes its *defended* step with
:func:`gradleak.threat.observation.defended_client` -- the very function
:func:`gradleak.threat.observe` records for the attacks -- and the server applies what it
receives as an SGD (or heavy-ball momentum) step ``w <- w - lr * g``. No FedAvg rounds: every
step is one client gradient, so the leak that ``observe`` measures and the cost measured here
are the same client's.

Defenses that account for the training (DP-SGD's ``sample_rate`` and ``steps``, Abadi et al.
2016, Sec. 3.1) get them from the budget unless given (:func:`accounted`), so DP's epsilon is
that of the whole training. :class:`UtilityStore` keeps the finished settings of an audit or a
benchmark in one JSON file, so an interrupted run never trains one again.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradleak.data import ImageSet
from gradleak.defenses.client import ClientBatch
from gradleak.defenses.registry import get_defense
from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier
from gradleak.records import environment, json_safe, write_json

FORMAT = "gradleak.utility/1"
OPTIMIZERS = ("sgd", "momentum")
#: Accounting parameters a defense may take, filled from the training when neither they nor
#: an alternative to them is given: ``name -> (f(budget, number of training images),
#: alternatives)``. DP's ``sample_rate`` q = B / N may be given as ``dataset_size`` N instead.
ACCOUNTING: dict[str, tuple[Callable[[UtilityBudget, int], float | int], tuple[str, ...]]] = {
    "sample_rate": (lambda budget, n: budget.batch_size / n, ("dataset_size",)),
    "steps": (lambda budget, n: budget.steps, ()),
}

Defenses = Sequence[tuple[str, dict]]
Progress = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class UtilityBudget:
    """The training that prices a defense.

    Attributes:
        steps: server steps, each one client batch.
        batch_size: images per client batch, drawn uniformly without replacement per step.
        lr: the server's learning rate.
        optimizer: ``"sgd"`` (``w <- w - lr g``) or ``"momentum"`` (heavy ball, ``momentum``).
        momentum: the momentum coefficient of ``"momentum"``.
        seed: seeds the batches and the defenses' randomness (noise, mixing, DP's sampling).
        bn_mode: the client's BatchNorm mode; in ``"train"`` the running statistics are
            re-estimated on the training images after training, before testing.
        partners: other training images offered to data defenses (MixUp, InstaHide) per step.
    """

    steps: int = 600
    batch_size: int = 32
    lr: float = 0.005
    optimizer: str = "momentum"
    momentum: float = 0.9
    seed: int = 0
    bn_mode: str = "train"
    partners: int = 256

    def check(self) -> UtilityBudget:
        """``self`` if every value is usable; GradleakError naming the first that is not."""
        if self.steps < 1:
            raise GradleakError(f"utility training needs at least 1 step, got {self.steps}")
        if self.batch_size < 1:
            raise GradleakError(f"utility batch size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise GradleakError(f"utility learning rate must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise GradleakError(f"unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}")
        if not 0 <= self.momentum < 1:
            raise GradleakError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.bn_mode not in ("train", "eval"):
            raise GradleakError(f"bn_mode must be 'train' or 'eval', got {self.bn_mode!r}")
        if self.partners < 0:
            raise GradleakError(f"partners must be >= 0, got {self.partners}")
        return self


def accounted(defenses: Defenses, budget: UtilityBudget, n_train: int) -> list[tuple[str, dict]]:
    """``defenses`` checked against the registry, with the accounting parameters they take
    (:data:`ACCOUNTING`: ``sample_rate = batch_size / n_train`` and ``steps``) filled from the
    training unless given. Give the same list to ``observe`` so that the observed step
    records the epsilon of the whole training."""
    filled = []
    for entry in defenses:
        if not (isinstance(entry, tuple | list) and len(entry) == 2 and isinstance(entry[1], dict)):
            raise GradleakError(f"a defense is a (name, params) pair, got {entry!r}")
        name, params = entry
        defense = get_defense(name)
        params = dict(params)
        for key, (value, alternatives) in ACCOUNTING.items():
            if key in defense.parameters and not {key, *alternatives} & set(params):
                params[key] = value(budget, n_train)
        filled.append((defense.name, defense.check(params)))
    return filled


def defense_accuracy(
    model: ImageClassifier,
    train: ImageSet,
    test: ImageSet,
    defenses: Defenses,
    budget: UtilityBudget,
    progress: Progress | None = None,
) -> dict:
    """Train a copy of ``model`` on ``train`` with ``defenses`` for ``budget.steps`` steps and
    measure its accuracy on ``test`` (``model`` itself is left unchanged).

    Args:
        model: the initial model (the server's).
        train, test: training and held-out images (disjoint; never the attacked images).
        defenses: ``(name, params)`` of :mod:`gradleak.defenses`, applied by the client at every
            step; accounting parameters are filled by :func:`accounted`.
        budget: the training.
        progress: ``progress(done, total, {"loss": ...})`` after every step.

    Returns:
        ``accuracy`` on ``test``, ``undefended`` (no defense), ``steps``, ``seconds``, ``loss``
        (mean over the last tenth of the steps), ``nonfinite_steps`` (steps whose update held
        NaN/inf), ``defenses`` (the filled ``(name, params)``) and ``facts``: each defense's
        record at the last step (e.g. DP's ``epsilon``), and ``epsilon`` when one reports it.

    Raises:
        GradleakError: an empty or mis-shaped image set, an unknown defense or parameter, or a
            bad budget.
    """
    from gradleak.threat.observation import defended_client

    budget.check()
    _check_images(model, train, "training")
    _check_images(model, test, "test")
    if budget.batch_size > len(train):
        raise GradleakError(
            f"utility batch size {budget.batch_size} exceeds the {len(train)} training images"
        )
    filled = accounted(defenses, budget, len(train))
    mixing = any(get_defense(name).stage == "data" for name, _ in filled)
    net = copy.deepcopy(model).cpu()
    net.train(budget.bn_mode == "train")
    named = list(net.net.named_parameters())
    optimizer = torch.optim.SGD(
        [p for _, p in named],
        lr=budget.lr,
        momentum=budget.momentum if budget.optimizer == "momentum" else 0.0,
    )
    losses: list[float] = []
    records: list[dict] = []
    nonfinite = 0
    start = time.perf_counter()
    for step in range(budget.steps):
        generator = torch.Generator().manual_seed(budget.seed * 1_000_003 + step)
        order = torch.randperm(len(train), generator=generator)
        batch = order[: budget.batch_size]
        client = ClientBatch(
            net,
            train.images[batch],
            train.labels[batch],
            budget.bn_mode,
            **(_partners(train, order, budget) if mixing else {}),
        )
        gradients, loss, records = defended_client(
            net, client, filled, seed=budget.seed * 1_000_003 + step
        )
        finite = all(bool(torch.isfinite(g).all()) for g in gradients.values())
        nonfinite += not finite
        for name, p in named:
            p.grad = gradients[name].to(p.dtype).reshape(p.shape)
        optimizer.step()
        losses.append(loss)
        if progress is not None:
            progress(step + 1, budget.steps, {"loss": loss})
    if budget.bn_mode == "train" and net.has_batchnorm():
        _estimate_bn_statistics(net, train.images, budget.batch_size)
    accuracy = classification_accuracy(net, test)
    tail = losses[-max(1, len(losses) // 10) :]
    epsilon = next((r["epsilon"] for r in records if "epsilon" in r), None)
    return json_safe(
        {
            "accuracy": accuracy,
            "undefended": not filled,
            "steps": budget.steps,
            "seconds": time.perf_counter() - start,
            "loss": sum(tail) / len(tail),
            "nonfinite_steps": nonfinite,
            "defenses": [[name, params] for name, params in filled],
            "facts": records,
            "epsilon": epsilon,
            "train_size": len(train),
            "test_size": len(test),
        }
    )


def classification_accuracy(model: ImageClassifier, test: ImageSet, chunk: int = 500) -> float:
    """The fraction of ``test`` that ``model`` (in eval mode) classifies right."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), chunk):
            logits = model(test.images[start : start + chunk])
            correct += int((logits.argmax(1) == test.labels[start : start + chunk]).sum())
    model.train(was_training)
    return correct / len(test)


def utility_split(
    private: str = "cifar10",
    *,
    source: str = "cifar10:aux",
    n_train: int | None = None,
    n_test: int = 1000,
    seed: int = 0,
    size: int = 32,
    channels: int = 3,
) -> tuple[ImageSet, ImageSet]:
    """Training and test images for :func:`defense_accuracy`: the auxiliary images ``source``
    without near-copies of the ``private`` ones (the images the attacks target are never trained
    on), split by a seeded permutation into ``n_test`` held-out images and at most ``n_train``
    training images, both in permutation order (the source may be sorted by class; see
    :func:`gradleak.experiments.build.split_indices`)."""
    from gradleak.experiments import build
    from gradleak.experiments.spec import ImagesSpec, Split

    if n_test < 1:
        raise GradleakError(f"the test set needs at least 1 image, got n_test={n_test}")
    exclude = ImagesSpec(private, size=size, channels=channels)

    def part(name: str, first: int | None) -> ImageSet:
        split = Split(seed, name, held_out=n_test)
        spec = ImagesSpec(source, size, channels, exclude=exclude, split=split, first=first)
        return build.images(spec)

    return part("rest", n_train), part("held_out", None)


# ---------------------------------------------------------------------- the store
def utility_key(
    model: ImageClassifier,
    train: ImageSet,
    test: ImageSet,
    defenses: Defenses,
    budget: UtilityBudget,
) -> str:
    """A digest of everything that determines :func:`defense_accuracy`'s result: the model's
    architecture and weights, the images and labels, the filled defenses and the budget."""
    from gradleak.threat.observation import weights_sha256

    weights = {k: v for k, v in model.net.state_dict().items()}
    content = {
        "model": model.config,
        "weights": weights_sha256(weights),
        "train": _data_sha256(train),
        "test": _data_sha256(test),
        "defenses": [[n, p] for n, p in accounted(defenses, budget, max(1, len(train)))],
        "budget": dataclasses.asdict(budget),
    }
    text = json.dumps(json_safe(content), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class UtilityStore:
    """Finished :func:`defense_accuracy` results in one JSON file, keyed by :func:`utility_key`.

    The file is rewritten atomically after every finished setting (temporary file, then rename),
    so an interrupted audit or benchmark loses at most the setting in training, and the same
    call afterwards returns the stored result without training again.

    Examples::

        >>> store = UtilityStore("out/utility.json")
        >>> record = store.accuracy(model, train, test, [("noise", {"sigma": 0.01})], budget)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        if self.path.exists():
            try:
                content = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                raise GradleakError(f"{self.path} is not readable JSON; move it away") from None
            if not isinstance(content, dict) or content.get("format") != FORMAT:
                raise GradleakError(f"{self.path} is not a gradleak utility store ({FORMAT})")
            self.records = dict(content.get("records") or {})

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, key: str, record: dict) -> dict:
        """Store ``record`` under ``key`` and rewrite the file atomically."""
        self.records[key] = json_safe(record)
        write_json(self.path, {"format": FORMAT, "records": self.records})
        return self.records[key]

    def accuracy(
        self,
        model: ImageClassifier,
        train: ImageSet,
        test: ImageSet,
        defenses: Defenses,
        budget: UtilityBudget,
        progress: Progress | None = None,
    ) -> dict:
        """:func:`defense_accuracy`'s result, from the store when this setting finished before
        (``"stored": True``), else trained now and stored with the versions that made it."""
        key = utility_key(model, train, test, defenses, budget)
        found = self.get(key)
        if found is not None:
            return {**found, "stored": True}
        result = defense_accuracy(model, train, test, defenses, budget, progress)
        record = {
            **result,
            "key": key,
            "model": model.config,
            "budget": dataclasses.asdict(budget),
            "versions": environment(),
        }
        return {**self.put(key, record), "stored": False}


# ---------------------------------------------------------------------- helpers
def _check_images(model: ImageClassifier, data: ImageSet, role: str) -> None:
    if not isinstance(data, ImageSet):
        raise GradleakError(f"the {role} images must be an ImageSet, got {type(data).__name__}")
    if len(data) == 0:
        raise GradleakError(f"the {role} set is empty: measuring utility needs images")
    if tuple(data.images.shape[1:]) != tuple(model.input_shape):
        raise GradleakError(
            f"{role} images of shape {list(data.images.shape[1:])} do not fit model "
            f"'{model.config.get('name')}' which takes {list(model.input_shape)}"
        )
    classes = int(model.config["num_classes"])
    if int(data.labels.min()) < 0 or int(data.labels.max()) >= classes:
        raise GradleakError(f"{role} labels must lie in [0, {classes})")


def _partners(train: ImageSet, order: torch.Tensor, budget: UtilityBudget) -> dict:
    """The client's other images for data defenses: the next ``budget.partners`` of this step's
    permutation (never the batch), with their labels where :class:`ClientBatch` takes them."""
    others = order[budget.batch_size : budget.batch_size + budget.partners]
    extra = {"partners": train.images[others]}
    if "partner_labels" in {f.name for f in dataclasses.fields(ClientBatch)}:
        extra["partner_labels"] = train.labels[others]
    return extra


def _estimate_bn_statistics(model: ImageClassifier, images: torch.Tensor, batch: int) -> None:
    """Replace every BatchNorm layer's running statistics by their average over ``images``
    (the client steps leave them untouched: ``observe`` never moves them)."""
    layers = [m for m in model.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            if len(images[start : start + batch]) > 1:
                model(images[start : start + batch])
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum


def _data_sha256(data: ImageSet) -> str:
    digest = hashlib.sha256()
    digest.update(data.images.detach().cpu().contiguous().numpy().tobytes())
    digest.update(data.labels.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


__all__ = [
    "ACCOUNTING",
    "UtilityBudget",
    "UtilityStore",
    "accounted",
    "defense_accuracy",
    "classification_accuracy",
    "utility_key",
    "utility_split",
]
