"""The recipe's tokenizer when it can be had without downloading weights, else a stand-in named as such.

The stand-in is what a rehearsal needs from a Qwen2-family tokenizer, built offline and deterministically
with the `tokenizers` library (no hub):
  - byte-level BPE with Qwen2's pre-tokenizer and decoder (`Qwen2Tokenizer`), whose merges are learned
    from the rehearsal's own sample text, so English and Chinese text split into multi-byte tokens;
  - the regular vocabulary padded to the family's size (151,643 for Qwen2/Qwen2.5), with the learned
    tokens spread over the whole id range (a seeded permutation), so sequences carry ids up to the top
    of the embedding matrix as real text does;
  - the family's special tokens at their real ids (<|endoftext|> 151643, <|im_start|> 151644,
    <|im_end|> 151645, …), the same eos and pad tokens;
  - the family's stock chat template (Qwen2's ChatML; Qwen2.5's as TRL ships it), without
    `{% generation %}` markers, exactly as the real tokenizer has it.
The result is cached in the rehearsal cache under a hash of its inputs.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from align_recipes.paths import built_in_place

BUILDER_VERSION = "1"
MERGE_VOCAB = 6000  # tokens learned from the sample text (bytes included); the rest is padding
SEED = 1234
STAND_IN_MARKER = "align_recipes_stand_in_tokenizer.json"


def chat_template(name: str) -> str:
    """A family's stock chat template: one we ship (qwen2), or TRL's copy of it (qwen2_5)."""
    if name == "qwen2_5":
        from trl.chat_template_utils import qwen2_5_chat_template

        return qwen2_5_chat_template
    return (
        resources.files("align_recipes")
        .joinpath("assets", "chat_templates", f"{name}.jinja")
        .read_text("utf-8")
    )


def _training_text() -> list[str]:
    from align_recipes.results.rehearse.sample_data import corpus

    return corpus()


def _learn_merges(texts: list[str], vocab_size: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Byte-level BPE tokens and merges learned from `texts` with Qwen2's pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Qwen2's normalizer and pre-tokenizer (its split pattern, then byte-level mapping), as Qwen2Tokenizer has them.
    pattern = PRETOKENIZE_REGEX
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    state = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(state["vocab"], key=state["vocab"].get)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return tokens, merges


def build_stand_in(facts: dict):
    """The stand-in tokenizer for a family (`facts`: the `tokenizer` entry of an architecture asset)."""
    import random

    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    regular = int(facts["regular_tokens"])
    tokens, merges = _learn_merges(_training_text(), MERGE_VOCAB)
    fillers = [f"<|unused_{i}|>" for i in range(regular - len(tokens))]
    ids = list(range(regular))
    random.Random(SEED).shuffle(ids)
    vocab = {token: ids[i] for i, token in enumerate(tokens + fillers)}
    specials = list(facts["special_tokens"])
    # Special tokens take the ids after the regular vocabulary, in the family's order (151643, 151644, …).
    vocab.update({token: regular + i for i, token in enumerate(specials)})
    extra = [t for t in specials if t not in (facts["eos_token"], facts["pad_token"])]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in merges],
        unk_token=None,
        bos_token=None,
        eos_token=facts["eos_token"],
        pad_token=facts["pad_token"],
        additional_special_tokens=extra,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    got = [tokenizer.convert_tokens_to_ids(t) for t in specials]
    if got != list(range(regular, regular + len(specials))):
        raise AssertionError(f"stand-in special token ids {got[:3]}… are not the family's ({regular}…)")
    tokenizer.chat_template = chat_template(facts["chat_template"])
    return tokenizer


def stand_in_key(facts: dict) -> str:
    h = hashlib.sha256(f"{BUILDER_VERSION}\n{json.dumps(facts, sort_keys=True)}".encode())
    h.update(chat_template(facts["chat_template"]).encode())
    h.update("\n".join(_training_text()).encode())  # the merges are learned from it
    return h.hexdigest()[:12]


def stand_in_dir(facts: dict, cache_root: Path) -> Path:
    """The cached stand-in tokenizer's directory (built on first use, renamed into place when complete)."""
    final = cache_root / f"tokenizer-{facts['chat_template']}-{stand_in_key(facts)}"
    if (final / STAND_IN_MARKER).is_file():
        return final
    with built_in_place(final, STAND_IN_MARKER) as tmp:
        build_stand_in(facts).save_pretrained(tmp)
        (tmp / STAND_IN_MARKER).write_text(json.dumps({"stand_in_for": facts}, indent=1) + "\n")
    return final


def real_tokenizer_dir(name: str, local: Path | None, online: bool) -> Path | None:
    """Where the recipe's own tokenizer files are, without downloading weights: a local model folder, the
    Hugging Face cache, or (online) a download of the tokenizer files alone. None when not available."""
    wanted = ("tokenizer.json", "tokenizer_config.json")
    if local is not None:
        return local if any((local / f).is_file() for f in wanted) else None
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                name,
                allow_patterns=["tokenizer*", "vocab.json", "merges.txt", "special_tokens_map.json"],
                local_files_only=not online,
            )
        )
    except Exception:  # not cached, offline, unknown id: the stand-in takes over
        return None
