"""Where each architecture keeps what width pruning edits (width.py does the pruning).

A `Layout` names, inside one transformer layer, the attention module, the query/key/value and
output projections, the FFN's projections, and the config fields of the two widths. Encoders
(BERT and the models that copy its layout, DistilBERT, DeBERTa-v2/v3) tie the attention width to
the hidden size in their configs, so a head-pruned one is saved with the removed heads as zeros
(width.standard_layout). Llama-family decoders (Llama, Qwen2/3, Mistral) name `head_dim` and
`num_key_value_heads` in theirs: their heads are pruned by whole key/value group (grouped-query
attention shares one key and value head among `group` query heads), and the config records the
kept counts, so the pruned decoder is a smaller standard model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from distillery_trainer.errors import InputError
from distillery_trainer.nets import Net


@dataclass(frozen=True)
class Layout:
    """Module paths inside a layer (every one an nn.Linear but `attention`) and config fields."""

    attention: str  # the module holding the head size (and, in encoders, the head count)
    heads_attribute: str | None  # that module's head-count attribute; None: the config's alone
    query: str
    key: str
    value: str
    out: str  # the output projection: its input is the heads' outputs side by side
    up: str  # the FFN's first projection
    down: str  # the FFN's second: its input is the activations, one column per neuron
    heads_field: str  # config.json's head count
    ffn_field: str  # config.json's FFN width
    # Projections with one block of rows per query head, present in some configs only (DeBERTa's
    # relative-position keys and queries when not shared with key/query).
    optional_head_rows: tuple[str, ...] = ()
    head_size_attribute: str = "attention_head_size"
    gate: str | None = None  # gated FFNs (SwiGLU): a second first projection, pruned with `up`
    # Grouped-query attention: heads go by key/value group, and the config records the kept counts.
    kv_heads_field: str | None = None
    head_dim_field: str | None = None

    @property
    def config_holds_heads(self) -> bool:
        return self.kv_heads_field is not None

    def linears(self) -> tuple[str, ...]:
        return (self.query, self.key, self.value, self.out, self.up, self.down, *((self.gate,) if self.gate else ()))

    def query_rows(self, layer: nn.Module) -> tuple[str, ...]:
        """Projections with one block of rows per query head."""
        return (self.query, *(path for path in self.optional_head_rows if isinstance(get_module(layer, path),
                                                                                     nn.Linear)))

    def ffn_inputs(self) -> tuple[str, ...]:
        """Projections with one row per FFN neuron."""
        return (self.up, *((self.gate,) if self.gate else ()))


BERT_LAYOUT = Layout("attention.self", "num_attention_heads", "attention.self.query", "attention.self.key",
                     "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense",
                     "num_attention_heads", "intermediate_size")
DISTILBERT_LAYOUT = Layout("attention", "n_heads", "attention.q_lin", "attention.k_lin", "attention.v_lin",
                           "attention.out_lin", "ffn.lin1", "ffn.lin2", "n_heads", "hidden_dim")
# DeBERTa-v2 and -v3 (model_type deberta-v2); DeBERTa v1 packs query, key and value in one in_proj.
DEBERTA_V2_LAYOUT = Layout("attention.self", "num_attention_heads", "attention.self.query_proj",
                           "attention.self.key_proj", "attention.self.value_proj", "attention.output.dense",
                           "intermediate.dense", "output.dense", "num_attention_heads", "intermediate_size",
                           ("attention.self.pos_key_proj", "attention.self.pos_query_proj"))
LLAMA_LAYOUT = Layout("self_attn", None, "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                      "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj", "num_attention_heads", "intermediate_size",
                      head_size_attribute="head_dim", gate="mlp.gate_proj", kv_heads_field="num_key_value_heads",
                      head_dim_field="head_dim")
# The architectures tested here, by config.json's model_type.
LAYOUTS = {"bert": BERT_LAYOUT, "roberta": BERT_LAYOUT, "xlm-roberta": BERT_LAYOUT, "electra": BERT_LAYOUT,
           "distilbert": DISTILBERT_LAYOUT, "deberta-v2": DEBERTA_V2_LAYOUT,
           "llama": LLAMA_LAYOUT, "qwen2": LLAMA_LAYOUT, "qwen3": LLAMA_LAYOUT, "mistral": LLAMA_LAYOUT}
SUPPORTED_MODEL_TYPES = tuple(LAYOUTS)


def get_module(module: nn.Module, path: str) -> nn.Module | None:
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def set_module(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_module(module, parent) if parent else module, name, value)


def layout_of(net: Net) -> Layout:
    """The layout of the student in memory, by its config's model_type."""
    model_type = getattr(getattr(getattr(net, "model", None), "config", None), "model_type", None)
    if model_type not in LAYOUTS or not hasattr(net, "layer_list"):
        raise InputError(f"student.width: width pruning supports {', '.join(SUPPORTED_MODEL_TYPES)}; the student "
                         f"is {type(getattr(net, 'model', net)).__name__}")
    return LAYOUTS[model_type]


def head_count(net: Net, layout: Layout, layer: nn.Module) -> int:
    """Query heads in this layer now."""
    if layout.heads_attribute is not None:
        return getattr(get_module(layer, layout.attention), layout.heads_attribute)
    return getattr(net.model.config, layout.heads_field)


def head_size(layout: Layout, layer: nn.Module) -> int:
    return getattr(get_module(layer, layout.attention), layout.head_size_attribute)


def group_size(net: Net, layout: Layout) -> int:
    """Query heads per key/value head (1 without grouped-query attention): heads are kept in such groups."""
    if layout.kv_heads_field is None:
        return 1
    config = net.model.config
    kv_heads = getattr(config, layout.kv_heads_field, None) or getattr(config, layout.heads_field)
    return getattr(config, layout.heads_field) // kv_heads
