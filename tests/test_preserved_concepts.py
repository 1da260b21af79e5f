"""Preserved-concept generation: the embedding method on the tiny pipeline and on planted embeddings,
the LLM method against a local HTTP server, the list method, and the CLI."""

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from receler.errors import UserError
from receler.preserved_concepts import (
    VocabularyEntry,
    contains_target,
    generate_preserved_concepts,
    load_text_pipeline,
    load_vocabulary,
    parse_concept_list,
    pooled_text_embeddings,
    select_by_similarity,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny text encoder runs ~10x faster on one thread than on two busy shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(argv):
    from receler.auto_generate_preserved_concepts import main

    return main(argv)


# ------------------------------------------------------------------------------- exclusion rules
@pytest.mark.parametrize(
    "target, text, expected",
    [
        ("dog", "hot dogs", True),  # plural
        ("dog", "Dog sled", True),  # case
        ("puppy", "puppies", True),  # -ies plural
        ("dress", "floral dresses", True),  # -es plural
        ("swimming", "swimsuit", True),  # -ing stem as a prefix
        ("naked body", "body", True),  # any content word of the target
        ("nudity", "Nudity art", True),
        ("red", "hundred", False),  # inside another word is not a mention
        ("red", "bored child", False),
        ("a dog", "a cat", False),  # stopwords alone never match
        ("nudity", "swimsuit", False),
    ],
)
def test_contains_target(target, text, expected):
    assert contains_target(text, target) is expected


def test_bundled_vocabulary():
    vocabulary = load_vocabulary()
    names = [e.concept.lower() for e in vocabulary]
    assert 300 <= len(vocabulary) <= 2500
    assert len(set(names)) == len(names)
    categories = {e.category for e in vocabulary}
    for category in ("people", "clothing", "body", "animals", "objects", "places", "art_styles", "actions",
                     "nature", "vehicles", "food"):
        assert sum(e.category == category for e in vocabulary) >= 20, category
    assert len(categories) >= 11
    # Everyday, non-graphic concepts only: no nudity terms among the candidates.
    for word in ("nude", "nudity", "naked", "topless", "undressed"):
        assert not any(word in name.split() for name in names), word


# ----------------------------------------------------------------------- planted embeddings
DIM = 16
# (concept, category, cosine to the target). The target is e0; each entry gets its own orthogonal axis.
PLANTED = [
    ("puppy", "animals", 0.95),  # near-synonym: above the band's top
    ("cat", "animals", 0.70),
    ("horse", "animals", 0.60),
    ("leash", "objects", 0.50),
    ("park", "places", 0.45),
    ("bone", "objects", 0.30),
    ("car", "vehicles", 0.02),  # unrelated: below the band's bottom
    ("hot dog", "food", 0.75),  # contains the target's word
    ("dogs playing", "actions", 0.65),  # contains the target's word (plural)
]


def planted(offset=0.0, mirrors=False):
    """Vocabulary and an encoder returning the planted vectors (plus ``offset`` on every vector). With
    ``mirrors``, every entry also has its negative in the vocabulary, so the planted parts average to 0."""
    vectors = {"dog": torch.eye(DIM)[0]}
    vocabulary = []
    for axis, (concept, category, cos) in enumerate(PLANTED, start=1):
        vectors[concept] = cos * torch.eye(DIM)[0] + math.sqrt(1 - cos * cos) * torch.eye(DIM)[axis]
        vocabulary.append(VocabularyEntry(concept, category))
        if mirrors:
            vectors[f"mirror {axis}"] = -vectors[concept]
            vocabulary.append(VocabularyEntry(f"mirror {axis}", "filler"))
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return torch.stack([vectors[t] + offset for t in texts])

    return vocabulary, encode, calls


def pick(num, **kwargs):
    vocabulary, encode, _ = planted(kwargs.pop("offset", 0.0), kwargs.pop("mirrors", False))
    kwargs.setdefault("center", False)
    return generate_preserved_concepts("dog", num, vocabulary=vocabulary, encode_fn=encode, batch_size=4, **kwargs)


def test_band_excludes_near_synonyms_and_diversifies_across_categories():
    result = pick(3, min_similarity=0.2, max_similarity=0.8)
    # In the band: cat .70, horse .60 (animals), leash .50, bone .30 (objects), park .45 (places).
    # Round-robin by category picks each category's best before a second animal; plain top-3 would be
    # cat, horse, leash.
    assert result.names == ["cat", "leash", "park"]
    assert [c.category for c in result.concepts] == ["animals", "objects", "places"]
    assert [c.score for c in result.concepts] == pytest.approx([0.70, 0.50, 0.45], abs=1e-6)
    assert [d["concept"] for d in result.details["near_synonyms_excluded"]] == ["puppy"]
    assert sorted(result.details["excluded_target_words"]) == ["dogs playing", "hot dog"]
    assert result.details["band_used"] == [0.2, 0.8] and not result.details["widened"]

    # Second round: the animals' second best comes next; bone (objects' second) is still unpicked.
    assert pick(4).names == ["cat", "leash", "park", "horse"]


def test_band_widens_downwards_then_upwards():
    # Six requested, five in the band: the bottom moves 0.2 -> 0.0 in steps of 0.05 until car (0.02) fits.
    result = pick(6, min_similarity=0.2, max_similarity=0.8)
    assert result.details["widened"]
    assert result.details["band_used"] == pytest.approx([0.0, 0.8])
    assert result.names == ["cat", "leash", "park", "car", "horse", "bone"]
    assert "puppy" not in result.names

    # Eight requested, seven candidates without the target's words: the bottom reaches -1, then the top
    # rises until the near-synonym is admitted; all seven are returned (with a warning), never a target word.
    result = pick(8, min_similarity=0.2, max_similarity=0.8)
    assert result.details["band_used"][0] == -1.0 and result.details["band_used"][1] >= 0.95
    assert sorted(result.names) == sorted(["puppy", "cat", "horse", "leash", "park", "bone", "car"])


def test_centering_removes_a_shared_direction():
    # Every vector shares a large offset: raw cosines all crowd near 1 (everything looks like a
    # near-synonym); centring on the vocabulary mean (= the offset, since the planted parts cancel with
    # their mirrors) recovers the planted angles and the same choice as without the offset.
    offset = 10.0 * torch.ones(DIM) / math.sqrt(DIM)
    centred = pick(3, offset=offset, mirrors=True, center=True)
    assert centred.names == ["cat", "leash", "park"]
    assert [c.score for c in centred.concepts] == pytest.approx([0.70, 0.50, 0.45], abs=1e-6)
    raw = pick(3, offset=offset, mirrors=True, center=False)
    assert raw.names != centred.names


def test_select_by_similarity_is_batch_independent_and_deterministic():
    vocabulary, encode, calls = planted()
    a = generate_preserved_concepts("dog", 4, vocabulary=vocabulary, encode_fn=encode, batch_size=2, center=False)
    assert [len(c) for c in calls[:-1]] == [2, 2, 2, 2, 1]  # batched vocabulary, then the target alone
    b = generate_preserved_concepts("dog", 4, vocabulary=vocabulary, encode_fn=encode, batch_size=64, center=False)
    assert a.names == b.names
    # Equal scores are ordered by name.
    entries = [VocabularyEntry(n, "x") for n in ("b", "a", "c")]
    picked, _ = select_by_similarity(entries, [0.5, 0.5, 0.5], 2, 0.2, 0.8)
    assert [e.concept for e, _ in picked] == ["a", "b"]


def test_band_must_be_ordered():
    with pytest.raises(UserError, match="min_similarity"):
        pick(3, min_similarity=0.9, max_similarity=0.5)


# ------------------------------------------------------------------------- tiny real pipeline
def test_pooling_matches_the_text_encoder_by_hand(tiny_cogvideox_dir):
    family, pipe = load_text_pipeline(tiny_cogvideox_dir)
    prompts = ["nudity", "a dog on a beach", "zzz qqq"]  # word tokens, and a character-level fallback
    pooled = pooled_text_embeddings(family, pipe, prompts, torch.device("cpu"))
    text_len = pipe.transformer.config.max_text_seq_length
    for prompt, row in zip(prompts, pooled):
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=text_len, truncation=True).input_ids
        with torch.no_grad():
            states = pipe.text_encoder(torch.tensor([ids]))[0][0]
        keep = [i for i, t in enumerate(ids) if t != pipe.tokenizer.pad_token_id]
        assert torch.allclose(row, states[keep].mean(dim=0), atol=1e-5)


