"""The torch backend of the same generator: a ``GPTTransformer`` with its KV cache.

Imported only when a torch model or a ``.pt`` checkpoint is used (and by the exporter's parity
gate); the ONNX runtime never loads this module. Logits go back to numpy so sampling is the one numpy implementation.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gptmed.core import CheckpointError, CheckpointManifest, ModelConfig
from gptmed.inference.backends import position_ids_from_mask

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in the torch-free wheel test
    raise ImportError(
        'the torch backend needs PyTorch: pip install "gptmed-infer[export]" (or use an exported bundle)'
    ) from exc

__all__ = ["TorchBackend", "build_model", "load_checkpoint_model", "plain_module"]

_log = logging.getLogger(__name__)


@dataclass
class _TorchState:
    mask: Any  # (B, L) int64 tensor
    next_pos: Any  # (B, 1) int64 tensor
    past: Any  # tuple of n_layers (k, v), each (B, nh, L, hs)


class TorchBackend:
    """Runs a ``GPTTransformer`` (eval mode, inference mode) with its KV cache."""

    name = "torch"

    def __init__(self, model: Any, device: str | None = None) -> None:
        self.model = plain_module(model)
        self.model.eval()
        cfg = getattr(self.model, "config", None)
        if isinstance(cfg, ModelConfig):
            self.config = cfg
        elif cfg is not None and hasattr(cfg, "to_dict"):
            self.config = ModelConfig.from_dict(cfg.to_dict())
        else:
            raise ValueError("the model has no .config (a gptmed ModelConfig); pass a GPTTransformer")
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device

    def _t(self, array: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(self.device)

    def _logits(self, out: Any) -> np.ndarray:
        logits: np.ndarray = out[:, -1, :].float().cpu().numpy()
        return logits

    def prefill(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, capacity: int | None = None
    ) -> tuple[np.ndarray, _TorchState]:
        """``capacity`` is accepted for the Backend protocol; the torch cache grows by concatenation."""
        mask = attention_mask.astype(np.int64)
        pos = position_ids_from_mask(mask)
        with torch.inference_mode():
            m = self._t(mask)
            logits, past = self.model(
                self._t(input_ids),
                position_ids=self._t(pos),
                attention_mask=m,
                use_cache=True,
                logits_to_keep=1,
            )  # left-padded: every row's last token is in the last column
            state = _TorchState(mask=m, next_pos=self._t(pos[:, -1:] + 1), past=past)
            return self._logits(logits), state

    def decode(self, state: _TorchState, tokens: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = tokens.shape[0]
            state.mask = torch.cat(
                [state.mask, torch.ones((batch, 1), dtype=torch.int64, device=self.device)], 1
            )
            logits, state.past = self.model(
                self._t(tokens.reshape(batch, 1)),
                position_ids=state.next_pos,
                attention_mask=state.mask,
                past_key_values=state.past,
                use_cache=True,
            )
            state.next_pos = state.next_pos + 1
            return self._logits(logits)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        mask = attention_mask.astype(np.int64)
        with torch.inference_mode():
            logits = self.model(
                self._t(input_ids),
                position_ids=self._t(position_ids_from_mask(mask)),
                attention_mask=self._t(mask),
            )
            out: np.ndarray = logits.float().cpu().numpy()
            return out


def load_checkpoint_model(
    path: str | os.PathLike[str], device: str = "cpu"
) -> tuple[Any, CheckpointManifest | None]:
    """A ``GPTTransformer`` with the weights of the checkpoint at ``path`` (eval mode), and its manifest.

    Loaded with ``torch.load(weights_only=True)``: a checkpoint that needs pickle is refused.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            "checkpoint not found",
            where=str(p),
            hint="train one with gptmed-train, or pass --checkpoint (a .pt file or an exported bundle folder)",
        )
    if not zipfile.is_zipfile(p):  # torch.save writes a zip; torch.load's own error is a page of prose
        raise CheckpointError(
            "not a checkpoint (truncated, or another kind of file)",
            where=str(p),
            hint="pass a .pt file written by gptmed-train, or an exported bundle folder",
        )
    try:
        ckpt = torch.load(p, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot load the checkpoint safely ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
            where=str(p),
            hint="it is corrupt or not a gptmed checkpoint (torch.load(weights_only=True) must accept it)",
        ) from None
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(
            "not a gptmed checkpoint (needs model_state_dict and model_config)",
            where=str(p),
            hint="pass a file written by gptmed-train",
        )
    manifest = None
    if ckpt.get("manifest"):
        manifest = CheckpointManifest.from_dict(ckpt["manifest"], f"{p} manifest")
    config = ModelConfig.from_dict(dict(ckpt["model_config"]))
    model = build_model(config, ckpt["model_state_dict"], str(p))
    model.to(device)
    return model, manifest


_HINT = 'pip install "gptmed-infer[export]"'


def _model_module() -> Any:
    try:
        import gptmed.model as gm
    except ImportError as exc:
        raise ImportError(f"this needs gptmed-model and torch: {_HINT}") from exc
    return gm


def plain_module(model: Any) -> Any:
    """The plain ``GPTTransformer`` inside torch.compile / DDP wrappers."""
    gm = _model_module()
    return gm.unwrap(model) if hasattr(gm, "unwrap") else getattr(model, "_orig_mod", model)


def build_model(config: ModelConfig, state_dict: Mapping[str, Any], source: str) -> Any:
    """A ``GPTTransformer(config)`` in eval mode holding ``state_dict`` (wrapper prefixes stripped)."""
    gm = _model_module()
    model = gm.GPTTransformer(config)
    clean = gm.clean_state_dict(state_dict) if hasattr(gm, "clean_state_dict") else dict(state_dict)
    try:
        model.load_state_dict(clean)
    except (RuntimeError, CheckpointError) as exc:  # gptmed-model names shape mismatches itself
        detail = exc.message if isinstance(exc, CheckpointError) else str(exc).splitlines()[0]
        raise CheckpointError(
            f"weights do not fit the recorded model config ({detail[:200]})",
            where=source,
            hint="the checkpoint is corrupt or was written by an incompatible gptmed-model",
        ) from None
    model.eval()
    return model
