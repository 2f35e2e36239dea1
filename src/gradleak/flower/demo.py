"""``python -m gradleak.flower.demo``: run the example Flower app (``examples/flower_app``) in
Flower's simulation engine with gradleak's :class:`AuditStrategy`, then attack every captured
update and write ``OUT/results.json`` (one case per client per round, PSNR against that client's
images) and ``OUT/report.html``.

``OUT/captures/`` holds what the server recorded (observation files, ``captures.json``);
``OUT/client-records/`` what each simulated client noted about the images it trained on (kept on
the client's side in a real deployment; here it scores the reconstructions). A second run with
the same settings reuses the captures and resumes the attacks; other settings are refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from gradleak.console import _print_results, _progress, _resumable, console, run_app
from gradleak.errors import GradleakError
from gradleak.experiments.spec import RunOptions
from gradleak.records import json_safe, write_json

SETTINGS = "demo.json"


@dataclass(frozen=True)
class FlowerDemo:
    """The federation the demo runs and how its updates are attacked."""

    images: str = "bundled"
    clients: int = 2
    rounds: int = 2
    local_steps: int = 1
    batch_size: int = 1
    lr: float = 0.01
    model: str = "lenet"
    seed: int = 0
    dp_clients: tuple[int, ...] = ()
    dp_epsilon: float = 1.0
    methods: tuple[str, ...] = ("auto",)
    iterations: int | None = None
    restarts: int | None = None

    def __post_init__(self):
        for name in ("clients", "rounds", "local_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise GradleakError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.lr > 0:
            raise GradleakError(f"--lr must be positive, got {self.lr}")
        bad = [p for p in self.dp_clients if not 0 <= p < self.clients]
        if bad:
            raise GradleakError(f"--dp-client {bad} names no client (0..{self.clients - 1})")


def find_app(app_dir: str | Path | None = None) -> Path:
    """The example Flower app's folder: ``app_dir``, else ``examples/flower_app`` of the source
    tree gradleak runs from (an editable install)."""
    if app_dir is None:
        app_dir = Path(__file__).resolve().parents[3] / "examples" / "flower_app"
    folder = Path(app_dir)
    if not (folder / "flower_app" / "server_app.py").is_file():
        raise GradleakError(
            f"no Flower app at {folder} (flower_app/server_app.py): run the demo from a clone "
            "of gradleak (pip install -e '.[flower]') or pass --app examples/flower_app"
        )
    return folder.resolve()


def run_demo(
    demo: FlowerDemo,
    out: str | Path,
    *,
    app_dir: str | Path | None = None,
    options=None,
    progress=None,
    note=print,
) -> dict:
    """Run the federation (unless ``out`` holds its captures already), write the clients'
    truth beside the captures, attack them and report; returns the results."""
    from gradleak.flower.evaluation import attack_captures

    out = Path(out)
    captures = out / "captures"
    settings = {"demo": dataclasses.asdict(demo), "format": "gradleak.flower.demo/1"}
    previous = out / SETTINGS
    if previous.exists():
        if json.loads(previous.read_text()) != json.loads(json.dumps(json_safe(settings))):
            raise GradleakError(
                f"{out} holds a demo run with other settings; choose another --out or move it"
            )
        note(f"reusing the federation's captures in {captures}")
    else:
        if out.exists() and any(out.iterdir()):
            raise GradleakError(f"{out} is not empty; choose a new folder for the demo")
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        run_federation(demo, captures, out / "client-records", app_dir)
        note(f"federation: {demo.rounds} round(s) x {demo.clients} client(s) in "
             f"{time.perf_counter() - started:.0f} s; updates in {captures}")  # fmt: skip
        write_truth(captures, out / "client-records", demo)
        write_json(previous, settings)
    return attack_captures(
        captures,
        out,
        methods=demo.methods,
        iterations=demo.iterations,
        restarts=demo.restarts,
        seed=demo.seed,
        options=options,
        progress=progress,
    )


def app_overrides(demo: FlowerDemo, captures: Path, records: Path) -> dict:
    """The example app's run config for ``demo`` (see ``examples/flower_app/pyproject.toml``)."""
    from gradleak.data import load_images

    per_round = demo.local_steps * demo.batch_size
    data = load_images(demo.images)
    wanted = demo.clients * demo.rounds * per_round  # every round of every client: new images
    if len(data) < demo.clients * per_round:
        raise GradleakError(
            f"{demo.images!r} holds {len(data)} images; {demo.clients} clients need "
            f"{demo.clients * per_round} for one round of {demo.local_steps} step(s) of "
            f"{demo.batch_size}"
        )
    return {
        "num-server-rounds": demo.rounds,
        "model": demo.model,
        "images": demo.images,
        "n-images": min(wanted, len(data)),
        "num-classes": max(10, int(data.labels.max()) + 1),
        "seed": demo.seed,
        "lr": demo.lr,
        "local-steps": demo.local_steps,
        "batch-size": demo.batch_size,
        "dp-clients": ",".join(str(p) for p in demo.dp_clients),
        "dp-epsilon": demo.dp_epsilon,
        "audit-dir": str(captures.resolve()),
        "truth-dir": str(records.resolve()),
    }


