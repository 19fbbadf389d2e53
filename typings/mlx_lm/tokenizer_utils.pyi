# Minimal typing for mlx_lm.tokenizer_utils; declare only what is used.
from transformers import PreTrainedTokenizerBase

class TokenizerWrapper(PreTrainedTokenizerBase):
    """Forwards every attribute it does not define to the Hugging Face tokenizer it wraps."""
