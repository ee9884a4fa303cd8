"""Format detection and row conversion on the fixtures, through the stdlib path (peek + preview).

These never import datasets; tests/data/test_data_load.py checks that the datasets path agrees."""

from pathlib import Path

import pytest

from align_recipes.data import FORMATS, KINDS, DataError, DataSpec, check_serves, detect_format, peek, preview
from align_recipes.data.messages import as_label, parse_transcript, to_messages

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
LM, PREF, UNP, PO = "language_modeling", "preference", "unpaired", "prompt_only"


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


def rows_of(name, **spec):
    spec = DataSpec(path=name, **spec)
    return peek(spec, FIXTURES), spec


def convert(name, kind, **spec):
    rows, spec = rows_of(name, **spec)
    return preview(rows, spec, kind)


# fixture -> (format detected, kinds it can feed)
EXPECTED_FORMATS = {
    "messages.jsonl": ("messages", {LM, PO}),
    "minimind_sft.jsonl": ("messages", {LM, PO}),
    "sharegpt.json": ("sharegpt", {LM, PO}),
    "rlaif_mini.jsonl": ("roleless_conversations", {LM, PO}),
    "belle_alpaca.jsonl": ("alpaca", {LM, PO}),
    "prompt_completion.jsonl": ("prompt_completion", {LM, PO}),
    "prompt_response_markers.jsonl": ("prompt_response", {LM, PO}),
    "gsm8k_qa.csv": ("prompt_response", {LM, PO}),
    "prompt_only.jsonl": ("prompt_only", {PO}),
    "text.jsonl": ("text", {LM}),
    "preference_text.jsonl": ("preference", {PREF, UNP, PO}),
    "preference_messages.jsonl": ("preference", {PREF, UNP, PO}),
    "minimind_dpo.jsonl": ("implicit_preference", {PREF, UNP, PO}),
    "hh_rlhf.jsonl": ("hh_rlhf", {PREF, UNP, PO}),
    "implicit_prompt_text.jsonl": ("implicit_preference_text", {PREF, UNP, PO}),
    "ultrafeedback_binarized.parquet": ("ultrafeedback_binarized", {LM, PREF, UNP, PO}),
    "argilla.jsonl": ("preference", {PREF, UNP, PO}),
    "better_worse.jsonl": ("preference", {PREF, UNP, PO}),
    "pos_neg.jsonl": ("preference", {PREF, UNP, PO}),
    "response_jk.jsonl": ("preference", {PREF, UNP, PO}),
    "question_chosen_rejected.jsonl": ("preference", {PREF, UNP, PO}),
    "llamafactory_pref.jsonl": ("preference", {PREF, UNP, PO}),
    "unpaired.jsonl": ("unpaired", {UNP, PO}),
    "splits_dir": ("messages", {LM, PO}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FORMATS))
def test_fixture_detected_and_served(name):
    fmt, kinds = EXPECTED_FORMATS[name]
    rows, spec = rows_of(name)
    assert rows, name
    assert detect_format(rows, spec) == fmt
    for kind in KINDS:
        if kind in kinds:
            converted, report = preview(rows, spec, kind)
            assert converted and report.rows_in == len(rows)
            assert check_serves(rows, spec, kind) == report.format
        else:
            with pytest.raises(DataError) as info:
                check_serves(rows, spec, kind)
            text = str(info.value)
            assert f"needing {kind}" in text and "columns found:" in text and "columns expected:" in text
            assert name in text  # the file is named


def test_every_format_has_a_fixture():
    assert {fmt for fmt, _ in EXPECTED_FORMATS.values()} == set(FORMATS)


def test_messages_to_each_kind():
    rows, _ = convert("messages.jsonl", LM)
    assert rows[0] == {"messages": [s("You are terse."), u("What is 2+2?"), a("4")]}
    assert rows[1]["messages"][-1] == a("Red.")
    prompts, _ = convert("messages.jsonl", PO)
    assert prompts[1] == {"prompt": [u("Name a colour."), a("Blue."), u("Another?")], "id": 2}


