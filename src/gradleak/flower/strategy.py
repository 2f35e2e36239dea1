"""A Flower strategy wrapper that records every client's update as a gradleak observation.

:class:`AuditStrategy` wraps any strategy of Flower's Message API (``flwr.serverapp.strategy``:
``FedAvg``, ``FedProx``, ``FedAdam``, a DP wrapper, your own) and delegates every decision to
it. On the way it keeps, per round and client node, the arrays the strategy sends and the arrays
the client returns, turns each reply into an update observation
(:func:`gradleak.flower.capture.update_observation`) and writes it to
``OUT/round-RRR/node-N.safetensors``; ``OUT/captures.json`` lists every capture (or why a reply
could not be captured) and is rewritten atomically as rounds go.

Auditing never breaks the federation: a reply that cannot be captured, a full disk or a failing
attack is logged and recorded, never raised into Flower. Attacks configured with ``attacks=``
run out of band, in one background thread, so a round waits only for its files to be written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import torch

from gradleak.errors import GradleakError
from gradleak.flower.capture import (
    CAPTURES,
    CAPTURES_FORMAT,
    attack_capture,
    background_worker,
    short_error,
    update_observation,
)
from gradleak.models import ImageClassifier, build_model
from gradleak.models.custom import is_own_model
from gradleak.records import environment, json_safe, write_json
from gradleak.threat import LOCAL_FACTS, LocalTraining, save_observation

try:
    import flwr
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import Result, Strategy
except ImportError as err:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "gradleak.flower needs Flower: pip install 'gradleak[flower]' (flwr 1.42 or newer)"
    ) from err

LOG = logging.getLogger("flwr")  # Flower's logger: audit lines appear among the round's lines


class AuditStrategy(Strategy):
    """Wrap ``strategy``; record each client's update as an observation file.

    Args:
        strategy: the Flower strategy that runs the federation (Message API).
        model: the model the clients train: a registry name (``"lenet"``), your own factory
            (``"path/to/task.py:Net"``), the keyword arguments of
            :func:`gradleak.models.build_model`, or an :class:`ImageClassifier`. The arrays the
            strategy sends must be its ``net``'s state dict (by name, or in order).
        out: folder of the observation files and ``captures.json``; a folder that already holds
            captures is refused (nothing is ever overwritten).
        local: the clients' local training as the run configures it, a
            :class:`gradleak.threat.LocalTraining` or its fields (``lr``, ``batch_size``,
            ``steps`` or ``epochs``, ``optimizer``, ...).
        hidden: facts of ``LOCAL_FACTS`` (lr, steps, local_batch_size, optimizer, order) the
            audited server is assumed not to know; the others are known.
        knows_batch_size: whether the attacker may use the number of images a client reports.
        bn_mode: the clients' BatchNorm mode in local training.
        attacks: names of gradleak attacks to run on every capture out of band, in one
            lowest-priority process; reconstructions go beside the capture, results into
            ``captures.json`` (``()``: none; attack the files later with
            ``gradleak flower-audit``).
        attack_settings: per attack name, its settings (e.g. ``{"inverting_gradients":
            {"iterations": 200}}``).
        images_key: the reply's metric holding the client's number of training images
            (default: the strategy's ``weighted_by_key``, Flower's ``"num-examples"``).
        arrays_key: the key of the arrays in messages (default: the strategy's
            ``arrayrecord_key``, ``"arrays"``).

    Example::

        strategy = AuditStrategy(FedAvg(), model="lenet", out="audit/",
                                 local={"lr": 0.01, "batch_size": 1, "steps": 1})
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        model: str | Mapping | ImageClassifier,
        out: str | Path,
        local: LocalTraining | Mapping,
        hidden: Sequence[str] = (),
        knows_batch_size: bool = True,
        bn_mode: str = "train",
        attacks: Sequence[str] = (),
        attack_settings: Mapping[str, Mapping] | None = None,
        images_key: str | None = None,
        arrays_key: str | None = None,
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise GradleakError(
                f"AuditStrategy wraps a Flower Message-API strategy, got {type(strategy).__name__}"
            )
        self.strategy = strategy
        self.model = _model(model)
        self.local = local if isinstance(local, LocalTraining) else _local(local)
        unknown = sorted(set(hidden) - set(LOCAL_FACTS))
        if unknown:
            raise GradleakError(f"unknown hidden facts {unknown}; choose from {LOCAL_FACTS}")
        self.hidden = tuple(hidden)
        self.knows_batch_size = knows_batch_size
        if bn_mode not in ("train", "eval"):
            raise GradleakError(f"bn_mode must be 'train' or 'eval', got {bn_mode!r}")
        self.bn_mode = bn_mode
        self.images_key = images_key or getattr(strategy, "weighted_by_key", "num-examples")
        self.arrays_key = arrays_key or getattr(strategy, "arrayrecord_key", "arrays")
        self.attacks = tuple(attacks)
        self.attack_settings = {k: dict(v) for k, v in (attack_settings or {}).items()}
        _check_attacks(self.attacks, self.attack_settings)
        self.out = Path(out)
        _claim(self.out)
        self.captures: list[dict] = []
        self._sent: dict[tuple[int, int], ArrayRecord] = {}
        self._lock = threading.Lock()
        self._worker: ProcessPoolExecutor | None = None
        self._pending: list[Future] = []
        self._header = {
            "format": CAPTURES_FORMAT,
            "strategy": type(strategy).__name__,
            "model": self.model.config,
            "local": self.local.as_dict(),
            "hidden": list(self.hidden),
            "knows_batch_size": knows_batch_size,
            "bn_mode": bn_mode,
            "attacks": list(self.attacks),
            "attack_settings": self.attack_settings,
            "versions": {**environment(), "flwr": flwr.__version__},
        }
        self._write_manifest()

    # ------------------------------------------------------------------ delegation
    def __getattr__(self, name):
        # Only called for attributes this wrapper lacks: the wrapped strategy's settings.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def summary(self) -> None:
        LOG.info("\t├──> gradleak audit: update observations to %s", self.out)
        self.strategy.summary()

    def configure_evaluate(self, server_round: int, arrays, config, grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        return self.strategy.aggregate_evaluate(server_round, replies)

    # ------------------------------------------------------------------ recording
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        try:
            for message in messages:
                sent = message.content.get(self.arrays_key)
                if isinstance(sent, ArrayRecord):
                    self._sent[(server_round, message.metadata.dst_node_id)] = sent
        except Exception as err:  # noqa: BLE001 - auditing never breaks a round
            LOG.warning(
                "gradleak audit: could not record round %s's messages: %s", server_round, err
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        started = time.perf_counter()
        try:
            self._capture_round(server_round, replies)
        except Exception as err:  # noqa: BLE001 - auditing never breaks a round
            LOG.warning("gradleak audit: round %s not captured: %s", server_round, err)
        LOG.info(
            "gradleak audit: round %s, %d update(s) recorded in %.2f s",
            server_round,
            sum(c["round"] == server_round and c["status"] == "captured" for c in self.captures),
            time.perf_counter() - started,
        )
        return self.strategy.aggregate_train(server_round, replies)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args, **kwargs) -> Result:
        """Run the federation as :meth:`Strategy.start` does, then wait for the out-of-band
        attacks (the rounds never wait for them). Interrupted, it keeps every capture and the
        attacks finished, and drops the queued ones."""
        try:
            result = super().start(grid, initial_arrays, *args, **kwargs)
        except BaseException:
            self.close(wait=False)
            raise
        self.close()
        return result

    def close(self, wait: bool = True) -> None:
        """Let the out-of-band attacks finish (``wait``) or drop those not started."""
        if self._worker is not None:
            left = sum(not job.done() for job in self._pending)
            if left and wait:
                LOG.info("gradleak audit: waiting for %d out-of-band attack job(s)", left)
            self._worker.shutdown(wait=wait, cancel_futures=not wait)
            self._worker = None
        self._write_manifest()

    # ------------------------------------------------------------------ internals
    def _capture_round(self, server_round: int, replies: list[Message]) -> None:
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            entry = {"round": server_round, "node": node, "status": "not captured"}
            started = time.perf_counter()
            try:
                if reply.has_error():
                    raise GradleakError(f"the client replied with an error: {reply.error.reason}")
                observation = self._observation(server_round, node, reply, entry)
                path = self.out / f"round-{server_round:03d}" / f"node-{node}.safetensors"
                save_observation(observation, path)
                entry.update(status="captured", file=str(path.relative_to(self.out)))
                if self.attacks:
                    self._submit(path, entry)
            except Exception as err:  # noqa: BLE001 - recorded, never raised into Flower
                entry["reason"] = str(err) if isinstance(err, GradleakError) else short_error(err)
                LOG.warning(
                    "gradleak audit: round %s, node %s not attackable: %s",
                    server_round,
                    node,
                    entry["reason"],
                )
            entry["seconds"] = round(time.perf_counter() - started, 4)
            with self._lock:
                self.captures.append(entry)
        for key in [k for k in self._sent if k[0] <= server_round]:
            del self._sent[key]
        self._write_manifest()

    def _observation(self, server_round: int, node: int, reply: Message, entry: dict):
        sent = self._sent.get((server_round, node))
        if sent is None:
            raise GradleakError("no arrays were sent to this node this round")
        returned = reply.content.get(self.arrays_key)
        if not isinstance(returned, ArrayRecord):
            raise GradleakError(f"the reply holds no ArrayRecord under {self.arrays_key!r}")
        metrics = _metrics(reply)
        entry["metrics"] = metrics
        images = metrics.get(self.images_key)
        if images is None:
            raise GradleakError(f"the reply reports no {self.images_key!r}")
        if not float(images).is_integer():
            raise GradleakError(f"the reply's {self.images_key!r} is {images}, not a count")
        entry["images"] = int(images)
        return update_observation(
            self.model,
            _tensors(sent),
            _tensors(returned),
            images=int(images),
            local=self.local,
            hidden=self.hidden,
            knows_batch_size=self.knows_batch_size,
            bn_mode=self.bn_mode,
            metadata={
                "source": "flower",
                "strategy": type(self.strategy).__name__,
                "round": server_round,
                "node": node,
                "client_metrics": metrics,
            },
        )

    def _submit(self, path: Path, entry: dict) -> None:
        if self._worker is None:
            # One low-priority process: it takes the CPU the federation leaves idle.
            self._worker = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=background_worker
            )
        entry["attacks"] = {name: {"status": "queued"} for name in self.attacks}
        own = self.model.config.get("name")
        job = self._worker.submit(
            attack_capture,
            str(path),
            str(self.out),
            self.attacks,
            self.attack_settings,
            own if is_own_model(own) else None,
        )
        job.add_done_callback(lambda done: self._attacked(done, path, entry))
        self._pending.append(job)

    def _attacked(self, job: Future, path: Path, entry: dict) -> None:
        try:
            results = job.result()
        except Exception as err:  # noqa: BLE001 - e.g. the worker died: recorded, not raised
            results = {
                name: {"status": "failed", "error": short_error(err)} for name in self.attacks
            }
        for name, result in results.items():
            if result["status"] == "failed":
                LOG.warning("gradleak audit: %s on %s failed: %s", name, path.name, result["error"])
        with self._lock:
            entry["attacks"] = results
        self._write_manifest()

    def _write_manifest(self) -> None:
        with self._lock:
            content = {**self._header, "captures": json.loads(json.dumps(json_safe(self.captures)))}
        try:
            write_json(self.out / CAPTURES, content)
        except OSError as err:  # e.g. a full disk: the federation goes on
            LOG.warning("gradleak audit: could not write %s: %s", self.out / CAPTURES, err)