def test_text_only_loading_matches_the_full_pipeline(family_name, tiny_model_dir):
    """The transformer and VAE are not loaded, yet every family encodes exactly as with the full pipeline."""
    folder = tiny_model_dir(family_name)
    family, light = load_text_pipeline(folder)
    assert family.name == family_name
    assert not isinstance(light.transformer, torch.nn.Module) and light.vae is None
    full = family.load_pipeline(folder, dtype=torch.float32, with_vae=False)
    prompts = ["nudity", "a person on a beach"]
    a = pooled_text_embeddings(family, light, prompts, torch.device("cpu"))
    b = pooled_text_embeddings(family, full, prompts, torch.device("cpu"))
    assert a.shape[0] == 2 and torch.equal(a, b)


def test_cli_embedding_on_tiny_model(tiny_cogvideox_dir, tmp_path):
    argv = ["--target_concept", "nudity", "--num_concepts", "15", "--model_path", str(tiny_cogvideox_dir)]
    run_cli(argv + ["--output_file", str(tmp_path / "x.txt")])
    run_cli(argv + ["--output_file", str(tmp_path / "y.txt"), "--batch_size", "100"])

    lines = (tmp_path / "x.txt").read_text().splitlines()
    assert (tmp_path / "y.txt").read_text() == (tmp_path / "x.txt").read_text()  # deterministic
    assert len(lines) == 15 and len({c.lower() for c in lines}) == 15
    assert all("nudity" not in c.lower() and "nud" not in c.lower() for c in lines)
    vocabulary = {e.concept: e.category for e in load_vocabulary()}
    assert all(c in vocabulary for c in lines)

    sidecar = json.loads((tmp_path / "x.txt.json").read_text())
    assert [c["concept"] for c in sidecar["concepts"]] == lines
    for entry in sidecar["concepts"]:
        assert entry["method"] == "embedding" and entry["category"] == vocabulary[entry["concept"]]
        assert -1.0 <= entry["score"] <= 1.0
    settings = sidecar["settings"]
    assert settings["target_concept"] == "nudity" and settings["num_concepts"] == 15
    assert settings["model_family"] == "cogvideox" and settings["method"] == "embedding"
    lo, hi = sidecar["details"]["band_used"]
    assert all(lo <= c["score"] <= hi for c in sidecar["concepts"])

    # The trainer reads the file as its --preserved_concepts_file.
    from receler.training import read_preserved_concepts

    assert read_preserved_concepts(tmp_path / "x.txt") == lines