def test_sharegpt_roles_and_system_column():
    rows, _ = convert("sharegpt.json", LM)
    assert rows[0]["messages"] == [s("Be funny."), u("Tell me a joke."), a("Why did…")]
    assert rows[1]["messages"][0] == s("Be brief.")  # its own system turn wins; the empty column is ignored


def test_minimind_rlaif_without_roles():
    prompts, report = convert("rlaif_mini.jsonl", PO)
    assert prompts == [{"prompt": [u("写一首关于春天的诗")]}, {"prompt": [u("解释一下光合作用")]}]
    assert report.rows_kept == 2  # the empty reply is not needed for prompts
    chats, report = convert("rlaif_mini.jsonl", LM)
    assert chats == [{"messages": [u("写一首关于春天的诗"), a("春风拂面…")]}]
    assert report.dropped == {"empty assistant turn in 'conversations'": [2]}


def test_alpaca_belle_with_input_and_history():
    rows, _ = convert("belle_alpaca.jsonl", LM)
    assert rows[0] == {"prompt": [u("把下面的句子翻译成英文\n我爱你")], "completion": [a("I love you")]}
    assert rows[1]["prompt"] == [u("给出三个水果的名字")]
    assert rows[2]["prompt"] == [u("Start a story"), a("Once upon a time"), u("Continue")]


def test_prompt_completion_strings_and_messages():
    rows, _ = convert("prompt_completion.jsonl", LM)
    assert rows[0] == {"prompt": [u("The capital of Italy is")], "completion": [a(" Rome.")]}
    assert rows[1] == {
        "prompt": [u("What is the boiling point of water?")],
        "completion": [a("100 °C at sea level.")],
    }


def test_role_markers_in_prompt_text():
    rows, _ = convert("prompt_response_markers.jsonl", LM)
    assert rows[0]["prompt"] == [u("Hi there"), a("Hello!"), u("How are you?")]
    assert rows[0]["completion"] == [a("Fine, thanks.")]
    assert rows[1]["prompt"] == [s("Be kind."), u("Thank me.")]
    assert rows[2]["prompt"] == [u("Plain question with no markers?")]


def test_question_answer_keeps_answer_for_rewards():
    prompts, _ = convert("gsm8k_qa.csv", PO)
    assert prompts[1] == {"prompt": [u("What is 6 times 7?")], "answer": "42"}
    sft, _ = convert("gsm8k_qa.csv", LM)
    assert sft[1] == {"prompt": [u("What is 6 times 7?")], "completion": [a("42")]}


def test_prompt_only_keeps_scalar_columns():
    prompts, _ = convert("prompt_only.jsonl", PO)
    assert prompts == [
        {"prompt": [u("Solve: 3*7")], "reference": "21", "difficulty": 1},
        {"prompt": [u("Solve: 10-4")], "reference": "6", "difficulty": 2},
    ]


def test_text_stays_text():
    rows, _ = convert("text.jsonl", LM)
    assert rows[1] == {"text": "Plain pretraining text."}


@pytest.mark.parametrize(
    "name,prompt,chosen,rejected",
    [
        (
            "preference_text.jsonl",
            "What is machine learning?",
            "A field where computers learn from data.",
            "It is programming.",
        ),
        ("argilla.jsonl", "Summarise: cats sleep a lot.", "Cats sleep much.", "Dogs bark."),
        ("better_worse.jsonl", "2+2?", "4", "5"),
        ("pos_neg.jsonl", "Greet me", "Hello!", "No."),
        ("response_jk.jsonl", "How do I sort a list in Python?", "Use sorted(x).", "You cannot."),
        ("question_chosen_rejected.jsonl", "Best editor?", "Whatever suits you.", "Notepad, obviously."),
        ("llamafactory_pref.jsonl", "Pick a number", "7", "I refuse"),
        (
            "minimind_dpo.jsonl",
            "什么是人工智能？",
            "人工智能是计算机科学的一个分支…",
            "人工智能就是电脑变聪明了。",
        ),
        ("hh_rlhf.jsonl", "What is a cat?", "A small domesticated mammal.", "A dog."),
        (
            "ultrafeedback_binarized.parquet",
            "Write a haiku about rain.",
            "Soft rain on the roof…",
            "Rain is wet.",
        ),
    ],
)
def test_preference_variants(name, prompt, chosen, rejected):
    rows, report = convert(name, PREF)
    assert rows[0] == {"prompt": [u(prompt)], "chosen": [a(chosen)], "rejected": [a(rejected)]}
    assert report.rows_kept == report.rows_in
    prompts, _ = convert(name, PO)
    assert prompts[0]["prompt"] == [u(prompt)]


