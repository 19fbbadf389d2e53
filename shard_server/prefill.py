"""Prompt chunking, identical to mlx-lm's `generate_step`.

All prompt tokens but the last go in chunks of `step_size`; the last token runs alone and is the
one whose logits are sampled. Chunk boundaries depend only on positions, never on load, so a
request computes the same shapes whatever else the cluster does.
"""


def prefill_chunks(prompt_length: int, step_size: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk; the final one is the single sampled token."""
    if prompt_length < 1:
        raise ValueError("a prompt needs at least one token")
    if step_size < 1:
        raise ValueError("the prefill step size must be at least 1")
    chunks: list[tuple[int, int]] = []
    start = 0
    while prompt_length - start > 1:
        end = start + min(step_size, prompt_length - start - 1)
        chunks.append((start, end))
        start = end
    chunks.append((start, prompt_length))
    return chunks
