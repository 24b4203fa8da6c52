"""Vocabulary pruning for a domain (student.vocabulary): keep only the tokens the train split uses.

The student's word-embedding matrix keeps the rows of the kept tokens (old ids, sorted), which
become the new ids 0..n-1; every other token maps to the new [UNK] id. The student's tokenizer
shrinks with it without changing how any text is split: its WordPiece model keeps EVERY token
string, removed strings pointing at the [UNK] id. Deleting the strings instead would change the
greedy longest-match segmentation of other words (a removed "##ing" makes "playing" split
differently), so a text's ids would no longer be the teacher tokenizer's ids mapped old -> new.

The run encodes each split once with the teacher's tokenizer (old ids): the teacher's outputs are
computed from those; from layer selection on, the student's view of both splits is the same rows
with their ids mapped through the old -> new table (`student_view`), and the exported ONNX file and
the saved Hugging Face directory take the new ids.

Pure parts: `token_counts`, `choose_kept`, `id_table`, `remap`, `pruned_tokenizer_json`,
`pruned_tokenizer_config`, `vocabulary_report`. The rest touches the model, the run context or files.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from distillery.api.job import DistillationJob, Task, Vocabulary
from distillery.api.result import VocabularyReport
from distillery_trainer.checkpoint import CorruptCheckpoint
from distillery_trainer.encode import Encoded
from distillery_trainer.errors import InputError

FIELD = "student.vocabulary"
PRUNABLE_TASKS = (Task.SEQUENCE_CLASSIFICATION, Task.SENTENCE_EMBEDDING)
# Config fields that name token ids: they must stay valid (and are therefore always kept).
CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                    "unk_token_id", "mask_token_id")
# Tokenizer files a pruned student must not carry: they list the teacher's ids.
STALE_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "added_tokens.json")


def pruning(job: DistillationJob) -> Vocabulary | None:
    """The vocabulary spec when pruning is asked for, else None."""
    vocabulary = job.spec.student.vocabulary
    return vocabulary if vocabulary is not None and vocabulary.prune else None


# ----------------------------------------------------------------------------- checks (before the teacher pass)


def check_spec(job: DistillationJob) -> None:
    """What the spec alone says: pruning is for text encoders (classification, embedding)."""
    if pruning(job) is None:
        return
    task = job.spec.teacher.task
    if task not in PRUNABLE_TASKS:
        raise InputError(f"{FIELD}: vocabulary pruning is for sequence-classification and sentence-embedding "
                         f"students (text encoders), not {task.value}")


def tokenizer_document(tokenizer) -> dict:
    """The fast tokenizer's tokenizer.json as a dict (its backend state, as loaded)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"{FIELD}: pruning needs a fast (tokenizer.json) tokenizer; "
                         f"{type(tokenizer).__name__} has none")
    return json.loads(backend.to_str())


def check_tokenizer(job: DistillationJob, tokenizer) -> None:
    """The tokenizer is a fast WordPiece one with an [UNK] token (BERT-style), before any heavy work."""
    if pruning(job) is None:
        return
    model = tokenizer_document(tokenizer).get("model") or {}
    kind = model.get("type")
    if kind != "WordPiece":
        raise InputError(f"{FIELD}: pruning supports WordPiece tokenizers (BERT-style); this tokenizer's "
                         f"model is {kind or 'unknown'}")
    unk = model.get("unk_token")
    if not isinstance(unk, str) or unk not in model.get("vocab", {}):
        raise InputError(f"{FIELD}: the tokenizer's WordPiece vocabulary has no unknown token, which removed "
                         "tokens would map to")


# ----------------------------------------------------------------------------- choosing the kept tokens


def text_token_mask(data: Encoded, special: torch.Tensor) -> torch.Tensor:
    """Which positions hold real text tokens: inside the attention mask and not a special token."""
    ids = data.tensors["input_ids"]
    return data.tensors["attention_mask"].bool() & ~torch.isin(ids, special)


def token_counts(data: Encoded, rows: int) -> torch.Tensor:
    """How often each id occurs in the encoded split (padding excluded), as a tensor of `rows`."""
    ids = data.tensors["input_ids"][data.tensors["attention_mask"].bool()]
    return torch.bincount(ids.flatten(), minlength=rows)[:rows]


