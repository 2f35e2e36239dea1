"""Command line: ``gradleak demo | run | sweep | audit | flower-audit | list | observe | attack |
analyze | train-prior | train-inverter``, and ``python -m gradleak.flower.demo``.

The CLI only parses, shows progress and prints tables; the work is done by the library, imported
inside each command so that ``gradleak --help`` and ``gradleak list`` never import torch. Every
user error prints one line ``error: ...`` and exits with status 2; Ctrl-C exits with 130 and
says what was kept.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer
from rich.table import Table

from gradleak.console import (
    _plain_training,
    _print_results,
    _progress,
    _resumable,
    console,
    keeps,
    run_app,
    stages,
)
from gradleak.errors import GradleakError
from gradleak.limits import SIZE_LIMITS
from gradleak.paths import output_file, output_folder

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="gradleak: reconstruct a federated-learning client's images from its gradient.",
)

THREADS_HELP = "CPU threads per process (default: 1 for small models and sweep workers)."


def _threads_option():
    return typer.Option(
        None, "--threads", min=1, max=MAX_THREADS, envvar="GRADLEAK_THREADS", help=THREADS_HELP
    )


# Bounds of sizes and counts given on the command line: generous for real use, small enough that
# a typo fails in one line instead of allocating (or looping) for ever.
MAX_THREADS = 1024
MAX_IMAGE_SIZE = SIZE_LIMITS["image_size"]
MAX_IMAGES = 1_000_000
MAX_STEPS = 10_000_000
MAX_RESTARTS = 10_000
MAX_SEED = 2**32 - 1
MAX_CLIENTS = 100_000
MAX_CLASSES = SIZE_LIMITS["num_classes"]
MAX_WIDTH = SIZE_LIMITS["width"]


def _seed_option(default, help_text: str):
    return typer.Option(default, min=0, max=MAX_SEED, help=help_text)


def _steps_option(default, help_text: str):
    return typer.Option(default, min=1, max=MAX_STEPS, help=help_text)


def _restarts_option(help_text: str):
    return typer.Option(None, min=1, max=MAX_RESTARTS, help=help_text)


def _n_images_option(help_text: str):
    return typer.Option(None, "--n-images", min=1, max=MAX_IMAGES, help=help_text)


DEVICE_HELP = "auto (a GPU if torch sees one, else the CPU), cpu, cuda, cuda:1 or mps: where {}."


def _device_option(what: str = "attacks optimize and artifacts train"):
    return typer.Option("auto", envvar="GRADLEAK_DEVICE", help=DEVICE_HELP.format(what))


def _execute(experiment, out: Path, options) -> dict:
    """Run ``experiment`` into ``out`` with progress, print its table; say what was kept when
    interrupted."""
    from gradleak.experiments.runner import run_experiment

    output_folder(out)
    console.print(f"[bold]{experiment.name}[/]: {experiment.description}", highlight=False)
    kept = f"every finished case is kept in {out} (results.json, cases/)"
    with _resumable(kept), _progress() as progress:
        results = run_experiment(experiment, out, options, progress=progress)
    _print_results(results)
    written = ("results.json", "results.csv", "table.md", "overview.png", "summary.png")
    console.print("written: " + ", ".join(str(out / n) for n in written if (out / n).exists()))
    return results


def _options(**values):
    from gradleak.experiments.spec import RunOptions

    return RunOptions(**{k: v for k, v in values.items() if v is not None})


# ---------------------------------------------------------------------- commands
@app.command()
def demo(
    out: Path = typer.Option(Path("gradleak-demo"), help="Output folder."),
    seed: int = _seed_option(None, "Random seed."),
    threads: int = _threads_option(),
    device: str = _device_option(),
) -> None:
    """Reconstruct bundled real photos from one training step's gradient (1-2 minutes)."""
    from gradleak.experiments import get_preset

    _execute(get_preset("demo"), out, _options(seed=seed, threads=threads, device=device))


IMAGES_HELP = "Image folder, image files, .npz or dataset name."


