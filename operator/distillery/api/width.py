"""What width pruning reports in result.json: the kept structure and the importance behind it.

Shared by the trainer (which fills it) and the operator (which reads result.json); no torch here.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from distillery.api.base import ApiModel


class LayerWidth(ApiModel):
    """One student layer after width pruning."""

    layer: int = Field(ge=0, description="the source model's index of this layer")
    heads_kept: list[int] | None = Field(default=None, description="0-based indices of the kept attention heads")
    head_scores: list[float] | None = Field(
        default=None, description="every head's importance (mean per-token norm of its attention output)")
    ffn_kept: int | None = Field(default=None, ge=1, description="FFN neurons kept")
    ffn_importance_kept: float | None = Field(
        default=None, ge=0, le=1, description="share of the layer's total FFN-neuron importance the kept neurons hold")


class WidthReport(ApiModel):
    """Heads and FFN neurons kept per layer (the same number in every layer), and what it saved."""

    heads: int = Field(ge=1, description="attention heads per layer before width pruning")
    heads_kept: int = Field(ge=1, description="attention heads kept in every layer")
    ffn: int = Field(ge=1, description="FFN (intermediate) neurons per layer before width pruning")
    ffn_kept: int = Field(ge=1, description="FFN neurons kept in every layer")
    calibration_rows: int = Field(ge=0, description="train rows the importance was measured on")
    parameters_before: int = Field(ge=0, description="the layer-cut student's parameters")
    parameters_after: int = Field(ge=0, description="its parameters after width pruning, before healing")
    max_parameters: int | None = Field(default=None, ge=1, description="student.width.maxParameters, when given")
    layers: list[LayerWidth] = Field(default_factory=list)

    @model_validator(mode="after")
    def _kept_within(self) -> WidthReport:
        if self.heads_kept > self.heads or self.ffn_kept > self.ffn:
            raise ValueError("width: more heads or neurons kept than there were")
        return self

    def summary(self) -> str:
        """One line for the terminal table: what every layer keeps and the parameters it saved."""
        budget = "" if self.max_parameters is None else f" (budget {self.max_parameters:,})"
        return (f"heads {self.heads_kept}/{self.heads}, FFN neurons {self.ffn_kept}/{self.ffn} per layer; "
                f"parameters {self.parameters_before:,} -> {self.parameters_after:,}{budget} before healing")

    def card_text(self) -> str:
        """The model card's bullet: the rule, the kept structure per layer and its importance."""
        per_layer = []
        for entry in self.layers:
            parts = []
            if entry.heads_kept is not None:
                parts.append(f"heads {entry.heads_kept} (scores {entry.head_scores})")
            if entry.ffn_importance_kept is not None:
                parts.append(f"FFN keeps {entry.ffn_importance_kept:.1%} of the neurons' importance")
            per_layer.append(f"  - layer {entry.layer}: {'; '.join(parts) or 'unchanged'}")
        zeros = ("\n  `model/` keeps the removed heads as zeros (a standard config; transformers 5 cannot drop "
                 "heads); the ONNX files do not have them." if self.heads_kept < self.heads else "")
        return (f"- Width pruning (activation importance on {self.calibration_rows} train rows): "
                f"{self.summary()}.{zeros}\n" + "\n".join(per_layer))
