"""Files from anyone, read through the CLI where the user meets them (``gradleak observe``,
``analyze``, ``attack``): each problem ends in one ``error:`` line and exit status 2, in bounded
time and memory; images of more than 8 bits keep their range."""

from __future__ import annotations

import json
import os
import shutil
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gradleak.errors import GradleakError
from gradleak.models import build_model
from gradleak.threat import observe
from gradleak.threat.observation import load_observation, save_observation, truth_path
from tests.clitools import call_main
from tests.test_fuzz import fuzz


class _TooSlow(BaseException):
    """A command ran past its time, or waited on a FIFO (a BaseException: the code under test
    does not take it)."""


@contextmanager
def within(seconds: float, folder: Path | None = None):
    """Fail, rather than hang, when the block runs longer than ``seconds``; a FIFO under
    ``folder`` that the block waits on is released then (no signal reaches a reader blocked
    in native code)."""

    def alarm(signum, frame):
        raise _TooSlow(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        with fuzz.fifo_release(folder or Path("/nonexistent"), seconds) as released:
            yield
        if released:
            raise _TooSlow(f"blocked reading the FIFO {released[0]}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_error(code: int, err: str) -> str:
    """The one ``error:`` line of a run that must exit with status 2."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, (code, err)
    assert "Traceback" not in err
    return lines[0]


def run(monkeypatch, capsys, *args, seconds: float = 30, folder=None) -> tuple[int, str, str]:
    with within(seconds, folder):
        return call_main(monkeypatch, capsys, *args)


def observe_images(monkeypatch, capsys, tmp_path, images, *extra) -> tuple[int, str, str]:
    """``gradleak observe --model lenet --images IMAGES [EXTRA] --out tmp_path/o.safetensors``."""
    args = ("observe", "--model", "lenet", "--images", images, *extra)
    out = tmp_path / "o.safetensors"
    return run(monkeypatch, capsys, *args, "--out", out, seconds=20, folder=tmp_path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, cifar10) -> Path:
    """A valid LeNet observation of 2 real CIFAR-10 images, with its truth file."""
    images, labels = cifar10.images[:2], cifar10.labels[:2]
    observation = observe(build_model("lenet"), images, labels, ids=cifar10.ids[:2])
    return save_observation(observation, tmp_path_factory.mktemp("saved") / "o.safetensors")


def copy_observation(saved: Path, folder: Path, name: str = "o") -> Path:
    path = folder / f"{name}.safetensors"
    shutil.copyfile(saved, path)
    shutil.copyfile(truth_path(saved), truth_path(path))
    return path


def edit_header(saved: Path, folder: Path, edit) -> Path:
    """A copy of ``saved`` (and its truth) whose JSON header ``edit(header)`` changed."""
    path = copy_observation(saved, folder)
    with safe_open(str(saved), "pt") as handle:
        header = json.loads(handle.metadata()["gradleak"])
    edit(header)
    save_file(load_file(str(saved)), str(path), metadata={"gradleak": json.dumps(header)})
    return path


def edit_tensors(source: Path, target: Path, edit) -> Path:
    """``source`` re-saved as ``target`` with ``edit(tensors)`` applied, metadata kept."""
    with safe_open(str(source), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(source))
    edit(tensors)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(target), metadata=metadata)
    return target


def truth_images(path: Path) -> torch.Tensor:
    return load_file(str(truth_path(path)))["images"]


# ---------------------------------------------------------------------- images of > 8 bits
def _save_high_depth(path: Path, mode: str, generator: np.random.Generator) -> Path:
    if mode == "I;16":  # a 16-bit PNG
        Image.fromarray(generator.integers(0, 65536, (32, 32), dtype=np.uint16)).save(path)
        return path
    tif = path.with_suffix(".tif")
    if mode == "I":  # 32-bit integers within 16 bits, as Pillow reads some 16-bit files
        Image.fromarray(generator.integers(0, 65536, (32, 32)).astype(np.int32)).save(tif)
    else:  # floats in [0, 1]
        Image.fromarray(generator.random((32, 32)).astype(np.float32)).save(tif)
    assert Image.open(tif).mode == mode
    return tif


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_images_of_more_than_8_bits_keep_their_range(monkeypatch, capsys, tmp_path, mode):
    folder = tmp_path / "images"
    folder.mkdir()
    _save_high_depth(folder / "a.png", mode, np.random.default_rng(0))
    out = tmp_path / "o.safetensors"
    code, _, err = observe_images(monkeypatch, capsys, tmp_path, folder, "--channels", "1")
    assert code == 0, err
    mean = float(truth_images(out).mean())
    assert abs(mean - 0.5) < 0.03, mean  # uniform values: mean 0.5 (clipped: 0.997)


# ---------------------------------------------------------------------- image files
def _good(folder: Path, cifar10) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (cifar10.images[0].permute(1, 2, 0) * 255).round().byte().numpy()
    Image.fromarray(pixels).save(folder / "a.png")


def _truncated(path: Path, fmt: str, cifar10) -> None:
    pixels = (cifar10.images[1].permute(1, 2, 0) * 255).round().byte().numpy()
    Image.fromarray(pixels).save(path, format=fmt)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p, c: _truncated(p / "b.jpg", "JPEG", c), "cannot decode image 'b.jpg'"),
        (lambda p, c: _truncated(p / "b.png", "PNG", c), "cannot decode image 'b.png'"),
        (lambda p, c: (p / "b.png").write_bytes(b""), "b.png is empty (0 bytes)"),
        (lambda p, c: os.mkfifo(p / "b.png"), "b.png is a FIFO, not an image"),
    ],
    ids=["truncated-jpeg", "truncated-png", "zero-bytes", "fifo"],
)
def test_a_bad_image_in_a_folder_is_one_error_line(
    monkeypatch, capsys, tmp_path, cifar10, make, message
):
    folder = tmp_path / "images"
    _good(folder, cifar10)
    make(folder, cifar10)
    code, _, err = observe_images(monkeypatch, capsys, tmp_path, folder)
    assert message in one_error(code, err)


def test_special_files_given_as_images(monkeypatch, capsys, tmp_path, cifar10):
    os.mkfifo(tmp_path / "x.png")  # a FIFO: opening it would wait for a writer forever
    (tmp_path / "x.jpg").mkdir()
    (tmp_path / "empty.png").write_bytes(b"")
    for given, message in (
        ("x.png", "x.png is a FIFO, not an image"),
        ("x.jpg", "no images found in folder"),
        ("empty.png", "empty.png is empty (0 bytes)"),
    ):
        code, _, err = observe_images(monkeypatch, capsys, tmp_path, tmp_path / given)
        assert message in one_error(code, err)
    # a folder named like an image, beside a good image, is no image: the good one is read
    _good(tmp_path / "flat", cifar10)
    (tmp_path / "flat" / "b.jpg").mkdir()
    code, _, err = observe_images(monkeypatch, capsys, tmp_path, tmp_path / "flat")
    assert code == 0, err


def test_large_images_get_one_note_and_bombs_one_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns above, refuses above 2x
    Image.new("L", (40, 40), 128).save(tmp_path / "large.png")  # 1600 pixels: a warning
    Image.new("L", (50, 50), 128).save(tmp_path / "bomb.png")  # 2500 pixels: refused
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = observe_images(monkeypatch, capsys, tmp_path, tmp_path / "large.png")
    assert code == 0, err
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    notes = [line for line in err.splitlines() if "large.png" in line]
    assert len(notes) == 1 and "40x40 pixels" in notes[0] and "Warning" not in err
    for written in tmp_path.glob("o.*safetensors"):
        written.unlink()
    code, _, err = observe_images(monkeypatch, capsys, tmp_path, tmp_path / "bomb.png")
    line = one_error(code, err)
    assert "bomb.png" in line and "2,500 pixels" in line and "2,000" in line


# ---------------------------------------------------------------------- observation files
ATTACKS = [
    ("analyze",),
    ("attack", "--method", "inverting_gradients", "--iterations", "2"),
    ("attack", "--method", "idlg", "--iterations", "2"),
]


def _read(monkeypatch, capsys, path: Path, command: tuple, out: Path) -> tuple[int, str, str]:
    args = [command[0], path, *command[1:]]
    if command[0] == "attack":
        args += ["--out", out]
    return run(monkeypatch, capsys, *args)


@pytest.mark.parametrize("command", ATTACKS, ids=["analyze", "ig", "idlg"])
def test_labels_outside_the_models_classes_are_refused(
    monkeypatch, capsys, tmp_path, saved, command
):
    path = edit_tensors(saved, tmp_path / "o.safetensors", lambda t: t["labels"].fill_(10))
    code, _, err = _read(monkeypatch, capsys, path, command, tmp_path / "out")
    line = one_error(code, err)
    assert "labels must be classes of its model, in [0, 10)" in line and "'10'" in line


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.update(images=t["images"][:1]),
        lambda t: t.update(images=torch.cat([t["images"], t["images"]])),
        lambda t: t.update(images=t["images"][..., :16]),
        lambda t: t.update(labels=t["labels"][:1]),
    ],
    ids=["fewer-images", "more-images", "other-size", "fewer-labels"],
)
def test_a_truth_file_that_does_not_match_its_observation(
    monkeypatch, capsys, tmp_path, saved, edit
):
    path = copy_observation(saved, tmp_path)
    edit_tensors(truth_path(saved), truth_path(path), edit)
    code, _, err = _read(monkeypatch, capsys, path, ATTACKS[1], tmp_path / "out")
    line = one_error(code, err)
    assert f"ground truth {truth_path(path)} does not match observation {path}" in line


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("width", 10**12, "width must be at most 65536, got 1000000000000"),
        ("image_size", 10**6, "image_size must be at most 4096, got 1000000"),
        ("num_classes", 10**11, "num_classes must be at most 100000"),
        ("in_channels", 10**6, "in_channels must be at most 1024"),
        ("width", 13, "observed weights do not fit the model"),  # sized before it is built
        ("image_size", 4000, "'fc.weight' has shape [10, 768], the model expects [10, 12000000]"),
        ("num_classes", float("nan"), "num_classes must be a positive integer, got nan"),
        ("seed", 2**70, "model_config has unknown entries 'seed'"),
        ("weights", "/etc/hostname", "model_config has unknown entries 'weights'"),
    ],
)
def test_sizes_in_a_model_config_are_bounded_before_allocation(
    monkeypatch, capsys, tmp_path, saved, key, value, message
):
    path = edit_header(saved, tmp_path, lambda h: h["model_config"].update({key: value}))
    code, _, err = _read(monkeypatch, capsys, path, ATTACKS[0], tmp_path / "out")
    assert message in one_error(code, err)


def test_a_forward_pass_a_file_asks_for_is_bounded(monkeypatch, capsys, tmp_path, cifar10):
    """ResNet-20's weights do not depend on the image size: a file may claim 4096x4096."""
    observation = observe(build_model("resnet20"), cifar10.images[:2], cifar10.labels[:2])
    source = save_observation(observation, tmp_path / "r.safetensors")
    edited = tmp_path / "edited"
    edited.mkdir()
    path = edit_header(source, edited, lambda h: h["model_config"].update(image_size=4096))
    code, _, err = _read(monkeypatch, capsys, path, ATTACKS[0], tmp_path / "out")
    line = one_error(code, err)
    assert "a forward pass of its batch of 2 images of 3x4096x4096" in line


def test_model_sizes_from_options_are_bounded(monkeypatch, capsys, tmp_path, shared_dir):
    images = shared_dir / "cifar10" / "test_first20_lossless.npz"
    for options, word in (
        (["--width", "1000000000000"], "width"),
        (["--model", "mlp4", "--width", "60000"], "width"),  # 3.6e9 parameters
        (["--image-size", "100000"], "size"),
    ):
        model = [] if "--model" in options else ["--model", "lenet"]
        code, _, err = run(
            monkeypatch,
            capsys,
            "observe",
            *model,
            *options,
            "--images",
            images,
            "--n-images",
            "1",
            "--out",
            tmp_path / "o.safetensors",
        )
        assert word in one_error(code, err)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h.update(batch_size=float("inf")), "('batch_size'): must be an integer"),
        (lambda h: h.update(clients=10**12), "('clients'): must lie in [1, 1e9]"),
        (lambda h: h.update(knows_labels="no"), "('knows_labels'): must be true or false"),
        (lambda h: h.update(loss=float("nan")), "('loss'): must be a finite number"),
    ],
    ids=["batch-size-inf", "clients-huge", "flag-text", "loss-nan"],
)
def test_header_entries_of_the_wrong_type(monkeypatch, capsys, tmp_path, saved, edit, message):
    path = edit_header(saved, tmp_path, edit)
    code, _, err = _read(monkeypatch, capsys, path, ATTACKS[1], tmp_path / "out")
    assert message in one_error(code, err)