def prepare_app(app_dir: str | Path | None = None) -> Path:
    """Make the example app importable here and in Ray's workers (``import flower_app``), with
    Flower offline (no telemetry); its folder."""
    folder = find_app(app_dir)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # offline: no telemetry
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # The clients run in Ray workers: they import the app from the same folder.
    path = os.environ.get("PYTHONPATH", "")
    if str(folder) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), path) if p)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return folder


def backend_config(clients: int) -> dict:
    """Flower's simulation engine with one CPU per client (Ray backend)."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": clients, "include_dashboard": False},
    }


def run_federation(
    demo: FlowerDemo, captures: Path, records: Path, app_dir: str | Path | None = None
) -> None:
    """The example app in Flower's simulation engine (Ray backend, one CPU per client)."""
    prepare_app(app_dir)
    try:
        from flwr.simulation import run_simulation
    except ImportError as err:
        raise GradleakError(
            f"the Flower demo needs Flower's simulation engine: pip install 'gradleak[flower]' "
            f"({err})"
        ) from None
    from flower_app import client_app, server_app

    overrides = app_overrides(demo, captures, records)
    run_simulation(
        server_app=server_app.make_app(overrides, clients=demo.clients),
        client_app=client_app.make_app(overrides),
        num_supernodes=demo.clients,
        backend_config=backend_config(demo.clients),
    )
    if not (captures / "captures.json").exists():
        raise GradleakError("the federation ended before its first round: see Flower's log above")


def write_truth(captures: Path, records: Path, demo: FlowerDemo) -> int:
    """Write each captured update's ground truth (the images the client noted) beside it; the
    number written."""
    import torch

    from gradleak.data import load_images
    from gradleak.flower.evaluation import read_captures
    from gradleak.threat import GroundTruth, save_truth

    manifest = read_captures(captures)
    notes = {}
    for file in sorted(records.glob("node-*-round-*.json")):
        record = json.loads(file.read_text())
        notes[(int(record["round"]), int(record["node"]))] = record
    data = load_images(demo.images)
    written = 0
    for entry in manifest["captures"]:
        record = notes.get((int(entry["round"]), int(entry["node"])))
        if entry.get("status") != "captured" or record is None:
            continue
        index = torch.tensor(record["indices"])
        ids = [f"{data.ids[i]} (client {record['partition']})" for i in record["indices"]]
        save_truth(
            GroundTruth(data.images[index], data.labels[index], ids), captures / entry["file"]
        )
        written += 1
    return written


cli = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@cli.command()
def flower_demo(
    out: Path = typer.Option(..., help="Output folder (captures/, results.json, report.html)."),
    images: str = typer.Option(
        "bundled", help="Images (bundled, cifar10, a folder, an .npz; see gradleak observe --help)."
    ),
    clients: int = typer.Option(2, min=1, help="Simulated clients (Flower SuperNodes)."),
    rounds: int = typer.Option(2, min=1, help="Federated rounds."),
    local_steps: int = typer.Option(1, "--local-steps", min=1, help="Local SGD steps a round."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Local batch size."),
    lr: float = typer.Option(0.01, help="Local learning rate."),
    dp_client: list[int] = typer.Option(
        [],
        "--dp-client",
        help="Client (partition id) whose updates go through Flower's LocalDpMod (repeatable).",
    ),  # fmt: skip
    dp_epsilon: float = typer.Option(1.0, "--dp-epsilon", help="LocalDpMod's epsilon."),
    method: list[str] = typer.Option(["auto"], help="Attack per update (repeatable)."),
    iterations: int = typer.Option(None, min=1, help="Steps of iterative attacks."),
    seed: int = typer.Option(0, help="Seed of the model and the attacks."),
    app_dir: Path = typer.Option(None, "--app", help="The Flower app (examples/flower_app)."),
    threads: int = typer.Option(None, min=1, help="CPU threads of the attacks."),
) -> None:
    """Run the example Flower app in Flower's simulation engine with gradleak's AuditStrategy,
    attack every captured update and write OUT/results.json and OUT/report.html."""
    demo = FlowerDemo(
        images=images, clients=clients, rounds=rounds, local_steps=local_steps,
        batch_size=batch_size, lr=lr, seed=seed, dp_clients=tuple(dp_client),
        dp_epsilon=dp_epsilon, methods=tuple(method), iterations=iterations,
    )  # fmt: skip
    kept = f"the captures and every finished case are kept in {out}"
    with _resumable(kept), _progress() as progress:
        results = run_demo(
            demo, out, app_dir=app_dir, options=RunOptions(threads=threads), progress=progress,
            note=lambda text: console.print(text, highlight=False),
        )  # fmt: skip
    _print_results(results)
    console.print(f"report: {out / 'report.html'}")


def main() -> None:
    run_app(cli)


if __name__ == "__main__":
    main()
