"""`strata models list` and `strata models show ID [--json]`: the store's model cards."""

import sys

from services.kernel.ids import ModelId
from services.models.model_card import model_card, render_card, render_card_table
from services.models.model_store import ModelStore, parse_model_id


def list_cards(store: ModelStore) -> int:
    print(render_card_table([model_card(model_id, store.model_dir(model_id)) for model_id in store.list_models()]))
    return 0


def show_card(store: ModelStore, model_id_text: str, *, as_json: bool) -> int:
    try:
        model_id = parse_model_id(model_id_text)
    except ValueError as error:
        print(f"strata models show: {error}", file=sys.stderr)
        return 2
    if not store.has_model(ModelId(model_id)):
        print(f"strata models show: model {model_id!r} is not in the store at {store.root}", file=sys.stderr)
        return 1
    card = model_card(model_id, store.model_dir(model_id))
    print(card.model_dump_json(indent=2) if as_json else render_card(card))
    return 0


def served_by_cluster(coordinator: str, model_id: ModelId) -> bool | None:
    """Whether the cluster at `coordinator` serves `model_id`; None when it cannot be asked."""
    import grpc

    from services.app.operator_commands import fetch_status

    try:
        state = fetch_status(coordinator)
    except grpc.RpcError as error:
        print(
            f"strata models rm: could not ask the coordinator at {coordinator} ({error.code().name})", file=sys.stderr
        )
        return None
    return model_id in state.model_ids or any(instance.model_id == model_id for instance in state.instances)


def remove_model(store: ModelStore, model_id_text: str, coordinator: str) -> int:
    """`strata models rm ID`: refused while the cluster serves the model (when the coordinator answers)."""
    try:
        model_id = parse_model_id(model_id_text)
    except ValueError as error:
        print(f"strata models rm: {error}", file=sys.stderr)
        return 2
    if not store.model_dir(model_id).exists():
        print(f"strata models rm: model {model_id!r} is not in the store at {store.root}", file=sys.stderr)
        return 1
    if served_by_cluster(coordinator, model_id):
        print(
            f"strata models rm: refused: the cluster at {coordinator} serves {model_id!r}; stop serving it first",
            file=sys.stderr,
        )
        return 1
    store.remove(model_id)
    print(f"removed {model_id} from {store.root}")
    return 0