def test_local_training_records_are_checked(monkeypatch, capsys, tmp_path, cifar10):
    from gradleak.threat import LocalTraining

    local = LocalTraining(lr=0.1, batch_size=2, steps=2, optimizer="adam")
    observation = observe(build_model("lenet"), cifar10.images[:2], cifar10.labels[:2], local=local)
    saved = save_observation(observation, tmp_path / "u.safetensors")
    for i, (key, value, message) in enumerate(
        [
            ("betas", 7, "'betas' must be two numbers in [0, 1), got 7"),
            ("steps", 10**12, "'steps' must be an integer >= 1 or null"),
            ("steps", 5, "the local-training order lists 2 steps, its record 5"),
            ("lr", "fast", "'lr' must be a positive number"),
        ]
    ):
        folder = tmp_path / f"edit{i}"
        folder.mkdir()
        path = edit_header(saved, folder, lambda h, k=key, v=value: h["local"].update({k: v}))
        code, _, err = _read(monkeypatch, capsys, path, ATTACKS[0], folder / "out")
        assert message in one_error(code, err)


def test_a_zero_gradient_is_one_error_line(monkeypatch, capsys, tmp_path, saved):
    def zero(tensors):
        for name in tensors:
            if name.startswith("grad/"):
                tensors[name].zero_()

    path = edit_tensors(saved, tmp_path / "o.safetensors", zero)
    for command in (ATTACKS[0], ATTACKS[2]):
        code, _, err = _read(monkeypatch, capsys, path, command, tmp_path / "out")
        assert "no label can be read" in one_error(code, err)


def test_a_folder_or_fifo_given_as_the_observation(monkeypatch, capsys, tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    code, _, err = run(monkeypatch, capsys, "analyze", tmp_path / "dir.safetensors")
    assert "dir.safetensors is a folder, not an observation file" in one_error(code, err)
    os.mkfifo(tmp_path / "pipe.safetensors")
    with within(10, tmp_path), pytest.raises(GradleakError, match="pipe.safetensors is a FIFO"):
        load_observation(tmp_path / "pipe.safetensors")


def test_analyze_of_a_fifo_does_not_hang(monkeypatch, capsys, tmp_path):
    os.mkfifo(tmp_path / "pipe.safetensors")
    code, _, err = run(
        monkeypatch, capsys, "analyze", tmp_path / "pipe.safetensors", seconds=3, folder=tmp_path
    )
    assert "pipe.safetensors is a FIFO, not an observation file" in one_error(code, err)
