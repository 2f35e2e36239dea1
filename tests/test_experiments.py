"""The case pipeline: grids, TOML sweeps, the run folder, backends, the thread policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradleak import threads
from gradleak.errors import GradleakError
from gradleak.experiments import (
    AttackSpec,
    Grid,
    ModelSpec,
    RunOptions,
    get_preset,
    make_batches,
    run_experiment,
)
from gradleak.experiments import methods as case_methods
from gradleak.experiments.grid import grid_cases
from gradleak.experiments.spec import Experiment
from gradleak.experiments.store import RunFolder, case_folder
from gradleak.experiments.sweep import load_sweep, parse_defenses

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


# ---------------------------------------------------------------------- grids
def test_batches_follow_their_composition():
    labels = [3, 3, 5, 3, 5, 7]
    assert make_batches(labels, 1, "single") == [[i] for i in range(6)]
    assert make_batches(labels, 2, "distinct") == [[0, 2], [1, 4], [3, 5]]
    assert make_batches(labels, 3, "repeated") == [[0, 1, 3]]
    shuffled = make_batches(labels, 2, "random", seed=0)
    assert sorted(i for b in shuffled for i in b) == list(range(6))
    assert shuffled == make_batches(labels, 2, "random", seed=0)
    assert shuffled != make_batches(labels, 2, "random", seed=1)
    with pytest.raises(GradleakError, match="unknown batch composition"):
        make_batches(labels, 2, "sorted")


def test_grid_crosses_its_axes_and_gives_a_budget_to_iterative_attacks_only(bundled):
    grid = Grid(
        "bundled",
        (ModelSpec("lenet"), ModelSpec("mlp4")),
        (AttackSpec("idlg", "idlg"), AttackSpec("bias", "bias")),
        batches=((1, "single"), (2, "distinct")),
        seeds=(0, 3),
        n_images=4,
        iterations=7,
    )
    cases = list(grid_cases(grid))
    # 2 seeds x 2 models x (4 singles + 2 pairs) x 2 attacks
    assert len(cases) == 2 * 2 * 6 * 2 and len({c.id for c in cases}) == len(cases)
    idlg = [c for c in cases if c.method.attack == "idlg"]
    assert {c.method.iterations for c in idlg} == {7}
    assert {c.method.iterations for c in cases if c.method.attack == "bias"} == {None}
    assert {(c.seed, c.observation.model.seed) for c in cases} == {(0, 0), (3, 3)}
    assert cases[0].record["group"] == "idlg, lenet, single, B=1"
    assert cases[0].id == "seed0/lenet/single/bundled/astronaut.png/idlg"


def test_overrides_are_resolved_once_into_the_settings():
    preset = get_preset("seed-lenet-cifar")
    options = RunOptions(images="bundled", n_images=3, iterations=5, seed=2, batch_size=2)
    settings = options.apply(preset.settings, preset.name)
    assert (settings.data, settings.n_images, settings.iterations) == ("bundled", 3, 5)
    assert settings.seeds == (2,) and settings.batch_size == 2
    with pytest.raises(GradleakError, match="prior-shift takes no --batch-size"):
        RunOptions(batch_size=2).apply(get_preset("prior-shift").settings, "prior-shift")


def test_case_folders_never_collide():
    assert case_folder("single/a.png/idlg") == "single__a.png__idlg"
    assert case_folder("single/a b.jpg/idlg") != case_folder("single/a-b.jpg/idlg")


# ---------------------------------------------------------------------- run folder
def tiny(iterations: int = 1, n_images: int = 2) -> Experiment:
    grid = Grid(
        "bundled",
        (ModelSpec("lenet"),),
        (AttackSpec("idlg", "idlg"), AttackSpec("bias", "bias")),
        n_images=n_images,
        iterations=iterations,
    )
    return Experiment("tiny", "two photos, two attacks", grid, grid_cases)


def test_a_run_records_every_case_and_isolates_failures(tmp_path, monkeypatch):
    real = case_methods.RUNNERS[AttackSpec]

    def flaky(case, observation, root, callback, device):
        if "chelsea" in case.id and case.method.attack == "idlg":
            raise RuntimeError("boom\nsecond line")
        return real(case, observation, root, callback, device)

    monkeypatch.setitem(case_methods.RUNNERS, AttackSpec, flaky)
    results = run_experiment(tiny(), tmp_path, RunOptions(threads=1))
    status = {c["id"]: (c["status"], c["error"]) for c in results["cases"]}
    assert status["single/bundled/astronaut.png/idlg"] == ("done", None)
    assert status["single/bundled/chelsea.png/idlg"] == ("failed", "RuntimeError: boom")
    assert status["single/bundled/astronaut.png/bias"][0] == "skipped"
    assert "first layer is fully connected" in status["single/bundled/astronaut.png/bias"][1]
    summary = results["summary"]
    assert (summary["n_done"], summary["n_skipped"], summary["n_failed"]) == (1, 2, 1)
    failed = json.loads(
        (
            tmp_path / "cases" / case_folder("single/bundled/chelsea.png/idlg") / "case.json"
        ).read_text()
    )
    assert "Traceback" in failed["traceback"]
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("id,variant,model,batch_size,composition,defense,seed,attack")
    assert rows[0].endswith("psnr,ssim,label_accuracy,seconds,status,error")
    assert len(rows) == 5
    assert "not run" in (tmp_path / "table.md").read_text()


def test_a_folder_of_another_run_is_refused_and_a_stale_case_rerun(tmp_path):
    run_experiment(tiny(), tmp_path, RunOptions(threads=1))
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(GradleakError, match=r"holds results of another run \(other settings: "):
        run_experiment(tiny(iterations=2), tmp_path, RunOptions(threads=1))
    assert (tmp_path / "results.json").read_text() == before
    folder = RunFolder(tmp_path, "tiny", json.loads(before)["settings"])
    case = next(iter(tiny().cases(tiny().settings)))
    assert folder.done(case) is not None
    path = tmp_path / "cases" / case_folder(case.id) / "case.json"
    path.write_text(path.read_text().replace(case.key(), "0" * 16))
    assert folder.done(case) is None  # a case file of another spec is not a result of this one


def test_a_run_claims_its_folder_before_its_first_case(tmp_path):
    RunFolder(tmp_path, "study", {"prior_steps": 3000}).claim({"torch": "x"})
    assert json.loads((tmp_path / "results.json").read_text())["cases"] == []
    with pytest.raises(GradleakError, match="prior_steps: 3000 -> 10"):
        RunFolder(tmp_path, "study", {"prior_steps": 10})


# ---------------------------------------------------------------------- sweeps
def test_example_sweeps_and_audits_load(shared_dir):
    from gradleak.experiments.audit import audit_experiment, load_audit

    for path in sorted(EXAMPLES.glob("*.toml")):
        audit = path.name.startswith("audit")
        experiment = audit_experiment(load_audit(path)) if audit else load_sweep(path)
        assert list(experiment.cases(experiment.settings)), path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[grid]\nmodel = ['lenet']\nattack = ['idlg']\ncolour = ['red']", "unknown key 'colour'"),
        ("[grid]\nmodel = ['lenet']\nattack = ['nosuch']", "unknown attack method 'nosuch'"),
        ("[grid]\nmodel = ['nosuch']\nattack = ['idlg']", "unknown model 'nosuch'"),
        (
            "[grid]\nmodel = ['mlp4']\nattack = ['bias']\n[attacks.bias]\niterations = 5",
            "bias is closed-form and takes no iterations",
        ),
        (
            "[grid]\nmodel = ['lenet']\nattack = ['idlg']\n[attacks.idlg]\ntvv = 1",
            "attack 'idlg' has no setting 'tvv'",
        ),
        (
            "[grid]\nmodel = ['lenet']\nattack = ['idlg']\ndefense = ['blur']",
            "unknown defense 'blur'",
        ),
        (
            "[grid]\nmodel = ['lenet']\nattack = ['idlg']\ndefense = ['noise:sigmaa=1']",
            "defense 'noise' has no parameter 'sigmaa'",
        ),
        (
            "[grid]\nmodel = ['lenet']\nattack = ['idlg']\nlabels = ['sorted']",
            "'sorted' is not distinct, repeated or random",
        ),
        ("[sweep]\nimages = 'x'\n", "needs a [grid] table"),
        ("[grid\n", "not valid TOML"),
    ],
)
def test_sweep_files_with_mistakes_are_refused_naming_them(tmp_path, text, message):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    with pytest.raises(GradleakError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_sweep(path)


def test_defenses_parse_into_specs():
    (clip, noise) = parse_defenses("clip:max_norm=1+noise:sigma=0.01")
    assert (clip.name, clip.params, noise.params) == (
        "clip",
        (("max_norm", 1),),
        (("sigma", 0.01),),
    )
    assert parse_defenses("none") == ()
    assert noise.label == "noise sigma=0.01"


def run_cli(*args, cwd, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "gradleak.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C must reach the CLI even when this test runs in a background job, whose shell
        # starts it with SIGINT ignored (Python then installs no KeyboardInterrupt handler).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **popen,
    )


def write_grid(path: Path, n_images: int = 4) -> Path:
    path.write_text(
        "[sweep]\n"
        f"images = 'bundled'\nn_images = {n_images}\nseeds = [0]\n"
        "[grid]\nmodel = ['lenet', 'mlp4']\nbatch_size = [1]\nattack = ['idlg', 'bias']\n"
        "[attacks.idlg]\niterations = 3\n"
    )
    return path


def wait_for_cases(out: Path, count: int, process) -> None:
    deadline = time.monotonic() + 240
    while len(list(out.glob("cases/*/case.json"))) < count and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)


@pytest.mark.slow
def test_sweep_survives_ctrl_c_and_kill_9_with_no_case_lost_or_run_twice(tmp_path):
    grid = write_grid(tmp_path / "grid.toml", n_images=6)
    out = tmp_path / "out"
    args = ("sweep", grid, "--out", out, "--workers", "2")
    process = run_cli(*args, cwd=tmp_path)
    wait_for_cases(out, 1, process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: says what was kept, exits 130
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"every finished case is kept in {out}" in " ".join(stderr.split())
    interrupted = len(list(out.glob("cases/*/case.json")))
    assert interrupted >= 1 and (out / "results.json").exists()

    process = run_cli(*args, cwd=tmp_path)
    wait_for_cases(out, interrupted + 3, process)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its workers, without warning
    process.communicate()
    time.sleep(1.0)  # no orphan may finish a case after the kill
    kept = {p: p.stat().st_mtime_ns for p in out.glob("cases/*/case.json")}
    assert interrupted + 3 <= len(kept) < 24
    resumed = run_cli(*args, cwd=tmp_path)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    assert f"{len(kept)} of 24 cases already in" in stdout
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished cases were not rerun
    results = json.loads((out / "results.json").read_text())
    assert len(results["cases"]) == 24 == len({c["id"] for c in results["cases"]})
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 25
    statuses = {c["status"] for c in results["cases"]}
    assert statuses == {"done", "skipped"}  # bias on LeNet: skipped, with the reason
    assert (out / "table.md").exists() and (out / "summary.png").exists()


@pytest.mark.slow
def test_sweep_runs_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("ray")
    grid = write_grid(tmp_path / "grid.toml", n_images=1)
    experiment = load_sweep(grid)
    options = RunOptions(backend="ray", workers=2)
    results = run_experiment(experiment, tmp_path / "out", options)
    assert len(results["cases"]) == 4
    done = {c["id"]: c for c in results["cases"] if c["status"] == "done"}
    assert set(done) == {
        "lenet/single/bundled/astronaut.png/idlg",
        "mlp4/single/bundled/astronaut.png/idlg",
        "mlp4/single/bundled/astronaut.png/bias",
    }
    assert done["mlp4/single/bundled/astronaut.png/bias"]["psnr"] > 100  # exact
    assert all(c["threads"] == 1 for c in done.values())


# ---------------------------------------------------------------------- threads
def test_thread_policy(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda window=0.1: 3.0)
    assert threads.choose(4, macs=1e12) == 4  # explicit wins
    assert threads.choose(macs=0.7e6) == 1  # LeNet
    assert threads.choose(macs=1.9e9, worker=True) == 1  # a sweep worker
    assert threads.choose(macs=1.9e9) == 5  # ConvNet: the cores nobody else uses
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.choose(macs=0.7e6) == 3
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(GradleakError, match="GRADLEAK_THREADS must be a positive integer"):
        threads.choose()


def test_model_cost_counts_multiply_accumulates():
    from gradleak.models import build_model

    mlp = build_model("mlp4", width=8, image_size=4, in_channels=1)  # 16 -> 8 -> 8 -> 8 -> 10
    assert threads.model_macs(mlp) == 16 * 8 + 8 * 8 + 8 * 8 + 8 * 10
    assert threads.model_macs(build_model("convnet")) > threads.LARGE_MODEL_MACS
    assert threads.model_macs(build_model("lenet")) < threads.LARGE_MODEL_MACS