def test_preference_with_system_and_multi_turn_prefix():
    rows, _ = convert("preference_messages.jsonl", PREF)
    assert rows[0] == {
        "prompt": [s("Be helpful."), u("Sky colour?")],
        "chosen": [a("Blue.")],
        "rejected": [a("Green.")],
    }
    rows, _ = convert("hh_rlhf.jsonl", PREF)
    assert rows[1]["prompt"] == [u("Hi"), a("Hello."), u("Bye")]
    assert rows[1]["chosen"] == [a("Goodbye, take care!")]


def test_plain_full_texts_share_their_beginning_as_the_prompt():
    """TRL's implicit prompt in plain text: the common beginning is the prompt, a space before the first
    difference goes to the replies, and the rows stay text (TRL's standard format, no chat template)."""
    rows, report = convert("implicit_prompt_text.jsonl", PREF)
    assert rows == [
        {"prompt": "Question: What is 2+2?\nAnswer:", "chosen": " 4", "rejected": " 5"},
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {"prompt": "Count: 1 2 ", "chosen": "3", "rejected": "3 4"},  # one text starts with the other
    ]
    assert report.dropped == {"'chosen' and 'rejected' share no beginning (no implicit prompt)": [3]}
    pairs, _ = convert("implicit_prompt_text.jsonl", UNP)
    assert pairs[:2] == [
        {"prompt": "Question: What is 2+2?\nAnswer:", "completion": " 4", "label": True},
        {"prompt": "Question: What is 2+2?\nAnswer:", "completion": " 5", "label": False},
    ]
    prompts, _ = convert("implicit_prompt_text.jsonl", PO)
    assert [p["prompt"] for p in prompts] == ["Question: What is 2+2?\nAnswer:", "The sky is", "Count: 1 2 "]


def test_pairs_become_unpaired_rows():
    rows, report = convert("preference_text.jsonl", UNP)
    assert [r["label"] for r in rows] == [True, False, True, False]
    assert rows[0] == {
        "prompt": [u("What is machine learning?")],
        "completion": [a("A field where computers learn from data.")],
        "label": True,
    }
    assert rows[1]["completion"] == [a("It is programming.")]
    assert (report.rows_kept, report.rows_out) == (2, 4)


def test_unpaired_labels():
    rows, _ = convert("unpaired.jsonl", UNP)
    assert [r["label"] for r in rows] == [True, False, True]  # "yes" reads as true
    assert rows[1] == {"prompt": [u("2+2?")], "completion": [a("5")], "label": False}
    assert as_label("bad", "label") is False and as_label(1, "label") is True


def test_ultrafeedback_ties_dropped_on_request():
    _, report = convert("ultrafeedback_binarized.parquet", PREF)
    assert report.rows_kept == 3
    rows, report = convert("ultrafeedback_binarized.parquet", PREF, drop_ties=True)
    assert report.dropped == {"tied scores": [2]} and len(rows) == 2
    assert report.summary_line() == (
        "data.train: detected ultrafeedback_binarized, kept 2/3 rows, dropped 1 (tied scores: row 2)"
    )


def test_ultrafeedback_for_sft_uses_messages():
    rows, report = convert("ultrafeedback_binarized.parquet", LM)
    assert report.format == "messages"
    assert rows[0] == {"messages": [u("Write a haiku about rain."), a("Soft rain on the roof…")]}


def test_empty_rows_reported_with_row_numbers():
    rows, report = convert("bad_empty_rows.jsonl", PREF)
    assert report.dropped == {
        "empty 'chosen'": [2, 6],
        "empty row": [3],
        "identical chosen and rejected": [5],
    }
    assert (report.rows_in, report.rows_kept) == (7, 3)
    line = report.summary_line()
    assert line.startswith("data.train: detected preference, kept 3/7 rows, dropped 4 (")
    assert "empty 'chosen': rows 2, 6" in line and "empty row: row 3" in line


