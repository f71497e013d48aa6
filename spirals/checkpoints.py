"""Checkpoints under `data/checkpoints/`: notebook 03 writes them, 04 reads them."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import torch

from nbutils import get_device, output_dir

from .data import PaperSpiralConfig, SpiralConfig
from .models import MODELS, ModelConfig
from .training import TrainConfig

__all__ = [
    "checkpoint_path", "save_checkpoint", "load_checkpoint",
]


TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}  # older checkpoints may hold more


def checkpoint_path(budget: str, dataset: str = "paper") -> Path:
    """`data/checkpoints/spirals-<dataset>-<budget>.pt`: notebook 03 writes it, 04 reads it."""
    return output_dir("checkpoints") / f"spirals-{dataset}-{budget}.pt"


def save_checkpoint(path: Path, models: dict, mcfg: ModelConfig,
                    data_cfg: PaperSpiralConfig | SpiralConfig, train_cfg: TrainConfig,
                    extra: dict | None = None) -> Path:
    """The models' weights and every setting needed to rebuild them and their data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"models": {name: m.state_dict() for name, m in models.items()},
                "model_config": asdict(mcfg), "data_kind": type(data_cfg).__name__,
                "data_config": asdict(data_cfg), "train_config": asdict(train_cfg),
                "extra": extra or {}}, path)
    return path


def load_checkpoint(path: Path, device=None) -> dict:
    """Rebuild what `save_checkpoint` wrote: models (eval mode, on `device`) and settings."""
    device = device or get_device()
    blob = torch.load(Path(path), map_location=device, weights_only=False)
    mcfg = ModelConfig(**blob["model_config"])
    models = {}
    for name, state in blob["models"].items():
        models[name] = MODELS[name](mcfg).to(device)
        models[name].load_state_dict(state)
        models[name].eval()
    kind = {"PaperSpiralConfig": PaperSpiralConfig, "SpiralConfig": SpiralConfig}
    return {"models": models, "model_config": mcfg,
            "data_config": kind[blob["data_kind"]](**blob["data_config"]),
            "train_config": TrainConfig(**{k: v for k, v in blob["train_config"].items()
                                           if k in TRAIN_FIELDS}), "extra": blob["extra"]}
