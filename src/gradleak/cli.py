"""Command line: ``gradleak demo | run | list | observe | attack | analyze | train-prior |
train-inverter``.

The CLI only parses, shows progress and prints tables; the work is done by the library. Every
user error prints one line ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gradleak.errors import GradleakError
from gradleak.report.results import finest_groups

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="gradleak: reconstruct a federated-learning client's images from its gradient.",
)
console = Console()
err_console = Console(stderr=True)


@contextmanager
def _progress():
    """A rich progress bar; yields a factory ``(case_id, total) -> callback``."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("dist {task.fields[distance]:.3e}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:

        def factory(case_id: str, total: int):
            task = bar.add_task(case_id, total=total, distance=float("nan"))

            def callback(done: int, total_: int, distance: float) -> None:
                bar.update(task, completed=done, total=total_, distance=distance)

            return callback

        yield factory


def _print_results(results: dict) -> None:
    table = Table(title=f"{results['preset']}: {results['summary']['n_cases']} cases")
    for column in ("variant", "cases", "PSNR median", "SSIM median", "label acc.", "s / case"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    for name, s in finest_groups(results["summary"]).items():
        table.add_row(
            name,
            str(s["n_cases"]),
            _fmt(s["psnr_median"], "{:.2f} dB"),
            _fmt(s["ssim_median"], "{:.3f}"),
            _fmt(s["label_accuracy"], "{:.2f}"),
            _fmt(s["seconds_median"], "{:.1f}"),
        )
    console.print(table)


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _run(name: str, out: Path, **kwargs) -> dict:
    from gradleak.experiments import get_preset, run_preset

    preset = get_preset(name)
    model = kwargs.pop("model", None)
    if model is not None:
        preset = _with_model(preset, model)
    console.print(f"[bold]{preset.name}[/]: {preset.description}")
    with _progress() as factory:
        results = run_preset(preset, out, progress=factory, **kwargs)
    _print_results(results)
    written = [out / n for n in ("results.json", "table.md", "overview.png", "overview.gif")]
    console.print("written: " + ", ".join(str(p) for p in written if p.exists()))
    return results


def _with_model(preset, model: str):
    """``preset`` on another registered model, with the same kind of weights."""
    import dataclasses

    from gradleak.experiments.presets import SweepPreset
    from gradleak.models import list_models

    if isinstance(preset, SweepPreset):
        raise GradleakError(f"preset {preset.name!r} chooses its own models; drop --model")
    if model not in list_models():
        raise GradleakError(f"unknown model {model!r}; choose one of: {', '.join(list_models())}")
    return dataclasses.replace(preset, model=model)


@app.command()
def demo(
    out: Path = typer.Option(Path("gradleak-demo"), help="Output folder."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Reconstruct bundled real photos from one training step's gradient (about a minute)."""
    _run("demo", out, seed=seed)


@app.command()
def run(
    preset: str = typer.Argument(..., help="Preset name (see `gradleak list`)."),
    out: Path = typer.Option(None, help="Output folder (default runs/PRESET)."),
    images: str = typer.Option(None, help="Image folder, image files, .npz or dataset name."),
    n_images: int = typer.Option(None, "--n-images", min=1, help="How many images to use."),
    iterations: int = typer.Option(None, min=1, help="Optimizer steps per attack."),
    restarts: int = typer.Option(None, min=1, help="Random restarts per attack."),
    seed: int = typer.Option(0, help="Random seed (model init and attacks)."),
    model: str = typer.Option(None, help="Attack another registered model (e.g. resnet56)."),
) -> None:
    """Run one of the reference write-up's experiments; resumes an interrupted run."""
    _run(
        preset,
        out or Path("runs") / (preset if model is None else f"{preset}-{model}"),
        model=model,
        images=images,
        n_images=n_images,
        iterations=iterations,
        restarts=restarts,
        seed=seed,
    )


@app.command("list")
def list_all() -> None:
    """List presets, models and attack methods."""
    from gradleak.attacks import ATTACKS
    from gradleak.experiments import PRESETS
    from gradleak.models import list_models, model_info

    table = Table(title="presets")
    table.add_column("name")
    table.add_column("description")
    for name, preset in sorted(PRESETS.items()):
        table.add_row(name, preset.description)
    console.print(table)
    table = Table(title="models")
    table.add_column("name")
    table.add_column("description")
    for name in list_models():
        table.add_row(name, str(model_info(name).get("description", "")))
    console.print(table)
    table = Table(title="attack methods")
    table.add_column("name")
    table.add_column("description")
    for name, cls in sorted(ATTACKS.items()):
        table.add_row(name, (cls.__doc__ or "").strip().splitlines()[0])
    console.print(table)


@app.command()
def observe(
    model: str = typer.Option(..., help="Model name (see `gradleak list`)."),
    images: str = typer.Option(..., help="Image folder, image files, .npz or dataset name."),
    out: Path = typer.Option(..., help="Observation file to write (.safetensors)."),
    width: int = typer.Option(None, help="Model width (e.g. mlp4 hidden units)."),
    weights: Path = typer.Option(None, help="Model weights (.safetensors) instead of init."),
    image_size: int = typer.Option(32, "--image-size", min=4, help="Input size of the model."),
    channels: int = typer.Option(3, min=1, max=3, help="Image channels: 3 (RGB) or 1 (gray)."),
    num_classes: int = typer.Option(None, "--num-classes", help="Default: max(10, #classes)."),
    n_images: int = typer.Option(None, "--n-images", min=1, help="Batch size (first N images)."),
    labels: str = typer.Option(None, help="Comma-separated labels instead of folder names."),
    bn_mode: str = typer.Option("train", "--bn-mode", help="BatchNorm mode: train or eval."),
    hide_labels: bool = typer.Option(False, "--hide-labels", help="Server does not know labels."),
    hide_batch_size: bool = typer.Option(
        False, "--hide-batch-size", help="Server does not know the batch size."
    ),
    seed: int = typer.Option(0, help="Seed of the model's initialization."),
) -> None:
    """Simulate a client's training step on your images and save what the server sees."""
    import torch

    from gradleak.data import load_images
    from gradleak.models import build_model
    from gradleak.threat import observe as make_observation
    from gradleak.threat import save_observation, truth_path

    batch = load_images(images, size=image_size, channels=channels, n=n_images)
    label_tensor = batch.labels
    if labels is not None:
        try:
            values = [int(v) for v in labels.split(",") if v.strip()]
        except ValueError:
            raise GradleakError(
                f"--labels must be comma-separated integers, got {labels!r}"
            ) from None
        if len(values) != len(batch):
            raise GradleakError(f"--labels gives {len(values)} labels for {len(batch)} images")
        label_tensor = torch.tensor(values)
    classes = num_classes or max(10, len(batch.class_names), int(label_tensor.max()) + 1)
    net = build_model(
        model,
        num_classes=classes,
        in_channels=channels,
        image_size=image_size,
        width=width,
        seed=seed,
        weights=str(weights) if weights else None,
    )
    observation = make_observation(
        net,
        batch.images,
        label_tensor,
        bn_mode=bn_mode,
        knows_labels=not hide_labels,
        knows_batch_size=not hide_batch_size,
        ids=batch.ids,
        metadata={"source": batch.source, "seed": seed},
    )
    path = save_observation(observation, out)
    console.print(
        f"observation of {len(batch)} image(s) on {model}: {path}\n"
        f"ground truth (evaluation only): {truth_path(path)}"
    )


@app.command()
def attack(
    observation: Path = typer.Argument(..., help="Observation file from `gradleak observe`."),
    method: str = typer.Option("inverting_gradients", help="Attack method (`gradleak list`)."),
    out: Path = typer.Option(..., help="Output folder."),
    iterations: int = typer.Option(None, min=1, help="Optimizer steps."),
    restarts: int = typer.Option(None, min=1, help="Random restarts."),
    seed: int = typer.Option(0, help="Random seed."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Guess if hidden."),
    option: list[str] = typer.Option(
        None, "--set", help="Attack setting KEY=VALUE, e.g. --set tv=1e-3 --set distance=l2."
    ),
    prior: Path = typer.Option(None, help="Generator from `gradleak train-prior` (gias, gifd)."),
    inverter: Path = typer.Option(None, help="Inverter from `gradleak train-inverter` (learned)."),
    init_only: bool = typer.Option(
        False, "--init-only", help="learned: the inverter's output alone, no optimization."
    ),
    refine: str = typer.Option(
        None, help="learned: optimization started from the inverter's output (ig)."
    ),
) -> None:
    """Reconstruct the images (and labels) behind an observation."""
    from gradleak.experiments import attack_and_report
    from gradleak.report import ResultsFile
    from gradleak.threat import load_observation

    obs = load_observation(observation)
    settings = _parse_settings(option or [])
    settings.update(_artifact_settings(method, prior, inverter, init_only, refine))
    results = ResultsFile(
        out / "results.json",
        "attack",
        {
            "observation": str(observation),
            "method": method,
            "attack_settings": settings,
            "iterations": iterations,
            "restarts": restarts,
            "seed": seed,
        },
        group_keys=("variant",),
    )
    if batch_size is not None and obs.knows_batch_size and batch_size != obs.batch_size:
        raise GradleakError(f"--batch-size {batch_size} contradicts the known {obs.batch_size}")
    with _progress() as factory:
        from gradleak.attacks import get_attack

        attack_obj = get_attack(method, **settings)
        total = iterations or attack_obj.settings.iterations
        callback = factory(method, total)
        if not obs.knows_batch_size:
            obs.batch_size = batch_size or obs.batch_size
        _, case = attack_and_report(
            obs,
            method,
            settings,
            out=out,
            iterations=iterations,
            restarts=restarts,
            seed=seed,
            callback=callback,
        )
    results.add({"id": method, "variant": method, **case})
    _print_results(results.as_dict())
    console.print(f"results: {out / 'results.json'}  figures: {out / 'grid.png'}")


@app.command("train-prior")
def train_prior(
    images: str = typer.Option(..., help="Auxiliary images: folder, .npz, dataset name."),
    out: Path = typer.Option(..., help="Generator file to write (.safetensors)."),
    steps: int = typer.Option(4000, min=1, help="Training steps."),
    size: int = typer.Option(32, min=8, help="Image size of the generator (32 or 64)."),
    channels: int = typer.Option(3, min=1, max=3, help="Image channels: 3 (RGB) or 1 (gray)."),
    classes: str = typer.Option(None, help="Comma-separated labels to keep (default: all)."),
    exclude: str = typer.Option(
        None, help="Private images never to train on (their near-copies are dropped)."
    ),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Train a generative image prior (DCGAN) for GIAS/GIFD; resumes after an interruption."""
    from gradleak.data import load_images
    from gradleak.data.auxiliary import auxiliary_images
    from gradleak.generative import train_generator

    private = load_images(exclude, size=size, channels=channels) if exclude else None
    class_list = _parse_classes(classes)
    data = auxiliary_images(
        images, size=size, channels=channels, classes=class_list, exclude=private
    )
    console.print(f"training a {size}x{size} generator on {len(data)} images of {data.source}")
    with _training_progress("train-prior", steps) as callback:
        train_generator(
            data.images,
            out=out,
            steps=steps,
            size=size,
            seed=seed,
            progress=callback,
            private=None if private is None else private.images,
            card={"data": str(data.source), "classes": class_list, "n_images": len(data)},
        )
    console.print(f"generator: {out}  card: {out}.json")


@app.command("train-inverter")
def train_inverter_command(
    model: str = typer.Option(..., help="Model name (see `gradleak list`)."),
    images: str = typer.Option(..., help="Auxiliary images: folder, .npz, dataset name."),
    out: Path = typer.Option(..., help="Inverter file to write (.safetensors)."),
    steps: int = typer.Option(3000, min=1, help="Training steps."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Batch size N or range LOW-HIGH."),
    weights: Path = typer.Option(None, help="Model weights (.safetensors) instead of init."),
    image_size: int = typer.Option(32, "--image-size", min=4, help="Input size of the model."),
    channels: int = typer.Option(3, min=1, max=3, help="Image channels: 3 (RGB) or 1 (gray)."),
    num_classes: int = typer.Option(10, "--num-classes", min=2, help="Model outputs."),
    exclude: str = typer.Option(
        None, help="Private images never to train on (their near-copies are dropped)."
    ),
    seed: int = typer.Option(0, help="Seed of the model's initialization and of training."),
) -> None:
    """Train a learned inverter (gradient -> images) for one model; resumes when interrupted."""
    from gradleak.data import load_images
    from gradleak.data.auxiliary import auxiliary_images
    from gradleak.learned import train_inverter
    from gradleak.models import build_model

    sizes = _parse_batch_sizes(batch_sizes)
    private = load_images(exclude, size=image_size, channels=channels) if exclude else None
    data = auxiliary_images(images, size=image_size, channels=channels, exclude=private)
    net = build_model(
        model,
        num_classes=num_classes,
        in_channels=channels,
        image_size=image_size,
        seed=seed,
        weights=str(weights) if weights else None,
    )
    console.print(f"training an inverter for {model} on {len(data)} images of {data.source}")
    with _training_progress("train-inverter", steps) as callback:
        train_inverter(
            net,
            data,
            out=out,
            steps=steps,
            batch_sizes=sizes,
            seed=seed,
            progress=callback,
            private=private,
        )
    console.print(f"inverter: {out}  card: {out}.json")


@app.command()
def analyze(
    observation: Path = typer.Argument(..., help="Observation file from `gradleak observe`."),
    json_file: Path = typer.Option(None, "--json", help="Also write the report as JSON here."),
) -> None:
    """What an observation gives away: batch size, labels, per-layer rank, applicable attacks."""
    from gradleak.analysis.report import analyze as analyze_observation
    from gradleak.report import write_json
    from gradleak.threat import load_observation

    report = analyze_observation(load_observation(observation))
    known = report["batch_size_known"]
    console.print(
        f"[bold]{observation}[/] (model {report['model']})\n"
        f"batch size: estimated {report['batch_size_estimate']}"
        f"{' (exact)' if report['batch_size_estimate_exact'] else ' (best guess)'}"
        f"{f', known {known}' if known else ', hidden from the server'}\n"
        f"labels ({report['label_method']}): {report['labels']}"
    )
    table = Table(title="per-layer information discard (R-GAP rank analysis)")
    for column in ("layer", "unknowns", "equations", "rank", "discarded", "note"):
        table.add_column(column, justify="left" if column in ("layer", "note") else "right")
    for row in report["layers"]:
        table.add_row(
            row["name"],
            str(row["unknowns"]),
            str(row["equations"]),
            str(row["rank"]),
            str(row.get("discarded", "")),
            row.get("note", ""),
        )
    console.print(table)
    table = Table(title="attacks")
    for column in ("attack", "applies", "expected result"):
        table.add_column(column)
    for name, info in report["attacks"].items():
        table.add_row(name, "yes" if info["applies"] else "no", info["expect"])
    console.print(table)
    if "truth_check" in report:
        console.print(f"against the evaluation-only truth: {report['truth_check']}")
    if json_file is not None:
        console.print(f"report: {write_json(json_file, report)}")


def _artifact_settings(
    method: str, prior: Path | None, inverter: Path | None, init_only: bool, refine: str | None
) -> dict:
    """Attack settings from the artifact options, refusing those the method does not use."""
    settings: dict = {}
    if prior is not None:
        if method not in ("gias", "gifd"):
            raise GradleakError(f"--prior is for --method gias or gifd, not {method!r}")
        settings["prior"] = str(prior)
    if inverter is not None or init_only or refine is not None:
        if method != "learned":
            raise GradleakError(
                f"--inverter, --init-only and --refine are for --method learned, not {method!r}"
            )
        if init_only and refine is not None:
            raise GradleakError("--init-only and --refine exclude each other")
        if inverter is not None:
            settings["inverter"] = str(inverter)
        if init_only:
            settings["refine"] = "none"
        elif refine is not None:
            settings["refine"] = refine
    return settings


@contextmanager
def _training_progress(description: str, total: int):
    """A rich progress bar for a training run; yields ``callback(done, total, values)``."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[values]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(description, total=total, values="")

        def callback(done: int, total_: int, values: dict) -> None:
            text = "  ".join(f"{k} {float(v):.4g}" for k, v in values.items())
            bar.update(task, completed=done, total=total_, values=text)

        yield callback


def _parse_batch_sizes(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        sizes = (int(low), int(high or low))
    except ValueError:
        raise GradleakError(f"--batch-sizes takes N or LOW-HIGH, got {text!r}") from None
    if not 1 <= sizes[0] <= sizes[1]:
        raise GradleakError(f"--batch-sizes needs 1 <= LOW <= HIGH, got {text!r}")
    return sizes


def _parse_classes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GradleakError(f"--classes must be comma-separated integers, got {text!r}") from None


def _parse_settings(pairs: list[str]) -> dict:
    import ast

    settings = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise GradleakError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        settings[key.strip().replace("-", "_")] = value
    return settings


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit status 2."""
    try:
        app(standalone_mode=False)
    except GradleakError as err:
        err_console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted; results written so far are kept (rerun to resume)")
        sys.exit(130)
    except Exception as err:
        # Usage errors of typer's bundled click: they know how to show themselves.
        if callable(getattr(err, "show", None)) and hasattr(err, "exit_code"):
            err.show()
            sys.exit(2)
        if type(err).__name__ == "Abort":
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
