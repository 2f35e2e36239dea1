"""The learned inverter of Learning to Invert (Wu, Chen, Guo and Weinberger, UAI 2023,
https://arxiv.org/abs/2210.10880): a network trained to map a model's gradient to the batch.

    x_hat = f_psi( phi(g) ),   psi = argmin E_{(x, y) ~ aux} || f_psi(phi(grad L(x, y))) - x ||^2

with phi the feature hashing of :mod:`gradleak.learned.hashing` (Sec. 3 of the paper) and f a
three-layer MLP. One inverter serves one model architecture and one set of weights.

Input normalization (ours; the paper does not fix one): every parameter tensor's gradient is
divided by its root-mean-square over the training gradients (so that deep and shallow layers weigh
alike in the sketch; linear, stored in the artifact), hashed, and the sketch h is fed as its
direction ``sqrt(d) h / ||h||`` plus the standardized ``log ||h||``. The direction does not change
with the gradient's scale (which shrinks as the model trains and with the loss), the log-norm
keeps the scale as one feature (it says something about the batch size).

Batches (B > 1): the MLP has Bmax output slots, nested so that a batch of B fills the first B
(trained with the assignment-invariant loss of :func:`assignment_loss`); a batch-size head
(a separate small MLP on the same features) classifies B in 1..Bmax.
"""

from __future__ import annotations

import functools
import json
import math
import os

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from gradleak.devices import module_device
from gradleak.errors import GradleakError
from gradleak.learned.hashing import FeatureHasher, flatten_gradients
from gradleak.learning import load_artifact
from gradleak.models.weights import weight_drift
from gradleak.records import json_safe
from gradleak.threat import Observation

KIND = "inverter"