def choose_kept(counts: torch.Tensor, always: set[int], min_count: int, keep_tokens: int) -> list[int]:
    """Old ids to keep, sorted: every id the train split uses at least `min_count` times, the
    `always` ids (special and added tokens, ids the config names), and the floor: the
    `keep_tokens` lowest ids (in a WordPiece vocabulary, placeholders, characters, then the most
    common words)."""
    rows = counts.numel()
    used = set(torch.nonzero(counts >= min_count).flatten().tolist())
    floor = set(range(min(keep_tokens, rows)))
    return sorted(used | floor | {i for i in always if 0 <= i < rows})


def id_table(kept: list[int], rows: int, unk_old: int) -> torch.Tensor:
    """old id -> new id for every old id; removed ids -> the new id of the unknown token."""
    position = {old: new for new, old in enumerate(kept)}
    table = torch.full((rows,), position[unk_old], dtype=torch.long)
    table[torch.tensor(kept, dtype=torch.long)] = torch.arange(len(kept), dtype=torch.long)
    return table


def remap(data: Encoded, table: torch.Tensor) -> Encoded:
    """The same rows with input_ids mapped old -> new (other tensors and labels shared)."""
    tensors = dict(data.tensors)
    tensors["input_ids"] = table[data.tensors["input_ids"]]
    return Encoded(tensors, data.labels)


def vocabulary_report(kept: list[int], rows: int, dim: int, train: Encoded, evals: Encoded,
                      special: torch.Tensor, unk_old: int) -> VocabularyReport:
    """Sizes, and how many train and eval text tokens the pruned vocabulary turns into [UNK]
    that the teacher's did not (special tokens are never counted)."""
    kept_mask = torch.zeros(rows, dtype=torch.bool)
    kept_mask[torch.tensor(kept, dtype=torch.long)] = True

    def tokens(data: Encoded) -> tuple[int, int]:
        ids = data.tensors["input_ids"][text_token_mask(data, special)]
        lost = ~kept_mask[ids] & (ids != unk_old)
        return int(ids.numel()), int(lost.sum())

    train_total, train_lost = tokens(train)
    eval_total, eval_lost = tokens(evals)
    removed = (rows - len(kept)) * dim
    return VocabularyReport(
        original_tokens=rows, kept_tokens=len(kept), embedding_parameters_removed=removed,
        embedding_share_removed=round(removed / (rows * dim), 6),
        train_tokens=train_total, train_tokens_unknown=train_lost,
        eval_tokens=eval_total, eval_tokens_unknown=eval_lost,
        eval_unknown_share=round(eval_lost / eval_total, 6) if eval_total else 0.0,
    )


# ----------------------------------------------------------------------------- the tokenizer files