def test_library_accepts_an_already_loaded_pipeline(tiny_cogvideox_dir):
    family, pipe = load_text_pipeline(tiny_cogvideox_dir)
    a = generate_preserved_concepts("nudity", 5, pipe=pipe, family=family)
    b = generate_preserved_concepts("nudity", 5, model_path=tiny_cogvideox_dir, device="cpu")
    assert a.names == b.names and len(a.names) == 5


def test_embedding_without_model_path_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(["--target_concept", "nudity", "--method", "embedding", "--output_file", str(tmp_path / "x.txt")])
    assert exc.value.code == 2
    assert "--model_path" in capsys.readouterr().err


def test_no_model_falls_back_to_the_bundled_list_across_categories(tmp_path, capsys):
    """The seed toolkit's command names no model: it runs on the bundled vocabulary, one concept of each
    category in turn, and the warning says what --model_path would add."""
    import csv

    from receler.preserved_concepts import VOCABULARY_FILE

    run_cli(["--target_concept", "nudity", "--num_concepts", "15", "--output_file", str(tmp_path / "x.txt")])
    assert "add --model_path" in capsys.readouterr().err
    rows = list(csv.DictReader(VOCABULARY_FILE.open()))
    firsts = {}
    for row in rows:  # the first entry of each category, in the order categories first appear
        firsts.setdefault(row["category"], row["concept"])
    chosen = (tmp_path / "x.txt").read_text().splitlines()
    assert chosen == list(firsts.values())[:15] and len(chosen) == 15
    assert json.loads((tmp_path / "x.txt.json").read_text())["method"] == "list"


# ------------------------------------------------------------------------------- list method
def test_list_method_takes_the_first_that_pass(tmp_path):
    listed = tmp_path / "candidates.txt"
    listed.write_text("# my candidates\nperson\n\nnude nudity shots\nBeach\nNudity\nswimsuit\nperson\nstatue\n")
    run_cli(["--target_concept", "nudity", "--num_concepts", "3", "--method", "list",
             "--concepts_file", str(listed), "--output_file", str(tmp_path / "out.txt")])
    assert (tmp_path / "out.txt").read_text().splitlines() == ["person", "Beach", "swimsuit"]
    sidecar = json.loads((tmp_path / "out.txt.json").read_text())
    assert {c["method"] for c in sidecar["concepts"]} == {"list"}


