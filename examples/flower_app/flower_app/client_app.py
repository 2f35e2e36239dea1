"""The ClientApp: load the global model, train locally, send the new weights back."""

from __future__ import annotations

import math

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod

from flower_app import task


def make_app(overrides: dict | None = None) -> ClientApp:
    """The ClientApp, its run config updated by ``overrides`` (the simulation demo's settings)."""
    app = ClientApp(mods=[_local_dp(overrides)])

    def received(msg: Message, context: Context):
        """The run config, the global model sent, and this round's images of this client."""
        config = task.app_config(context.run_config, overrides)
        model = task.load_model(config)
        model.net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        server_round = int(msg.content["config"]["server-round"])
        partition = int(context.node_config["partition-id"])
        partitions = int(context.node_config["num-partitions"])
        return (
            config,
            model,
            server_round,
            task.client_batch(config, partition, partitions, server_round),
        )

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config, model, server_round, (indices, images, labels) = received(msg, context)
        partition = int(context.node_config["partition-id"])
        loss = task.train(model, images, labels, float(config["lr"]), int(config["batch-size"]))
        task.note_batch(config, context.node_id, partition, server_round, indices)
        metrics = {
            "train-loss": loss,
            "num-examples": len(images),
            # FedAvg averages metrics over clients: every client reports the same keys.
            "local-dp-noise-std": _noise_std(config) if _uses_dp(config, partition) else 0.0,
        }
        content = RecordDict(
            {"arrays": ArrayRecord(model.net.state_dict()), "metrics": MetricRecord(metrics)}
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        _, model, _, (_, images, labels) = received(msg, context)
        loss, accuracy = task.evaluate(model, images, labels)
        metrics = {"eval-loss": loss, "eval-acc": accuracy, "num-examples": len(images)}
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


def _uses_dp(config: dict, partition: int) -> bool:
    chosen = [p.strip() for p in str(config["dp-clients"]).split(",") if p.strip()]
    return str(partition) in chosen


def _noise_std(config: dict) -> float:
    """The standard deviation of LocalDpMod's Gaussian noise (the Gaussian mechanism's)."""
    delta = float(config["dp-delta"])
    return (
        float(config["dp-sensitivity"])
        * math.sqrt(2 * math.log(1.25 / delta))
        / float(config["dp-epsilon"])
    )


def _local_dp(overrides: dict | None):
    """Flower's LocalDpMod (clip the update, add Gaussian noise) on the clients of dp-clients."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        config = task.app_config(context.run_config, overrides)
        if msg.metadata.message_type != "train" or not _uses_dp(
            config, int(context.node_config["partition-id"])
        ):
            return call_next(msg, context)
        local_dp = LocalDpMod(
            clipping_norm=float(config["dp-clipping-norm"]),
            sensitivity=float(config["dp-sensitivity"]),
            epsilon=float(config["dp-epsilon"]),
            delta=float(config["dp-delta"]),
        )
        return local_dp(msg, context, call_next)

    return mod


app = make_app()
