"""Tests for the command line: exit codes, one-line errors, and the observe/attack/run outputs.

Commands whose exit status and stderr matter end to end run as ``python -m gradleak.cli`` in a
subprocess. The many error paths call :func:`gradleak.cli.main` in-process (the same code that
turns a GradleakError into ``error: ...`` and exit status 2) to save ~3 s of imports each.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from clitools import call_main
from PIL import Image

from gradleak.attacks import ATTACKS
from gradleak.data import from_tensor, load_images, shared_data_dir
from gradleak.experiments import PRESETS
from gradleak.models import build_model, list_models
from gradleak.threat import observe
from gradleak.threat.observation import load_observation, save_observation

SHARED = shared_data_dir(required=False)
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared data folder not available")
SEED_PRESETS = ("seed-mlp-flowers", "seed-lenet-cifar", "seed-lenet-bs2", "seed-tv-sweep")


def run_cli(*args, cwd) -> subprocess.CompletedProcess:
    """``python -m gradleak.cli ARGS`` as a user would run it, output not a terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["OMP_NUM_THREADS"] = "1"  # see conftest: one thread
    if SHARED is not None:
        env["GRADLEAK_SHARED_DATA"] = str(SHARED)
    return subprocess.run(
        [sys.executable, "-m", "gradleak.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("error: "), err
    return " ".join(err.split())


@pytest.fixture(scope="module")
def observation_file(tmp_path_factory):
    """A valid LeNet observation of one bundled photo."""
    batch = load_images("bundled", size=32, n=1)
    obs = observe(build_model("lenet", seed=0), batch.images, batch.labels, ids=batch.ids)
    return save_observation(obs, tmp_path_factory.mktemp("obs") / "obs.safetensors")


# ---------------------------------------------------------------------- entry points
def test_module_and_console_script_entry_points():
    source = Path(sys.modules["gradleak.cli"].__file__).read_text()
    assert re.search(r'^if __name__ == "__main__":\n    main\(\)', source, re.M)
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("gradleak") == "gradleak.cli:main"


# ---------------------------------------------------------------------- errors (subprocess)
@pytest.fixture(scope="module")
def unknown_preset(tmp_path_factory):
    return run_cli("run", "no-such-preset", cwd=tmp_path_factory.mktemp("cwd"))


def test_unknown_preset_exits_2_with_an_error(unknown_preset):
    result = unknown_preset
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    text = one_error_line(result.stderr)
    assert "unknown preset 'no-such-preset'" in text
    for name in SEED_PRESETS:
        assert name in text


def test_unknown_preset_error_is_exactly_one_line(unknown_preset):
    assert len(unknown_preset.stderr.strip().splitlines()) == 1, unknown_preset.stderr


# ---------------------------------------------------------------------- errors (in-process)
def test_run_on_another_model_names_the_problem(monkeypatch, capsys, tmp_path):
    code, _, err = call_main(
        monkeypatch, capsys, "run", "priors-ablation", "--model", "nosuch", "--out", tmp_path
    )
    assert code == 2 and "unknown model 'nosuch'" in one_error_line(err)
    code, _, err = call_main(
        monkeypatch, capsys, "run", "labels-sweep", "--model", "lenet", "--out", tmp_path
    )
    assert code == 2 and "chooses its own models" in one_error_line(err)


def test_unknown_model_exits_2(monkeypatch, capsys, photos, tmp_path):
    out = tmp_path / "obs.safetensors"
    code, _, err = call_main(
        monkeypatch, capsys, "observe", "--model", "no-such-model", "--images", photos, "--out", out
    )
    assert code == 2
    text = one_error_line(err)
    assert "unknown model 'no-such-model'" in text and "lenet" in text
    assert not out.exists()


def test_unknown_attack_method_exits_2(monkeypatch, capsys, observation_file, tmp_path):
    out = tmp_path / "att"
    code, _, err = call_main(
        monkeypatch, capsys, "attack", observation_file, "--method", "no-such-method", "--out", out
    )
    assert code == 2
    text = one_error_line(err)
    assert "unknown attack method 'no-such-method'" in text and "idlg" in text
    assert not (out / "results.json").exists()


def test_artifact_options_that_do_not_fit_the_method_exit_2(
    monkeypatch, capsys, observation_file, tmp_path
):
    cases = [
        (
            ("--method", "inverting_gradients", "--prior", "g.safetensors"),
            "'prior' is not a setting of attack 'inverting_gradients' (attacks that take it: "
            "gias, gifd)",
        ),
        (("--method", "dlg", "--inverter", "i.safetensors"), "(attacks that take it: learned)"),
        (("--method", "learned", "--set", "refine=gias"), "unknown refine 'gias'"),
        (("--method", "bias", "--iterations", "3"), "'bias' is closed-form"),
    ]
    for options, message in cases:
        code, _, err = call_main(
            monkeypatch, capsys, "attack", observation_file, *options, "--out", tmp_path
        )
        assert code == 2 and message in one_error_line(err)


def test_training_commands_refuse_bad_arguments(monkeypatch, capsys, photos, tmp_path):
    out = tmp_path / "inv.safetensors"
    code, _, err = call_main(
        monkeypatch, capsys, "train-inverter", "--model", "lenet", "--images", photos,
        "--out", out, "--batch-sizes", "8-2",
    )  # fmt: skip
    assert code == 2 and "1 <= LOW <= HIGH" in one_error_line(err)
    code, _, err = call_main(
        monkeypatch, capsys, "train-prior", "--images", photos, "--out", out, "--classes", "a"
    )
    assert code == 2 and "--classes must be comma-separated" in one_error_line(err)
    assert not out.exists()


def test_undecodable_image_exits_2_naming_the_file(monkeypatch, capsys, photos, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "good.png").write_bytes((photos / "a.png").read_bytes())
    (folder / "broken.png").write_bytes(bytes(range(256)) * 8)
    code, _, err = call_main(
        monkeypatch,
        capsys,
        *("observe", "--model", "lenet", "--images", folder),
        *("--out", tmp_path / "obs.safetensors"),
    )
    assert code == 2
    text = one_error_line(err)
    assert "cannot decode image 'broken.png'" in text


def test_empty_folder_exits_2(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    code, _, err = call_main(
        monkeypatch,
        capsys,
        *("observe", "--model", "lenet", "--images", folder),
        *("--out", tmp_path / "obs.safetensors"),
    )
    assert code == 2
    assert f"no images found in folder {folder}" in one_error_line(err)


def test_gradients_that_do_not_fit_the_model_exit_2(monkeypatch, capsys, tmp_path):
    batch = load_images("bundled", size=32, n=1)
    obs = observe(build_model("lenet", seed=0), batch.images, batch.labels)
    obs.gradients = observe(build_model("lenet", width=6), batch.images, batch.labels).gradients
    path = save_observation(obs, tmp_path / "misfit.safetensors")
    code, _, err = call_main(
        monkeypatch, capsys, "attack", path, "--method", "idlg", "--out", tmp_path / "att"
    )
    assert code == 2
    text = one_error_line(err)
    assert "misfit.safetensors" in text
    assert re.search(
        r"do not fit model 'lenet': '[\w.]+' has shape \[6(, \d+)*\], the model expects", text
    )
    assert not (tmp_path / "att" / "results.json").exists()


def test_nan_gradients_exit_2(monkeypatch, capsys, tmp_path):
    batch = load_images("bundled", size=32, n=1)
    obs = observe(build_model("lenet", seed=0), batch.images, batch.labels)
    obs.gradients["body.2.weight"][1, 2, 3, 4] = float("nan")
    path = save_observation(obs, tmp_path / "nan.safetensors")
    code, _, err = call_main(
        monkeypatch, capsys, "attack", path, "--method", "idlg", "--out", tmp_path / "att"
    )
    assert code == 2
    assert "gradient 'body.2.weight' contains NaN or inf values" in one_error_line(err)


def test_corrupt_observation_file_exits_2(monkeypatch, capsys, observation_file, tmp_path):
    path = tmp_path / "corrupt.safetensors"
    data = bytearray(observation_file.read_bytes())
    data[:8] = b"\xff" * 8  # header length far beyond the file
    path.write_bytes(bytes(data))
    code, _, err = call_main(
        monkeypatch, capsys, "attack", path, "--method", "idlg", "--out", tmp_path / "att"
    )
    assert code == 2
    assert "corrupt.safetensors is not a valid safetensors file" in one_error_line(err)

    missing = tmp_path / "missing.safetensors"
    code, _, err = call_main(
        monkeypatch, capsys, "attack", missing, "--method", "idlg", "--out", tmp_path / "att"
    )
    assert code == 2
    assert "no such file" in one_error_line(err)


def test_usage_error_exits_2_without_traceback(monkeypatch, capsys):
    code, _, err = call_main(monkeypatch, capsys, "run", "seed-lenet-cifar", "--n-images", "0")
    assert code == 2
    assert "--n-images" in err


def test_attack_with_one_iteration_writes_its_files(
    monkeypatch, capsys, observation_file, tmp_path
):
    out = tmp_path / "att"
    code, _, err = call_main(
        monkeypatch,
        capsys,
        *("attack", observation_file, "--method", "idlg", "--out", out),
        *("--iterations", "1", "--set", "optimizer=adam", "--set", "lr=0.01"),
    )
    assert code == 0, err
    assert (out / "cases" / "idlg" / "progress.gif").is_file()
    assert json.loads((out / "results.json").read_text())["cases"][0]["iterations"] == 1


# ---------------------------------------------------------------------- list
def test_list_shows_presets_models_and_attacks(tmp_path):
    result = run_cli("list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    names = [*SEED_PRESETS, "demo", *PRESETS, *list_models(), *ATTACKS]
    assert {"lenet", "resnet20", "mlp4", "idlg", "dlg", "inverting_gradients"} <= set(names)
    for name in names:  # each as a whole table cell
        assert re.search(rf"│ {re.escape(name)} +│", result.stdout), name


# ---------------------------------------------------------------------- happy paths
CASE_KEYS = {"id", "psnr", "ssim", "label_accuracy", "seconds"}
SUMMARY_KEYS = {"psnr_median", "ssim_median", "label_accuracy", "seconds"}


def check_results_shape(results: dict, preset: str, n_cases: int) -> None:
    assert {"preset", "settings", "versions", "cases", "summary"} <= set(results)
    assert results["preset"] == preset
    assert results["versions"]["torch"] == torch.__version__
    assert len(results["cases"]) == n_cases
    for case in results["cases"]:
        assert set(case) >= CASE_KEYS, sorted(case)
        assert isinstance(case["psnr"], float) and 0 < case["psnr"] < 200
        assert -1 <= case["ssim"] <= 1
        assert 0 <= case["label_accuracy"] <= 1
        assert case["seconds"] > 0
    summary = results["summary"]
    assert set(summary) >= SUMMARY_KEYS, sorted(summary)
    assert summary["n_cases"] == n_cases
    psnrs = sorted(c["psnr"] for c in results["cases"])
    assert min(psnrs) <= summary["psnr_median"] <= max(psnrs)
    assert summary["seconds"] == pytest.approx(sum(c["seconds"] for c in results["cases"]))


def test_observe_then_attack(photos, tmp_path):
    obs_path = tmp_path / "tmp" / "obs.safetensors"
    result = run_cli(
        *("observe", "--model", "lenet", "--images", photos, "--n-images", "1"),
        *("--out", obs_path),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert obs_path.is_file() and (tmp_path / "tmp" / "obs.truth.safetensors").is_file()
    obs = load_observation(obs_path)
    assert obs.batch_size == 1 and obs.model_config["name"] == "lenet"
    assert obs.truth.ids == ["a.png"]

    out = tmp_path / "tmp" / "att"
    # iDLG (analytic label) with 5 cheap Adam steps instead of L-BFGS ones
    result = run_cli(
        *("attack", obs_path, "--method", "idlg", "--iterations", "5", "--out", out),
        *("--set", "optimizer=adam", "--set", "lr=0.05"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    results = json.loads((out / "results.json").read_text())
    check_results_shape(results, "attack", 1)
    case = results["cases"][0]
    assert case["id"] == "idlg"
    assert case["iterations"] == 5
    assert case["label_accuracy"] == 1.0  # iDLG's analytic label is exact for one image
    assert case["labels"] == case["true_labels"] == obs.labels.tolist()
    assert results["settings"]["methods"][0]["settings"] == [["lr", 0.05], ["optimizer", "adam"]]
    assert case["files"]["grid"] == "cases/idlg/grid.png"
    assert (out / "cases/idlg/grid.png").is_file()
    assert (out / "cases/idlg/reconstruction.safetensors").is_file()


@pytest.mark.slow
@needs_shared
def test_run_preset_writes_results_and_resumes(tmp_path):
    out = tmp_path / "tmp" / "run"
    args = ("run", "seed-lenet-cifar", "--n-images", "1", "--iterations", "2", "--out", out)
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    results = json.loads((out / "results.json").read_text())
    check_results_shape(results, "seed-lenet-cifar", 2)
    assert {c["variant"] for c in results["cases"]} == {"l2", "cosine"}
    assert results["settings"]["iterations"] == 2 and results["settings"]["n_images"] == 1
    assert set(results["summary"]["by_variant"]) == {"l2", "cosine"}
    with Image.open(out / "overview.png") as picture:
        assert picture.format == "PNG" and picture.width > 32
    assert (out / "overview.gif").is_file()
    reconstructions = sorted(out.glob("cases/*/reconstruction.safetensors"))
    assert len(reconstructions) == 2
    stamps = [p.stat().st_mtime_ns for p in reconstructions]

    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["cases"] == results["cases"]  # same timings: nothing was recomputed
    assert [p.stat().st_mtime_ns for p in reconstructions] == stamps
    assert "single/cifar10-test-00000/l2" in first.stdout  # progress bar of a case
    assert "single/cifar10-test-00000/l2" not in second.stdout


# ---------------------------------------------------------------------- bugs fixed (issue 11)
def test_batch_size_guess_reaches_the_attack_of_a_hidden_batch_size(
    monkeypatch, capsys, photos, tmp_path
):
    obs_path = tmp_path / "hidden.safetensors"
    code, _, err = call_main(
        monkeypatch, capsys, "observe", "--model", "lenet", "--images", photos, "--n-images", "1",
        "--hide-batch-size", "--out", obs_path,
    )  # fmt: skip
    assert code == 0, err
    args = ("attack", obs_path, "--method", "idlg", "--iterations", "1", "--set", "optimizer=adam")
    code, _, err = call_main(monkeypatch, capsys, *args, "--out", tmp_path / "without")
    assert code == 2
    assert "hides the batch size; pass batch_size= (or --batch-size)" in one_error_line(err)
    code, _, err = call_main(
        monkeypatch, capsys, *args, "--batch-size", "1", "--out", tmp_path / "guessed"
    )
    assert code == 0, err
    case = json.loads((tmp_path / "guessed" / "results.json").read_text())["cases"][0]
    assert case["status"] == "done" and case["label_accuracy"] == 1.0
    assert not load_observation(obs_path).knows_batch_size  # the file is left as it was


def test_gradinversion_on_a_model_without_batchnorm_runs_with_the_bn_prior_off(
    monkeypatch, capsys, observation_file, tmp_path
):
    out = tmp_path / "gi"
    code, _, err = call_main(
        monkeypatch, capsys, "attack", observation_file, "--method", "gradinversion",
        "--iterations", "2", "--restarts", "2", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    case = json.loads((out / "results.json").read_text())["cases"][0]
    assert case["status"] == "done" and case["settings"]["bn"] == 0
    assert "no BatchNorm layers" in case["notes"]["disabled"]["bn"]


@pytest.fixture(scope="module")
def seventeen_classes(tmp_path_factory):
    """A folder of 17 class sub-folders of real photos (the bundled ones, reused)."""
    root = tmp_path_factory.mktemp("seventeen")
    batch = load_images("bundled", size=32)
    for k in range(17):
        folder = root / f"{k:02d}_class{k}"
        folder.mkdir()
        Image.fromarray(from_tensor(batch.images[k % len(batch) : k % len(batch) + 1])[0]).save(
            folder / "photo.png"
        )
    return root


def test_train_inverter_sizes_the_output_layer_from_its_data(
    monkeypatch, capsys, seventeen_classes, tmp_path
):
    out = tmp_path / "inv.safetensors"
    code, stdout, err = call_main(
        monkeypatch, capsys, "train-inverter", "--model", "lenet", "--images", seventeen_classes,
        "--out", out, "--steps", "2",
    )  # fmt: skip
    assert code == 0, err
    assert "(17 classes)" in stdout
    from gradleak.learning import read_card

    assert read_card(out)["model_config"]["num_classes"] == 17


def test_train_prior_trains_on_a_many_class_folder(
    monkeypatch, capsys, seventeen_classes, tmp_path
):
    out = tmp_path / "prior.safetensors"
    code, _, err = call_main(
        monkeypatch, capsys, "train-prior", "--images", seventeen_classes, "--out", out,
        "--steps", "2", "--size", "32",
    )  # fmt: skip
    assert code == 0, err
    from gradleak.learning import read_card

    card = read_card(out)
    assert card["n_images"] == 17 and card["config"]["size"] == 32


# ---------------------------------------------------------------------- fast feedback
def test_help_and_list_do_not_import_torch(tmp_path):
    probe = (
        "import sys\n"
        "from gradleak.cli import main\n"
        "sys.argv = ['gradleak', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('no torch')\n"
    )
    for command in ("--help", "list"):
        result = subprocess.run(
            [sys.executable, "-c", probe, command], capture_output=True, text=True, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith("no torch"), result.stdout


def test_attack_auto_runs_what_applies_and_picks_by_gradient_distance(
    monkeypatch, capsys, observation_file, tmp_path
):
    out = tmp_path / "auto"
    code, stdout, err = call_main(
        monkeypatch, capsys, "attack", observation_file, "--method", "auto", "--iterations", "2",
        "--out", out,
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    status = {c["attack"]: c["status"] for c in results["cases"]}
    assert set(status) == set(ATTACKS)
    assert status["bias"] == status["fc_unmix"] == status["gias"] == "skipped"  # LeNet, no prior
    assert status["rgap"] == status["idlg"] == "done"
    done = [c for c in results["cases"] if c["status"] == "done"]
    best = min(done, key=lambda c: c["cosine_distance"])
    assert results["best"]["attack"] == best["attack"] == "rgap"  # closed form: exact here
    assert f"best by gradient distance: {best['attack']}" in stdout


def test_a_rerun_with_other_settings_is_refused(monkeypatch, capsys, observation_file, tmp_path):
    out = tmp_path / "att"
    args = ("attack", observation_file, "--method", "idlg", "--out", out)
    code, _, err = call_main(monkeypatch, capsys, *args, "--iterations", "1")
    assert code == 0, err
    before = (out / "results.json").read_text()
    code, _, err = call_main(monkeypatch, capsys, *args, "--iterations", "2")
    assert code == 2
    assert "holds results of another run" in one_error_line(err)
    assert (out / "results.json").read_text() == before
