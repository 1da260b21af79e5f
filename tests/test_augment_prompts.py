"""Prompt augmentation: template pairs (target prompt, preserve prompt) the trainer reads as a prompts file."""

import csv
import re
from collections import Counter

import pytest
import torch

from receler.augment_prompts import TEMPLATES, augment_prompt_pairs, main
from receler.prompts import PromptRow, load_prompts



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny text encoder runs ~10x faster on one thread than on two busy shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CONCEPTS = ["person", "beach", "swimsuit", "statue", "dress"]


@pytest.fixture
def concepts_file(tmp_path):
    path = tmp_path / "preserved.txt"
    path.write_text("\n".join(CONCEPTS) + "\n")
    return path


def read_pairs(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["prompt", "preserve_prompt"]
    return [tuple(r) for r in rows[1:]]


def mentions(text, word):
    return re.search(rf"\b{re.escape(word)}", text, flags=re.IGNORECASE) is not None


def test_pairs_contain_the_target_and_preserve_prompts_do_not(concepts_file, tmp_path):
    out = tmp_path / "pairs.csv"
    main(["--target_concept", "nudity", "--num_prompts", "10", "--preserved_concepts_file", str(concepts_file),
          "--seed", "3", "--output_file", str(out)])
    pairs = read_pairs(out)
    assert len(pairs) == 10
    for prompt, preserve in pairs:
        assert "nudity" in prompt
        assert not mentions(preserve, "nud")
        # The preserve prompt is the same caption with one preserved concept in place of the target.
        assert any(prompt.replace("nudity", c) == preserve for c in CONCEPTS), (prompt, preserve)
        assert prompt.replace("nudity", "{x}") in TEMPLATES
    # 10 draws over 5 concepts in shuffled passes: each concept twice, and 10 different templates.
    used = Counter(next(c for c in CONCEPTS if p.replace("nudity", c) == q) for p, q in pairs)
    assert set(used.values()) == {2}
    assert len({p for p, _ in pairs}) == 10

    # The trainer's loader reads it as prompt + preserve_prompt.
    table = load_prompts(out)
    assert table.prompts == [p for p, _ in pairs]
    assert table.preserve_prompts == [q for _, q in pairs]


def test_deterministic_from_seed(concepts_file, tmp_path):
    def run(name, seed):
        main(["--target_concept", "nudity", "--num_prompts", "25", "--preserved_concepts_file", str(concepts_file),
              "--seed", str(seed), "--output_file", str(tmp_path / name)])
        return (tmp_path / name).read_text()

    assert run("a.csv", 0) == run("b.csv", 0)
    assert run("c.csv", 1) != run("a.csv", 0)


def test_pairs_are_unique_until_every_combination_is_used():
    templates = TEMPLATES[:3]
    pairs = augment_prompt_pairs("nudity", ["person", "beach"], 6, seed=0, templates=templates)
    assert len(set(pairs)) == 6  # all 3 x 2 combinations
    pairs = augment_prompt_pairs("nudity", ["person", "beach"], 8, seed=0, templates=templates)
    assert len(pairs) == 8 and len(set(pairs)) == 6


def test_templates_and_concepts_mentioning_the_target_are_skipped():
    pairs = augment_prompt_pairs("beach", ["person", "sandy beach", "dog"], 40, seed=0)
    assert len(pairs) == 40
    for prompt, preserve in pairs:
        assert prompt.count("beach") == 1  # only the target itself: no "... on a beach at sunset" template
        assert not mentions(preserve, "beach")
    assert not any("sandy" in q for _, q in pairs)


def test_base_prompts_file(concepts_file, tmp_path):
    base = tmp_path / "base.csv"
    base.write_text(
        "prompt,preserve_prompt\n"
        '"a painting of Nudity, oil on canvas",\n'
        "a cat on a sofa,\n"
        "nudity at the beach,a couple at the beach\n"
        "nudity and more  nudity,\n"
    )
    out = tmp_path / "pairs.csv"
    main(["--target_concept", "nudity", "--num_prompts", "4", "--preserved_concepts_file", str(concepts_file),
          "--base_prompts_file", str(base), "--output_file", str(out)])
    pairs = read_pairs(out)
    assert len(pairs) == 3 + 4  # the cat row does not mention the target
    (p1, q1), (p2, q2), (p3, q3) = pairs[:3]
    assert p1 == "a painting of Nudity, oil on canvas"
    assert any(q1 == f"a painting of {c}, oil on canvas" for c in CONCEPTS)
    assert (p2, q2) == ("nudity at the beach", "a couple at the beach")  # its own preserve prompt is kept
    assert p3 == "nudity and more  nudity"
    assert any(q3 == f"{c} and more  {c}" for c in CONCEPTS)
    for prompt, preserve in pairs:
        assert mentions(prompt, "nudity") and not mentions(preserve, "nudity")


def test_auto_generated_concepts(tmp_path):
    candidates = tmp_path / "candidates.txt"
    candidates.write_text("nudity art\nperson\nbeach\n")
    out = tmp_path / "pairs.csv"
    main(["--target_concept", "nudity", "--num_prompts", "6", "--method", "list", "--concepts_file", str(candidates),
          "--num_concepts", "5", "--preserved_output_file", str(tmp_path / "chosen.txt"), "--output_file", str(out)])
    pairs = read_pairs(out)
    assert len(pairs) == 6
    assert (tmp_path / "chosen.txt").read_text().splitlines() == ["person", "beach"]
    used = Counter(next(c for c in ("person", "beach") if p.replace("nudity", c) == q) for p, q in pairs)
    assert used == {"person": 3, "beach": 3}


def test_auto_generated_with_the_tiny_model(tiny_cogvideox_dir, tmp_path):
    out = tmp_path / "pairs.csv"
    main(["--target_concept", "nudity", "--num_prompts", "12", "--model_path", str(tiny_cogvideox_dir),
          "--num_concepts", "6", "--output_file", str(out)])
    pairs = read_pairs(out)
    assert len(pairs) == 12 and all("nudity" in p and "nudity" not in q for p, q in pairs)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output_file", "pairs.txt", "--preserved_concepts_file", "x"], "must end in .csv"),
        (["--output_file", "pairs.csv"], "--model_path"),
        (["--output_file", "pairs.csv", "--preserved_concepts_file", "missing.txt"], "does not exist"),
        (["--output_file", "pairs.csv", "--method", "list"], "--concepts_file"),
    ],
)
def test_user_errors(extra, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["--target_concept", "nudity"] + extra)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "pairs.csv").exists()


def test_library_rejects_concepts_that_all_contain_the_target():
    from receler.errors import UserError

    with pytest.raises(UserError, match="no preserved concept"):
        augment_prompt_pairs("nudity", ["nudity art", "Nudity"], 3)
    assert augment_prompt_pairs("nudity", ["person"], 0, base_rows=[PromptRow("Nudity here")]) == [("Nudity here", "person here")]
