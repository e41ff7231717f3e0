"""Plain ClientApp: train and evaluate the received CNN on this node's partition."""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.images import ImageData, load_image_data
from common.model import build_model
from common.policy import ModelConfig
from common.training import evaluate, local_sgd, make_loader, train

app = ClientApp()


def _setup(message: Message, context: Context) -> tuple[torch.nn.Module, ImageData]:
    model_config = ModelConfig()
    model = build_model(model_config, int(context.run_config["seed"]))
    model.load_state_dict(message.content.array_records["arrays"].to_torch_state_dict())
    data = load_image_data(
        str(context.node_config["data-dir"]),
        num_classes=model_config.num_classes,
        image_size=model_config.image_size,
    )
    return model, data


@app.train()
def train_handler(message: Message, context: Context) -> Message:
    started = time.perf_counter()
    model, data = _setup(message, context)
    cfg = context.run_config
    config = message.content.config_records["config"]
    server_round = int(config["server-round"])  # type: ignore[arg-type]
    loader = make_loader(
        data, int(cfg["batch-size"]), shuffle=True, seed=int(cfg["seed"]) + server_round
    )
    optimizer = local_sgd(model, float(cfg["learning-rate"]), float(cfg["momentum"]))
    result = train(model, loader, optimizer, int(cfg["local-epochs"]))
    metrics = MetricRecord(
        {
            "num-examples": len(data),
            "train-loss": result.loss,
            "train-seconds": time.perf_counter() - started,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate_handler(message: Message, context: Context) -> Message:
    started = time.perf_counter()
    model, data = _setup(message, context)
    result = evaluate(model, data)
    metrics = MetricRecord(
        {
            "num-examples": result.num_examples,
            "loss": result.loss,
            "accuracy": result.accuracy,
            "eval-seconds": time.perf_counter() - started,
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=message)