# ---------------------------------------------------------------------- helpers
def _model(model) -> ImageClassifier:
    if isinstance(model, ImageClassifier):
        return model
    if isinstance(model, str):
        return build_model(model)
    if isinstance(model, Mapping):
        return build_model(**dict(model))
    raise GradleakError(
        f"model must be a name, build_model's arguments or an ImageClassifier, got {model!r}"
    )


def _local(facts: Mapping) -> LocalTraining:
    known = {f.name for f in dataclasses.fields(LocalTraining)}
    unknown = sorted(set(facts) - known)
    if unknown:
        raise GradleakError(f"unknown local-training fields {unknown}; known: {sorted(known)}")
    return LocalTraining.from_dict(dict(facts))


def _check_attacks(attacks: Sequence[str], settings: Mapping[str, Mapping]) -> None:
    if not attacks and not settings:
        return
    from gradleak.attacks import get_attack

    for name in {*attacks, *settings}:
        get_attack(name, **settings.get(name, {}))  # unknown names and settings fail now


def _claim(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise GradleakError(f"audit folder {out} is a file")
    manifest = out / CAPTURES
    if manifest.exists():
        try:
            captures = json.loads(manifest.read_text()).get("captures")
        except (OSError, json.JSONDecodeError, AttributeError):
            captures = True
        if captures:
            raise GradleakError(
                f"{out} already holds the captures of a federation; choose another folder "
                "or move it away (captures are never overwritten)"
            )
    out.mkdir(parents=True, exist_ok=True)


def _tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(array.numpy().copy()) for key, array in record.items()}


def _metrics(reply: Message) -> dict:
    metrics: dict = {}
    for record in reply.content.metric_records.values():
        metrics.update(dict(record))
    return metrics