class InverterNet(nn.Module):
    """Three-layer MLP (features -> hidden -> hidden -> Bmax images, sigmoid) and a size head.

    Shape:
        (N, d + 1) features -> images (N, Bmax, C, H, W) in [0, 1], size logits (N, Bmax).
    """

    def __init__(
        self, features: int, hidden: int, image_shape: tuple[int, int, int], max_batch: int
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.max_batch = int(max_batch)
        self.decoder = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.max_batch * math.prod(self.image_shape)),
        )
        head = min(hidden, 256)
        self.size_head = nn.Sequential(
            nn.Linear(features, head), nn.ReLU(), nn.Linear(head, self.max_batch)
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.sigmoid(self.decoder(features))
        return images.view(len(features), self.max_batch, *self.image_shape), self.size_head(
            features
        )


class GradientEncoder:
    """Gradient -> network input: per-tensor scaling, feature hashing, direction and log-norm.

    Args:
        names, sizes: the model's parameter tensors (``model.net.named_parameters()`` order).
        hasher: the count sketch.
        layer_scale: (T,) one factor per parameter tensor (1 / RMS of its training gradients).
        log_norm: (2,) mean and std of ``log ||h||`` over the training gradients.
    """

    def __init__(
        self,
        names: list[str],
        sizes: list[int],
        hasher: FeatureHasher,
        layer_scale: torch.Tensor | None = None,
        log_norm: torch.Tensor | None = None,
    ):
        self.names, self.sizes, self.hasher = list(names), [int(s) for s in sizes], hasher
        self.layer_scale = torch.ones(len(names)) if layer_scale is None else layer_scale.float()
        self.log_norm = torch.tensor([0.0, 1.0]) if log_norm is None else log_norm.float()

    @property
    def features(self) -> int:
        return self.hasher.dim + 1

    def hash(self, flat: torch.Tensor) -> torch.Tensor:
        """The linear part: scaled, hashed gradients (N, P) -> (N, d)."""
        sizes = torch.tensor(self.sizes, device=flat.device)
        scale = torch.repeat_interleave(self.layer_scale.to(flat.device), sizes)
        return self.hasher(flat * scale)

    def hash_observation(self, observation: Observation) -> torch.Tensor:
        """(1, d): the hashed gradient of an observation (of an update: of its estimated mean
        gradient, :meth:`Observation.gradient_estimate`)."""
        gradients = observation.gradient_estimate().gradients
        return self.hash(flatten_gradients(gradients, self.names)[None])

    def normalize(self, hashed: torch.Tensor) -> torch.Tensor:
        """The non-linear part: (N, d) hashed -> (N, d + 1) direction and standardized log-norm."""
        norm = hashed.norm(dim=1, keepdim=True).clamp_min(1e-30)
        direction = hashed / norm * math.sqrt(hashed.shape[1])
        mean, std = self.log_norm.to(hashed.device)
        log_norm = (norm.log() - mean) / std
        return torch.cat([direction, log_norm], dim=1)


class Inverter:
    """A trained inverter for one model (architecture and weights); see the module docstring.

    Built by :func:`~gradleak.learned.train_inverter`, read back by :func:`load_inverter`.

    Shape:
        observation of B images -> images (B, C, H, W) in [0, 1].

    Examples::
        >>> inverter = load_inverter("lenet-cifar10.safetensors")
        >>> images = inverter.invert(observation)  # B = known or predicted batch size
    """

    def __init__(
        self,
        net: InverterNet,
        encoder: GradientEncoder,
        card: dict,
        model_weights: dict[str, torch.Tensor],
    ):
        self.net = net.eval()
        self.encoder = encoder
        self.card = card
        self.model_weights = model_weights
        low, high = card["batch_sizes"]
        self.batch_sizes = (int(low), int(high))

    @property
    def model_config(self) -> dict:
        return self.card["model_config"]

    def to(self, device: torch.device | str) -> Inverter:
        """Move the network and the encoder's statistics to ``device`` (in place); returns
        ``self``. Observations stay where they are: outputs come back on their device."""
        self.net.to(device)
        self.encoder.layer_scale = self.encoder.layer_scale.to(device)
        self.encoder.log_norm = self.encoder.log_norm.to(device)
        return self

    def check(self, observation: Observation) -> float:
        """Raise if ``observation`` is of another architecture; return the relative weight drift
        ``||w_obs - w_train|| / ||w_train||`` (0 when the server's weights are the trained ones)."""
        observed = json.loads(json.dumps(json_safe(observation.model_config)))
        if observed != self.model_config:
            differs = sorted(
                k
                for k in set(observed) | set(self.model_config)
                if observed.get(k) != self.model_config.get(k)
            )
            raise GradleakError(
                f"the inverter was trained for model {self.model_config.get('name')!r} with "
                f"another architecture than the observation's {observed.get('name')!r} "
                f"(differs in: {', '.join(differs)}); train an inverter for this model"
            )
        trained_mode = self.card.get("bn_mode")
        if self.card.get("has_batchnorm") and observation.bn_mode != trained_mode:
            raise GradleakError(
                f"the inverter was trained on BatchNorm {trained_mode}-mode gradients, the "
                f"observation is in {observation.bn_mode} mode"
            )
        return weight_drift(observation.weights, self.model_weights)

    @torch.no_grad()
    def _outputs(self, observation: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        self.check(observation)
        features = self.encoder.normalize(self.encoder.hash_observation(observation))
        images, logits = self.net(features.to(module_device(self.net)))
        return images[0].to(features.device), self._mask(logits)[0].to(features.device)

    def _mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Rule out batch sizes outside the trained range."""
        low, high = self.batch_sizes
        sizes = torch.arange(1, logits.shape[-1] + 1, device=logits.device)
        return logits.masked_fill((sizes < low) | (sizes > high), -torch.inf)

    def batch_size_probabilities(self, observation: Observation) -> torch.Tensor:
        """(Bmax,): the probability of every batch size 1..Bmax (index 0 is batch size 1)."""
        return self._outputs(observation)[1].softmax(-1)

    def predict_batch_size(self, observation: Observation) -> int:
        """The most probable batch size in the trained range."""
        return int(self.batch_size_probabilities(observation).argmax()) + 1

    def invert(self, observation: Observation, batch_size: int | None = None) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1]: the first B output slots.

        B is ``batch_size``, else the observation's known batch size, else the predicted one.
        """
        images, logits = self._outputs(observation)
        size = batch_size or observation.known_batch_size or int(logits.argmax()) + 1
        if not 1 <= size <= self.net.max_batch:
            raise GradleakError(
                f"the inverter returns at most {self.net.max_batch} images, asked for {size}"
            )
        return images[:size].clone()


def assignment_loss(
    predicted: torch.Tensor, target: torch.Tensor, sizes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error after the optimal assignment of true images to output slots.

    A batch of B true images is matched to the first B of the Bmax slots by
    ``scipy.optimize.linear_sum_assignment`` on the detached pairwise MSE, so that the loss does
    not depend on the (arbitrary) order of the batch.

    Args:
        predicted: (N, Bmax, ...) output slots.
        target: (N, Bmax, ...) true images; only the first ``sizes[n]`` of row n are used.
        sizes: (N,) batch sizes.

    Returns:
        ``(loss, order)``: the mean over used slots, and (N, Bmax) the slot each target went to
        (-1 for unused targets).
    """
    n, slots = predicted.shape[:2]
    flat_p, flat_t = predicted.reshape(n, slots, -1), target.reshape(n, slots, -1)
    with torch.no_grad():
        cost = torch.cdist(flat_p.detach(), flat_t.detach()).pow(2).cpu().numpy()
    order = torch.full((n, slots), -1, dtype=torch.long)
    rows, slot_index, target_index = [], [], []
    for i, size in enumerate(sizes.tolist()):
        slot, true = linear_sum_assignment(cost[i, :size, :size])
        order[i, true] = torch.from_numpy(slot)
        rows.append(np.full(size, i))
        slot_index.append(slot)
        target_index.append(true)
    device = predicted.device  # the assignment is solved on the CPU, the loss where it was
    rows_t = torch.from_numpy(np.concatenate(rows)).to(device)
    error = (
        flat_p[rows_t, torch.from_numpy(np.concatenate(slot_index)).to(device)]
        - flat_t[rows_t, torch.from_numpy(np.concatenate(target_index)).to(device)]
    )
    return error.pow(2).mean(), order


def inverter_tensors(inverter: Inverter) -> dict[str, torch.Tensor]:
    """Everything an inverter file holds: network, encoder statistics and the model's weights."""
    tensors = {f"net/{k}": v for k, v in inverter.net.state_dict().items()}
    tensors["encoder/layer_scale"] = inverter.encoder.layer_scale
    tensors["encoder/log_norm"] = inverter.encoder.log_norm
    tensors.update({f"model/{k}": v for k, v in inverter.model_weights.items()})
    return tensors


def cached_inverter(path: str | os.PathLike) -> Inverter:
    """:func:`load_inverter`, read once per file version (path and modification time) and
    process: attacks and experiments that use one inverter for many cases share it."""
    path = os.fspath(path)
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        stamp = None  # load_inverter says what is wrong
    return _cached(path, stamp)


@functools.lru_cache(maxsize=4)
def _cached(path: str, stamp: int | None) -> Inverter:
    return load_inverter(path)


def load_inverter(path: str | os.PathLike) -> Inverter:
    """Read an inverter written by :func:`~gradleak.learned.train_inverter`.

    Raises:
        GradleakError: missing or corrupt file, another kind of artifact, or tensors that do not
            fit the card.
    """
    tensors, card = load_artifact(path, kind=KIND)
    try:
        net = InverterNet(
            card["hash_dim"] + 1,
            card["hidden"],
            tuple(card["image_shape"]),
            card["batch_sizes"][1],
        )
        net.load_state_dict(
            {k[len("net/") :]: v for k, v in tensors.items() if k.startswith("net/")}
        )
        encoder = GradientEncoder(
            card["parameters"]["names"],
            card["parameters"]["sizes"],
            FeatureHasher(card["hash_dim"], card["hash_seed"]),
            tensors["encoder/layer_scale"],
            tensors["encoder/log_norm"],
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise GradleakError(f"{path} is a corrupt inverter file ({err})") from None
    weights = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    return Inverter(net, encoder, card, weights)
