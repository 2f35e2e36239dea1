"""The command line as a careless or hostile user meets it: no file replaced unasked, Ctrl-C
exits 130 saying what was kept, every bad option or setting is one ``error:`` line (exit 2)
found before any work starts, and long silent stages say what they are doing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clitools import call_main
from rich.console import Console
from rich.progress import Progress

from gradleak.console import _Shown
from gradleak.data import load_images
from gradleak.models import build_model
from gradleak.threat import observe, save_observation

ROOT = Path(__file__).resolve().parents[1]


def error_line(err: str) -> str:
    """The one ``error: ...`` line a failed command prints (and nothing else)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def observation_file(tmp_path_factory):
    batch = load_images("bundled", size=32, n=2)
    made = observe(build_model("lenet", seed=0), batch.images, batch.labels)
    return save_observation(made, tmp_path_factory.mktemp("obs") / "obs.safetensors")


def forbid(monkeypatch, target: str) -> None:
    """Make ``target`` (module:attribute) fail the test if any work reaches it."""
    module, name = target.split(":")

    def work_started(*args, **kwargs):
        raise AssertionError(f"{target} ran: the bad option was not caught before the work")

    monkeypatch.setattr(f"{module}.{name}", work_started)


# ---------------------------------------------------------------------- files never replaced
def test_observe_never_replaces_a_file_it_was_not_asked_to(photos, tmp_path, monkeypatch, capsys):
    photo = sorted(photos.iterdir())[0]
    before = photo.read_bytes()
    args = ("observe", "--model", "lenet", "--images", photos, "--n-images", "1")
    code, _, err = call_main(monkeypatch, capsys, *args, "--out", photo)
    assert code == 2 and "must end in .safetensors" in error_line(err)
    assert photo.read_bytes() == before

    out = tmp_path / "obs.safetensors"
    assert call_main(monkeypatch, capsys, *args, "--out", out)[0] == 0
    first = out.read_bytes()
    code, _, err = call_main(monkeypatch, capsys, *args, "--out", out, "--seed", "1")
    assert code == 2 and "exists; choose another name or add --overwrite" in error_line(err)
    assert out.read_bytes() == first
    code, _, err = call_main(monkeypatch, capsys, *args, "--out", out, "--seed", "1", "--overwrite")
    assert code == 0, err
    assert out.read_bytes() != first

    lone_truth = tmp_path / "other.truth.safetensors"  # a ground truth left without its file
    lone_truth.write_bytes(b"keep me")
    code, _, err = call_main(monkeypatch, capsys, *args, "--out", tmp_path / "other.safetensors")
    assert code == 2 and "other.truth.safetensors exists" in error_line(err)
    assert lone_truth.read_bytes() == b"keep me"


def test_analyze_json_is_not_replaced_unasked(observation_file, tmp_path, monkeypatch, capsys):
    report = tmp_path / "report.json"
    report.write_text("{}")
    code, _, err = call_main(monkeypatch, capsys, "analyze", observation_file, "--json", report)
    assert code == 2 and "add --overwrite" in error_line(err)
    assert report.read_text() == "{}"
    args = ("analyze", observation_file, "--json", report, "--overwrite")
    assert call_main(monkeypatch, capsys, *args)[0] == 0
    assert json.loads(report.read_text())["model"] == "lenet"


# ---------------------------------------------------------------------- Ctrl-C
@pytest.mark.parametrize(
    ("command", "target", "kept"),
    [
        (("analyze", "{obs}"), "gradleak.analysis.report:analyze", "nothing was written"),
        (
            ("observe", "--model", "lenet", "--images", "bundled", "--out", "{tmp}/o.safetensors"),
            "gradleak.threat:observe",
            "nothing was written",
        ),
        (
            ("train-prior", "--images", "bundled", "--out", "{tmp}/g.safetensors"),
            "gradleak.generative:train_generator",
            "no checkpoint was written yet",
        ),
        (
            ("train-inverter", "--model", "lenet", "--images", "bundled"),
            "gradleak.learned:train_inverter",
            "no checkpoint was written yet",
        ),
        (
            ("attack", "{obs}", "--method", "idlg", "--out", "{tmp}/a"),
            "gradleak.experiments.runner:run_cases",
            "every finished case is kept",
        ),
        (
            ("run", "discard-mlp", "--out", "{tmp}/r"),
            "gradleak.experiments.runner:run_cases",
            "every finished case is kept",
        ),
    ],
    ids=lambda value: value[0] if isinstance(value, tuple) else None,
)
def test_ctrl_c_exits_130_and_says_what_was_kept(
    command, target, kept, observation_file, tmp_path, monkeypatch, capsys
):
    """Ctrl-C raises KeyboardInterrupt wherever the work is; typer turns it into an exit code
    that a non-standalone app returns instead of raising: it must still reach the shell."""
    module, name = target.split(":")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"{module}.{name}", interrupted)
    args = [str(a).format(obs=observation_file, tmp=tmp_path) for a in command]
    if command[0] == "train-inverter":
        args += ["--out", str(tmp_path / "i.safetensors")]
    code, _, err = call_main(monkeypatch, capsys, *args)
    assert code == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and kept in lines[0], err


