"""What a decoder family looks like, learnt from transformers' own code rather than typed by hand.

- `discover`: where the decoder blocks are in a model (any path: `model.layers`, `transformer.h`,
  `model.language_model.layers`, ...), found as the module list with `num_hidden_layers` entries, and the names
  its weights have in a checkpoint.
- `toy`: a tiny configuration of the same family (same options, small sizes; per-family quirks as a table).
- `derive`: which children of a block form the token mixer and which the MLP, with the norms that only each
  uses, from the data flow of one forward pass through a tiny random instance.
- `check`: the proof that the split is exact, by the equivalence every export must pass (the block with the
  sublayer's modules stubbed out computes what the stock block computes with its contribution zeroed, cached
  generation included); refusals are values (`Refusal`: what, at which scope, why).
- `study`: derive + check, remembered on disk. `config`: reading and cutting config dicts.

`family_of(config)` is the entry point: the `Family` (prune/family.py) of a source config.
"""

from __future__ import annotations

import dataclasses
import functools
import re

from .config import layer_count, text_config
from .derive import block_kind
from .discover import NoDecoderBlocks, checkpoint_names, decoder_layers
from .study import study


@functools.cache
def _family(config_json: str, split: bool = True):
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..prune.family import Family

    config = json.loads(config_json)
    model_type = config.get("model_type")
    text = text_config(config)
    count = layer_count(text)
    stock = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(stock)
    path, blocks = decoder_layers(model, count)
    full = model.state_dict()
    state = {k: v for k, v in full.items() if k.startswith(f"{path}.0.")}
    prefixes = {re.match(r"(.*\.)0\.", name)[1] for name in checkpoint_names(model, state)}
    where = {"layers_path": path, "weights_prefix": prefixes.pop() if len(prefixes) == 1 else ""}
    text_type = text.get("model_type", model_type)
    rest = {k: v for k, v in full.items() if not k.startswith(f"{path}.")}
    where["renamed"] = text is not config or set(checkpoint_names(model, rest)) != set(rest)
    real = [json.dumps(block_kind(b)) for b in blocks]
    where["alike"] = len(set(real)) == 1
    if not split:
        return Family(model_type, **where, no_sublayers="not studied (only whole blocks were asked for)")
    derived = study(text_type, json.dumps(text, sort_keys=True))
    if "kinds" not in derived:
        return Family(model_type, **where, **derived)
    studied = {json.dumps(k["kind"]): {f: v for f, v in k.items() if f != "kind"} for k in derived["kinds"]}
    shared = {k: v for k, v in derived.items() if k != "kinds"}  # no_attention
    if unseen := [i for i, kind in enumerate(real) if kind not in studied]:
        from ..prune.plan import layers_phrase

        why = f"its {layers_phrase(unseen)} are built unlike every block of the tiny {text_type} studied"
        return Family(model_type, **where, no_sublayers=why)
    order = list(dict.fromkeys(real))
    kinds = []
    for kind in order:
        i = real.index(kind)  # the first layer of this kind: its weight names
        fields = dict(studied[kind])
        for sublayer in ("attention", "mlp"):
            children = set()
            for child in fields[sublayer]:
                mine = {k: v for k, v in full.items() if k.startswith(f"{path}.{i}.{child}.")}
                children |= {name.split(f".{i}.", 1)[1].split(".")[0] for name in checkpoint_names(model, mine)}
            fields[f"{sublayer}_weights"] = sorted(children)
        kinds.append(Family.from_fields(model_type, {**shared, **fields}, **where))
    if len(kinds) == 1:
        return kinds[0]
    # the top-level split (what code that does not look per layer sees) is the first attention block's
    main = next((k for k in kinds if k.mixer == "attention"), kinds[0])
    return dataclasses.replace(main, kinds=tuple(kinds), layer_kind=tuple(order.index(k) for k in real))


def check_config(config: dict) -> None:
    """Refuse, before any weight is read, a config that is not a decoder-only causal LM transformers builds."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from ..errors import SourceError

    model_type = config.get("model_type")
    if not model_type:
        raise SourceError("config.json has no model_type; it is not a transformers model config")
    if model_type not in CONFIG_MAPPING:
        from transformers import __version__

        if near := close_model_type(model_type):
            raise SourceError(
                f"transformers {__version__} does not know model_type {model_type!r}: did you mean {near!r}?"
            )
        raise SourceError(
            f"transformers {__version__} does not know model_type {model_type!r}: upgrade transformers (a model "
            "whose code lives only in its repository is not supported)"
        )
    default = CONFIG_MAPPING[model_type]()
    if config.get("is_encoder_decoder") or getattr(default, "is_encoder_decoder", False):
        raise SourceError(f"{model_type} is an encoder-decoder model: skipprune prunes decoder-only causal LMs")
    encoder = getattr(default, "is_decoder", None) is False and hasattr(default, "add_cross_attention")
    if encoder and not config.get("is_decoder"):  # bert, roberta, ...: encoders that can be run as decoders
        raise SourceError(
            f"{model_type} is an encoder model (its causal-LM head needs is_decoder: true in config.json): skipprune "
            "prunes decoder-only causal LMs"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SourceError(
            f"{model_type} has no causal-LM head in transformers: skipprune prunes decoder-only causal LMs"
        )


def family_of(config: dict, split: bool = True):
    """The Family of a source config (cached per config): where its blocks are, and (with `split`, which takes
    a study of a tiny instance the first time a family is seen) how they split into attention and MLP."""
    import json

    from ..errors import SkippruneError, SourceError, describe

    check_config(config)
    text = text_config(config)
    if layer_count(text) is None:
        raise SourceError(f"{config['model_type']}: config.json says nothing about its number of layers")
    try:
        return _family(json.dumps(config, sort_keys=True), split)
    except NoDecoderBlocks:
        raise SourceError(
            f"{config['model_type']}: no list of {layer_count(text)} decoder blocks found in the model transformers "
            "builds from this config; it cannot be cut by blocks"
        ) from None
    except SkippruneError:
        raise
    except Exception as e:  # the family's own code refuses this config
        raise SourceError(
            f"building the {config['model_type']} model that config.json describes failed ({describe(e)}); "
            "fix config.json or restore it from the original model"
        ) from None


def close_model_type(model_type: str) -> str | None:
    """The causal-LM model type transformers knows that `model_type` most likely misspells, if any."""
    import difflib

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    near = difflib.get_close_matches(model_type, list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), n=1, cutoff=0.75)
    return near[0] if near else None
