"""Prompt-file loader: the project's own formats, the public benchmark layouts, and the error messages."""

import csv
from pathlib import Path

import pytest

from receler.errors import UserError
from receler.prompts import PROMPT_COLUMNS, load_prompts

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference-data" / "t2vunlearning"
DATA_DIR = Path(__file__).resolve().parents[1] / "evaluation" / "data"


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_txt_skips_blank_lines_and_comments(tmp_path):
    path = write(tmp_path / "p.txt", "# header comment\n\na cat\n   \n  # indented comment\n  a dog on a sofa  \n")
    table = load_prompts(path)
    assert table.prompts == ["a cat", "a dog on a sofa"]
    assert table.rows[0].preserve_prompt is None and table.rows[0].seed is None
    assert table.preserve_column is None


def test_txt_with_bom(tmp_path):
    table = load_prompts(write(tmp_path / "p.txt", "first\r\nsecond\r\n", bom=True))
    assert table.prompts == ["first", "second"]


def test_ring_a_bell_layout_quoted_commas(tmp_path):
    text = (
        "prompt,normal prompt\r\n"
        '"A woman in a bedroom, bare and exposed.","A woman in a bedroom, fully clothed and serene."\r\n'
        '"He said ""hello"", then left","He said ""hi"", then stayed"\r\n'
    )
    table = load_prompts(write(tmp_path / "rab.csv", text))
    assert table.prompt_column == "prompt"
    assert table.preserve_column == "normal prompt"
    assert table.prompts == ["A woman in a bedroom, bare and exposed.", 'He said "hello", then left']
    assert table.preserve_prompts == ["A woman in a bedroom, fully clothed and serene.", 'He said "hi", then stayed']


def test_bom_prompt_only_csv(tmp_path):
    table = load_prompts(write(tmp_path / "sora.csv", 'prompt\r\n"one, with comma"\r\ntwo\r\n', bom=True))
    assert table.prompt_column == "prompt"
    assert table.prompts == ["one, with comma", "two"]


def test_case_number_prompt_evaluation_seed(tmp_path):
    text = "case_number,prompt,evaluation_seed\n1,walking in a park,3728\n2,\"reading, slowly\",42\n3,no seed here,\n"
    table = load_prompts(write(tmp_path / "face.csv", text))
    assert table.seed_column == "evaluation_seed"
    assert table.seeds == [3728, 42, None]
    assert table.rows[1].prompt == "reading, slowly"
    assert table.rows[0].extra == {"case_number": "1"}


def test_project_columns_seed_and_preserve(tmp_path):
    text = "prompt,preserve_prompt,seed,concept\na,b,7,x\nc,,8.0,y\n"
    table = load_prompts(write(tmp_path / "p.csv", text))
    assert [(r.prompt, r.preserve_prompt, r.seed, r.extra) for r in table] == [
        ("a", "b", 7, {"concept": "x"}),
        ("c", None, 8, {"concept": "y"}),
    ]


@pytest.mark.parametrize("column", ["Prompt", "PROMPTS", "adv_prompt", "Sensitive Prompt", "nudity_prompt", "caption", "text"])
def test_prompt_column_names_case_insensitive(tmp_path, column):
    table = load_prompts(write(tmp_path / "p.csv", f"id,{column}\n1,hello\n"))
    assert table.prompt_column == column
    assert table.prompts == ["hello"]


def test_prompt_column_preference_order(tmp_path):
    # "prompt" wins over "text" whatever the column order in the file.
    table = load_prompts(write(tmp_path / "p.csv", "text,prompt\nfrom text,from prompt\n"))
    assert table.prompts == ["from prompt"]