def test_many_drops_summarised():
    rows = [{"prompt": "p", "chosen": "" if i % 2 else "c", "rejected": "r"} for i in range(30)]
    spec = DataSpec(path="x.jsonl")
    _, report = preview(rows, spec, PREF)
    assert "empty 'chosen': rows 2, 4, 6 and 12 more" in report.summary_line()


def test_columns_mapping():
    rows, spec = rows_of("custom_columns.jsonl")
    with pytest.raises(DataError, match="columns found: q, good, bad"):
        detect_format(rows, spec)
    converted, _ = convert(
        "custom_columns.jsonl", PREF, columns={"prompt": "q", "chosen": "good", "rejected": "bad"}
    )
    assert converted[0] == {
        "prompt": [u("Is water wet?")],
        "chosen": [a("Yes, in everyday terms.")],
        "rejected": [a("No idea.")],
    }
    with pytest.raises(DataError, match="'nope' not in the data"):
        convert("custom_columns.jsonl", PREF, columns={"prompt": "q", "chosen": "nope", "rejected": "bad"})


def test_columns_mapping_shadows_existing_column():
    rows = [{"prompt": "ignored", "question": "real?", "response": "yes"}]
    converted, _ = preview(rows, DataSpec(path="x.jsonl", columns={"prompt": "question"}), LM)
    assert converted == [{"prompt": [u("real?")], "completion": [a("yes")]}]


def test_forced_format():
    rows, spec = rows_of("gsm8k_qa.csv", format="prompt_only")
    assert check_serves(rows, spec, PO) == "prompt_only"
    with pytest.raises(DataError, match="cannot serve an algorithm needing language_modeling"):
        check_serves(rows, spec, LM)
    rows, spec = rows_of("gsm8k_qa.csv", format="preference")
    with pytest.raises(DataError, match="format 'preference' needs .* missing chosen, rejected"):
        check_serves(rows, spec, PREF)
    with pytest.raises(DataError, match="did you mean 'sharegpt'"):
        check_serves(rows, DataSpec(path="x", format="sharegtp"), LM)


def test_unknown_columns_error_names_columns_and_fix():
    rows, spec = rows_of("bad_columns.jsonl")
    with pytest.raises(DataError) as info:
        check_serves(rows, spec, PREF)
    text = str(info.value)
    assert "columns found: foo, bar" in text and "prompt+chosen+rejected" in text and "fix:" in text


def test_hub_rows_cannot_be_checked_offline():
    spec = DataSpec(path="HuggingFaceH4/ultrafeedback_binarized", split="train_prefs[:100]")
    assert peek(spec, FIXTURES) == []
    assert check_serves([], spec, PREF) == "auto"
    forced = DataSpec(path="org/name", format="text")
    with pytest.raises(DataError, match="needing preference"):
        check_serves([], forced, PREF)


def test_transcript_parsing():
    assert parse_transcript("no markers here") is None
    assert parse_transcript("User: hi\nAssistant: hello\nUser: bye") == [u("hi"), a("hello"), u("bye")]
    assert parse_transcript("Tell the User: hi") is None  # plain markers count at line starts only
    assert parse_transcript("### Human: hi ### Assistant: yo") == [u("hi"), a("yo")]  # Guanaco
    assert parse_transcript("### Human: hi\n### Assistant: yo") == [u("hi"), a("yo")]
    assert to_messages(["q", "a", "q2"], "c") == [u("q"), a("a"), u("q2")]


def test_dataspec_from_dict():
    spec = DataSpec.from_dict({"path": "x.jsonl", "split": "train[:10]"}, section="data.eval")
    assert (spec.path, spec.split, spec.section) == ("x.jsonl", "train[:10]", "data.eval")
    with pytest.raises(DataError, match="did you mean 'columns'"):
        DataSpec.from_dict({"path": "x.jsonl", "colums": {}})
    with pytest.raises(DataError, match="split 'train\\[:x\\]'"):
        DataSpec.from_dict({"path": "x.jsonl", "split": "train[:x]"})
    with pytest.raises(DataError, match="source 'hub'"):
        DataSpec.from_dict({"path": "x.jsonl", "source": "hub"})
