"""Model families, one registry entry each: name -> (config dataclass, ensemble model class).

The registry itself imports no torch: a model class is imported when it is first built, so
that reading and checking configs (every analysis stage) does not pay for torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from grokpipe.models.configs import MLPConfig, TransformerConfig


@dataclass(frozen=True)
class ModelEntry:
    Config: type
    class_path: str  # "module:Class" of the ensemble model
    sequence_model: bool  # can predict every next token (seq2seq loss)

    @property
    def cls(self) -> type:
        module, name = self.class_path.split(":")
        return getattr(importlib.import_module(module), name)


MODELS: dict[str, ModelEntry] = {
    "transformer": ModelEntry(
        TransformerConfig, "grokpipe.models.transformer:Transformer", sequence_model=True
    ),
    "mlp": ModelEntry(MLPConfig, "grokpipe.models.mlp:MLP", sequence_model=False),
}


def build_model(name: str, cfg, info: dict, n_members: int):
    return MODELS[name].cls(cfg, info, n_members)
