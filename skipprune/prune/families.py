"""What skipprune needs to know about a decoder family, as data: where its decoder blocks are, and which children
of a block form the attention sublayer and which the MLP (each: its compute module first, then the norms only
it uses; removing a sublayer removes all of them).

The values are learnt from transformers' own code for the source at hand (skipprune.export.anatomy), not
typed by hand, so a family works on the day transformers supports it, or is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PlanError


@dataclass(frozen=True)
class Family:
    model_type: str
    layers_path: str = "model.layers"  # module path of the list of decoder blocks (also the weight-name prefix)
    attention: tuple[str, ...] = ()  # () when sublayers cannot be removed
    mlp: tuple[str, ...] = ()
    attention_out: str = ""  # the child whose output is what attention adds to the residual stream
    mlp_out: str = ""
    mlp_in: str = ""  # the child that first receives the residual stream entering the MLP
    attention_returns: int = 2  # what the attention module returns: 0 a tensor, k a tuple of k
    mlp_returns: int = 0
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

    @property
    def layers_prefix(self) -> str:
        """How the weight names of block i start, without the i: e.g. `model.layers.`."""
        return self.weights_prefix or self.layers_path + "."

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