# ---------------------------------------------------------------------- checked before work
@pytest.mark.parametrize(
    ("command", "work", "message"),
    [
        (
            ("attack", "{obs}", "--method", "idlg", "--out", "{file}"),
            "gradleak.experiments.runner:run_experiment",
            "is a file, not a folder",
        ),
        (
            ("run", "discard-mlp", "--out", "{file}"),
            "gradleak.experiments.runner:run_experiment",
            "is a file, not a folder",
        ),
        (
            ("demo", "--out", "{file}/inside"),
            "gradleak.experiments.runner:run_experiment",
            "is a file, not a folder",
        ),
        (
            ("run", "discard-mlp", "--out", "/proc/gradleak-test-run"),
            "gradleak.experiments.runner:run_experiment",
            "cannot write in /proc",
        ),
        (
            ("observe", "--model", "lenet", "--images", "bundled", "--out", "{dir}"),
            "gradleak.threat:observe",
            "must end in .safetensors",
        ),
        (
            ("observe", "--model", "lenet", "--images", "bundled", "--out", "{dir}.safetensors"),
            "gradleak.threat:observe",
            "is a folder, not a file",
        ),
        (
            ("analyze", "{obs}", "--json", "{file}/x.json"),
            "gradleak.analysis.report:analyze",
            "is a file, not a folder",
        ),
        (
            ("analyze", "{obs}", "--json", "{dir}.json"),
            "gradleak.analysis.report:analyze",
            "is a folder, not a file",
        ),
        (
            ("train-prior", "--images", "bundled", "--out", "{tmp}/g.pt"),
            "gradleak.generative:train_generator",
            "must end in .safetensors",
        ),
        (
            (
                "train-inverter",
                "--model",
                "lenet",
                "--images",
                "bundled",
                "--out",
                "/proc/i.safetensors",
            ),
            "gradleak.learned:train_inverter",
            "cannot write in /proc",
        ),
    ],
    ids=lambda value: value[0] if isinstance(value, tuple) else None,
)
def test_a_bad_out_is_one_line_before_any_work(
    command, work, message, observation_file, tmp_path, monkeypatch, capsys
):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "dir.json").mkdir()
    forbid(monkeypatch, work)
    fill = {"obs": observation_file, "tmp": tmp_path, "file": tmp_path / "file"}
    fill["dir"] = tmp_path / "dir"
    args = [str(a).format(**fill) for a in command]
    code, _, err = call_main(monkeypatch, capsys, *args)
    assert code == 2 and message in error_line(err)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("tv=abc", "setting tv takes a number, got 'abc'"),
        ("lr=-1", "setting lr must be positive"),
        ("lr=0", "setting lr must be positive"),
        ("tv=nan", "setting tv takes a number"),
        ("iterations=1e12", "setting iterations must be at most"),
        ("restarts=2.5", "setting restarts takes a whole number"),
        ("boxed=maybe", "setting boxed takes true or false"),
        ("distance=3", "setting distance takes a name"),
    ],
)
def test_attack_settings_are_type_and_range_checked(
    setting, message, observation_file, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "attack"
    args = ("attack", observation_file, "--method", "inverting_gradients", "--set", setting)
    code, _, err = call_main(monkeypatch, capsys, *args, "--out", out)
    assert code == 2 and message in error_line(err)
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        ("observe", "--model", "mlp4", "--images", "bundled", "--width", "1000000000000"),
        ("observe", "--model", "lenet", "--images", "bundled", "--image-size", "100000"),
        ("observe", "--model", "lenet", "--images", "bundled", "--seed", "99999999999999999999"),
        ("observe", "--model", "lenet", "--images", "bundled", "--clients", "1000000000"),
        ("observe", "--model", "lenet", "--images", "bundled", "--local-steps", "2", "--lr", "-1"),
        ("attack", "{obs}", "--restarts", "1000000000"),
        ("attack", "{obs}", "--iterations", "0"),
        ("run", "demo", "--n-images", "1000000000000"),
        ("train-prior", "--images", "bundled", "--steps", "99999999999"),
        ("attack",),
        ("no-such-command",),
        ("observe", "--no-such-option"),
    ],
    ids=lambda args: " ".join(args[:3]),
)
def test_options_out_of_range_and_usage_errors_are_one_line(
    args, observation_file, tmp_path, monkeypatch, capsys
):
    forbid(monkeypatch, "gradleak.threat:observe")
    forbid(monkeypatch, "gradleak.experiments.runner:run_experiment")
    forbid(monkeypatch, "gradleak.generative:train_generator")
    args = [a.format(obs=observation_file) for a in args]
    if args[0] in ("observe", "train-prior"):
        args += ["--out", str(tmp_path / "x.safetensors")]
    code, _, err = call_main(monkeypatch, capsys, *args)
    assert code == 2
    line = error_line(err)
    assert "--help" in line or "--lr" in line, line


