# Minimal typing for mlx-lm's top-level API as strata calls it; declare only what is used.
from mlx import nn
from transformers import PreTrainedTokenizerBase

from mlx_lm.tokenizer_utils import TokenizerWrapper

def load(
    path_or_hf_repo: str,
    tokenizer_config: dict[str, object] | None = None,
    model_config: dict[str, object] | None = None,
    adapter_path: str | None = None,
    lazy: bool = False,
) -> tuple[nn.Module, TokenizerWrapper]: ...
def generate(
    model: nn.Module,
    tokenizer: TokenizerWrapper | PreTrainedTokenizerBase,
    prompt: str | list[int],
    verbose: bool = False,
    *,
    max_tokens: int = 256,
) -> str: ...
