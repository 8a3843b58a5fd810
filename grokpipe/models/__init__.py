"""Model families, one registry entry each: name -> (config dataclass, ensemble model class)."""

from __future__ import annotations

from dataclasses import dataclass

from grokpipe.models.base import EnsembleModel
from grokpipe.models.mlp import MLP, MLPConfig
from grokpipe.models.transformer import Transformer, TransformerConfig


@dataclass(frozen=True)
class ModelEntry:
    Config: type
    cls: type[EnsembleModel]
    sequence_model: bool  # can predict every next token (seq2seq loss)


MODELS: dict[str, ModelEntry] = {
    "transformer": ModelEntry(TransformerConfig, Transformer, sequence_model=True),
    "mlp": ModelEntry(MLPConfig, MLP, sequence_model=False),
}


def build_model(name: str, cfg, info: dict, n_members: int) -> EnsembleModel:
    return MODELS[name].cls(cfg, info, n_members)
