"""The ServerApp: FedAvg, wrapped in gradleak's AuditStrategy (the three audit lines are marked)."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flower_app import task
from gradleak.flower import AuditStrategy  # audit


def make_app(overrides: dict | None = None, clients: int = 2) -> ServerApp:
    """The ServerApp, its run config updated by ``overrides``; ``clients`` take part each round."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = task.app_config(context.run_config, overrides)
        model = task.load_model(config)
        strategy = FedAvg(
            min_train_nodes=clients, min_evaluate_nodes=clients, min_available_nodes=clients
        )
        strategy = AuditStrategy(  # audit: record every update the clients send
            strategy,
            model=model,
            out=config["audit-dir"],
            local={
                "lr": float(config["lr"]),
                "batch_size": int(config["batch-size"]),
                "steps": int(config["local-steps"]),
            },
            attacks=[a.strip() for a in str(config["audit-attacks"]).split(",") if a.strip()],
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.net.state_dict()),
            num_rounds=int(config["num-server-rounds"]),
            train_config=ConfigRecord({"lr": float(config["lr"])}),
        )

    return app


app = make_app()
