# Minimal typing for mlx_lm.utils as strata calls it; declare only what is used.
from pathlib import Path

from mlx import nn

def load_model(
    model_path: Path,
    lazy: bool = False,
    strict: bool = True,
    model_config: dict[str, object] | None = None,
) -> tuple[nn.Module, dict[str, object]]: ...

def dequantize_model(model: nn.Module) -> nn.Module: ...
MODEL_REMAPPING: dict[str, str]