def test_blank_rows_unnamed_index_and_long_text(tmp_path):
    long_prompt = "word, " * 40000  # ~240k characters: above csv's default field limit of 128 KiB
    long_prompt = long_prompt.strip()
    text = f',prompt,seed\n0,first,1\n,,\n\n1,"{long_prompt}",2\n2,"multi\nline",3\n'
    table = load_prompts(write(tmp_path / "p.csv", text))
    assert len(table) == 3
    assert table.rows[1].prompt == long_prompt
    assert table.rows[2].prompt == "multi\nline"
    assert table.rows[0].extra == {"unnamed_0": "0"}


def test_no_prompt_column_is_a_clear_error(tmp_path):
    path = write(tmp_path / "bad.csv", "id,description_of_scene\n1,a cat\n")
    with pytest.raises(UserError) as info:
        load_prompts(path)
    message = str(info.value)
    assert "bad.csv" in message
    assert "'id'" in message and "'description_of_scene'" in message
    for name in PROMPT_COLUMNS[:3]:
        assert repr(name) in message


def test_missing_empty_and_unsupported_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_prompts(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="is empty"):
        load_prompts(write(tmp_path / "empty.csv", ""))
    with pytest.raises(UserError, match="is empty"):
        load_prompts(write(tmp_path / "blank.txt", "\n  \n"))
    with pytest.raises(UserError, match="no prompts"):
        load_prompts(write(tmp_path / "comments.txt", "# only a comment\n"))
    with pytest.raises(UserError, match="no prompts"):
        load_prompts(write(tmp_path / "header_only.csv", "prompt,seed\n,1\n"))
    with pytest.raises(UserError, match="unsupported extension"):
        load_prompts(write(tmp_path / "prompts.json", '["a"]'))
    with pytest.raises(UserError, match="not a whole number"):
        load_prompts(write(tmp_path / "seed.csv", "prompt,seed\na,abc\n"))
    with pytest.raises(UserError, match="not valid UTF-8"):
        (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
        load_prompts(tmp_path / "latin.txt")


def test_project_prompt_sets():
    pairs = load_prompts(DATA_DIR / "nudity_train_pairs.csv")
    assert 30 <= len(pairs) <= 60 and all(r.preserve_prompt for r in pairs)
    implicit = load_prompts(DATA_DIR / "nudity_eval_implicit.csv")
    assert 30 <= len(implicit) <= 60 and all(r.seed is not None for r in implicit)
    for row in implicit:
        for word in ("nudity", "naked", "nude"):
            assert word not in row.prompt.lower()
    safe = load_prompts(DATA_DIR / "safe_prompts.csv")
    assert 30 <= len(safe) <= 60 and all(r.seed is not None for r in safe)
    concepts = load_prompts(DATA_DIR / "preserved_concepts_nudity.txt")
    assert 15 <= len(concepts) <= 30


def _count_rows(path: Path) -> int:
    """Independent count: rows whose 'prompt' cell is non-empty, via csv.DictReader."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return sum(1 for row in csv.DictReader(f) if (row.get("prompt") or "").strip())


@pytest.mark.skipif(not REFERENCE_DIR.is_dir(), reason="reference data of the original release not on this machine")
@pytest.mark.parametrize(
    "name, preserve, seeded",
    [
        ("nudity-ring-a-bell.csv", True, False),
        ("nudity_cogvideox.csv", False, True),
        ("nudity_hunyuan.csv", False, False),
        ("safe-sora.csv", False, False),
        ("face_cogvideox.csv", False, True),
        ("face_hunyuan.csv", False, True),
        ("face_ori.csv", False, True),
    ],
)
def test_reference_files(name, preserve, seeded):
    path = REFERENCE_DIR / name
    if not path.exists():
        pytest.skip(f"{name} missing")
    table = load_prompts(path)
    assert len(table) == _count_rows(path) > 0
    assert table.prompt_column == "prompt"
    assert all(r.prompt and r.prompt == r.prompt.strip() and not r.prompt.startswith("\ufeff") for r in table)
    assert all(r.preserve_prompt for r in table) if preserve else table.preserve_column is None
    assert all(isinstance(r.seed, int) for r in table) if seeded else table.seed_column is None
