"""A model's placement cost (bytes and work per stage part) from its files in the model store."""

from pathlib import Path

from services.cluster.state import ModelSpec, WeightCost
from services.kernel.compute_dtype import AUTO_BYTES_PER_PARAMETER, BYTES_PER_PARAMETER, ComputeDtypeChoice
from services.kernel.ids import ModelId
from services.models.kv_footprint import kv_bytes_per_layer, layer_kv_room
from services.models.model_config import Experts
from services.models.model_files import ModelManifest, WeightGroupStats, read_manifest

LAYER_FIXED_WORK = 2_000_000
"""Work a transformer layer does per token beyond reading its weights (norms, rotary embedding,
attention over the cache, the activation, and the dispatch of some fifteen ops), in parameters read
in the same time. Measured with SmolLM2-135M on one and two x86 cores: a layer (3.5M parameters)
takes as long as reading ~5.5M, and the LM head (28M parameters, one product and the sampling) as
long as ~5 layers, not the 8 its parameters say. Small against a large model's layer (~200M)."""


def _cost(group: WeightGroupStats, compute_dtype: ComputeDtypeChoice, experts: Experts | None = None) -> WeightCost:
    """Bytes: every weight held, all experts included ("auto": as the CPU holds them, in float32).
    Work: the weights one token reads."""
    work = _parameters_read_per_token(group, experts)
    if compute_dtype == "stored":
        return WeightCost(bytes=group.stored_bytes, work=work)
    if compute_dtype == "auto":
        # Each shard holds them in its device's dtype: placement needs the count.
        parameters = group.parameter_count
        return WeightCost(bytes=parameters * AUTO_BYTES_PER_PARAMETER["cpu"], work=work, parameters=parameters)
    return WeightCost(bytes=group.parameter_count * BYTES_PER_PARAMETER[compute_dtype], work=work)


def _parameters_read_per_token(group: WeightGroupStats, experts: Experts | None) -> int:
    """A mixture's token reads only its `per_token` of the `count` routed experts (all: when unknown)."""
    routed = group.routed_expert_parameter_count
    if experts is None or experts.per_token is None or not routed:
        return group.parameter_count
    return group.parameter_count - routed + routed * min(experts.per_token, experts.count) // experts.count


def _layer_cost(cost: WeightCost) -> WeightCost:
    return cost.model_copy(update={"work": cost.work + LAYER_FIXED_WORK})


def model_spec(
    model_id: ModelId, model_dir: Path, compute_dtype: ComputeDtypeChoice = "stored", concurrent_rows: int = 1
) -> ModelSpec:
    """Bytes are counted in the compute dtype (a mixture's every expert; "auto": per device, see
    `ModelSpec.bytes_per_parameter_by_device`); work is parameters read per
    token (a mixture's routed experts in the share a token reads), plus each layer's fixed work.

    KV: each layer's room for `concurrent_rows` full contexts, a sliding layer's for at most its windows
    (see `kv_footprint`).
    """
    return spec_from_manifest(model_id, read_manifest(model_dir), compute_dtype, concurrent_rows)


def spec_from_manifest(
    model_id: ModelId, manifest: ModelManifest, compute_dtype: ComputeDtypeChoice = "stored", concurrent_rows: int = 1
) -> ModelSpec:
    """As `model_spec`, from a manifest read elsewhere (a model on the Hub, from its headers)."""
    embedding = _cost(manifest.embedding, compute_dtype)
    head = _cost(manifest.head, compute_dtype)
    layer_kv_bytes, kv_max_sequences = layer_kv_room(manifest.config, manifest.context_length, concurrent_rows)
    if manifest.tie_word_embeddings:
        # The tied LM head reads the embedding matrix once per token.
        head = head.model_copy(update={"work": head.work + embedding.work})
        embedding = embedding.model_copy(update={"work": 0})
    return ModelSpec(
        model_id=model_id,
        num_layers=manifest.num_layers,
        layers=tuple(_layer_cost(_cost(layer, compute_dtype, manifest.config.experts)) for layer in manifest.layers),
        embedding=embedding.model_copy(update={"work": 0}),
        head=head,
        tied_embeddings=manifest.tie_word_embeddings,
        kv_bytes_per_layer=kv_bytes_per_layer(manifest.config, manifest.context_length, concurrent_rows),
        layer_kv_bytes=layer_kv_bytes,
        kv_max_sequences=kv_max_sequences,
        bytes_per_parameter_by_device=dict(AUTO_BYTES_PER_PARAMETER) if compute_dtype == "auto" else {},
    )
