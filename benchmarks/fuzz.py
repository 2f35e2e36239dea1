"""Benchmark: seeded random mutations of observation and image files, run through the CLI.

Valid files are made once by ``gradleak observe`` (LeNet on 2 real CIFAR-10 images: a gradient,
a FedAvg update; a ConvNet gradient with BatchNorm statistics; PNG, JPEG and 16-bit PNG images).
Every case mutates one of them (truncation, byte flips, edits of the safetensors header and of
the gradleak JSON header, extreme tensor values, a truth file that does not match, a FIFO or a
folder in place of a file, ...) and runs ``gradleak analyze``, ``gradleak attack --method idlg
--iterations 2`` or ``--method inverting_gradients --iterations 2`` on an observation, or
``gradleak observe`` on an image folder, in-process. A case must end with exit status 0, or 2
and exactly one ``error:`` line; a traceback (an exception that escapes, or an attack that
failed with an unexpected exception), another status or a hang (past ``--timeout``) is a bug.

Each case runs in a forked child of this (warmed-up) process, so that a hang is killed.
Writes ``OUT/fuzz.json`` and ``OUT/fuzz.md``.

    python benchmarks/fuzz.py [--cases 500] [--seed 0] [--timeout 20] [--out benchmarks/results]

``tests/test_fuzz.py`` runs the same cases in-process (fewer of them).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OUTCOMES = ("exit 0", "exit 2", "traceback", "hang", "other exit", "bad error output")
IMAGES = "cifar10/test_first20_lossless.npz"
#: Attacks the observation cases run (a tiny budget: the files are the subject, not the attack).
COMMANDS = (
    ("analyze",),
    ("attack", "--method", "idlg", "--iterations", "2"),
    ("attack", "--method", "inverting_gradients", "--iterations", "2"),
)
Runner = Callable[[list[str]], tuple[int, str, str]]


@dataclass
class Case:
    """One mutated file and the command that reads it."""

    index: int
    kind: str
    description: str
    args: list[str]
    folder: Path  # the case's files
    out: Path | None = None  # the attack's output folder (its results say whether it crashed)


# ---------------------------------------------------------------------- valid files
def make_bases(folder: Path, shared: Path, run: Runner) -> dict[str, Path]:
    """The valid files every case starts from, made by ``gradleak observe``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images = str(shared / IMAGES)
    common = ["--images", images, "--n-images", "2", "--image-size", "16"]
    made = {
        "gradient": ["--model", "lenet"],
        "update": ["--model", "lenet", "--local-steps", "2", "--lr", "0.1"],
        "bn": ["--model", "convnet", "--width", "2", "--knows-bn-statistics"],
    }
    bases = {}
    for name, options in made.items():
        path = folder / f"{name}.safetensors"
        code, out, err = run(["observe", *options, *common, "--out", str(path), "--overwrite"])
        if code != 0:
            raise RuntimeError(f"observe {name} failed ({code}): {out}{err}")
        bases[name] = path
    with np.load(shared / IMAGES, allow_pickle=False) as data:
        pixels = data["images"][:2]
    Image.fromarray(pixels[0]).save(folder / "image.png")
    Image.fromarray(pixels[1]).save(folder / "image.jpg", quality=90)
    gray16 = (pixels[0].astype(np.uint16).mean(-1) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "image16.png")
    bases.update(png=folder / "image.png", jpg=folder / "image.jpg", png16=folder / "image16.png")
    from gradleak.models import build_model, save_weights

    bases["model"] = save_weights(build_model("lenet", image_size=16), folder / "model.safetensors")
    return bases


