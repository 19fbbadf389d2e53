"""A model of the embedded SmolLM2's shape with random weights from a seed, built where it runs.

A device call carries 64 MiB and MLX's CUDA wheel alone takes most of two calls, so the GPU run does
not carry the embedded model's 98 MB of weights: it carries the embedded model's config and tokenizer
(a few MB) and draws the weights there, with mlx-lm's own classes, as the tests' tiny models are
drawn. Greedy exactness is about token ids, and the speed about the shapes, so both hold for them.

    python -m services.app.gpu_run.random_model SOURCE_DIR HOME [--layers N] [--seed S]
"""

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten
from mlx_lm.models import llama

from services.app.gpu_kit.plan import MODEL_FILES
from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from services.models.model_writer import save_model_directory

RANDOM_MODEL_ID = ModelId("smollm2-135m-random")
REQUIRED_FILES = ("config.json", "tokenizer.json")
_WEIGHT_SCALE = 4.0
"""Matrices scaled up, as the tests' tiny models are, so that logits are far from uniform and greedy
choices are no ties."""


class _ArgumentsClass:
    from_dict: Callable[[dict[str, object]], object]


class RandomModelError(Exception):
    """The source folder lacks the config or the tokenizer, or describes a model this cannot draw."""


def random_model_config(source: dict[str, object], layers: int | None) -> dict[str, object]:
    """Pure: the embedded config without its quantization (the drawn weights are float32), with
    `layers` layers where given."""
    if source.get("model_type") != "llama":
        raise RandomModelError(f"only llama configs are drawn here; got model_type {source.get('model_type')!r}")
    config = {key: value for key, value in source.items() if key != "quantization"}
    if layers is not None:
        if layers < 1:
            raise RandomModelError(f"layers must be at least 1; got {layers}")
        config["num_hidden_layers"] = layers
    return config


def build_random_model(
    source: Path, home: Path, seed: int = 7, layers: int | None = None, model_id: ModelId = RANDOM_MODEL_ID
) -> Path:
    """Writes the model into `home`'s store (replacing an earlier one) and returns its folder."""
    missing = [name for name in REQUIRED_FILES if not (source / name).is_file()]
    if missing:
        raise RandomModelError(f"{source} lacks {', '.join(missing)} (the kit's model files)")
    config = random_model_config(json.loads((source / "config.json").read_text()), layers)
    destination = ModelStore(models_root(home)).model_dir(model_id)
    if destination.exists():
        shutil.rmtree(destination)
    arguments = cast(_ArgumentsClass, llama.ModelArgs).from_dict(config)
    mx.random.seed(seed)
    model = cast(Callable[[object], nn.Module], llama.Model)(arguments)
    weights = {
        name: array * _WEIGHT_SCALE if array.ndim == 2 else array for name, array in tree_flatten(model.parameters())
    }
    save_model_directory(destination, config, weights)
    for name in MODEL_FILES:
        if name != "config.json" and (source / name).is_file():
            shutil.copy(source / name, destination / name)
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.app.gpu_run.random_model")
    parser.add_argument("source", type=Path, help="the kit's model files (config and tokenizer)")
    parser.add_argument("home", type=Path, help="the strata home whose store receives the model")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the config's (dry runs)")
    parser.add_argument("--seed", type=int, default=7)
    arguments = parser.parse_args(argv)
    try:
        path = build_random_model(arguments.source, arguments.home, arguments.seed, arguments.layers)
    except (RandomModelError, OSError, ValueError) as error:
        print(f"random_model: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