@app.command()
def run(
    preset: str = typer.Argument(..., help="Preset name (see `gradleak list`)."),
    out: Path = typer.Option(None, help="Output folder (default runs/PRESET)."),
    images: str = typer.Option(None, help=IMAGES_HELP),
    n_images: int = _n_images_option("How many images to use."),
    iterations: int = _steps_option(None, "Optimizer steps per attack."),
    restarts: int = _restarts_option("Random restarts per attack."),
    seed: int = _seed_option(None, "Random seed (model init and attacks)."),
    batch_size: int = typer.Option(
        None, "--batch-size", min=1, max=MAX_IMAGES, help="Client batch size."
    ),
    model: str = typer.Option(None, help="Attack another registered model (e.g. resnet56)."),
    threads: int = _threads_option(),
    device: str = _device_option(),
    workers: int = typer.Option(
        1, min=1, max=MAX_THREADS, help="Cases run in parallel (processes)."
    ),
    backend: str = typer.Option("local", help="local (processes here) or ray."),
    address: str = typer.Option(None, help="Ray cluster to join (default: start one)."),
) -> None:
    """Run one of the reference write-up's experiments; resumes an interrupted run."""
    from gradleak.experiments import get_preset
    from gradleak.experiments.spec import with_model

    experiment = get_preset(preset)
    if model is not None:
        from gradleak import catalog

        if model not in catalog.models():
            known = ", ".join(catalog.models())
            raise GradleakError(f"unknown model {model!r}; choose one of: {known}")
        experiment = with_model(experiment, model)
    options = _options(
        images=images, n_images=n_images, iterations=iterations, restarts=restarts, seed=seed,
        batch_size=batch_size, threads=threads, workers=workers, backend=backend, address=address,
        device=device,
    )  # fmt: skip
    default = Path("runs") / (preset if model is None else f"{preset}-{model}")
    _execute(experiment, out or default, options)


@app.command()
def sweep(
    grid: Path = typer.Argument(..., help="TOML grid file (see the README and examples/)."),
    out: Path = typer.Option(..., help="Output folder."),
    images: str = typer.Option(None, help=IMAGES_HELP + " Overrides the file's."),
    n_images: int = _n_images_option("How many images to use."),
    iterations: int = _steps_option(None, "Steps of attacks that set none."),
    restarts: int = _restarts_option("Restarts of attacks that set none."),
    seed: int = _seed_option(None, "Replaces the file's seeds."),
    workers: int = typer.Option(
        None, min=1, max=MAX_THREADS, help="Cases run in parallel (default: free cores)."
    ),
    backend: str = typer.Option("local", help="local (a process pool) or ray."),
    address: str = typer.Option(None, help="Ray cluster to join (default: start one)."),
    threads: int = _threads_option(),
    device: str = _device_option(),
) -> None:
    """Run a grid of cases (models x batches x attacks x defenses x seeds) from a TOML file."""
    from gradleak import threads as policy
    from gradleak.experiments.sweep import load_sweep

    experiment = load_sweep(grid)
    options = _options(
        images=images, n_images=n_images, iterations=iterations, restarts=restarts, seed=seed,
        threads=threads, workers=workers or policy.free_cores(), backend=backend, address=address,
        device=device,
    )  # fmt: skip
    _execute(experiment, out, options)


@app.command()
def audit(
    file: Path = typer.Argument(..., help="TOML audit file (see examples/audit-small.toml)."),
    out: Path = typer.Option(..., help="Output folder: report.html, results.json, cases/."),
    images: str = typer.Option(None, help=IMAGES_HELP + " Overrides the file's."),
    n_images: int = _n_images_option("How many private images."),
    iterations: int = _steps_option(None, "Steps of attacks that set none."),
    seed: int = _seed_option(None, "Replaces the file's seeds."),
    threads: int = _threads_option(),
    device: str = _device_option(),
) -> None:
    """Audit a setup: run its attacks against each defense, measure each defense's accuracy
    cost, and write one self-contained report.html (resumes an interrupted audit)."""
    from gradleak.experiments.audit import load_audit, run_audit

    output_folder(out)
    setup = load_audit(file)
    options = _options(
        images=images, n_images=n_images, iterations=iterations, seed=seed, threads=threads,
        device=device,
    )  # fmt: skip
    console.print(f"[bold]audit[/]: {setup.title}", highlight=False)
    kept = f"finished cases and accuracies are kept in {out} (cases/, utility.json)"
    with _resumable(kept), _progress() as progress:
        report = run_audit(setup, out, options, progress=progress)
    console.print(f"report: {report}")


