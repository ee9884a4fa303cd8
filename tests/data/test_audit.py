"""The data audit (data/audit.py): every planted problem found by row number and nothing else, the same rows
the loader drops, hash grouping equal to a naive pairwise comparison, every file layout read alike, the
CLI's exit codes, and `data.audit.fail_on` stopping a tiny DPO run before the model loads."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from align_recipes.cli import main
from align_recipes.data import DataSpec, peek, preview
from align_recipes.data.audit import FINDINGS, audit, fold, one_line, summary_lines

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "data"
PLANTED = FIXTURES / "audit_planted.jsonl"
PLANTED_KTO = FIXTURES / "audit_planted_kto.jsonl"


def rows_by_finding(report: dict) -> dict[str, list[int]]:
    return {name: finding["rows"] for name, finding in report["findings"].items()}


# --- what the audit finds ------------------------------------------------------------------------------


def test_every_planted_problem_is_found_at_its_row_and_nothing_else():
    report = audit(DataSpec(path=str(PLANTED)), max_length=32)
    assert rows_by_finding(report) == {
        "identical": [3],
        "empty_answer": [4, 5],
        "duplicate": [6],
        "near_duplicate": [7],
        "contradictory": [8, 9],
        "truncated_one_side": [10, 11],
        "unconvertible": [13],
    }
    findings = report["findings"]
    assert findings["duplicate"]["groups"] == [[1, 6]]
    assert findings["near_duplicate"]["groups"] == [[2, 7]]
    assert findings["contradictory"]["groups"] == [[[8], [9]]]
    assert findings["truncated_one_side"]["rejected_cut"] == [10]  # 28 + 4 characters fit 32, 28 + 38 do not
    assert findings["truncated_one_side"]["chosen_cut"] == [11]  # 9 + 25 do not fit, 9 + 5 do
    assert findings["unconvertible"]["reasons"] == {"empty 'prompt'": [13]}
    assert (report["rows"], report["rows_audited"], report["length_unit"]) == (13, 9, "characters")


def test_length_bias_is_the_share_of_longer_chosen_answers_and_their_mean_ratio():
    bias = audit(DataSpec(path=str(PLANTED)))["length_bias"]
    # (chosen, rejected) characters of the nine converted pairs, rows 1 2 6 7 8 9 10 11 12
    pairs = [(1, 1), (6, 5), (1, 1), (5, 5), (6, 6), (6, 6), (4, 38), (25, 5), (5, 3)]
    assert (bias["pairs"], bias["chosen_longer"], bias["rejected_longer"], bias["same_length"]) == (
        9,
        3,
        1,
        5,
    )
    assert bias["chosen_longer_share"] == pytest.approx(3 / 9)
    assert bias["mean_ratio"] == pytest.approx(sum(c / r for c, r in pairs) / 9)


def test_without_a_max_length_truncation_is_not_checked_and_says_so():
    report = audit(DataSpec(path=str(PLANTED)))
    assert "truncated_one_side" not in report["findings"]
    assert "no max length" in report["skipped"]["truncated_one_side"]


def test_kto_rows_duplicates_contradictions_and_the_length_of_each_label():
    report = audit(DataSpec(path=str(PLANTED_KTO)))
    assert report["kind"] == "unpaired"
    assert rows_by_finding(report) == {
        "empty_answer": [8],
        "duplicate": [3],
        "near_duplicate": [5],
        "contradictory": [6, 7],  # the same prompt and answer, labelled both ways
        "unconvertible": [9],
    }
    assert set(report["skipped"]) == {"identical", "truncated_one_side"}
    bias = report["length_bias"]  # desirable rows 1 3 4 5 6: 1 1 2 1 1 characters; undesirable rows 2 7: 1 1
    assert (bias["desirable_mean"], bias["undesirable_mean"], bias["ratio"]) == (1.2, 1.0, pytest.approx(1.2))


def test_the_rows_conversion_drops_are_the_rows_the_loader_drops():
    spec = DataSpec(path=str(FIXTURES / "bad_empty_rows.jsonl"))
    report = audit(spec)
    _, conversion = preview(peek(spec, None, 100), spec, "preference")
    assert conversion.dropped == {
        "empty 'chosen'": [2, 6],
        "empty row": [3],
        "identical chosen and rejected": [5],
    }
    assert rows_by_finding(report) | {"duplicate": [], "near_duplicate": [], "contradictory": []} == {
        "identical": [5],
        "empty_answer": [2, 6],
        "duplicate": [],
        "near_duplicate": [],
        "contradictory": [],
        "unconvertible": [3],
    }


def test_identical_whole_conversations_are_identical_not_empty(tmp_path):
    """UltraFeedback layout: chosen and rejected are whole chats; the same chat twice is an identical pair."""
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    other = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]
    rows = [
        {"prompt": "Hi", "chosen": chat, "rejected": other, "score_chosen": 8.0, "score_rejected": 2.0},
        {"prompt": "Hi", "chosen": chat, "rejected": chat, "score_chosen": 5.0, "score_rejected": 5.0},
    ]
    path = tmp_path / "uf.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = audit(DataSpec(path=str(path)))
    assert report["format"] == "ultrafeedback_binarized"
    assert report["findings"]["identical"]["rows"] == [2] and report["findings"]["empty_answer"]["rows"] == []


def test_fold_keeps_letters_and_digits_only_case_folded():
    assert fold("Hello, World!") == b"helloworld"
    assert fold("  A-1_b\t2 ") == b"a1b2"
    assert fold("Straße, ÉTÉ!") == "strasseété".encode()  # non-ASCII: casefold, then the same rule


def naive_findings(rows: list[tuple[str, str, str]]) -> dict[str, list[int]]:
    """The pairwise O(n²) definition, for comparison with the hash grouping."""

    def folded(text):
        return re.sub(r"[\W_]+", "", text.casefold())

    duplicate, near, contradictory = [], [], set()
    for i, (p, c, r) in enumerate(rows):
        earlier = rows[:i]
        if (p, c, r) in earlier:
            duplicate.append(i + 1)
        elif any((folded(p), folded(c), folded(r)) == tuple(map(folded, e)) for e in earlier):
            near.append(i + 1)
        for j, (q, d, s) in enumerate(rows):
            if (
                folded(p) == folded(q)
                and folded(c) == folded(s)
                and folded(r) == folded(d)
                and folded(c) != folded(r)
            ):
                contradictory |= {i + 1, j + 1}
    return {"duplicate": duplicate, "near_duplicate": near, "contradictory": sorted(contradictory)}


def test_hash_grouping_equals_the_naive_pairwise_comparison(tmp_path):
    rng = random.Random(7)
    words = ["Yes", "yes.", "No", "no!", "Maybe", "A", "a", "B"]
    rows = [(rng.choice(["P", "p?", "Q"]), rng.choice(words), rng.choice(words)) for _ in range(300)]
    rows = [(p, c, r) for p, c, r in rows if c != r]
    path = tmp_path / "random.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in rows))
    report = audit(DataSpec(path=str(path)))
    found = {
        name: report["findings"][name]["rows"] for name in ("duplicate", "near_duplicate", "contradictory")
    }
    assert found == naive_findings(rows)
    assert found["duplicate"] and found["near_duplicate"] and found["contradictory"]  # the draw holds each


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv", ".json"])
def test_every_file_layout_gives_the_same_findings(suffix, tmp_path):
    """JSON Lines, Parquet and CSV are read by pyarrow; a JSON array goes through the loader (datasets)."""
    rows = [json.loads(line) for line in PLANTED.read_text().splitlines()]
    path = tmp_path / f"planted{suffix}"
    if suffix == ".jsonl":
        path.write_text(PLANTED.read_text())
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as pa

        table = pa.Table.from_pylist(rows)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, path)
        else:
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, path)
    report = audit(DataSpec(path=str(path)), max_length=32, cache_dir=tmp_path / "cache")
    assert rows_by_finding(report) == rows_by_finding(audit(DataSpec(path=str(PLANTED)), max_length=32))


def test_a_split_slice_numbers_rows_within_the_file(tmp_path):
    report = audit(DataSpec(path=str(PLANTED), split="train[5:9]"), cache_dir=tmp_path)
    assert (
        report["rows"] == 4
    )  # rows 6-9: the duplicate (its first row is outside), the near one, the contradiction
    assert rows_by_finding(report) == {
        "identical": [],
        "empty_answer": [],
        "duplicate": [],
        "near_duplicate": [],
        "contradictory": [8, 9],
        "unconvertible": [],
    }


class WordTokenizer:
    """One token per word; the chat template writes 'role: content' lines."""

    chat_template = "stub"

    def apply_chat_template(self, messages, tokenize=False):
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_with_a_tokenizer_lengths_are_its_tokens_of_the_rendered_sequence(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        ("one two", "three", "four five six seven"),  # user: one two / assistant: three = 5 words; 8 words
        ("one", "two three four five six", "seven"),  # 8 words; 4 words
        ("x", "y", "z"),
    ]
    path.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": p}],
                    "chosen": [{"role": "assistant", "content": c}],
                    "rejected": [{"role": "assistant", "content": r}],
                }
            )
            + "\n"
            for p, c, r in rows
        )
    )
    report = audit(DataSpec(path=str(path)), max_length=6, tokenizer=WordTokenizer(), tokenizer_name="words")
    truncated = report["findings"]["truncated_one_side"]
    assert (truncated["rejected_cut"], truncated["chosen_cut"]) == ([1], [2])
    assert (report["length_unit"], report["tokenizer"]) == ("tokens", "words")


def test_data_of_another_kind_is_refused_by_name():
    from align_recipes.data import DataError

    with pytest.raises(DataError, match="format messages holds language modeling data"):
        audit(DataSpec(path="recipes/tiny/data/sft.jsonl"))


def test_summary_has_one_line_per_finding_with_counts_and_first_rows():
    report = audit(DataSpec(path=str(PLANTED)), max_length=32)
    lines = summary_lines(report)
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert set(by_name) == set(FINDINGS) | {"length_bias"}
    assert by_name["empty_answer"].split()[1:] == ["2", "rows", "4,", "5"]
    assert "chosen cut 1, rejected cut 1" in by_name["truncated_one_side"]
    assert "chosen longer in 3 of 9 pairs (33%)" in by_name["length_bias"]
    line = one_line(report)
    assert line.startswith("audit data.train: 9/13 rows, 10 findings: identical 1 (row 3), empty_answer 2")


# --- the CLI -------------------------------------------------------------------------------------------


def test_cli_exit_codes(capsys, tmp_path):
    assert main(["audit", "recipes/tiny/data/prefs.jsonl"]) == 0  # the toy pairs hold no problem
    assert main(["audit", str(PLANTED), "--max-length", "32"]) == 1
    out = capsys.readouterr().out
    assert "identical                1  row 3" in out
    assert main(["audit", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["audit", "recipes/tiny/data/sft.jsonl"]) == 2
    assert main(["audit"]) == 2  # no data and no recipe
    assert "nothing to audit" in capsys.readouterr().err


def test_cli_json_is_the_full_report(capsys):
    assert main(["audit", str(PLANTED), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["findings"]["contradictory"]["groups"] == [[[8], [9]]]
    assert report["near_duplicate_rule"].startswith("same text once case is folded")


def test_cli_with_a_recipe_counts_tokens_of_its_tokenizer_at_its_max_length(capsys):
    assert main(["audit", str(PLANTED), "--recipe", "recipes/tiny/dpo.yaml", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["length_unit"], report["max_length"]) == (
        "tokens",
        64,
    )  # recipes/tiny/dpo.yaml's max_length
    assert report["tokenizer"] == "builtin:tiny-qwen2-sft"
    assert main(["audit", "--recipe", "recipes/tiny/sft.yaml"]) == 2
    assert "sft trains on language modeling data, which the audit does not read" in capsys.readouterr().err


# --- the recipe key and the run ------------------------------------------------------------------------


def test_fail_on_names_are_checked_with_a_did_you_mean():
    from align_recipes.errors import RecipeErrors
    from align_recipes.plan import load_plan

    with pytest.raises(
        RecipeErrors, match=r"unknown finding 'contradictry'[\s\S]*did you mean 'contradictory'"
    ):
        load_plan("recipes/tiny/dpo.yaml", ["data.audit.fail_on=[identical, contradictry]"])
    with pytest.raises(
        RecipeErrors, match="sft trains on language modeling data, which the audit does not read"
    ):
        load_plan("recipes/tiny/sft.yaml", ["data.audit.fail_on=[identical]"])
    plan = load_plan("recipes/tiny/dpo.yaml", ["data.audit.fail_on=[identical]"])
    assert plan.data.audit.fail_on == ["identical"]
    assert load_plan("recipes/tiny/dpo.yaml").data.audit.fail_on == []  # default: nothing stops a run


RUN = ["--profile", "cpu", "--no-report", "model.name_or_path=builtin:tiny-qwen2", "train.max_steps=2"]


def test_a_finding_that_fail_on_names_stops_the_run_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from align_recipes.run import models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_model", no_model)
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "recipes/tiny/dpo.yaml",
            f"data.train.path={PLANTED}",
            "data.audit.fail_on=[identical, contradictory]",
            f"train.output_dir={out}",
            *RUN,
        ]
    )
    assert rc == 2
    captured = capsys.readouterr()
    assert (
        "data.audit.fail_on: the data audit found 1 identical (row 3) in data.train; 2 contradictory"
        in captured.err
    )
    assert "take identical, contradictory out of data.audit.fail_on" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "AuditStop" in summary["error"]
    record = json.loads((out / "audit.json").read_text())
    assert record["fail_on"] == ["identical", "contradictory"]
    assert record["sources"][0]["findings"]["identical"]["rows"] == [3]
    assert not (out / "metrics.jsonl").exists()


@pytest.mark.slow
def test_a_clean_run_prints_one_audit_line_and_keeps_audit_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "run"
    assert main(["train", "recipes/tiny/dpo.yaml", f"train.output_dir={out}", "evaluate.limit=2", *RUN]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("audit ")]
    assert lines == [
        "audit data.train: 300/300 rows, no problem found; chosen longer in 43 of 300 pairs (14%), "
        "mean length ratio chosen/rejected 1.12 (characters)"
    ]
    record = json.loads((out / "audit.json").read_text())
    report = record["sources"][0]
    assert (report["length_unit"], report["max_length"], report["tokenizer"]) == (
        "tokens",
        64,
        "builtin:tiny-qwen2",
    )
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"
