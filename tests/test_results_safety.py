"""No result is lost, replaced or run twice, through the commands where users meet it: a rerun
with other settings, ``attack`` into a preset's folder, two processes on one folder, image names
that differ in unsafe characters, an attack or a training run interrupted (Ctrl-C) or killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from clitools import call_main
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from gradleak.attacks import load_reconstruction, matching
from gradleak.data import load_images
from gradleak.generative import training as generative_training
from gradleak.learning import trainer
from gradleak.models import build_model
from gradleak.threat import observe
from gradleak.threat.observation import save_observation

IG = ("--method", "inverting_gradients")


class Killed(BaseException):
    """What ``kill -9`` leaves: no handler runs (a BaseException no ``except Exception`` takes)."""


@pytest.fixture(scope="module")
def observation_file(tmp_path_factory):
    """A LeNet observation of one bundled photo."""
    batch = load_images("bundled", size=32, n=1)
    obs = observe(build_model("lenet", seed=0), batch.images, batch.labels, ids=batch.ids)
    return save_observation(obs, tmp_path_factory.mktemp("obs") / "obs.safetensors")


@pytest.fixture
def ctrl_c(monkeypatch):
    """Ctrl-C raises KeyboardInterrupt here even when the tests run with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield lambda: signal.raise_signal(signal.SIGINT)
    signal.signal(signal.SIGINT, previous)


def error_line(err: str) -> str:
    """The one ``error: ...`` line (wrapped by the console: joined again)."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return " ".join(err[err.index("error: ") :].split())


def snapshot(out: Path) -> dict:
    """Every case file and results.json: their bytes and modification times."""
    files = [*out.glob("cases/**/*"), out / "results.json"]
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files if p.is_file()}


def at_attack_step(monkeypatch, step: int, action) -> None:
    """``action()`` runs inside the attack's optimizer step ``step`` (0-based)."""
    real = matching.make_step

    def make_step(*args):
        inner = real(*args)

        def wrapped(iteration):
            if iteration == step:
                action()
            return inner(iteration)

        return wrapped

    monkeypatch.setattr(matching, "make_step", make_step)


def at_training_step(monkeypatch, step: int, action) -> None:
    """``action()`` runs as training step ``step`` (0-based) starts."""
    real = trainer.step_generator

    def generator(seed, index):
        if index == step:
            action()
        return real(seed, index)

    monkeypatch.setattr(trainer, "step_generator", generator)


def kill():
    raise Killed


# ---------------------------------------------------------------------- one run per folder
def test_other_settings_or_an_attack_never_replace_a_runs_results(
    monkeypatch, capsys, shared_dir, observation_file, tmp_path
):
    out = tmp_path / "ow"
    out.mkdir()
    (out / ".lock").write_text("999999\n")  # left by a killed run: it must not block
    args = ("run", "discard-mlp", "--iterations", "2", "--out", out)
    code, _, err = call_main(monkeypatch, capsys, *args, "--n-images", "2")
    assert code == 0, err
    assert len(list(out.glob("cases/*/case.json"))) == 6
    assert not (out / ".lock").exists()  # released
    before = snapshot(out)

    code, _, err = call_main(monkeypatch, capsys, *args, "--n-images", "1")
    assert code == 2
    assert "holds results of another run (other settings: n_images: 2 -> 1)" in error_line(err)
    code, _, err = call_main(monkeypatch, capsys, "attack", observation_file, "--method", "idlg",
                             "--out", out)  # fmt: skip
    assert code == 2
    assert "holds results of another run (preset 'discard-mlp', not 'attack')" in error_line(err)
    assert snapshot(out) == before


