"""Width pruning on tiny random BERT-family and DistilBERT models: shapes, outputs, the saved
directory, ONNX, importance."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from distillery.api.job import Hardware, Task
from distillery_trainer import width
from distillery_trainer.checkpoint import CorruptCheckpoint
from distillery_trainer.errors import InputError
from distillery_trainer.nets import HFNet
from distillery_trainer.width_layouts import get_module

HIDDEN, HEADS, FFN, LAYERS = 32, 4, 64, 2
HEAD_SIZE = HIDDEN // HEADS


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The model types width pruning supports: BERT's layer layout, the encoders that copy it, DistilBERT's.
KINDS = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "deberta-v2-separate-positions"]


def tiny_bert(seed: int = 0, kind: str = "bert") -> HFNet:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if kind == "distilbert":
        sizes = {"dim": HIDDEN, "n_layers": LAYERS, "n_heads": HEADS, "hidden_dim": FFN}
    elif kind.startswith("deberta-v2"):
        # DeBERTa-v3's relative attention; its positional keys and queries are either the
        # key/query projections (share_att_key, v3's checkpoints) or projections of their own.
        sizes = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                 "intermediate_size": FFN, "relative_attention": True, "pos_att_type": ["p2c", "c2p"],
                 "position_buckets": 16, "max_relative_positions": 64, "norm_rel_ebd": "layer_norm",
                 "share_att_key": kind == "deberta-v2", "type_vocab_size": 0}
        kind = "deberta-v2"
    else:
        sizes = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                 "intermediate_size": FFN, **({"embedding_size": HIDDEN} if kind == "electra" else {})}
    config = AutoConfig.for_model(kind, vocab_size=120, max_position_embeddings=64, num_labels=3, **sizes)
    return HFNet(AutoModelForSequenceClassification.from_config(config).eval(), Task.SEQUENCE_CLASSIFICATION, None)


def part(net: HFNet, layer: torch.nn.Module, name: str) -> torch.nn.Linear:
    """A layer's projection by its role (query, key, value, out, up, down) in the net's layout."""
    return get_module(layer, getattr(width.layout_of(net), name))


def batch(rows: int = 4, tokens: int = 12, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (rows, tokens), generator=generator)
    mask = torch.ones(rows, tokens, dtype=torch.long)
    mask[1, 7:] = 0  # one padded row: padding must not count
    ids[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def masked_copy(net: HFNet, plan: width.WidthPlan) -> HFNet:
    """The reference: the same model with the removed heads' and neurons' weights zeroed."""
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for layer, heads, neurons in zip(ref.layer_list(), plan.heads, plan.ffn, strict=True):
            for h in set(range(HEADS)) - set(heads):
                rows = slice(h * HEAD_SIZE, (h + 1) * HEAD_SIZE)
                for name in ("query", "key", "value"):
                    part(ref, layer, name).weight[rows] = 0
                    part(ref, layer, name).bias[rows] = 0
            dropped = sorted(set(range(FFN)) - set(neurons))
            part(ref, layer, "down").weight[:, dropped] = 0
    return ref


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_removal_keeps_shapes_consistent_and_outputs_of_the_kept_units(kind):
    net = tiny_bert(kind=kind)
    importance = width.measure_importance(net, [batch()])
    plan = width.plan_for(importance, 2, 16)
    reference = masked_copy(net, plan)
    before = net.parameter_count()

    width.apply_plan(net, plan)

    assert [len(h) for h in plan.heads] == [2] * LAYERS and [len(f) for f in plan.ffn] == [16] * LAYERS
    layout = width.layout_of(net)
    for layer in net.layer_list():
        for name in ("query", "key", "value"):
            assert part(net, layer, name).weight.shape == (2 * HEAD_SIZE, HIDDEN)
        assert part(net, layer, "out").weight.shape == (HIDDEN, 2 * HEAD_SIZE)
        assert part(net, layer, "up").weight.shape == (16, HIDDEN)
        assert part(net, layer, "down").weight.shape == (HIDDEN, 16)
    assert getattr(net.model.config, layout.ffn_field) == 16
    assert getattr(net.model.config, layout.heads_field) == HEADS  # the head size stays hidden / heads
    projections = len(layout.query_rows(net.layer_list()[0])) + 2  # query, key, value (and DeBERTa's positional ones)
    assert projections == (5 if kind == "deberta-v2-separate-positions" else 3)
    per_head = projections * (HIDDEN * HEAD_SIZE + HEAD_SIZE) + HEAD_SIZE * HIDDEN
    per_neuron = HIDDEN + 1 + HIDDEN
    assert net.parameter_count() == before - LAYERS * (2 * per_head + 48 * per_neuron)
    b = batch()
    assert torch.allclose(net.outputs(b).logits, reference.outputs(b).logits, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_saved_directory_loads_with_from_pretrained_and_gives_the_same_outputs(kind, tmp_path):
    from transformers import AutoModelForSequenceClassification

    net = tiny_bert(kind=kind)
    plan = width.plan_for(width.measure_importance(net, [batch()]), 2, 32)
    width.apply_plan(net, plan)
    width._mark_kept_heads(net, plan.heads)
    b = batch(seed=3)
    expected = net.outputs(b).logits

    with width.standard_layout(net):
        net.save(tmp_path / "model")
    # the in-memory student is compact again afterwards
    assert part(net, net.layer_list()[0], "query").weight.shape == (2 * HEAD_SIZE, HIDDEN)
    assert not hasattr(net.model.config, width.KEPT_HEADS_KEY)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    layout = width.layout_of(net)
    assert config[layout.ffn_field] == FFN // 2 and config[layout.heads_field] == HEADS
    assert config[width.KEPT_HEADS_KEY] == plan.heads

    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "model")).eval()
    assert torch.allclose(loaded(**b).logits, expected, atol=1e-5)
    width.compact(loaded)
    assert sum(p.numel() for p in loaded.parameters()) == net.parameter_count()
    assert torch.allclose(loaded(**b).logits, expected, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_pruned_student_exports_to_onnx_and_int8(kind, tmp_path):
    from distillery_trainer.onnx_tools import (
        example_inputs,
        export_onnx,
        onnx_outputs,
        quantize_int8,
    )

    net = tiny_bert(kind=kind)
    width.apply_plan(net, width.plan_for(width.measure_importance(net, [batch()]), 2, 32))
    path = export_onnx(net, tmp_path / "model.onnx", example_inputs(net, 2, 12, ()), 17)
    b = batch(seed=5)
    with torch.no_grad():
        expected = net.outputs(b).logits
    from_onnx = onnx_outputs(path, [b], Hardware.CPU)
    assert from_onnx.shape == expected.shape
    assert float((from_onnx - expected).abs().max()) < 1e-4
    int8 = quantize_int8(path, tmp_path / "model.int8.onnx")
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops  # quantized (on a model this tiny the
    # file need not be smaller: the quantization nodes and scales weigh as much as the int8 savings)
    assert onnx_outputs(int8, [b], Hardware.CPU).shape == expected.shape


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
@torch.no_grad()
def test_importance_removes_the_silenced_units_first(kind):
    net = tiny_bert(kind=kind)
    layer = net.layer_list()[1]
    silent_head, silent_neuron = 2, 40
    rows = slice(silent_head * HEAD_SIZE, (silent_head + 1) * HEAD_SIZE)
    part(net, layer, "value").weight[rows] = 0  # its attention output is exactly zero
    part(net, layer, "value").bias[rows] = 0
    part(net, layer, "up").weight[silent_neuron] = 0
    part(net, layer, "up").bias[silent_neuron] = -20.0  # GELU(-20) is 0

    importance = width.measure_importance(net, [batch(), batch(seed=2)])

    assert importance.rows == 8
    assert float(importance.heads[1][silent_head]) == 0.0
    assert all(float(s) > 0 for i, s in enumerate(importance.heads[1]) if i != silent_head)
    assert float(importance.neurons[1][silent_neuron]) < 1e-6
    plan = width.plan_for(importance, 3, 63)
    assert plan.heads[1] == [h for h in range(HEADS) if h != silent_head]
    assert silent_neuron not in plan.ffn[1] and len(plan.ffn[1]) == 63


def test_importance_ignores_padding():
    net = tiny_bert()
    b = batch()
    other = {k: v.clone() for k, v in b.items()}
    other["input_ids"][1, 7:] = 77  # different tokens where the mask says padding
    first, second = width.measure_importance(net, [b]), width.measure_importance(net, [other])
    for a, c in zip(first.heads + first.neurons, second.heads + second.neurons, strict=True):
        assert torch.allclose(a, c, atol=1e-6)


def test_parameter_budget_picks_the_largest_equal_share_that_fits():
    net = tiny_bert()
    total, sizes = net.parameter_count(), width.unit_sizes(net)
    assert (sizes.layers, sizes.heads, sizes.ffn) == (LAYERS, HEADS, FFN)
    exact = sizes.parameters(total, 2, 32)
    assert width.counts_for_budget(total, sizes, exact) == (2, 32)
    assert width.counts_for_budget(total, sizes, exact - 1) == (2, 31)  # one neuron less; heads round(31/64 * 4)
    assert width.counts_for_budget(total, sizes, total) == (HEADS, FFN)
    with pytest.raises(InputError, match=r"^student\.width\.maxParameters: .* below the smallest width-pruned"):
        width.counts_for_budget(total, sizes, sizes.parameters(total, 1, 1) - 1)
    # the arithmetic is what pruning really removes
    width.apply_plan(net, width.plan_for(width.measure_importance(net, [batch()]), 2, 31))
    assert net.parameter_count() == exact - LAYERS * sizes.per_neuron


def test_kept_counts_and_plans_that_do_not_fit():
    assert width.kept_count(0.5, 12) == 6 and width.kept_count(0.3, 12) == 4 and width.kept_count(0.1, 4) == 0
    net = tiny_bert()
    with pytest.raises(ValueError, match="same number of heads"):
        width.apply_plan(net, width.WidthPlan([[0, 1], [0]], None))
    with pytest.raises(ValueError, match="below 4"):
        width.apply_plan(tiny_bert(), width.WidthPlan([[0, 4], [0, 1]], None))
    with pytest.raises(ValueError, match="layers"):
        width.apply_plan(tiny_bert(), width.WidthPlan(None, [[0]]))


def test_a_checkpoint_whose_width_does_not_fit_is_dropped(text_job_stub):
    saved = {"plan": {"heads": [[0, 9], [0, 1]], "ffn": None},
             "report": {"heads": 4, "headsKept": 2, "ffn": 64, "ffnKept": 64, "calibrationRows": 4,
                        "parametersBefore": 10, "parametersAfter": 8, "layers": []}}
    with pytest.raises(CorruptCheckpoint, match="does not fit"):
        width.reapply(tiny_bert(), saved, text_job_stub(heads=0.5))
    with pytest.raises(CorruptCheckpoint, match="records no width"):
        width.reapply(tiny_bert(), None, text_job_stub(heads=0.5))
    ok = {**saved, "plan": {"heads": [[1, 3], [0, 2]], "ffn": None}}
    net = tiny_bert()
    width.reapply(net, ok, text_job_stub(heads=0.5))
    assert part(net, net.layer_list()[0], "query").weight.shape == (2 * HEAD_SIZE, HIDDEN)


def test_source_checks_name_the_field(text_job_stub):
    config = {"model_type": "bert", "num_attention_heads": 4, "intermediate_size": 128}
    width.check_source_config(text_job_stub(heads=0.5, ffn=0.5), config, "teacher.uri")
    with pytest.raises(InputError, match=r"^student\.width\.heads: 0\.1 of 4 attention heads keeps none"):
        width.check_source_config(text_job_stub(heads=0.1), config, "teacher.uri")
    with pytest.raises(InputError, match=r"^student\.width: .*model_type in teacher\.uri's config\.json is not one "
                       r"of: bert, roberta, xlm-roberta, electra, distilbert, deberta-v2, llama, qwen2, qwen3, "
                       r"mistral$") as exc:
        width.check_source_config(text_job_stub(ffn=0.5), {**config, "model_type": "gpt2-hunter2"}, "teacher.uri")
    assert "hunter2" not in str(exc.value)  # the owner's config values are not quoted
    # DistilBERT names its widths differently
    distilbert = {"model_type": "distilbert", "n_heads": 12, "hidden_dim": 3072}
    width.check_source_config(text_job_stub(heads=0.5, ffn=0.5), distilbert, "teacher.uri")
    with pytest.raises(InputError, match=r"^student\.width\.heads: 0\.04 of 12 attention heads keeps none"):
        width.check_source_config(text_job_stub(heads=0.04), distilbert, "teacher.uri")


@pytest.fixture
def text_job_stub():
    """A DistillationJob with student.width set (no files behind it: for the pure checks)."""
    from distillery.api import load_job

    def make(**width_spec):
        return load_job({
            "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "w"},
            "spec": {"teacher": {"uri": "file:///t", "format": "huggingface", "task": "sequence-classification"},
                     "dataset": {"format": "jsonl", "trainUri": "file:///a.jsonl", "evalUri": "file:///b.jsonl"},
                     "student": {"keepLayers": 2, "width": width_spec},
                     "output": {"uri": "file:///out"}}})

    return make


@pytest.mark.parametrize(("student", "expected"), [
    ({"width": {"heads": 0.5}}, "student.width: width pruning needs a Hugging Face transformer student; "
                                "teacher.format is torch"),
    ({"width": {"ffn": 0.5}, "architecture": {"name": "mlp"}},
     "student.width: width pruning needs a Hugging Face transformer student; student.architecture builds "
     "a built-in mlp"),
])  # fmt: skip
def test_width_on_a_builtin_model_is_invalid_input(digits_job, student, expected, capsys):
    from distillery.api.result import EXIT_INVALID
    from distillery_trainer.entrypoint import run_job

    job, out = digits_job(student={"method": "importance", "keepLayers": 2, **student})
    code, result = run_job(job)
    assert (code, result) == (EXIT_INVALID, None)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], errors


def test_width_with_an_onnx_teacher_needs_a_huggingface_base(text_job_stub):
    from distillery.api.job import StudentBase, TeacherFormat

    job = text_job_stub(heads=0.5)
    spec = job.spec
    student = spec.student.model_copy(update={"base": StudentBase(uri="file:///b", format=TeacherFormat.TORCH)})
    spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"format": TeacherFormat.ONNX}),
                                   "student": student})
    with pytest.raises(InputError, match=r"^student\.width: .*student\.base\.format is torch"):
        width.check_spec(job.model_copy(update={"spec": spec}))
