"""How much each SmolLM2 layer matters: held-out perplexity with each single layer removed, next
to the two cheap scores that rank layers without removing them (block influence, ShortGPT;
angular distance, Gromov et al.), and what dropping a third of the layers costs under each rule.

This is the evidence behind `student.keepFirstAndLast` defaulting to true for causal-lm.

Usage: python benchmarks/causal_lm/layer_sensitivity.py [--blocks 16] [--length 128] [--drop 10]
Needs examples/causal-lm/prepare.py to have run. Writes results/layer-sensitivity.md.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from common import (
    EVAL_TEXT,
    load_teacher,
    machine_line,
    perplexity,
    publish_result,
    set_layers,
    text_blocks,
)
from torch import nn


@torch.no_grad()
def layer_boundaries(model: nn.Module, blocks: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream entering layer 0 and leaving every layer (L+1 tensors of (N, T, H)),
    captured with hooks because the model's own hidden_states end after the final norm."""
    captured: list[torch.Tensor] = []
    layers = model.model.layers

    def keep_input(_module, args, kwargs):
        captured.append((args[0] if args else kwargs["hidden_states"]).detach())

    def keep_output(_module, _args, output):
        captured.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = [layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)]
    handles += [layer.register_forward_hook(keep_output) for layer in layers]
    try:
        model(input_ids=blocks, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return captured


def cosines(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return nn.functional.cosine_similarity(first.flatten(0, 1), second.flatten(0, 1), dim=-1).clamp(-1, 1)


def block_influence(bounds: list[torch.Tensor]) -> list[float]:
    """ShortGPT: 1 - mean cosine between a layer's input and output token states."""
    return [float(1 - cosines(bounds[i], bounds[i + 1]).mean()) for i in range(len(bounds) - 1)]


def angular_distance(bounds: list[torch.Tensor], width: int) -> list[float]:
    """Gromov et al.: mean arccos(cosine)/pi between the states entering layer l and leaving layer
    l + width - 1, for every start l."""
    return [float(torch.arccos(cosines(bounds[s], bounds[s + width])).mean() / math.pi)
            for s in range(len(bounds) - width)]


def lowest(scores: list[float], count: int, allowed: list[int]) -> list[int]:
    return sorted(sorted(allowed, key=lambda i: scores[i])[:count])


def best_block(distances: list[float], width: int, layers: int, protect: bool) -> list[int]:
    starts = range(1, layers - width) if protect else range(0, layers - width + 1)
    start = min(starts, key=lambda s: distances[s])
    return list(range(start, start + width))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--drop", type=int, default=10, help="layers dropped in the rule comparison")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, tokenizer = load_teacher()
    blocks = text_blocks(EVAL_TEXT, tokenizer, args.blocks, args.length)
    all_layers = model.model.layers
    n = len(all_layers)
    started = time.monotonic()

    base = perplexity(model, blocks)
    bounds = layer_boundaries(model, blocks)
    influence = block_influence(bounds)
    single_angle = angular_distance(bounds, 1)
    block_angle = angular_distance(bounds, args.drop)
    del bounds
    print(f"teacher perplexity {base:.2f} ({time.monotonic() - started:.0f} s)", flush=True)

    without = []
    for i in range(n):
        set_layers(model, [j for j in range(n) if j != i], all_layers)
        without.append(perplexity(model, blocks))
        print(f"without layer {i:2d}: perplexity {without[-1]:.2f} ({time.monotonic() - started:.0f} s)", flush=True)

    middle = list(range(1, n - 1))
    rules = {
        f"block influence, lowest {args.drop}, first/last kept": lowest(influence, args.drop, middle),
        f"block influence, lowest {args.drop}, any layer": lowest(influence, args.drop, list(range(n))),
        f"angular distance, best block of {args.drop}, first/last kept": best_block(block_angle, args.drop, n, True),
        f"angular distance, best block of {args.drop}, any start": best_block(block_angle, args.drop, n, False),
        f"single-removal perplexity, lowest {args.drop} (oracle)": lowest(without, args.drop, list(range(n))),
    }
    rule_rows = []
    for name, dropped in rules.items():
        set_layers(model, [j for j in range(n) if j not in dropped], all_layers)
        rule_rows.append((name, dropped, perplexity(model, blocks)))
        print(f"{name}: drop {dropped} -> perplexity {rule_rows[-1][2]:.2f}", flush=True)
    set_layers(model, list(range(n)), all_layers)
    seconds = time.monotonic() - started

    order = sorted(range(n), key=lambda i: without[i])
    rank = {layer: r + 1 for r, layer in enumerate(order)}
    lines = [
        "# SmolLM2-135M: single-layer removal and layer scores",
        "",
        f"Held-out perplexity on {args.blocks} blocks x {args.length} tokens of the BBC eval split "
        f"(spread over the split). Teacher perplexity **{base:.2f}**. {machine_line(args.threads)}; "
        f"{seconds:.0f} s in all. Produced by `benchmarks/causal_lm/layer_sensitivity.py`.",
        "",
        "Block influence (ShortGPT) = 1 - mean cosine(layer input, layer output); angular distance "
        "(Gromov et al.) = mean arccos(cosine)/pi over the same pair; both from one teacher pass. "
        "Low scores mark layers that change the residual stream least. Rank 1 = cheapest layer "
        "to remove by measured perplexity.",
        "",
        "| layer | perplexity without it | x teacher | rank | block influence | angular distance |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i in range(n):
        lines.append(f"| {i} | {without[i]:.2f} | {without[i] / base:.2f} | {rank[i]} | "
                     f"{influence[i]:.4f} | {single_angle[i]:.4f} |")
    lines += [
        "",
        f"## Dropping {args.drop} of {n} layers (no healing)",
        "",
        "| rule | layers dropped | perplexity | x teacher |",
        "|---|---|---:|---:|",
    ]
    for name, dropped, ppl in rule_rows:
        lines.append(f"| {name} | {', '.join(map(str, dropped))} | {ppl:.1f} | {ppl / base:.1f} |")
    publish_result("layer-sensitivity.md", lines)


if __name__ == "__main__":
    main()