@app.command("flower-audit")
def flower_audit(
    captures: Path = typer.Argument(
        ..., help="Folder an AuditStrategy wrote (captures.json and observation files)."
    ),
    out: Path = typer.Option(..., help="Output folder: report.html, results.json, cases/."),
    method: list[str] = typer.Option(
        ["auto"], help="Attack to run on every update (repeatable; auto: the first that fits)."
    ),
    iterations: int = _steps_option(None, "Steps of iterative attacks."),
    seed: int = _seed_option(0, "Seed of the attacks."),
    model: str = typer.Option(None, help="Your own model's factory, when the clients train one."),
    threads: int = _threads_option(),
    device: str = _device_option(),
) -> None:
    """Attack the client updates a Flower federation's gradleak AuditStrategy captured and write
    report.html (scores where .truth.safetensors files lie beside the updates; resumable)."""
    from gradleak.flower.evaluation import attack_captures

    output_folder(out)
    options = _options(threads=threads, device=device)
    kept = f"every finished case is kept in {out} (results.json, cases/)"
    with _resumable(kept), _progress() as progress:
        results = attack_captures(
            captures, out, methods=tuple(method), iterations=iterations, seed=seed,
            own_model=model, options=options, progress=progress,
        )  # fmt: skip
    _print_results(results)
    console.print(f"report: {out / 'report.html'}")


@app.command("list")
def list_all() -> None:
    """List presets, models, attack methods, defenses and malicious servers."""
    from gradleak import catalog
    from gradleak.experiments.presets import PRESETS

    for title, rows in (
        ("presets", {name: e.description for name, e in sorted(PRESETS.items())}),
        ("models", catalog.models()),
        ("attack methods", catalog.attacks()),
        ("defenses (--defense NAME[:key=value,...])", catalog.defenses()),
        ("malicious servers (observe --server NAME[:key=value,...])", catalog.servers()),
    ):
        table = Table(title=title)
        table.add_column("name")
        table.add_column("description")
        for name, description in rows.items():
            table.add_row(name, description)
        console.print(table)


OWN_MODEL_HELP = "Your own model's factory, when the observation was made with one."


