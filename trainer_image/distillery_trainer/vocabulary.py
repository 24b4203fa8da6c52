"""Vocabulary pruning for a domain (student.vocabulary): keep only the tokens the train split uses.

The student's word-embedding matrix keeps the rows of the kept tokens (old ids, sorted), which
become the new ids 0..n-1. What happens to a removed token depends on the tokenizer's model:

* WordPiece (BERT): it maps to the new [UNK] id, and the student's tokenizer splits every text
  exactly as the teacher's: its WordPiece model keeps EVERY token string, removed strings pointing
  at the [UNK] id. Deleting the strings instead would change the greedy longest-match segmentation
  of other words (a removed "##ing" makes "playing" split differently).
* BPE (RoBERTa, GPT-2, byte-level or with byte fallback) and Unigram (SentencePiece: XLM-R, T5,
  ALBERT): the student's tokenizer has only the kept pieces, so a removed one is spelled with kept
  pieces: BPE drops the merges that build removed tokens and keeps every token a kept one is
  merged from (and the byte alphabet, so any text still tokenizes, without [UNK]); Unigram's
  Viterbi picks the best split among kept pieces, [UNK] (its unk_id) where none covers a
  character. Text of the train split splits as before in both (every piece and merge it used is
  kept, and a best choice stays best in a subset that holds it), other text may take more tokens.
  Two ids cannot share one string in these models, which is why they split instead of mapping.

The run encodes each split once with the teacher's tokenizer (old ids): the teacher's outputs are
computed from those. From layer selection on, the student's view of both splits is, for WordPiece,
the same rows with their ids mapped through the old -> new table, and for BPE and Unigram the same
rows encoded again by the pruned tokenizer (`student_view`); the exported ONNX file and the saved
Hugging Face directory take the new ids.

Pure parts: `token_counts`, `choose_kept`, `id_table`, `remap`, `pruned_tokenizer_json`,
`pruned_tokenizer_config`, `vocabulary_report`. The rest touches the model, the run context or files.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distillery.api.job import DistillationJob, Task, Vocabulary
from distillery.api.result import VocabularyReport
from distillery_trainer.checkpoint import CorruptCheckpoint
from distillery_trainer.encode import Encoded, encode_text
from distillery_trainer.errors import InputError

FIELD = "student.vocabulary"
PRUNABLE_TASKS = (Task.SEQUENCE_CLASSIFICATION, Task.SENTENCE_EMBEDDING)
# Config fields that name token ids: they must stay valid (and are therefore always kept).
CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                    "unk_token_id", "mask_token_id")
# Tokenizer files a pruned student must not carry: they list the teacher's ids.
STALE_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "sentencepiece.bpe.model",
                         "spiece.model", "tokenizer.model")
# Tokenizer models whose pruned form splits removed tokens into kept pieces (see above).
RESPLIT_MODELS = ("BPE", "Unigram")
SUPPORTED_MODELS = ("WordPiece", *RESPLIT_MODELS)
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")  # byte-fallback pieces (SentencePiece, Llama-style BPE)


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


def _byte_level(doc: dict) -> bool:
    """Whether the tokenizer pre-tokenizes into bytes (GPT-2 / RoBERTa style)."""
    node = doc.get("pre_tokenizer") or {}
    nodes = node.get("pretokenizers", []) if node.get("type") == "Sequence" else [node]
    return any(isinstance(n, dict) and n.get("type") == "ByteLevel" for n in nodes)


def unknown_id(model: dict) -> int | None:
    """The old id of the tokenizer model's unknown token, None without one."""
    if model.get("type") == "Unigram":
        unk = model.get("unk_id")
        return unk if isinstance(unk, int) and not isinstance(unk, bool) else None
    unk = model.get("unk_token")
    return model.get("vocab", {}).get(unk) if isinstance(unk, str) else None


def check_tokenizer(job: DistillationJob, tokenizer) -> None:
    """The tokenizer is a fast one whose pruned form can still tokenize any text, before any heavy
    work: WordPiece with an [UNK] token, byte-level BPE or BPE with byte fallback or an unknown
    token, Unigram with an unk_id."""
    if pruning(job) is None:
        return
    doc = tokenizer_document(tokenizer)
    model = doc.get("model") or {}
    kind = model.get("type")
    if kind not in SUPPORTED_MODELS:
        raise InputError(f"{FIELD}: pruning supports WordPiece, BPE and Unigram (SentencePiece) tokenizers; this "
                         f"tokenizer's model is {kind if isinstance(kind, str) and kind.isalnum() else 'unknown'}")
    unk = unknown_id(model)
    size = len(model.get("vocab") or ())
    if unk is not None and not 0 <= unk < size:
        unk = None
    if kind == "WordPiece" and unk is None:
        raise InputError(f"{FIELD}: the tokenizer's WordPiece vocabulary has no unknown token, which removed "
                         "tokens would map to")
    if kind == "BPE" and unk is None and not (_byte_level(doc) or model.get("byte_fallback")):
        raise InputError(f"{FIELD}: the tokenizer's BPE model is neither byte-level nor has byte fallback or an "
                         "unknown token, so text outside the kept tokens could not be tokenized")
    if kind == "Unigram" and unk is None:
        raise InputError(f"{FIELD}: the tokenizer's Unigram model has no unk_id, which characters outside the "
                         "kept pieces would map to")