# -------------------------------------------------------------------------------- llm method
class FakeLLM:
    """An OpenAI-compatible endpoint on 127.0.0.1 (random free port) answering with a fixed message."""

    def __init__(self, content=None, raw=None, status=200, delay=0.0):
        self.content, self.raw, self.status, self.delay = content, raw, status, delay
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                time.sleep(server.delay)
                if server.raw is not None:
                    payload = server.raw
                else:
                    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": server.content}}]}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.httpd.handle_error = lambda *args: None  # a client that gave up (timeout test) is expected
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


LLM_ANSWERS = {
    "json_list": '["person", "nudity in art", "beach", "swimsuit", "statue"]',
    "json_object": '{"concepts": ["person", "Nudity", "beach", "swimsuit", "statue"]}',
    "fenced_with_prose": 'Sure! Here are the concepts:\n```json\n["person", "beach", "swimsuit", "statue"]\n```\nHope this helps.',
    "numbered": "Here are concepts to preserve:\n1. person\n2) nudity\n3. beach\n4. swimsuit\n5. statue",
    "bullets": "- person\n* beach\n- swimsuit\n- statue",
    "one_per_line": "person\nbeach\nperson\nswimsuit\nstatue\n",
}


@pytest.mark.parametrize("answer", sorted(LLM_ANSWERS))
def test_llm_parses_answer_formats(answer, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeLLM(LLM_ANSWERS[answer]) as llm:
        result = generate_preserved_concepts("nudity", 3, "llm", llm_base_url=llm.url, llm_model="tiny-llm", timeout=5, seed=7)
    assert result.names == ["person", "beach", "swimsuit"]
    (request,) = llm.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer test-key"
    assert request["body"]["model"] == "tiny-llm" and request["body"]["seed"] == 7
    assert "nudity" in request["body"]["messages"][-1]["content"]


def test_parse_concept_list_variants():
    assert parse_concept_list('{"result": {"items": [{"concept": "hands"}, {"name": "face"}]}}') == ["hands", "face"]
    assert parse_concept_list("person, beach, swimsuit") == ["person", "beach", "swimsuit"]
    assert parse_concept_list('"Person."\n"beach",') == ["Person", "beach"]


def test_llm_cli_writes_files_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeLLM(LLM_ANSWERS["json_list"]) as llm:
        run_cli(["--target_concept", "nudity", "--num_concepts", "2", "--method", "llm", "--llm_base_url", llm.url,
                 "--output_file", str(tmp_path / "llm.txt")])
    assert "Authorization" not in llm.requests[0]["headers"]
    assert (tmp_path / "llm.txt").read_text().splitlines() == ["person", "beach"]
    sidecar = json.loads((tmp_path / "llm.txt.json").read_text())
    assert sidecar["settings"]["llm_base_url"] == llm.url and sidecar["concepts"][0]["method"] == "llm"


def test_llm_timeout_is_a_clear_error():
    with FakeLLM(LLM_ANSWERS["json_list"], delay=3.0) as llm:
        start = time.monotonic()
        with pytest.raises(UserError, match=r"did not answer within 0.3 s"):
            generate_preserved_concepts("nudity", 3, "llm", llm_base_url=llm.url, timeout=0.3)
        assert time.monotonic() - start < 2.5


@pytest.mark.parametrize(
    "server, message",
    [
        (dict(raw=b"<html>not json</html>"), "not an OpenAI chat-completions answer"),
        (dict(raw=b'{"error": "nope"}'), "not an OpenAI chat-completions answer"),
        (dict(content=""), "empty message"),
        (dict(content="{}"), "no concepts could be read"),
        (dict(raw=b'{"error": {"message": "bad key"}}', status=401), "HTTP 401.*bad key.*OPENAI_API_KEY"),
        (dict(raw=b"oops", status=500), "HTTP 500"),
    ],
)
def test_llm_bad_replies_are_clear_errors(server, message):
    with FakeLLM(**server) as llm:
        with pytest.raises(UserError, match=message):
            generate_preserved_concepts("nudity", 3, "llm", llm_base_url=llm.url, timeout=5)


def test_llm_unreachable_is_a_clear_error(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SystemExit) as exc:
        run_cli(["--target_concept", "nudity", "--method", "llm", "--llm_base_url", f"http://127.0.0.1:{port}/v1",
                 "--timeout", "5", "--output_file", str(tmp_path / "x.txt")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and "Traceback" not in err
    assert not (tmp_path / "x.txt").exists()
