"""What skipprune needs to know about a decoder family, as data: where its decoder blocks are, and which children
of a block form the attention sublayer and which the MLP (each: its compute module(s) first, then the norms only
it uses; removing a sublayer removes all of them).

In a hybrid family (Qwen3.5, Jamba, LFM2, Falcon-H1, ...) the first sublayer of a block is its token mixer,
which is attention in some layers and linear attention, a state-space (Mamba) mixer or a convolution in others;
blocks of each kind split their own way, so the family holds one split per kind of block (`kinds`) and says
which kind each layer is (`layer_kind`). `at(i)` is the split of layer i.

The values are learnt from transformers' own code for the source at hand (skipprune.families), not
typed by hand, so a family works on the day transformers supports it, or is refused with the reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import PlanError
from .plan import format_indices, layers_phrase


@dataclass(frozen=True)
class Family:
    model_type: str
    layers_path: str = "model.layers"  # module path of the list of decoder blocks (also the weight-name prefix)
    attention: tuple[str, ...] = ()  # () when sublayers cannot be removed
    mlp: tuple[str, ...] = ()
    attention_out: str = ""  # the child whose output is what attention adds to the residual stream
    mlp_out: str = ""
    mlp_in: str = ""  # the child that first receives the residual stream entering the MLP
    # What the attention module returns: 0 a tensor, k a tuple of k; for several modules in parallel (Falcon-H1's
    # Mamba and attention, Granite-4's experts and shared MLP), ((module, k), ...) for each of them.
    attention_returns: int | tuple = 2
    mlp_returns: int | tuple = 0
    no_sublayers: str | None = None  # why attention / MLP cannot be removed separately
    no_attention: str | None = None  # why attention cannot be removed (e.g. the family's cache)
    # The same in checkpoint weight names, where they differ from the module names (transformers renames some
    # on load: e.g. Mixtral's `block_sparse_moe` is `mlp` once loaded, Gemma 3's `language_model.model.layers`
    # is `model.language_model.layers`).
    weights_prefix: str = ""
    attention_weights: tuple[str, ...] = ()
    mlp_weights: tuple[str, ...] = ()
    # transformers renames weights outside the blocks on load by the stock class itself (a multimodal wrapper's
    # `language_model.model.*`, GPT-NeoX's `embed_out`): skipprune's modeling file is another class, so an export
    # that uses it stores those weights under the loaded model's names.
    renamed: bool = False
    # What the first sublayer mixes tokens with: 'attention', 'linear attention', 'mamba', 'conv', or several
    # joined by ' + ' when they run in parallel.
    mixer: str = "attention"
    alike: bool = True  # all decoder blocks are built of the same modules
    kinds: tuple[Family, ...] = ()  # one split per kind of block, where blocks differ (see the module docs)
    layer_kind: tuple[int, ...] = ()  # per source layer, its index in `kinds`

    def at(self, i: int) -> Family:
        """The family as layer i splits (itself when all blocks split alike)."""
        return self.kinds[self.layer_kind[i]] if self.kinds else self

    @property
    def attention_outs(self) -> tuple[str, ...]:
        """The children whose outputs the token mixer adds to the residual stream."""
        return self._outs("attention")

    @property
    def mlp_outs(self) -> tuple[str, ...]:
        return self._outs("mlp")

    def _outs(self, sublayer: str) -> tuple[str, ...]:
        returns, out = getattr(self, f"{sublayer}_returns"), getattr(self, f"{sublayer}_out")
        if isinstance(returns, tuple) and out == getattr(self, sublayer)[0]:  # parallel modules, no post-norm
            return tuple(name for name, _ in returns)
        return (out,)

    @property
    def mixer_children(self) -> tuple[str, ...]:
        """The compute modules of the token mixer (several side by side in some hybrid blocks)."""
        returns = self.attention_returns
        return tuple(name for name, _ in returns) if isinstance(returns, tuple) else self.attention[:1]

    def returns_of(self, sublayer: str) -> int | dict:
        """What config.json's `<sublayer>_returns` says: an int, or {module: k} for parallel modules."""
        value = getattr(self, f"{sublayer}_returns")
        return dict(value) if isinstance(value, tuple) else value

    @property
    def mixer_noun(self) -> str:
        """What to call the first sublayer: 'attention', or 'token mixer' where it is not always attention."""
        return "token mixer" if self.kinds or self.mixer != "attention" else "attention"

    def mixers(self, layers) -> set[str]:
        """The kinds of token mixer of `layers` (source numbering)."""
        return {self.at(i).mixer for i in layers}

    def not_attention(self, layers) -> list[int]:
        """Those of `layers` whose token mixer is not (only) attention."""
        return sorted(i for i in layers if self.at(i).mixer != "attention")

    @classmethod
    def from_fields(cls, model_type: str, fields: dict, **where) -> Family:
        """A Family from JSON-shaped fields (lists for tuples), the kinds of block included."""

        def frozen(value):
            if isinstance(value, list):
                return tuple(frozen(v) for v in value)
            return value

        kinds = tuple(cls.from_fields(model_type, kind, **where) for kind in fields.get("kinds", ()))
        rest = {k: frozen(v) for k, v in fields.items() if k != "kinds"}
        return cls(model_type, **where, **rest, kinds=kinds)

    @property
    def layers_prefix(self) -> str:
        """How the weight names of block i start, without the i: e.g. `model.layers.`."""
        return self.weights_prefix or self.layers_path + "."

    def with_layers_path(self, path: str) -> Family:
        return dataclasses.replace(
            self, layers_path=path, kinds=tuple(dataclasses.replace(k, layers_path=path) for k in self.kinds)
        )

    def weights_of(self, sublayer: str) -> tuple[str, ...]:
        """The children of a block owned by 'attention' or 'mlp', as weight names spell them."""
        return getattr(self, f"{sublayer}_weights") or getattr(self, sublayer)

    def layers(self, model):
        """The module list of decoder blocks of a loaded model of this family."""
        for part in self.layers_path.split("."):
            model = getattr(model, part)
        return model

    def check(self, plan) -> None:
        """Refuse, in one line, a plan this family cannot carry out."""
        partial = (plan.drop_attention ^ plan.drop_mlp) if plan else set()
        if partial and self.no_sublayers:
            raise PlanError(
                f"{self.model_type}: only whole blocks can be removed ({self.no_sublayers}); use --drop-blocks"
            )
        if (plan.drop_attention - plan.drop_mlp) and self.no_attention:
            raise PlanError(
                f"{self.model_type}: attention cannot be removed on its own ({self.no_attention}); use --drop-blocks "
                "or --drop-mlp"
            )

        kept = [i for i in range(len(self.layer_kind)) if i not in plan.drop_attention]
        bearing = [i for i in range(len(self.layer_kind)) if "attention" in self.at(i).mixer.split(" + ")]
        if bearing and kept and not set(kept) & set(bearing):
            # With no mixer at all the model decodes without a cache; with only other mixers left, transformers
            # before 5.25 reads the sequence length from an attention slot that no longer exists.
            raise PlanError(
                f"{self.model_type}: the plan removes the token mixer of every attention layer "
                f"({format_indices(bearing)}) but keeps others, and transformers < 5.25 counts cached tokens in "
                "attention layers: keep at least one"
            )

    def check_attention(self, layers, num_layers: int) -> None:
        """Refuse `--drop-attn` on layers whose token mixer is not attention: --drop-mixer removes those."""
        if other := self.not_attention(layers):
            kinds = " and ".join(sorted(self.mixers(other)))
            attention = [i for i in range(num_layers) if self.at(i).mixer == "attention"]
            where = (
                f"its attention layers are {format_indices(attention)}"
                if attention
                else "none of its layers mixes tokens by attention alone"
            )
            raise PlanError(
                f"{self.model_type}: {layers_phrase(other)} mix{'es' * (len(other) == 1)} tokens by {kinds}, not "
                f"attention ({where}); "
                "--drop-attn removes attention only: use --drop-mixer to remove any token mixer"
            )
