"""Unit tests for beem/data: file readers (examples.py) and Rotten Tomatoes (rotten_tomatoes.py); splits are in
test_splits.py."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from beem.data.examples import DataFormatError, Example, LabelledDataset, read_dataset
from beem.data.rotten_tomatoes import LABEL_NAMES, REPO_DATA_FILE, parse_ground_truth

REPO_ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def write_jsonl(tmp_path: Path, name: str, records: list[object]) -> Path:
    return write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in records))


# --- GLUE TSV --------------------------------------------------------------------------------------------------------

SST2 = "sentence\tlabel\nhide new secretions from the parental units \t0\nthe greatest musicians \t1\n\ngenerous\t1\n"
MRPC = (
    "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    '1\t702876\t702977\tAmrozi accused his brother.\tReferring to him as only "the witness", Amrozi accused him.\n'
    "0\t2108705\t2108831\tYucaipa owned Dominick's.\tYucaipa bought Dominick's in 1995.\n"
)
RTE = (
    "index\tsentence1\tsentence2\tlabel\n"
    "0\tNo weapons were found in Iraq.\tWeapons were found in Iraq.\tnot_entailment\n"
    "1\tA place of sorrow.\tPope was buried.\tentailment\n"
    "2\tHerceptin was approved.\tHerceptin can be used.\tentailment\n"
)
QNLI = (
    "index\tquestion\tsentence\tlabel\n"
    "0\tWhen did it open?\tIt opened in 1901.\tentailment\n"
    "1\tWho built it?\tThe weather was cold.\tnot_entailment\n"
)


def test_read_sst2_single_sentence(tmp_path: Path) -> None:
    path = write(tmp_path, "train.tsv", SST2)
    dataset = read_dataset(path)
    assert isinstance(dataset, LabelledDataset)
    assert dataset.examples == (
        Example("hide new secretions from the parental units", 0, None),
        Example("the greatest musicians", 1, None),
        Example("generous", 1, None),
    )
    assert dataset.label_names == ("0", "1")
    assert dataset.labels() == [0, 1, 1]
    assert len(dataset) == 3
    assert dataset.source == str(path)


def test_read_mrpc_sentence_pair(tmp_path: Path) -> None:
    dataset = read_dataset(write(tmp_path, "msr_paraphrase_train.tsv", MRPC))
    assert dataset.examples == (
        Example("Amrozi accused his brother.", 1, 'Referring to him as only "the witness", Amrozi accused him.'),
        Example("Yucaipa owned Dominick's.", 0, "Yucaipa bought Dominick's in 1995."),
    )
    assert dataset.label_names == ("0", "1")


def test_read_rte_sentence_pair_string_labels(tmp_path: Path) -> None:
    dataset = read_dataset(write(tmp_path, "dev.tsv", RTE))
    assert dataset.label_names == ("entailment", "not_entailment")
    assert dataset.labels() == [1, 0, 0]
    assert dataset.examples[0] == Example("No weapons were found in Iraq.", 1, "Weapons were found in Iraq.")
    assert all(example.text_pair is not None for example in dataset.examples)


def test_read_rte_with_given_label_names(tmp_path: Path) -> None:
    dataset = read_dataset(write(tmp_path, "dev.tsv", RTE), label_names=("not_entailment", "entailment"))
    assert dataset.label_names == ("not_entailment", "entailment")
    assert dataset.labels() == [0, 1, 1]


def test_read_qnli_sentence_pair(tmp_path: Path) -> None:
    dataset = read_dataset(write(tmp_path, "dev.tsv", QNLI))
    assert dataset.examples[0] == Example("When did it open?", 0, "It opened in 1901.")


# --- JSONL -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected_examples", "expected_names"),
    [
        (
            [{"text": "good", "label": 1}, {"text": "bad", "label": 0}, {"text": "fine", "label": 1}],
            [Example("good", 1), Example("bad", 0), Example("fine", 1)],
            ("0", "1"),
        ),
        (
            [{"text": " great ", "label": "positive"}, {"text": "awful", "label": "negative"}],
            [Example("great", 1), Example("awful", 0)],
            ("negative", "positive"),
        ),
        (
            [
                {"sentence1": "A man runs.", "sentence2": "A person moves.", "label": "entailment"},
                {"sentence1": "A cat sleeps.", "sentence2": "A dog barks.", "label": "contradiction"},
            ],
            [Example("A man runs.", 1, "A person moves."), Example("A cat sleeps.", 0, "A dog barks.")],
            ("contradiction", "entailment"),
        ),
        (
            [{"text_a": "q1", "text_b": "q2", "label": 0}, {"text_a": "q3", "text_b": "q4", "label": 1}],
            [Example("q1", 0, "q2"), Example("q3", 1, "q4")],
            ("0", "1"),
        ),
        (
            [{"sentence": "s1", "text_pair": "p1", "label": "b"}, {"sentence": "s2", "text_pair": "p2", "label": "a"}],
            [Example("s1", 1, "p1"), Example("s2", 0, "p2")],
            ("a", "b"),
        ),
    ],
    ids=["int-labels", "string-labels", "sentence-pairs", "text-a-b", "sentence-text-pair"],
)
def test_read_jsonl(
    tmp_path: Path, records: list[dict[str, object]], expected_examples: list[Example], expected_names: tuple[str, ...]
) -> None:
    dataset = read_dataset(write_jsonl(tmp_path, "data.jsonl", records))
    assert list(dataset.examples) == expected_examples
    assert dataset.label_names == expected_names


def test_read_json_suffix_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "data.json", '{"text": "a", "label": 0}\n\n   \n{"text": "b", "label": 1}\n')
    assert read_dataset(path).labels() == [0, 1]


def test_read_jsonl_given_label_names(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, "d.jsonl", [{"text": "x", "label": "pos"}, {"text": "y", "label": "neg"}])
    dataset = read_dataset(path, label_names=["pos", "neg"])
    assert dataset.labels() == [0, 1]
    assert dataset.label_names == ("pos", "neg")


def test_read_jsonl_integer_labels_keep_numeric_order(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, "d.jsonl", [{"text": f"t{i}", "label": i} for i in range(11)])
    dataset = read_dataset(path)
    assert dataset.labels() == list(range(11))


def test_subset_keeps_names_and_suffixes_source(tmp_path: Path) -> None:
    dataset = read_dataset(write(tmp_path, "dev.tsv", RTE))
    subset = dataset.subset([2, 0], "#cal")
    assert subset.examples == (dataset.examples[2], dataset.examples[0])
    assert subset.label_names == dataset.label_names
    assert subset.source == f"{dataset.source}#cal"


# --- malformed files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "line", "fragment"),
    [
        (
            "bad.jsonl",
            '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", "label": \n',
            3,
            "invalid JSON",
        ),
        ("bad.jsonl", '{"text": "a", "label": 0}\n{"text": "b"}\n', 2, "label"),
        ("bad.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": null}\n', 2, "label"),
        ("bad.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": [1]}\n', 2, "label"),
        ("bad.jsonl", '{"text": "a", "label": 0}\n\n{"review": "b", "label": 1}\n', 3, "text"),
        ("bad.jsonl", '{"text": "a", "label": 0}\n[1, 2]\n', 2, "object"),
        ("bad.jsonl", '{"text": "a", "label": 0}\n{"text": "   ", "label": 1}\n', 2, "non-empty"),
        ("bad.jsonl", '{"text": 5, "label": 0}\n', 1, "non-empty string"),
        ("bad.jsonl", '{"sentence1": "a", "sentence2": "", "label": 0}\n', 1, "sentence2"),
        ("bad.tsv", "sentence\tlabel\ngood\t1\nno label column here\n", 3, "columns"),
        ("bad.tsv", "sentence\tlabel\ngood\t1\nbad\t0\textra\n", 3, "columns"),
        ("bad.tsv", "sentence\tlabel\n   \t1\n", 2, "non-empty"),
        ("bad.tsv", "sentence\tlabel\ngood\t\n", 2, "label"),
        ("bad.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\t\tentailment\n", 2, "sentence2"),
        ("bad.tsv", "text\tlabel\ngood\t1\n", 1, "header"),
        ("bad.tsv", "sentence\tscore\ngood\t1\n", 1, "header"),
        ("bad.tsv", "", 1, "empty"),
    ],
    ids=[
        "bad-json-line-3",
        "missing-label",
        "null-label",
        "list-label",
        "no-text-field",
        "not-object",
        "empty-text-jsonl",
        "non-string-text",
        "empty-pair-jsonl",
        "too-few-columns",
        "too-many-columns",
        "empty-text-tsv",
        "empty-label-tsv",
        "empty-pair-tsv",
        "no-text-column",
        "no-label-column",
        "empty-tsv",
    ],
)
def test_malformed_file_names_path_and_line(tmp_path: Path, name: str, content: str, line: int, fragment: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DataFormatError) as caught:
        read_dataset(path)
    message = str(caught.value)
    assert f"{path}:{line}:" in message
    assert fragment in message
    assert caught.value.path == path
    assert caught.value.line == line


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("data.csv", "text,label\na,1\n", "unknown format"),
        ("data.txt", "a\t1\n", "unknown format"),
        ("missing.jsonl", None, "no such file"),
        ("empty.jsonl", "\n\n", "no examples"),
        ("one_label.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n', "two labels"),
        ("header_only.tsv", "sentence\tlabel\n", "no examples"),
    ],
)
def test_malformed_file_without_line(tmp_path: Path, name: str, content: str | None, fragment: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError) as caught:
        read_dataset(path)
    assert str(path) in str(caught.value)
    assert fragment in str(caught.value)
    assert caught.value.line is None


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    directory = tmp_path / "dir.jsonl"
    directory.mkdir()
    with pytest.raises(DataFormatError, match="no such file"):
        read_dataset(directory)


def test_unknown_label_with_given_names(tmp_path: Path) -> None:
    path = write(tmp_path, "dev.tsv", RTE)
    with pytest.raises(DataFormatError, match="not_entailment") as caught:
        read_dataset(path, label_names=("entailment", "neutral"))
    assert str(path) in str(caught.value)


def test_data_format_error_is_value_error() -> None:
    error = DataFormatError(Path("x.jsonl"), 4, "broken")
    assert isinstance(error, ValueError)
    assert str(error) == "x.jsonl:4: broken"
    assert str(DataFormatError(Path("x.jsonl"), None, "broken")) == "x.jsonl: broken"


# --- Rotten Tomatoes ------------------------------------------------------------------------------------------------


def test_parse_ground_truth_drops_zero_and_labels_sign() -> None:
    raw = "1\t2.5\tGreat film\n2\t0\tMeh\n3\t-1.2\t Awful \n\n4\t0.0\tneutral\n5\t0.01\tbarely good\n6\t-0.01\tmeh-\n"
    records, dropped = parse_ground_truth(raw, Path("raw.txt"))
    assert dropped == 2
    assert records == [
        {"id": 1, "text": "Great film", "score": 2.5, "label": "positive"},
        {"id": 3, "text": "Awful", "score": -1.2, "label": "negative"},
        {"id": 5, "text": "barely good", "score": 0.01, "label": "positive"},
        {"id": 6, "text": "meh-", "score": -0.01, "label": "negative"},
    ]


@pytest.mark.parametrize(
    ("raw", "line", "fragment"),
    [
        ("1\t2.0\tok\n2\t1.0\n", 2, "3 tab-separated"),
        ("1\t2.0\tok\n\n3\thigh\ttext\n", 3, "not a number"),
        ("1\t2.0\tok\textra\n", 1, "3 tab-separated"),
    ],
)
def test_parse_ground_truth_malformed(raw: str, line: int, fragment: str) -> None:
    source = Path("movieReviewSnippets_GroundTruth.txt")
    with pytest.raises(DataFormatError) as caught:
        parse_ground_truth(raw, source)
    assert f"{source}:{line}:" in str(caught.value)
    assert fragment in str(caught.value)


def test_committed_rotten_tomatoes_file() -> None:
    assert REPO_DATA_FILE == REPO_ROOT / "data" / "rotten_tomatoes" / "snippets.jsonl"
    dataset = read_dataset(REPO_DATA_FILE, LABEL_NAMES)
    assert len(dataset) == 10_568
    assert dataset.label_names == ("negative", "positive")
    counts = Counter(dataset.labels())
    assert counts[0] > 5000
    assert counts[1] > 5000
    inferred = read_dataset(REPO_DATA_FILE)
    assert inferred.label_names == LABEL_NAMES
    assert inferred.labels() == dataset.labels()


def test_committed_rotten_tomatoes_labels_follow_scores() -> None:
    with REPO_DATA_FILE.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    assert all(r["score"] != 0 for r in records)
    assert all((r["label"] == "positive") == (r["score"] > 0) for r in records)
    assert len({r["id"] for r in records}) == len(records)