def _remap_post_processor(node: dict, new_id) -> None:
    """Token ids inside a post-processor (TemplateProcessing, BertProcessing, RobertaProcessing,
    Sequence of them), in place."""
    kind = node.get("type")
    if kind == "Sequence":
        for child in node.get("processors", []):
            _remap_post_processor(child, new_id)
    elif kind == "TemplateProcessing":
        for token in node.get("special_tokens", {}).values():
            token["ids"] = [new_id(i) for i in token["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for name in ("sep", "cls"):
            if isinstance(node.get(name), list) and len(node[name]) == 2:
                node[name][1] = new_id(node[name][1])


def pruned_tokenizer_json(doc: dict, kept: list[int]) -> dict:
    """tokenizer.json for the pruned student: every WordPiece string stays (so text splits
    exactly as before), kept ones renumbered 0..n-1, removed ones given the [UNK] id; added
    tokens, the post-processor's and the padding's ids follow."""
    out = copy.deepcopy(doc)
    model = out["model"]
    vocab = model["vocab"]
    position = {old: new for new, old in enumerate(kept)}
    unk_new = position[vocab[model["unk_token"]]]

    def new_id(old: int) -> int:
        return position.get(old, unk_new)

    model["vocab"] = {token: new_id(old) for token, old in vocab.items()}
    for token in out.get("added_tokens") or []:
        token["id"] = new_id(token["id"])
    if isinstance(out.get("post_processor"), dict):
        _remap_post_processor(out["post_processor"], new_id)
    if isinstance(out.get("padding"), dict) and "pad_id" in out["padding"]:
        out["padding"]["pad_id"] = new_id(out["padding"]["pad_id"])
    return out


def pruned_tokenizer_config(config: dict, kept: list[int]) -> dict:
    """tokenizer_config.json with its added_tokens_decoder keyed by the new ids."""
    out = copy.deepcopy(config)
    decoder = out.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        position = {old: new for new, old in enumerate(kept)}
        out["added_tokens_decoder"] = {str(position[int(k)]): v for k, v in decoder.items()
                                       if k.isdigit() and int(k) in position}
    return out


def source_tokenizer_files(tokenizer, work: Path) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) of the tokenizer the run encoded with: its loaded
    backend, whose padding and truncation are those of the last call, so these two come from its
    directory's tokenizer.json (none without one); the config from its directory, or as saved."""
    doc = tokenizer_document(tokenizer)
    doc["padding"], doc["truncation"] = None, None
    source = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if source.is_dir() and (source / "tokenizer.json").is_file():
        shipped = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
        doc["padding"], doc["truncation"] = shipped.get("padding"), shipped.get("truncation")
    if source.is_dir() and (source / "tokenizer_config.json").is_file():
        return doc, json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tokenizer.save_pretrained(tmp)
        return doc, json.loads((Path(tmp) / "tokenizer_config.json").read_text(encoding="utf-8"))


def save_tokenizer(tokenizer, kept: list[int], directory: Path, work: Path) -> None:
    """Write the pruned tokenizer next to the student's weights, replacing the teacher's files."""
    doc, config = source_tokenizer_files(tokenizer, work)
    for name in STALE_TOKENIZER_FILES:
        (directory / name).unlink(missing_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(pruned_tokenizer_json(doc, kept), ensure_ascii=False),
                                              encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(pruned_tokenizer_config(config, kept), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    special_map = Path(str(getattr(tokenizer, "name_or_path", ""))) / "special_tokens_map.json"
    if special_map.is_file() and not (directory / "special_tokens_map.json").is_file():
        (directory / "special_tokens_map.json").write_bytes(special_map.read_bytes())


# ----------------------------------------------------------------------------- the model


def embedding_rows(net) -> int:
    return net.model.get_input_embeddings().num_embeddings


def always_kept(net, tokenizer) -> set[int]:
    """Ids that stay whatever the data: special and added tokens, the embedding's padding row,
    and every token id the model's config names."""
    ids = set(tokenizer.all_special_ids)
    ids |= {token["id"] for token in tokenizer_document(tokenizer).get("added_tokens") or []}
    padding = net.model.get_input_embeddings().padding_idx
    if padding is not None:
        ids.add(int(padding))
    config = net.model.config
    ids |= {v for v in (getattr(config, name, None) for name in CONFIG_TOKEN_IDS)
            if isinstance(v, int) and not isinstance(v, bool)}
    return ids


def prune_embeddings(net, kept: list[int]) -> None:
    """Keep the rows of `kept` in the word embeddings (and in output embeddings of the same
    vocabulary, tied or not), in place; the config's vocab_size and token ids follow."""
    model = net.model
    old = model.get_input_embeddings()
    rows = old.num_embeddings
    index = torch.tensor(kept, dtype=torch.long)
    position = {o: n for n, o in enumerate(kept)}
    padding = None if old.padding_idx is None else position[int(old.padding_idx)]
    new = nn.Embedding(len(kept), old.embedding_dim, padding_idx=padding,
                       dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.copy_(old.weight[index])
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is old.weight
    model.set_input_embeddings(new)
    if output is not None and output.weight.shape[0] == rows:
        output.weight = new.weight if tied else nn.Parameter(output.weight.detach()[index].clone())
        bias = getattr(output, "bias", None)
        if bias is not None and bias.shape[0] == rows:
            output.bias = nn.Parameter(bias.detach()[index].clone())
        if hasattr(output, "out_features"):
            output.out_features = len(kept)
    config = model.config
    config.vocab_size = len(kept)
    for name in CONFIG_TOKEN_IDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value in position:
            setattr(config, name, position[value])


def _require_hf(net) -> None:
    from distillery_trainer.nets import HFNet

    if not isinstance(net, HFNet):
        raise InputError(f"{FIELD}: pruning needs a Hugging Face text student, not {type(net).__name__}")


def kept_for(ctx, net) -> list[int]:
    """The kept old ids this spec picks on this run's train split."""
    spec = pruning(ctx.job)
    tokenizer = ctx.inputs.tokenizer
    rows = embedding_rows(net)
    always = always_kept(net, tokenizer)
    unk = tokenizer.unk_token_id
    if any(i >= rows for i in always) or unk is None or unk >= rows:
        raise InputError(f"{FIELD}: the tokenizer's special token ids go beyond the student's {rows} embedding rows")
    return choose_kept(token_counts(ctx.train_data, rows), always | {unk}, spec.min_count, spec.keep_tokens)


def prune_new(ctx, student):
    """A fresh student: choose the kept tokens, record them in the training state, prune."""
    if pruning(ctx.job) is None:
        return student
    _require_hf(student)
    kept = kept_for(ctx, student)
    ctx.state.vocabulary = kept
    prune_embeddings(student, kept)
    return student


def prune_resumed(ctx, student, state):
    """A resumed student: the checkpoint's kept tokens, re-applied before its weights are
    loaded. Raises CorruptCheckpoint when they are not what this spec picks on this data."""
    if pruning(ctx.job) is None:
        if state.vocabulary is not None:
            raise CorruptCheckpoint("it has a pruned vocabulary but the spec asks for none")
        return student
    _require_hf(student)
    if state.vocabulary is None:
        raise CorruptCheckpoint("it has no pruned vocabulary but the spec asks for one")
    if state.vocabulary != kept_for(ctx, student):
        raise CorruptCheckpoint("its vocabulary is not the one this spec keeps on this data")
    prune_embeddings(student, state.vocabulary)
    return student


def student_view(ctx, source) -> None:
    """Switch both splits to the student's ids and measure what the pruning cost. Called once
    the student is built or resumed (the teacher's outputs were computed on the old ids);
    `source` is the unpruned model the student was cut from."""
    kept = ctx.state.vocabulary if ctx.state is not None else None
    if pruning(ctx.job) is None or kept is None:
        return
    tokenizer = ctx.inputs.tokenizer
    embeddings = source.model.get_input_embeddings()
    rows, dim = embeddings.num_embeddings, embeddings.embedding_dim
    highest = max(int(data.tensors["input_ids"].max()) for data in (ctx.train_data, ctx.eval_data))
    if highest >= rows:
        raise InputError(f"{FIELD}: the tokenizer gives ids up to {highest} but the student has {rows} embedding rows")
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    ctx.vocabulary = vocabulary_report(kept, rows, dim, ctx.train_data, ctx.eval_data, special,
                                       tokenizer.unk_token_id)
    table = id_table(kept, rows, tokenizer.unk_token_id)
    ctx.train_data, ctx.eval_data = remap(ctx.train_data, table), remap(ctx.eval_data, table)
    ctx.progress.log(f"vocabulary: keeping {len(kept)} of {rows} tokens; {ctx.vocabulary.eval_tokens_unknown} of "
                     f"{ctx.vocabulary.eval_tokens} eval tokens become unknown")


def student_example(ctx, example: tuple) -> tuple:
    """The benchmark batch with token ids the pruned student has (the teacher is fed the same
    ids: an embedding lookup costs the same whatever the id)."""
    kept = ctx.state.vocabulary if ctx.state is not None else None
    if pruning(ctx.job) is None or kept is None or len(example) != 2:
        return example
    ids, mask = example
    table = id_table(kept, max(int(ids.max()), kept[-1]) + 1, ctx.inputs.tokenizer.unk_token_id)
    return table[ids], mask


def save_student_tokenizer(ctx, directory: Path) -> None:
    """The pruned tokenizer in the saved student directory (no-op without pruning)."""
    kept = ctx.state.vocabulary if ctx.state is not None else None
    if pruning(ctx.job) is None or kept is None:
        return
    save_tokenizer(ctx.inputs.tokenizer, kept, directory, ctx.work)