@app.command()
def observe(
    model: str = typer.Option(
        ..., help="Model name (see `gradleak list`), or your own: path/to/file.py:FACTORY."
    ),
    images: str = typer.Option(..., help=IMAGES_HELP),
    out: Path = typer.Option(..., help="Observation file to write (.safetensors)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out (and its ground truth) if they exist."
    ),
    width: int = typer.Option(
        None, min=1, max=MAX_WIDTH, help="Model width (e.g. mlp4 hidden units)."
    ),
    weights: Path = typer.Option(None, help="Model weights (.safetensors) instead of init."),
    normalization: str = typer.Option(
        None, help="Input normalization: cifar10, imagenet or none (default: the model's)."
    ),
    image_size: int = typer.Option(
        32, "--image-size", min=4, max=MAX_IMAGE_SIZE, help="Input size of the model."
    ),
    channels: int = typer.Option(3, min=1, max=3, help="Image channels: 3 (RGB) or 1 (gray)."),
    num_classes: int = typer.Option(
        None, "--num-classes", min=2, max=MAX_CLASSES, help="Default: sized from the data."
    ),
    n_images: int = _n_images_option("Batch size (first N images)."),
    labels: str = typer.Option(None, help="Comma-separated labels instead of folder names."),
    bn_mode: str = typer.Option("train", "--bn-mode", help="BatchNorm mode: train or eval."),
    hide_labels: bool = typer.Option(False, "--hide-labels", help="Server does not know labels."),
    hide_batch_size: bool = typer.Option(
        False, "--hide-batch-size", help="Server does not know the batch size."
    ),
    knows_bn_statistics: bool = typer.Option(
        False,
        "--knows-bn-statistics",
        help="Server is given the batch's BatchNorm statistics (Huang et al.'s BN_exact).",
    ),
    seed: int = _seed_option(0, "Seed of the model's initialization."),
    local_steps: int = typer.Option(
        None,
        "--local-steps",
        min=1,
        max=MAX_STEPS,
        help="FedAvg: K local optimizer steps (an update).",
    ),
    local_epochs: int = typer.Option(
        None, "--local-epochs", min=1, max=MAX_STEPS, help="FedAvg: E local epochs over the images."
    ),
    local_batch_size: int = typer.Option(
        None,
        "--local-batch-size",
        min=1,
        max=MAX_STEPS,
        help="FedAvg: local batch size (default: all images).",
    ),
    lr: float = typer.Option(None, "--lr", help="FedAvg: local learning rate (required)."),
    optimizer: str = typer.Option(
        "sgd", "--optimizer", help="FedAvg: local optimizer: sgd, momentum or adam."
    ),
    momentum: float = typer.Option(
        0.9, "--momentum", min=0.0, max=1.0, help="FedAvg: momentum coefficient."
    ),
    shuffle: bool = typer.Option(
        False, "--shuffle", help="FedAvg: reshuffle the images every local epoch."
    ),
    hide: str = typer.Option(
        None,
        "--hide",
        help="FedAvg: facts the server does not know, comma-separated among "
        "lr, steps, local_batch_size, optimizer, order.",
    ),
    clients: int = typer.Option(
        1,
        "--clients",
        min=1,
        max=MAX_CLIENTS,
        help="Secure aggregation: the mean of M clients (images split).",
    ),
    defense: list[str] = typer.Option(
        None,
        "--defense",
        help="A defense the client applies, NAME[:key=value,...]; repeatable, applied in order "
        "within its stage (data, step, update). Defenses: noise:sigma, clip:max_norm, "
        "prune:keep, quantize:bits,mode, soteria:prune, dp:noise_multiplier,max_grad_norm,"
        "delta,... (gradleak[dp]), mixup:k, instahide:k. Parameters and defaults: "
        "`gradleak list`.",
    ),
    server: str = typer.Option(
        "honest",
        "--server",
        help="The server that sent the model: honest, or a malicious one that modified it, "
        "NAME[:key=value,...]: imprint:bins=128,statistics=3,structure=sparse,data=bundled "
        "(Fowl et al.), trap:neurons=1000,scale=0.95 (Boenisch et al.), "
        "fishing:target=K,margin=100 (Wen et al.); the attack named in `gradleak list` reads "
        "it (imprint, trap_weights, fishing). Every parameter and default: `gradleak list`.",
    ),
    threads: int = _threads_option(),
    device: str = _device_option("the client's training step runs"),
) -> None:
    """Simulate a client's training step (a gradient, or a FedAvg update with --local-steps or
    --local-epochs; --clients M: the secure aggregate of M clients) and save what the server
    sees."""
    import dataclasses

    import torch

    from gradleak.data import load_images
    from gradleak.defenses import get_defense, parse_defense
    from gradleak.devices import resolve_device, to_device
    from gradleak.malicious import modify_model, parse_server
    from gradleak.models import build_model
    from gradleak.threat import observe as make_observation
    from gradleak.threat import save_observation, truth_path

    defenses = [parse_defense(text) for text in defense or []]
    malicious = parse_server(server)
    mixing = any(get_defense(name).stage == "data" for name, _ in defenses)
    where = resolve_device(device)
    local, knows_local = _local_training(
        local_steps, local_epochs, local_batch_size, lr, optimizer, momentum, shuffle, hide
    )
    output_file(out, suffix=".safetensors", overwrite=overwrite, companions=(truth_path(out),))
    keeps(f"nothing was written ({out} is written at the end)")
    batch = load_images(images, size=image_size, channels=channels, n=None if mixing else n_images)
    partners = None  # the client's other images, when any
    if mixing:  # MixUp / InstaHide mix the batch with the client's other images
        n = n_images or len(batch)
        partners, batch = batch.subset(slice(n, None)), batch.subset(slice(0, n))
        partners = partners if len(partners) else None
    available = len(batch) + (len(partners) if partners is not None else 0)
    if n_images is not None and n_images > available:
        console.print(f"note: --n-images {n_images}: {images} has {available}; using them")
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
    if local is not None and local_batch_size is None:
        local = dataclasses.replace(local, batch_size=max(1, len(batch) // clients))
    net = build_model(
        model,
        num_classes=num_classes or _classes_of(batch, label_tensor),
        in_channels=channels,
        image_size=image_size,
        width=width,
        seed=seed,
        weights=str(weights) if weights else None,
        normalization=normalization,
    )
    if malicious is not None:  # the client's images only stay out of the server's own data
        net = modify_model(net, malicious, seed=seed, private=batch.images)
    _use_threads(threads, net)
    observation = make_observation(
        net.to(where),
        batch.images.to(where),
        label_tensor.to(where),
        bn_mode=bn_mode,
        knows_labels=not hide_labels,
        knows_batch_size=not hide_batch_size,
        knows_bn_statistics=knows_bn_statistics,
        ids=batch.ids,
        metadata={"source": batch.source, "seed": seed},
        local=local,
        knows_local=knows_local,
        clients=clients,
        defenses=defenses,
        partners=partners.images.to(where) if partners is not None and len(partners) else None,
        partner_labels=partners.labels.to(where)
        if partners is not None and len(partners)
        else None,
        defense_seed=seed,
    )
    path = save_observation(to_device(observation, "cpu"), out)
    console.print(
        f"observation of {len(batch)} image(s) on {model}"
        f"{f' modified by a malicious server ({malicious[0]})' if malicious else ''} "
        f"({observation.describe()}): {path}\n"
        f"ground truth (evaluation only): {truth_path(path)}"
    )


def _local_training(steps, epochs, batch_size, lr, optimizer, momentum, shuffle, hide):
    """The FedAvg local training the observe options describe (None: a plain gradient), and
    which of its facts the server knows."""
    from gradleak.threat import LOCAL_FACTS, LocalTraining

    if steps is None and epochs is None:
        given = [
            flag
            for flag, value in (
                ("--local-batch-size", batch_size),
                ("--lr", lr),
                ("--hide", hide),
                ("--shuffle", shuffle or None),
            )
            if value is not None
        ]
        if given or optimizer != "sgd":
            flags = ", ".join(given + (["--optimizer"] if optimizer != "sgd" else []))
            raise GradleakError(
                f"{flags}: option(s) of FedAvg local training; add --local-steps K or "
                "--local-epochs E"
            )
        return None, None
    if steps is not None and epochs is not None:
        raise GradleakError("give --local-steps or --local-epochs, not both")
    if lr is None:
        raise GradleakError("a FedAvg update needs the client's learning rate: add --lr")
    if not 0 < lr < float("inf"):
        raise GradleakError(f"--lr must be a positive number, got {lr}")
    hidden = [fact.strip() for fact in (hide or "").split(",") if fact.strip()]
    unknown = [fact for fact in hidden if fact not in LOCAL_FACTS]
    if unknown:
        raise GradleakError(f"--hide: unknown fact(s) {unknown}; choose from {list(LOCAL_FACTS)}")
    training = LocalTraining(
        lr=lr,
        batch_size=batch_size or 1,  # "all the client's images": set once they are loaded
        steps=steps,
        epochs=epochs,
        optimizer=optimizer,
        momentum=momentum,
        shuffle=shuffle,
    )
    return training, {fact: fact not in hidden for fact in LOCAL_FACTS}


def _classes_of(batch, labels=None) -> int:
    """The output layer ``batch`` needs: ``max(10, its classes, largest label + 1)``."""
    from gradleak.experiments.build import num_classes

    labels = batch.labels if labels is None else labels
    return max(num_classes(batch), int(labels.max()) + 1)


def _use_threads(threads: int | None, model=None) -> None:
    from gradleak import threads as policy

    macs = policy.model_macs(model) if model is not None else None
    policy.apply(policy.choose(threads, macs=macs))


@app.command()
def attack(
    observation: Path = typer.Argument(..., help="Observation file from `gradleak observe`."),
    method: str = typer.Option(
        "inverting_gradients", help="Attack (`gradleak list`), or auto: every one that applies."
    ),
    out: Path = typer.Option(..., help="Output folder."),
    iterations: int = _steps_option(None, "Optimizer steps (iterative attacks)."),
    restarts: int = _restarts_option("Random restarts (iterative attacks)."),
    seed: int = _seed_option(None, "Random seed."),
    batch_size: int = typer.Option(
        None, "--batch-size", min=1, max=MAX_IMAGES, help="Guess if hidden."
    ),
    option: list[str] = typer.Option(
        None, "--set", help="Attack setting KEY=VALUE, e.g. --set tv=1e-3 --set refine=none."
    ),
    prior: Path = typer.Option(None, help="Generator from `gradleak train-prior` (gias, gifd)."),
    inverter: Path = typer.Option(None, help="Inverter from `gradleak train-inverter` (learned)."),
    model: str = typer.Option(None, help=OWN_MODEL_HELP),
    threads: int = _threads_option(),
    device: str = _device_option("attacks optimize (closed-form ones compute on the CPU)"),
) -> None:
    """Reconstruct the images (and labels) behind an observation."""
    from gradleak.attacks import attack_class
    from gradleak.experiments.attacking import attack_experiment

    settings = _parse_settings(option or [])
    settings.update({k: str(v) for k, v in (("prior", prior), ("inverter", inverter)) if v})
    budget = [f"--{k}" for k, v in (("iterations", iterations), ("restarts", restarts)) if v]
    if budget and method != "auto" and not attack_class(method).iterative():
        raise GradleakError(f"attack {method!r} is closed-form: it takes no {' or '.join(budget)}")
    experiment = attack_experiment(str(observation), method, settings, model)
    options = _options(
        iterations=iterations, restarts=restarts, seed=seed, batch_size=batch_size,
        threads=threads, device=device,
    )  # fmt: skip
    results = _execute(experiment, out, options)
    if method != "auto":
        (case,) = results["cases"]
        if case["status"] != "done":  # the one attack asked for did not run: say why
            raise GradleakError(f"attack {method!r} {case['status']}: {case['error']}")
    elif results.get("best"):
        best = results["best"]
        console.print(
            f"best by gradient distance: {best['attack']} (cosine {best['cosine_distance']:.4g})"
        )


@app.command("train-prior")
def train_prior(
    images: str = typer.Option(..., help="Auxiliary images: folder, .npz, dataset name."),
    out: Path = typer.Option(..., help="Generator file to write (.safetensors)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
    steps: int = _steps_option(4000, "Training steps."),
    size: int = typer.Option(
        32, min=8, max=MAX_IMAGE_SIZE, help="Image size of the generator (32 or 64)."
    ),
    channels: int = typer.Option(3, min=1, max=3, help="Image channels: 3 (RGB) or 1 (gray)."),
    classes: str = typer.Option(None, help="Comma-separated labels to keep (default: all)."),
    exclude: str = typer.Option(
        None, help="Private images never to train on (their near-copies are dropped)."
    ),
    seed: int = _seed_option(0, "Random seed."),
    threads: int = _threads_option(),
    device: str = _device_option("the generator trains"),
) -> None:
    """Train a generative image prior (DCGAN) for GIAS/GIFD; resumes after an interruption."""
    from gradleak.data import load_images
    from gradleak.data.auxiliary import auxiliary_images
    from gradleak.devices import resolve_device
    from gradleak.generative import train_generator

    where = resolve_device(device)
    _artifact_out(out, overwrite)
    _use_threads(threads)
    private = load_images(exclude, size=size, channels=channels) if exclude else None
    class_list = _parse_classes(classes)
    data = auxiliary_images(
        images, size=size, channels=channels, classes=class_list, exclude=private
    )
    console.print(
        f"training a {channels}x{size}x{size} generator on {len(data)} images of {data.source} "
        f"({where})"
    )
    with _resumable(_training_kept(out)), _training_progress("train-prior", steps) as callback:
        train_generator(
            data.images,
            out=out,
            steps=steps,
            size=size,
            seed=seed,
            progress=callback,
            private=None if private is None else private.images,
            card={"data": str(data.source), "classes": class_list, "n_images": len(data)},
            device=where,
        )
    console.print(f"generator: {out}  card: {out}.json")


@app.command("train-inverter")
def train_inverter_command(
    model: str = typer.Option(..., help="Model name (see `gradleak list`)."),
    images: str = typer.Option(..., help="Auxiliary images: folder, .npz, dataset name."),
    out: Path = typer.Option(..., help="Inverter file to write (.safetensors)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
    steps: int = _steps_option(3000, "Training steps."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Batch size N or range LOW-HIGH."),
    weights: Path = typer.Option(None, help="Model weights (.safetensors) instead of init."),
    image_size: int = typer.Option(
        32, "--image-size", min=4, max=MAX_IMAGE_SIZE, help="Input size of the model."
    ),
    channels: int = typer.Option(3, min=1, max=3, help="Image channels: 3 (RGB) or 1 (gray)."),
    num_classes: int = typer.Option(
        None,
        "--num-classes",
        min=2,
        max=MAX_CLASSES,
        help="Model outputs (default: sized from the data).",
    ),
    exclude: str = typer.Option(
        None, help="Private images never to train on (their near-copies are dropped)."
    ),
    seed: int = _seed_option(0, "Seed of the model's initialization and of training."),
    threads: int = _threads_option(),
    device: str = _device_option("the gradients are computed and the inverter trains"),
) -> None:
    """Train a learned inverter (gradient -> images) for one model; resumes when interrupted."""
    from gradleak.data import load_images
    from gradleak.data.auxiliary import auxiliary_images
    from gradleak.devices import resolve_device
    from gradleak.learned import train_inverter
    from gradleak.models import build_model

    where = resolve_device(device)
    _artifact_out(out, overwrite)
    sizes = _parse_batch_sizes(batch_sizes)
    private = load_images(exclude, size=image_size, channels=channels) if exclude else None
    data = auxiliary_images(images, size=image_size, channels=channels, exclude=private)
    net = build_model(
        model,
        num_classes=num_classes or _classes_of(data),
        in_channels=channels,
        image_size=image_size,
        seed=seed,
        weights=str(weights) if weights else None,
    )
    _use_threads(threads, net)
    console.print(
        f"training an inverter for {model} ({net.config['num_classes']} classes) on "
        f"{len(data)} images of {data.source} ({where})"
    )
    with _resumable(_training_kept(out)), _training_progress("train-inverter", steps) as callback:
        train_inverter(
            net,
            data,
            out=out,
            steps=steps,
            batch_sizes=sizes,
            seed=seed,
            progress=callback,
            private=private,
            device=where,
        )
    console.print(f"inverter: {out}  card: {out}.json")


@app.command()
def analyze(
    observation: Path = typer.Argument(
        ...,
        help="Observation file from `gradleak observe`, or a model's weights file (.safetensors "
        "with its config) received from a server: then only its malicious modifications.",
    ),
    json_file: Path = typer.Option(None, "--json", help="Also write the report as JSON here."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the --json file if it exists."
    ),
    model: str = typer.Option(None, help=OWN_MODEL_HELP),
    threads: int = _threads_option(),
    device: str = typer.Option(
        "auto",
        envvar="GRADLEAK_DEVICE",
        help="auto, cpu, cuda, cuda:1 or mps: checked like every command's, but analyze "
        "computes in closed form on the CPU whatever it says.",
    ),
) -> None:
    """What an observation gives away: batch size, labels, per-layer rank, applicable attacks,
    and any malicious modification of the model the server sent (imprint, trap, fishing)."""
    from gradleak.analysis.report import analyze as analyze_observation
    from gradleak.devices import resolve_device
    from gradleak.records import write_json
    from gradleak.threat import load_observation

    resolve_device(device)  # an unusable device is refused here as everywhere
    if json_file is not None:
        output_file(json_file, "--json", suffix=".json", overwrite=overwrite)
    keeps("nothing was written")
    if _is_weights_file(observation):
        _inspect_model(observation, json_file)
        return
    loaded = load_observation(observation, model=model)
    _use_threads(threads)
    with stages(f"analyzing {observation}") as stage:
        report = analyze_observation(loaded, progress=stage)
    known = report["batch_size_known"]
    console.print(
        f"[bold]{observation}[/] (model {report['model']}): {report['observed']}\n"
        f"{report['note'] + chr(10) if report.get('note') else ''}"
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
    for column in ("attack", "applies", "expected result, or why not"):
        table.add_column(column)
    for name, info in report["attacks"].items():
        table.add_row(name, "yes" if info["applies"] else "no", info["expect"])
    console.print(table)
    _print_findings(report["server_modifications"])
    if "truth_check" in report:
        console.print(f"against the evaluation-only truth: {report['truth_check']}")
    if json_file is not None:
        console.print(f"report: {write_json(json_file, report)}")


def _is_weights_file(path: Path) -> bool:
    """Whether ``path`` is a model's weights file (not an observation)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():  # a FIFO would block here; load_observation names the problem
        return False
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return False  # load_observation says what is wrong with it
    return "config" in metadata and "gradleak" not in metadata


def _inspect_model(path: Path, json_file: Path | None) -> None:
    """``analyze`` of a received model: the malicious modifications in its weights."""
    from gradleak.malicious import detect_modifications
    from gradleak.models.weights import read_model
    from gradleak.records import write_json

    received = read_model(path)
    findings = [f.as_dict() for f in detect_modifications(received)]
    console.print(f"[bold]{path}[/] (model {received.config['name']}): a received model")
    _print_findings(findings)
    if json_file is not None:
        report = {"model": received.config["name"], "server_modifications": findings}
        console.print(f"report: {write_json(json_file, report)}")


def _print_findings(findings: list[dict]) -> None:
    if not findings:
        console.print("the model the server sent: no malicious modification found")
        return
    table = Table(title="malicious modifications of the model the server sent")
    for column in ("modification", "layer", "evidence"):
        table.add_column(column)
    for finding in findings:
        table.add_row(finding["name"], finding["layer"], finding["evidence"])
    console.print(table)


def _artifact_out(out: Path, overwrite: bool) -> None:
    """Check an artifact's --out (and its card) before training starts."""
    from gradleak.learning import card_path

    output_file(out, suffix=".safetensors", overwrite=overwrite, companions=(card_path(out),))


def _training_kept(out: Path):
    """What an interrupted training keeps: its last checkpoint, if one was written."""
    from gradleak.learning import default_checkpoint

    checkpoint = default_checkpoint(out)

    def kept() -> str:
        if checkpoint.exists():
            return f"training so far is kept in {checkpoint}"
        return "no checkpoint was written yet"

    return kept


@contextmanager
def _training_progress(description: str, total: int):
    """A rich progress bar for a training run on a terminal, plain lines otherwise; yields
    ``callback(done, total, values)``."""
    if not console.is_terminal:
        yield _plain_training(description)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

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
    run_app(app)


if __name__ == "__main__":
    main()
