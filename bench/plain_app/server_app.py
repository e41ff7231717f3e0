"""Plain ServerApp: Flower's default FedAvg, timed through ``evaluate_fn``.

``TimedFedAvg`` changes nothing in FedAvg's behaviour; it only remembers the
slowest client's ``train-seconds`` (and ``eval-seconds``) of each round so that
``evaluate_fn`` can write them next to a wall-clock timestamp.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from common.images import load_image_data
from common.model import build_model
from common.policy import ModelConfig
from common.training import evaluate

app = ServerApp()


def _slowest(replies: list[Message], key: str) -> float:
    values = [
        float(m.content["metrics"][key])  # type: ignore[arg-type]
        for m in replies
        if not m.has_error() and key in m.content["metrics"]
    ]
    return max(values, default=float("nan"))


class TimedFedAvg(FedAvg):
    """FedAvg with Flower's defaults that records per-round client compute."""

    def __init__(self) -> None:
        super().__init__()
        self.train_seconds: dict[int, float] = {}
        self.eval_seconds: dict[int, float] = {}
        self.replies: dict[int, int] = {}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.train_seconds[server_round] = _slowest(replies, "train-seconds")
        self.replies[server_round] = sum(not m.has_error() for m in replies)
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        self.eval_seconds[server_round] = _slowest(replies, "eval-seconds")
        return super().aggregate_evaluate(server_round, replies)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    model_config = ModelConfig()
    model = build_model(model_config, int(cfg["seed"]))
    validation = load_image_data(
        Path(str(cfg["server-data-dir"])) / "validation.npz",
        num_classes=model_config.num_classes,
        image_size=model_config.image_size,
    )
    timing_file = Path(str(cfg["timing-file"]))
    strategy = TimedFedAvg()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate(model, validation)
        line = {
            "round": server_round,
            "time": time.time(),
            "client_train_seconds": strategy.train_seconds.get(server_round),
            "client_eval_seconds": strategy.eval_seconds.get(server_round),
            "train_replies": strategy.replies.get(server_round),
            "accuracy": result.accuracy,
        }
        with timing_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        return MetricRecord({"loss": result.loss, "accuracy": result.accuracy})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=evaluate_fn,
    )