def resplits(tokenizer) -> bool:
    """Whether the pruned tokenizer splits removed tokens into kept pieces (BPE, Unigram)."""
    return (tokenizer_document(tokenizer).get("model") or {}).get("type") in RESPLIT_MODELS


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


def _vocab_items(model: dict) -> list[tuple[str, int]]:
    """(token, old id) of a WordPiece/BPE vocab dict or a Unigram [piece, score] list."""
    vocab = model.get("vocab") or {}
    if isinstance(vocab, dict):
        return list(vocab.items())
    return [(entry[0], i) for i, entry in enumerate(vocab)]


def spelling_pieces(doc: dict) -> set[int]:
    """Ids a re-splitting tokenizer needs to spell any text: with byte-level BPE its whole
    single-character alphabet (one character per byte), with byte fallback the <0xNN> pieces."""
    model = doc.get("model") or {}
    byte_level = model.get("type") == "BPE" and _byte_level(doc)
    return {i for token, i in _vocab_items(model)
            if (byte_level and len(token) == 1) or (model.get("byte_fallback") and BYTE_PIECE.fullmatch(token))}


def merge_pairs(model: dict) -> list[tuple[str, str]]:
    """A BPE model's merges as pairs (tokenizers writes "a b" strings or [a, b] lists)."""
    pairs = []
    for merge in model.get("merges") or []:
        if isinstance(merge, str):
            a, _, b = merge.partition(" ")
            pairs.append((a, b))
        else:
            pairs.append((merge[0], merge[1]))
    return pairs


def merged(model: dict, a: str, b: str) -> str:
    """The token a BPE merge of a and b makes (a continuing-subword prefix on b is dropped)."""
    prefix = model.get("continuing_subword_prefix") or ""
    return a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)


def bpe_closure(model: dict, kept: set[int]) -> set[int]:
    """`kept` with every token any kept token can be merged from, recursively: encoding a kept
    token needs the tokens of each merge that can make it."""
    vocab = model.get("vocab") or {}
    makers: dict[str, list[tuple[str, str]]] = {}
    for a, b in merge_pairs(model):
        makers.setdefault(merged(model, a, b), []).append((a, b))
    names = {i: token for token, i in vocab.items()}
    closed = set(kept)
    todo = [names[i] for i in kept if i in names]
    while todo:
        for pair in makers.get(todo.pop(), ()):
            for part in pair:
                i = vocab.get(part)
                if i is not None and i not in closed:
                    closed.add(i)
                    todo.append(part)
    return closed


def complete_kept(doc: dict, kept: list[int]) -> list[int]:
    """The kept ids a tokenizer model needs on top of the data's: for BPE and Unigram the pieces
    that spell any text, for BPE also what the kept tokens are merged from; sorted."""
    model = doc.get("model") or {}
    if model.get("type") not in RESPLIT_MODELS:
        return kept
    ids = set(kept) | spelling_pieces(doc)
    if model["type"] == "BPE":
        ids = bpe_closure(model, ids)
    return sorted(ids)


def id_table(kept: list[int], rows: int, unk_old: int) -> torch.Tensor:
    """old id -> new id for every old id; removed ids -> the new id of the unknown token."""
    position = {old: new for new, old in enumerate(kept)}
    table = torch.full((rows,), position[unk_old], dtype=torch.long)
    table[torch.tensor(kept, dtype=torch.long)] = torch.arange(len(kept), dtype=torch.long)
    return table


# Rows of token ids mapped at a time when written to disk.
REMAP_ROWS = 4096


def remap(data: Encoded, table: torch.Tensor, into: Path | None = None) -> Encoded:
    """The same rows with input_ids mapped old -> new (other tensors and labels shared). With
    `into`, the new ids are written there a chunk of rows at a time as a memory-mapped file (a large
    split's ids never sit in memory twice)."""
    tensors = dict(data.tensors)
    ids = data.tensors["input_ids"]
    if into is None:
        tensors["input_ids"] = table[ids]
        return Encoded(tensors, data.labels)
    into.mkdir(parents=True, exist_ok=True)
    column = np.lib.format.open_memmap(into / "input_ids.npy", mode="w+", dtype=np.int64, shape=tuple(ids.shape))
    for start in range(0, len(ids), REMAP_ROWS):
        column[start:start + REMAP_ROWS] = table[ids[start:start + REMAP_ROWS]].numpy()
    column.flush()
    tensors["input_ids"] = torch.from_numpy(column)
    return Encoded(tensors, data.labels)