# ---------------------------------------------------------------------- honest progress
def test_analyze_says_each_stage_when_output_is_a_log(observation_file, monkeypatch, capsys):
    code, out, err = call_main(monkeypatch, capsys, "analyze", observation_file)
    assert code == 0, err
    stages = [line for line in out.splitlines() if line.startswith("analyzing ")]
    assert any("estimating the batch size" in line for line in stages), out
    assert any("analyzing the rank of every layer" in line for line in stages), out
    assert "'fc_unmix' needs a network" in out and "'bias' needs" in out


def test_a_bar_of_an_attack_that_stopped_early_goes_away():
    """An optimizer that stops at step 151 of 300 leaves no bar stuck at 151/300."""
    with Progress(console=Console(file=open("/dev/null", "w"))) as bar:  # noqa: SIM115
        shown = _Shown(bar)

        class Case:
            id = "case"

        callback = shown.case_started(Case, 1, 2)
        callback(151, 300, 0.5)
        assert [t.completed for t in bar.tasks] == [151]
        shown.case_finished(Case, {"status": "done", "wall_seconds": 1.0}, 1, 2)
        assert bar.tasks == []


def test_fewer_images_than_asked_is_said_in_one_line(photos, tmp_path, monkeypatch, capsys):
    args = ("observe", "--model", "lenet", "--images", photos, "--n-images", "50")
    code, out, err = call_main(monkeypatch, capsys, *args, "--out", tmp_path / "o.safetensors")
    assert code == 0, err
    assert f"note: --n-images 50: {photos} has 2; using them" in out


def test_the_images_of_a_run_say_when_fewer_than_asked(caplog):
    from gradleak.experiments.build import images
    from gradleak.experiments.spec import ImagesSpec

    with caplog.at_level("WARNING", logger="gradleak"):
        got = images(ImagesSpec("bundled", first=500))
    assert len(got) < 500
    assert f"asked for 500 images, bundled has {len(got)}: using them" in caplog.text


def test_default_output_folders_are_ignored_by_git():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/gradleak-demo/" in ignored and "/runs/" in ignored


def test_a_process_pool_says_it_is_alive_between_cases(
    observation_file, tmp_path, monkeypatch, caplog
):
    from gradleak.experiments import backends
    from gradleak.experiments.attacking import attack_experiment
    from gradleak.experiments.spec import RunOptions

    experiment = attack_experiment(str(observation_file), "gray", {})
    cases = list(experiment.cases(experiment.settings))
    monkeypatch.setattr(backends, "HEARTBEAT_SECONDS", 0.05)
    with caplog.at_level("INFO", logger="gradleak"):
        outcomes = list(backends.run_cases(cases, tmp_path, RunOptions(workers=2, threads=1)))
    assert [case.id for case, _, _ in outcomes] == [case.id for case in cases]
    assert f"0 of {len(cases)} cases finished, 1 running" in caplog.text


def test_inverter_training_says_what_it_prepares(tmp_path, monkeypatch, capsys):
    args = ("train-inverter", "--model", "lenet", "--images", "bundled", "--steps", "1")
    code, out, err = call_main(monkeypatch, capsys, *args, "--out", tmp_path / "i.safetensors")
    assert code == 0, err
    assert "inverter: hashing the gradients of 8 auxiliary images" in out


def test_attack_names_a_folder_or_fifo_given_as_the_observation(tmp_path, monkeypatch, capsys):
    import os

    (tmp_path / "dir.safetensors").mkdir()
    os.mkfifo(tmp_path / "pipe.safetensors")
    for name, problem in (("dir", "is a folder"), ("pipe", "is a FIFO")):
        args = ("attack", tmp_path / f"{name}.safetensors", "--method", "idlg")
        code, _, err = call_main(monkeypatch, capsys, *args, "--out", tmp_path / name)
        assert code == 2 and problem in error_line(err)


def test_rank_analysis_of_large_inputs_counts_instead_of_building_the_operator(monkeypatch):
    """The convolution's gradient operator has (H W)^2 entries: above the cap, generic ranks."""
    from gradleak.analysis import rank
    from gradleak.analysis.rank import layer_rank_analysis

    batch = load_images("bundled", size=32, n=1)
    made = observe(build_model("lenet", seed=0), batch.images, batch.labels)
    exact = {row["name"]: row for row in layer_rank_analysis(made, batch_size=1)}
    monkeypatch.setattr(rank, "MAX_EXACT_PIXELS", 16)
    counted = {row["name"]: row for row in layer_rank_analysis(made, batch_size=1)}
    convolutions = [name for name, row in exact.items() if row["kind"] == "conv"]
    assert convolutions and all(counted[n]["method"] == "bound" for n in convolutions)
    assert all(counted[n]["rank"] >= exact[n]["rank"] for n in convolutions)  # an upper bound