# ---------------------------------------------------------------------- safetensors surgery
def split_safetensors(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join_safetensors(header: dict, data: bytes) -> bytes:
    text = json.dumps(header, allow_nan=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def edit_gradleak(blob: bytes, edit: Callable[[dict], None]) -> bytes:
    header, data = split_safetensors(blob)
    meta = json.loads(header["__metadata__"]["gradleak"])
    edit(meta)
    header["__metadata__"]["gradleak"] = json.dumps(meta, allow_nan=True)
    return join_safetensors(header, data)


def rewrite_tensors(blob: bytes, edit: Callable[[dict], None]) -> bytes:
    """Re-save with ``edit(tensors)`` applied (numpy arrays by name), metadata kept."""
    from safetensors.numpy import load, save

    header, _ = split_safetensors(blob)
    tensors = load(blob)
    edit(tensors)
    return save(tensors, metadata=header.get("__metadata__"))


def huge_values() -> list:
    return [
        0, -1, 1, 2, 3, 7, 2**31, 2**32 + 1, 10**12, 2**63, 2**64, -(2**63), 10**30, 1e308,
        1.5, -0.0, float("nan"), float("inf"), float("-inf"), "12", "", "x" * 300, None,
        True, False, [], [1, 2], {}, {"a": 1}, [[[[]]]],
    ]  # fmt: skip


def _pick(rng: random.Random, options):
    return options[rng.randrange(len(options))]


# ---------------------------------------------------------------------- observation mutations
META_FIELDS = (
    "format", "batch_size", "bn_mode", "loss", "knows_labels", "knows_batch_size", "kind",
    "local", "knows_local", "clients", "defense", "metadata", "knows_bn_statistics",
    "weights_sha256",
)  # fmt: skip
CONFIG_FIELDS = (
    "name", "num_classes", "in_channels", "image_size", "width", "mean", "std",
    "normalization", "server", "factory_kwargs", "architecture", "seed", "weights",
)  # fmt: skip
LOCAL_FIELDS = (
    "lr", "steps", "epochs", "batch_size", "optimizer", "momentum", "betas", "eps",
    "weight_decay", "shuffle", "order_seed", "order",
)  # fmt: skip
SPECIAL_META = {
    "model_config.name": ["vgg", "resnet20", "convnet", "mlp4", "x.py:f", "os:system", ""],
    "model_config.width": [1, 6, 11, 13, 10**6, 10**12, 65_536],
    "model_config.image_size": [1, 2, 15, 17, 32, 4096, 4097, 10**6],
    "model_config.num_classes": [1, 9, 11, 100_000, 100_001, 10**11],
    "model_config.in_channels": [1, 2, 4, 1024, 10**6],
    "model_config.normalization": ["cifar10", "imagenet", "none", "custom", "bogus"],
    "model_config.server": [{"name": "imprint", "units": 10**7}, {"name": "trap"}, {"units": 4}],
    "bn_mode": ["eval", "train", "sometimes"],
    "kind": ["update", "gradient", "fedavg"],
    "batch_size": [1, 2, 3, 4, 10**9, 10**10],
    "clients": [1, 2, 3, 10**9],
    "knows_labels": [False],
    "knows_batch_size": [False],
    "knows_bn_statistics": [True, False],
    "format": ["gradleak.ground_truth/1", "gradleak.observation/2"],
    "local.steps": [1, 3, 10**12],
    "local.epochs": [1, 10**12],
    "local.optimizer": ["adam", "momentum", "lbfgs"],
    "local.order": [[[0]], [[0, 1], [1]], [[5]], [[-1]], [[]], [[0, 1]] * 3, "x"],
    "local.betas": [[0.9], [0.9, 0.999, 1], ["a", "b"], [1, 1]],
    "local.momentum": [1.0, 2.0],
    "local.batch_size": [1, 2, 10**12],
    "knows_local.lr": [False],
    "knows_local.steps": [False],
    "defense": [{"applied": "x"}, {"applied": [1, 2]}, {"applied": [{"name": "dp"}]}],
}


def mutate_meta(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """Set, delete or retype one entry of the gradleak JSON header."""
    roll = rng.random()
    if roll < 0.45:
        path = _pick(rng, sorted(SPECIAL_META))
        value = _pick(rng, SPECIAL_META[path] + huge_values()[:6])
    elif roll < 0.6:
        path = "model_config." + _pick(rng, CONFIG_FIELDS)
        value = _pick(rng, huge_values())
    elif roll < 0.75:
        path = "local." + _pick(rng, LOCAL_FIELDS)
        value = _pick(rng, huge_values())
    else:
        path = _pick(rng, META_FIELDS)
        value = _pick(rng, huge_values())
    delete = rng.random() < 0.15

    def edit(meta: dict) -> None:
        *parents, key = path.split(".")
        node = meta
        for parent in parents:
            if not isinstance(node.get(parent), dict):
                node[parent] = {}
            node = node[parent]
        if delete:
            node.pop(key, None)
        else:
            node[key] = value

    what = f"delete {path}" if delete else f"{path} = {value!r}"[:120]
    return edit_gradleak(blob, edit), what


def mutate_meta_text(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """Replace the gradleak JSON text itself: truncated, not JSON, deeply nested, not a dict."""
    header, data = split_safetensors(blob)
    text = header["__metadata__"]["gradleak"]
    choice = rng.randrange(5)
    if choice == 0:
        new, what = text[: rng.randrange(len(text))], "gradleak JSON truncated"
    elif choice == 1:
        new, what = "[" * 100_000 + "]" * 100_000, "gradleak JSON nested 100000 deep"
    elif choice == 2:
        new, what = (
            _pick(rng, ["[]", "1", "null", '"x"', "NaN", "{}"]),
            "gradleak JSON not an object",
        )
    elif choice == 3:
        new, what = text.replace("lenet", "lenet\u0000"), "gradleak JSON with a NUL"
    else:
        new, what = text + "x", "gradleak JSON with trailing garbage"
    header["__metadata__"]["gradleak"] = new
    return join_safetensors(header, data), what


def mutate_entry(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """Edit one tensor entry of the safetensors header: shape, dtype, offsets, name."""
    header, data = split_safetensors(blob)
    names = sorted(k for k in header if k != "__metadata__")
    name = _pick(rng, names)
    entry = header[name]
    choice = rng.randrange(5)
    if choice == 0:
        shapes = [
            [],
            [0],
            [2**40],
            [-1],
            [2**64],
            [1.5],
            "x",
            [[2]],
            list(reversed(entry["shape"])),
        ]
        entry["shape"] = _pick(rng, shapes + [[*entry["shape"], 1], [2**32, 2**32]])
        what = f"{name} shape {entry['shape']}"
    elif choice == 1:
        entry["dtype"] = _pick(
            rng, ["F64", "F16", "BF16", "I8", "U8", "BOOL", "I64", "I32", "F8_E4M3", "C64", "X", 5]
        )
        what = f"{name} dtype {entry['dtype']}"
    elif choice == 2:
        start, end = entry["data_offsets"]
        entry["data_offsets"] = _pick(
            rng, [[0, 0], [0, 2**63], [-1, end], [end, start], [start, end + 8], [start, 2**64]]
        )
        what = f"{name} data_offsets {entry['data_offsets']}"
    elif choice == 3:
        new = _pick(rng, [name + "x", name.replace("grad/", "weight/"), "bn/" + name, "labels"])
        header[new] = header.pop(name)
        what = f"tensor {name} renamed {new}"
    else:
        del header[name]
        what = f"tensor {name} removed"
    return join_safetensors(header, data), what


def mutate_values(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """A valid file whose tensors hold extreme or wrong values (labels, gradients, BN)."""
    header, _ = split_safetensors(blob)
    names = sorted(k for k in header if k != "__metadata__")
    name = _pick(rng, [n for n in names if not n.startswith("weight/")] or names)
    choice = rng.randrange(6)
    special = _pick(rng, [np.nan, np.inf, -np.inf, 1e38, 0.0, 1e-45, -3e38])

    def edit(tensors: dict) -> None:
        value = tensors[name]
        if value.dtype.kind in "iu":  # labels
            tensors[name] = np.full_like(value, _pick(rng, [-1, 10, 11, 2**40, -(2**63)]))
        elif choice == 0:
            tensors[name] = np.full_like(value, special)
        elif choice == 1:
            flat = value.reshape(-1).copy()
            flat[rng.randrange(flat.size)] = special
            tensors[name] = flat.reshape(value.shape)
        elif choice == 2:
            tensors[name] = value.astype(_pick(rng, [np.float64, np.float16, np.int32]))
        elif choice == 3:
            tensors[name] = value.reshape(-1)[: max(1, value.size // 2)].copy()
        elif choice == 4:
            for other in list(tensors):
                if other.startswith("grad/"):
                    tensors[other] = np.zeros_like(tensors[other])
        else:
            tensors[name] = (value * 1e30).astype(value.dtype)

    what = f"values of {name} (edit {choice}, {special})"
    return rewrite_tensors(blob, edit), what


def truncate(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    cut = _pick(rng, [0, 1, 7, 8, 9]) if rng.random() < 0.2 else rng.randrange(len(blob))
    return blob[:cut], f"truncated at {cut} of {len(blob)} bytes"


def flip(rng: random.Random, blob: bytes, region: str = "anywhere") -> tuple[bytes, str]:
    data = bytearray(blob)
    (n,) = struct.unpack("<Q", blob[:8]) if len(blob) >= 8 else (len(blob),)
    low, high = {
        "header": (0, min(len(data), 8 + n)),
        "data": (min(len(data) - 1, 8 + n), len(data)),
    }.get(region, (0, len(data)))
    count = rng.randint(1, 8)
    for _ in range(count):
        i = rng.randrange(low, high)
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data), f"{count} bit flips in the {region}"


def mutate_weights(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """Weights edited by someone who also records their new sha256 (a crafted file)."""
    from safetensors.torch import load, save

    from gradleak.threat.observation import weights_sha256

    header, _ = split_safetensors(blob)
    tensors = load(blob)
    names = sorted(k for k in tensors if k.startswith("weight/"))
    name = _pick(rng, names)
    value = tensors[name]
    factor = _pick(rng, [0.0, -1.0, 1e30, 3e38, float("inf"), float("nan"), 1e-40])
    if value.is_floating_point():
        tensors[name] = value * factor if rng.random() < 0.7 else value.fill_(factor)
    else:
        tensors[name] = value.fill_(_pick(rng, [-1, 2**62, 0]))
    meta = json.loads(header["__metadata__"]["gradleak"])
    meta["weights_sha256"] = weights_sha256(
        {k[len("weight/") :]: v for k, v in tensors.items() if k.startswith("weight/")}
    )
    header["__metadata__"]["gradleak"] = json.dumps(meta)
    return save(tensors, metadata=header["__metadata__"]), f"{name} x {factor}, sha256 updated"


OBSERVATION_MUTATIONS = {
    "truncate": truncate,
    "flip-header": lambda rng, blob: flip(rng, blob, "header"),
    "flip-data": lambda rng, blob: flip(rng, blob, "data"),
    "tensor-entry": mutate_entry,
    "gradleak-header": mutate_meta,
    "gradleak-json": mutate_meta_text,
    "tensor-values": mutate_values,
    "weights-resigned": mutate_weights,
}
#: How often each observation mutation is drawn.
WEIGHTS = {
    "truncate": 8, "flip-header": 6, "flip-data": 12, "tensor-entry": 10, "gradleak-header": 34,
    "gradleak-json": 5, "tensor-values": 15, "weights-resigned": 10,
}  # fmt: skip


def mutate_truth(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """The observation stays valid; its truth file does not match it or is corrupt."""
    choice = rng.randrange(4)
    if choice == 0:

        def edit(tensors: dict) -> None:
            key = _pick(rng, ["images", "labels"])
            value = tensors[key]
            bad = np.nan if value.dtype.kind == "f" else 99
            tensors[key] = _pick(
                rng,
                [
                    value[:1],
                    np.concatenate([value, value]),
                    value[..., :8],
                    value.astype(np.float64),
                    value.reshape(-1),
                    np.full_like(value, bad),
                ],
            )

        return rewrite_tensors(blob, edit), "truth tensors reshaped or out of range"
    if choice == 1:
        return truncate(rng, blob)
    if choice == 2:
        return mutate_entry(rng, blob)
    header, data = split_safetensors(blob)
    meta = json.loads(header["__metadata__"]["gradleak"])
    meta[_pick(rng, ["ids", "format", "evaluation_only"])] = _pick(rng, huge_values())
    header["__metadata__"]["gradleak"] = json.dumps(meta)
    return join_safetensors(header, data), "truth header edited"


# ---------------------------------------------------------------------- image mutations
def png_chunks(blob: bytes) -> list[tuple[bytes, bytes]]:
    chunks, i = [], 8
    while i + 8 <= len(blob):
        (length,) = struct.unpack(">I", blob[i : i + 4])
        kind, body = blob[i + 4 : i + 8], blob[i + 8 : i + 8 + length]
        chunks.append((kind, body))
        i += 12 + length
    return chunks


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for kind, body in chunks:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)
    return out


def mutate_ihdr(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """A PNG whose header (with a valid CRC) states other dimensions, depth or colour type."""
    chunks = png_chunks(blob)
    width, height, depth, colour, *rest = struct.unpack(">IIBBBBB", chunks[0][1])
    field_ = rng.randrange(3)
    if field_ == 0:
        width, height = _pick(rng, [(0, 0), (1, 10**5), (30_000, 30_000), (2**31 - 1, 1), (33, 31)])
    elif field_ == 1:
        depth = _pick(rng, [1, 2, 4, 16, 3, 0, 255])
    else:
        colour = _pick(rng, [0, 2, 3, 4, 6, 1, 7])
    chunks[0] = (b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, *rest))
    return png_from_chunks(chunks), f"IHDR {width}x{height} depth {depth} colour {colour}"


def mutate_image(rng: random.Random, blob: bytes, suffix: str) -> tuple[bytes, str]:
    choice = rng.randrange(4 if suffix == ".png" else 3)
    if choice == 0:
        return truncate(rng, blob)
    if choice == 1:
        return flip(rng, blob)
    if choice == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2048))), "random bytes"
    return mutate_ihdr(rng, blob)


def random_high_depth(rng: random.Random, path: Path) -> str:
    """A valid image of more than 8 bits: random 16-bit gray PNG, or 32-bit int / float TIFF."""
    from PIL import Image

    gen = np.random.default_rng(rng.randrange(2**32))
    mode = _pick(rng, ["I;16", "I", "F"])
    if mode == "I;16":
        Image.fromarray(gen.integers(0, 65536, (24, 24), dtype=np.uint16)).save(path)
    elif mode == "I":
        path = path.with_suffix(".tif")
        Image.fromarray(gen.integers(-(2**20), 2**20, (24, 24)).astype(np.int32)).save(path)
    else:
        path = path.with_suffix(".tif")
        Image.fromarray(gen.random((24, 24)).astype(np.float32) * 7 - 3).save(path)
    return f"valid {mode} image {path.name}"


# ---------------------------------------------------------------------- cases
def make_case(index: int, seed: int, bases: dict[str, Path], folder: Path) -> Case:
    """Case ``index`` of the run seeded ``seed``: its mutated files under ``folder``."""
    rng = random.Random(seed * 1_000_003 + index)
    where = folder / f"case{index:04d}"
    where.mkdir(parents=True, exist_ok=True)
    roll = rng.random()
    if roll < 0.18:
        return _image_case(rng, index, bases, where)
    if roll < 0.24:
        return _weights_case(rng, index, bases, where)
    base = _pick(rng, ["gradient", "update", "update", "bn"])
    observation = where / "o.safetensors"
    source = bases[base]
    shutil.copyfile(source, observation)
    truth = observation.with_name("o.truth.safetensors")
    shutil.copyfile(source.with_name(f"{base}.truth.safetensors"), truth)
    if roll < 0.28:
        blob, what = mutate_truth(rng, truth.read_bytes())
        truth.write_bytes(blob)
        kind = "truth file"
    elif roll < 0.32:
        kind, what = "special file", _special_observation(rng, observation, bases)
    else:
        kind = rng.choices(sorted(WEIGHTS), [WEIGHTS[k] for k in sorted(WEIGHTS)])[0]
        blob, what = OBSERVATION_MUTATIONS[kind](rng, observation.read_bytes())
        if rng.random() < 0.2:  # two mutations at once
            second = _pick(rng, sorted(OBSERVATION_MUTATIONS))
            try:
                blob, more = OBSERVATION_MUTATIONS[second](rng, blob)
                what += f"; then {more}"
            except Exception:  # noqa: BLE001 - the first left nothing the second could parse
                pass
        observation.write_bytes(blob)
    command = _pick(rng, COMMANDS)
    args = [command[0], str(observation), *command[1:]]
    out = None
    if command[0] == "attack":
        out = where / "attack"
        args += ["--out", str(out)]
    return Case(index, kind, f"{base}: {what}", args, where, out)


def mutate_config(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """Set, delete or retype one entry of a weights file's model config."""
    header, data = split_safetensors(blob)
    config = json.loads(header["__metadata__"]["config"])
    key = _pick(rng, CONFIG_FIELDS)
    special = SPECIAL_META.get(f"model_config.{key}", [])
    value = _pick(rng, special + huge_values()) if rng.random() < 0.85 else None
    if value is None and rng.random() < 0.5:
        config.pop(key, None)
        what = f"config: delete {key}"
    else:
        config[key] = value
        what = f"config: {key} = {value!r}"[:120]
    header["__metadata__"]["config"] = json.dumps(config, allow_nan=True)
    return join_safetensors(header, data), what


def _weights_case(rng: random.Random, index: int, bases: dict[str, Path], where: Path) -> Case:
    """A model's weights file as a server sends it (``analyze`` inspects it), mutated."""
    path = where / "m.safetensors"
    mutate = _pick(rng, [mutate_config, mutate_config, mutate_config, truncate, flip, mutate_entry])
    blob, what = mutate(rng, bases["model"].read_bytes())
    path.write_bytes(blob)
    return Case(index, "weights file", what, ["analyze", str(path)], where)


def _special_observation(rng: random.Random, path: Path, bases: dict[str, Path]) -> str:
    path.unlink()
    choice = rng.randrange(6)
    if choice == 0:
        os.mkfifo(path)
        return "a FIFO"
    if choice == 1:
        path.mkdir()
        return "a folder"
    if choice == 2:
        path.write_bytes(b"")
        return "an empty file"
    if choice == 3:
        path.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
        return "random bytes"
    if choice == 4:
        shutil.copyfile(bases["gradient"].with_name("gradient.truth.safetensors"), path)
        return "a truth file given as the observation"
    path.symlink_to(path)
    return "a link to itself"


def _image_case(rng: random.Random, index: int, bases: dict[str, Path], where: Path) -> Case:
    images = where / "images"
    images.mkdir()
    shutil.copyfile(bases["png"], images / "a.png")  # one good image beside the bad one
    choice = rng.randrange(8)
    if choice <= 3:
        source = bases[_pick(rng, ["png", "jpg", "png16"])]
        blob, what = mutate_image(rng, source.read_bytes(), source.suffix)
        (images / f"b{source.suffix}").write_bytes(blob)
        what = f"{source.name}: {what}"
    elif choice == 4:
        what = random_high_depth(rng, images / "b.png")
    elif choice == 5:
        os.mkfifo(images / "b.png")
        what = "a FIFO named b.png"
    elif choice == 6:
        (images / "b.jpg").write_bytes(b"")
        what = "an empty b.jpg"
    else:
        (images / "b.jpg").mkdir()
        what = "a folder named b.jpg"
    channels = _pick(rng, ["1", "3"])
    args = ["observe", "--model", "lenet", "--images", str(images), "--image-size", "16",
            "--channels", channels, "--out", str(where / "o.safetensors")]  # fmt: skip
    return Case(index, "image", what, args, where)


# ---------------------------------------------------------------------- running
class CaseTimeout(BaseException):
    """A case ran past its time (a BaseException: no handler of the code under test takes it)."""


def judge(case: Case, code, out: str, err: str, escaped: str | None) -> tuple[str, str]:
    """The outcome of a finished case, and a detail for a bad one."""
    if escaped is not None:
        return "traceback", escaped
    failed = _attack_traceback(case)
    if failed:
        return "traceback", failed
    if "Traceback (most recent call last)" in out + err:
        return "traceback", (out + err)[-2000:]
    if code == 0:
        return "exit 0", ""
    if code != 2:
        return "other exit", f"exit {code!r}: {(out + err)[-500:]}"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if len(errors) != 1:
        return "bad error output", err[-500:]
    return "exit 2", errors[0]


def _attack_traceback(case: Case) -> str | None:
    """An attack that failed with an unexpected exception (the runner keeps its traceback)."""
    if case.out is None or not (case.out / "results.json").is_file():
        return None
    try:
        results = json.loads((case.out / "results.json").read_text())
    except (OSError, ValueError):
        return None
    for record in results.get("cases", []):
        if record.get("traceback"):
            return record["traceback"][-2000:]
    return None


def run_in_process(args: list[str]) -> tuple[int, str, str]:
    """``gradleak ARGS`` in this process: (exit status, stdout, stderr); exceptions escape."""
    from gradleak.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["gradleak", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit_:
        code = 0 if exit_.code is None else exit_.code
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def fifo_release(folder: Path, seconds: float):
    """After ``seconds``, open every FIFO under ``folder`` read-write and close it again: a
    reader blocked in ``open`` is released and reads an empty file. A separate process does
    it: a reader blocked in native code may hold the GIL, and no signal handler runs while
    it waits. Yields a list that holds the FIFOs once released."""
    fifos = [p for p in folder.rglob("*") if p.is_fifo()] if folder.is_dir() else []
    released: list[Path] = []
    if not fifos:
        yield released
        return
    script = f'sleep {seconds}; for f; do exec 3<>"$f"; exec 3>&-; done'
    helper = subprocess.Popen(
        ["sh", "-c", script, "sh", *map(str, fifos)], stderr=subprocess.DEVNULL
    )
    try:
        yield released
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
        elif helper.returncode == 0:
            released.extend(fifos)


def run_case(case: Case, run: Runner, timeout: float) -> dict:
    """Run ``case`` in this process with an alarm after ``timeout`` seconds (and its FIFOs
    released then, see :func:`fifo_release`)."""

    def alarm(signum, frame):
        raise CaseTimeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    start = time.perf_counter()
    code, out, err, escaped, released = None, "", "", None, []
    try:
        with fifo_release(case.folder, timeout) as released:
            code, out, err = run(case.args)
    except CaseTimeout:
        blocked = f"blocked reading the FIFO {released[0].name}" if released else ""
        return _record(case, "hang", blocked or f"still running after {timeout:.0f} s", start)
    except Exception:  # noqa: BLE001 - the fuzzer records what escaped the CLI
        escaped = traceback.format_exc()[-3000:]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if released:
        return _record(case, "hang", f"blocked reading the FIFO {released[0].name}", start)
    outcome, detail = judge(case, code, out, err, escaped)
    return _record(case, outcome, detail, start)


def _record(case: Case, outcome: str, detail: str, start: float) -> dict:
    return {
        "index": case.index,
        "kind": case.kind,
        "mutation": case.description,
        "command": case.args[0] + (f" {case.args[3]}" if case.args[0] == "attack" else ""),
        "outcome": outcome,
        "detail": detail,
        "seconds": round(time.perf_counter() - start, 3),
    }


def run_forked(case: Case, timeout: float) -> dict:
    """``run_case`` in a forked child, killed once ``timeout`` plus a grace has passed."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        try:
            record = run_case(case, run_in_process, timeout)
            payload = json.dumps(record).encode()
        except BaseException:  # noqa: BLE001 - report whatever happened to the parent
            payload = json.dumps(
                _record(case, "traceback", traceback.format_exc()[-3000:], time.perf_counter())
            ).encode()
        with os.fdopen(write, "wb") as pipe:
            pipe.write(payload)
        os._exit(0)
    os.close(write)
    start = time.perf_counter()
    chunks = []
    with os.fdopen(read, "rb") as pipe:
        os.set_blocking(pipe.fileno(), False)
        while True:
            try:
                chunk = pipe.read()
            except BlockingIOError:
                chunk = None
            if chunk:
                chunks.append(chunk)
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                try:
                    rest = pipe.read()
                except BlockingIOError:
                    rest = None
                chunks.append(rest or b"")
                break
            if time.perf_counter() - start > timeout + 10:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return _record(case, "hang", f"killed after {timeout + 10:.0f} s", start)
            time.sleep(0.01)
    payload = b"".join(chunks)
    if not payload:
        return _record(case, "traceback", "the child died without a result", start)
    return json.loads(payload)


# ---------------------------------------------------------------------- report
def summarize(records: list[dict]) -> dict:
    by_kind: dict[str, Counter] = {}
    for record in records:
        by_kind.setdefault(record["kind"], Counter())[record["outcome"]] += 1
    return {
        "cases": len(records),
        "by_outcome": {o: sum(r["outcome"] == o for r in records) for o in OUTCOMES},
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "by_command": dict(Counter(r["command"] for r in records)),
    }


def write_report(out: Path, report: dict) -> None:
    from gradleak.records import write_json

    write_json(out / "fuzz.json", report)
    summary = report["summary"]
    lines = [
        "# Fuzzing the files gradleak reads",
        "",
        f"`{report['command']}`: {summary['cases']} seeded mutations (seed {report['seed']}) "
        f"in {report['seconds']:.0f} s, timeout {report['timeout']:.0f} s per case, torch "
        f"{report['versions']['torch']} on {report['threads']} thread(s), "
        f"{report['versions']['platform']}.",
        "",
        "| outcome | cases |",
        "|---|---|",
        *(f"| {o} | {n} |" for o, n in summary["by_outcome"].items()),
        "",
        "| mutation kind | " + " | ".join(OUTCOMES) + " |",
        "|---|" + "---|" * len(OUTCOMES),
        *(
            f"| {kind} | " + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |"
            for kind, counts in summary["by_kind"].items()
        ),
        "",
        "Commands: " + ", ".join(f"{c} ({n})" for c, n in sorted(summary["by_command"].items())),
        "",
    ]
    bad = [r for r in report["records"] if r["outcome"] not in ("exit 0", "exit 2")]
    if bad:
        lines += ["## Failures", ""]
        lines += [
            f"- case {r['index']} ({r['kind']}: {r['mutation']}; {r['command']}): {r['outcome']}"
            f" ({r['detail'].strip().splitlines()[-1][:200] if r['detail'].strip() else ''})"
            for r in bad
        ]
        lines.append("")
    (out / "fuzz.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    import torch

    from gradleak.data import shared_data_dir
    from gradleak.records import environment

    torch.set_num_threads(1)
    os.environ["COLUMNS"] = "1000"
    os.environ.pop("GRADLEAK_DEVICE", None)
    start = time.perf_counter()
    records = []
    with tempfile.TemporaryDirectory(prefix="gradleak-fuzz-") as tmp:
        bases = make_bases(Path(tmp) / "bases", shared_data_dir(), run_in_process)
        for i, command in enumerate(COMMANDS):  # warm up: the children start with it imported
            out = ["--out", f"{tmp}/warm{i}"] if command[0] == "attack" else []
            run_in_process([command[0], str(bases["gradient"]), *command[1:], *out])
        for index in range(args.cases):
            case = make_case(index, args.seed, bases, Path(tmp) / "cases")
            record = run_forked(case, args.timeout)
            record["detail"] = record["detail"].replace(tmp, "<tmp>")
            if record["outcome"] in ("exit 0", "exit 2"):
                record["detail"] = record["detail"][:300]
            records.append(record)
            if record["outcome"] not in ("exit 0", "exit 2") or (index + 1) % 25 == 0:
                tally = Counter(r["outcome"] for r in records)
                print(
                    f"[{index + 1}/{args.cases}] {record['kind']}: {record['mutation'][:80]} -> "
                    f"{record['outcome']} ({record['seconds']:.1f} s); so far {dict(tally)}",
                    flush=True,
                )
            shutil.rmtree(Path(tmp) / "cases" / f"case{index:04d}", ignore_errors=True)
    report = {
        "benchmark": "fuzz",
        "command": f"python benchmarks/fuzz.py --cases {args.cases} --seed {args.seed} "
        f"--timeout {args.timeout:g}",
        "seed": args.seed,
        "timeout": args.timeout,
        "threads": torch.get_num_threads(),
        "versions": environment(),
        "seconds": time.perf_counter() - start,
        "summary": summarize(records),
        "records": records,
    }
    write_report(args.out, report)
    print((args.out / "fuzz.md").read_text())


if __name__ == "__main__":
    main()