def _sizes(kept: list[int], rows: int, dim: int) -> dict:
    removed = (rows - len(kept)) * dim
    return {"original_tokens": rows, "kept_tokens": len(kept), "embedding_parameters_removed": removed,
            "embedding_share_removed": round(removed / (rows * dim), 6)}


def vocabulary_report(kept: list[int], rows: int, dim: int, train: Encoded, evals: Encoded,
                      special: torch.Tensor, unk_old: int) -> VocabularyReport:
    """Sizes, and how many train and eval text tokens the pruned vocabulary turns into [UNK]
    that the teacher's did not (special tokens are never counted). WordPiece: the same split."""
    kept_mask = torch.zeros(rows, dtype=torch.bool)
    kept_mask[torch.tensor(kept, dtype=torch.long)] = True

    def tokens(data: Encoded) -> tuple[int, int]:
        ids = data.tensors["input_ids"][text_token_mask(data, special)]
        lost = ~kept_mask[ids] & (ids != unk_old)
        return int(ids.numel()), int(lost.sum())

    train_total, train_lost = tokens(train)
    eval_total, eval_lost = tokens(evals)
    return VocabularyReport(
        **_sizes(kept, rows, dim), train_tokens=train_total, train_tokens_unknown=train_lost,
        eval_tokens=eval_total, eval_tokens_unknown=eval_lost,
        eval_unknown_share=round(eval_lost / eval_total, 6) if eval_total else 0.0,
    )


def resplit_report(kept: list[int], rows: int, dim: int, teacher: tuple[Encoded, Encoded],
                   student: tuple[Encoded, Encoded], special_old: torch.Tensor, unk_old: int | None) -> VocabularyReport:
    """Sizes, and both tokenizations' text-token counts of each split, for a tokenizer that
    spells removed tokens with kept pieces: 'unknown' are the student's unknown tokens beyond the
    teacher's (none with byte-level BPE or byte fallback)."""
    position = {old: new for new, old in enumerate(kept)}
    unk_new = position.get(unk_old)
    # An unknown token stands for text here: counted as a text token, unlike the other specials.
    special_old = special_old[special_old != unk_old] if unk_old is not None else special_old
    special_new = torch.tensor(sorted(position[int(i)] for i in special_old if int(i) in position), dtype=torch.long)

    def counts(data: Encoded, special: torch.Tensor, unk: int | None) -> tuple[int, int]:
        ids = data.tensors["input_ids"][text_token_mask(data, special)]
        return int(ids.numel()), int((ids == unk).sum()) if unk is not None else 0

    (train_old, train_unk_old), (eval_old, eval_unk_old) = (counts(d, special_old, unk_old) for d in teacher)
    (train_new, train_unk_new), (eval_new, eval_unk_new) = (counts(d, special_new, unk_new) for d in student)
    eval_lost = max(0, eval_unk_new - eval_unk_old)
    return VocabularyReport(
        **_sizes(kept, rows, dim), segmentation="resplit",
        train_tokens=train_old, train_tokens_unknown=max(0, train_unk_new - train_unk_old),
        eval_tokens=eval_old, eval_tokens_unknown=eval_lost,
        eval_unknown_share=round(eval_lost / eval_new, 6) if eval_new else 0.0,
        train_tokens_student=train_new, eval_tokens_student=eval_new,
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
    """tokenizer.json for the pruned student, kept tokens renumbered 0..n-1. WordPiece: every
    string stays (so text splits exactly as before), removed ones given the [UNK] id. BPE: only
    the kept tokens, and the merges among them. Unigram: only the kept pieces (their scores
    unchanged), unk_id renumbered. Added tokens, the post-processor's and the padding's ids follow."""
    out = copy.deepcopy(doc)
    model = out["model"]
    position = {old: new for new, old in enumerate(kept)}
    unk_new = position.get(unknown_id(model))

    def new_id(old: int) -> int:
        if old in position:
            return position[old]
        if unk_new is None:
            raise ValueError(f"token id {old} is removed and the tokenizer has no unknown token to map it to")
        return unk_new

    kind = model["type"]
    if kind == "WordPiece":
        model["vocab"] = {token: new_id(old) for token, old in model["vocab"].items()}
    elif kind == "BPE":
        vocab = {token: position[old] for token, old in model["vocab"].items() if old in position}
        model["merges"] = [merge for merge, (a, b) in zip(model.get("merges") or [], merge_pairs(model), strict=True)
                           if a in vocab and b in vocab and merged(model, a, b) in vocab]
        model["vocab"] = vocab
    elif kind == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in kept]
        if unk_new is not None:
            model["unk_id"] = unk_new
    else:
        raise ValueError(f"no pruning for {kind} tokenizers")
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
    doc = tokenizer_document(tokenizer)
    rows = embedding_rows(net)
    unk = unknown_id(doc.get("model") or {})
    always = always_kept(net, tokenizer) | ({unk} if unk is not None else set())
    if any(i >= rows for i in always):
        raise InputError(f"{FIELD}: the tokenizer's special token ids go beyond the student's {rows} embedding rows")
    kept = complete_kept(doc, choose_kept(token_counts(ctx.train_data, rows), always, spec.min_count,
                                          spec.keep_tokens))
    if kept[-1] >= rows:
        raise InputError(f"{FIELD}: the tokenizer's vocabulary goes beyond the student's {rows} embedding rows")
    return kept


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