def test_similar_image_names_are_two_cases_and_a_changed_folder_is_refused(
    monkeypatch, capsys, tmp_path
):
    photos = tmp_path / "photos"
    photos.mkdir()
    images = load_images("bundled", size=32, n=2).images
    for name, image in zip(("a b.jpg", "a-b.jpg"), images, strict=True):
        array = image.mul(255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(array).save(photos / name, quality=95)
    out = tmp_path / "demo"
    args = ("run", "demo", "--images", photos, "--iterations", "2", "--out", out)
    code, _, err = call_main(monkeypatch, capsys, *args)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert [c["id"] for c in results["cases"]] == ["single/a b.jpg/idlg", "single/a-b.jpg/idlg"]
    assert len(list(out.glob("cases/*/case.json"))) == 2
    before = snapshot(out)

    (photos / "a-b.jpg").unlink()  # same command, same settings, one case fewer
    code, _, err = call_main(monkeypatch, capsys, *args)
    assert code == 2
    line = error_line(err)
    assert "holds finished cases of another run (cases/single__a-b.jpg__idlg: not a case" in line
    assert snapshot(out) == before  # results.json still lists both


def test_a_second_process_is_refused_and_ctrl_c_keeps_the_best_iterate(
    monkeypatch, capsys, observation_file, tmp_path
):
    out = tmp_path / "att"
    args = ("attack", observation_file, *IG, "--iterations", "1000000", "--out", out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADLEAK_PARTIAL_SECONDS": "0.2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gradleak.cli", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # see test_experiments
    )
    partial = out / "cases" / "inverting_gradients" / "partial.json"
    try:
        deadline = time.monotonic() + 120
        while not partial.exists():  # optimizing (it keeps its best iterate every 0.2 s)
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the attack kept no partial result")
            time.sleep(0.1)

        code, _, err = call_main(monkeypatch, capsys, *args)
        assert code == 2
        line = error_line(err)
        assert f"another gradleak process (pid {process.pid}) is writing in {out}" in line

        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, stderr
    kept = json.loads(partial.read_text())
    assert kept["interrupted"] and kept["step"] >= 1 and kept["iterations"] == 1000000
    assert f"kept its best iterate so far (step {kept['step']} of 1000000)" in " ".join(
        stdout.split()
    )
    reconstruction = load_reconstruction(partial.with_suffix(".safetensors"))
    assert reconstruction.iterations == kept["step"] and reconstruction.images.shape[0] == 1
    assert partial.with_suffix(".png").exists() and isinstance(kept["psnr"], float)
    assert not (partial.parent / "case.json").exists()
    assert not (out / ".lock").exists()


def test_a_killed_attack_keeps_its_progress_and_its_rerun_is_bit_identical(
    monkeypatch, capsys, observation_file, tmp_path, ctrl_c
):
    args = ("attack", observation_file, *IG, "--iterations", "6", "--out")
    code, _, err = call_main(monkeypatch, capsys, *args, tmp_path / "clean")
    assert code == 0, err

    out = tmp_path / "att"
    case = out / "cases" / "inverting_gradients"
    monkeypatch.setenv("GRADLEAK_PARTIAL_SECONDS", "0")
    with monkeypatch.context() as patch:
        at_attack_step(patch, 3, kill)
        with pytest.raises(Killed):
            call_main(patch, capsys, *args, out)
    kept = json.loads((case / "partial.json").read_text())
    assert (kept["step"], kept["interrupted"]) == (3, False)  # kept by wall time
    assert not (case / "case.json").exists()

    with monkeypatch.context() as patch:
        at_attack_step(patch, 4, ctrl_c)  # Ctrl-C: step 5 ends, is kept, then the run stops
        code, stdout, err = call_main(patch, capsys, *args, out)
    assert code == 130, err
    assert "kept its best iterate so far (step 5 of 6)" in " ".join(stdout.split())
    assert json.loads((case / "partial.json").read_text())["interrupted"]

    code, stdout, err = call_main(monkeypatch, capsys, *args, out)
    assert code == 0, err
    assert "an interrupted run kept its best iterate (step 5 of 6" in " ".join(stdout.split())
    assert sorted(p.name for p in case.iterdir() if p.name.startswith("partial")) == []
    clean = load_file(
        tmp_path / "clean" / "cases" / "inverting_gradients" / "reconstruction.safetensors"
    )
    rerun = load_file(case / "reconstruction.safetensors")
    assert all(torch.equal(clean[k], rerun[k]) for k in clean)  # restarted from scratch


# ---------------------------------------------------------------------- training
def checkpoint_step(path: Path) -> int:
    with safe_open(str(path), "pt") as handle:
        return json.loads(handle.metadata()["gradleak"])["step"]


def test_training_checkpoints_by_time_and_on_ctrl_c_and_leaves_none_behind(
    monkeypatch, capsys, tmp_path, ctrl_c
):
    args = ("train-prior", "--images", "bundled", "--steps", "4", "--out")
    code, _, err = call_main(monkeypatch, capsys, *args, tmp_path / "clean.safetensors")
    assert code == 0, err
    assert not (tmp_path / "clean.ckpt.safetensors").exists()

    out, checkpoint = tmp_path / "g.safetensors", tmp_path / "g.ckpt.safetensors"
    with monkeypatch.context() as patch:
        defaults = generative_training.train_generator.__kwdefaults__
        patch.setitem(defaults, "every_seconds", 0.0)
        at_training_step(patch, 2, kill)
        with pytest.raises(Killed):
            call_main(patch, capsys, *args, out)
    assert checkpoint_step(checkpoint) == 2  # by wall time (by steps: every 200)

    with monkeypatch.context() as patch:
        at_training_step(patch, 2, ctrl_c)  # resumed at 2: step 3 ends, is kept, then it stops
        code, _, err = call_main(patch, capsys, *args, out)
    assert code == 130, err
    assert checkpoint_step(checkpoint) == 3 and not out.exists()

    code, _, err = call_main(monkeypatch, capsys, *args, out)
    assert code == 0, err
    assert not checkpoint.exists()
    clean, resumed = load_file(tmp_path / "clean.safetensors"), load_file(out)
    assert all(torch.equal(clean[k], resumed[k]) for k in clean)  # bit-identical


def test_a_trained_inverter_leaves_no_checkpoint(monkeypatch, capsys, tmp_path):
    out = tmp_path / "inv.safetensors"
    code, _, err = call_main(monkeypatch, capsys, "train-inverter", "--model", "lenet",
                             "--images", "bundled", "--steps", "2", "--out", out)  # fmt: skip
    assert code == 0, err
    assert out.exists() and not (tmp_path / "inv.ckpt.safetensors").exists()
