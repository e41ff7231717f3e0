"""What one BERT client sends, against the whole model: ``update_bytes / model_bytes``.

Builds the packaged all-MiniLM-L6-v2 classifier for each trainable set and
serialises, exactly as the ClientApp and the demo summary do
(``common.arrays.arrays_to_bytes``, safetensors), the trainable part (what
travels) and the full state (``model_bytes``).

Usage::

    python bench/bert_update_bytes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record import write_record  # noqa: E402  (bench/record.py)

from common.arrays import arrays_to_bytes  # noqa: E402
from common.model import build_model, full_arrays, get_arrays  # noqa: E402
from common.policy import ModelConfig  # noqa: E402
from fedcommons.demo_setup import BERT_DEMO  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bert_update_bytes.json"
VARIANTS = {
    "pooler + classifier (train-layers = 0, the default)": {"train_layers": 0},
    "top 1 layer + pooler + classifier (train-layers = 1)": {"train_layers": 1},
    "LoRA rank 8 on query/value + classifier": {"lora_rank": 8},
    "LoRA rank 4 on query/value + classifier": {"lora_rank": 4},
}


def main() -> None:
    rows = []
    num_classes = int(BERT_DEMO["model.num-classes"])
    for label, changes in VARIANTS.items():
        config = ModelConfig(name="bert", num_classes=num_classes, **changes)  # type: ignore[arg-type]
        model = build_model(config, seed=0)
        update = len(arrays_to_bytes(get_arrays(model)))
        whole = len(arrays_to_bytes(full_arrays(model)))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(
            {
                "trainable_set": label,
                "trainable_parameters": trainable,
                "update_bytes": update,
                "model_bytes": whole,
                "ratio": update / whole,
            }
        )
        print(f"{label:55s} {trainable:>10,d} params {update:>12,d} B / {whole:,d} B = "
              f"{update / whole:.4f}")  # fmt: skip
    write_record(RESULTS, rows=rows)


if __name__ == "__main__":
    main()