def student_tokenizer(tokenizer, kept: list[int], work: Path):
    """The pruned tokenizer, loaded the way a user of the saved student loads it."""
    from transformers import AutoTokenizer

    directory = work / "student-tokenizer"
    directory.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, kept, directory, work)
    return AutoTokenizer.from_pretrained(str(directory))


def _encode_again(ctx, tokenizer, split, data: Encoded, name: str) -> Encoded:
    """The split's rows encoded by the student's tokenizer (labels as they were)."""
    again = encode_text(split, tokenizer, ctx.job.spec.dataset.max_sequence_length,
                        ctx.work / "encoded" / f"{name}-student")
    return Encoded(again.tensors, data.labels)


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
    unk = unknown_id(tokenizer_document(tokenizer)["model"])
    if resplits(tokenizer):
        pruned = student_tokenizer(tokenizer, kept, ctx.work)
        train = _encode_again(ctx, pruned, ctx.inputs.train, ctx.train_data, "train")
        evals = _encode_again(ctx, pruned, ctx.inputs.eval, ctx.eval_data, "eval")
        highest = max(int(data.tensors["input_ids"].max()) for data in (train, evals))
        if highest >= len(kept):  # the pruned tokenizer and the embedding rows must agree
            raise RuntimeError(f"the pruned tokenizer gives id {highest} for {len(kept)} kept tokens")
        ctx.vocabulary = resplit_report(kept, rows, dim, (ctx.train_data, ctx.eval_data), (train, evals), special, unk)
        ctx.train_data, ctx.eval_data = train, evals
        v = ctx.vocabulary
        ctx.progress.log(f"vocabulary: keeping {len(kept)} of {rows} tokens; the eval split takes "
                         f"{v.eval_tokens_student} tokens (the teacher's {v.eval_tokens}), {v.eval_tokens_unknown} "
                         "of them unknown")
        return
    ctx.vocabulary = vocabulary_report(kept, rows, dim, ctx.train_data, ctx.eval_data, special, unk)
    table = id_table(kept, rows, unk)
    encoded = ctx.work / "encoded"
    ctx.train_data = remap(ctx.train_data, table, encoded / "train-remapped")
    ctx.eval_data = remap(ctx.eval_data, table, encoded / "eval-remapped")
    ctx.progress.log(f"vocabulary: keeping {len(kept)} of {rows} tokens; {ctx.vocabulary.eval_tokens_unknown} of "
                     f"{ctx.vocabulary.eval_tokens} eval tokens become unknown")


def student_example(ctx, example: tuple) -> tuple:
    """The benchmark batch with token ids the pruned student has (the teacher is fed the same
    ids: an embedding lookup costs the same whatever the id)."""
    kept = ctx.state.vocabulary if ctx.state is not None else None
    if pruning(ctx.job) is None or kept is None or len(example) != 2:
        return example
    ids, mask = example
    unk = ctx.inputs.tokenizer.unk_token_id  # removed ids become a kept one (byte-level BPE may have no [UNK])
    table = id_table(kept, max(int(ids.max()), kept[-1]) + 1, unk if unk in kept else kept[0])
    return table[ids], mask


def save_student_tokenizer(ctx, directory: Path) -> None:
    """The pruned tokenizer in the saved student directory (no-op without pruning)."""
    kept = ctx.state.vocabulary if ctx.state is not None else None
    if pruning(ctx.job) is None or kept is None:
        return
    save_tokenizer(ctx.inputs.tokenizer, kept, directory, ctx.work)
