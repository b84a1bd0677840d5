"""int8 inference: the ONNX Runtime build, its quality guard, what `precision: auto` picks, and the commands.

Every test works on a copy of a default model version (the build writes beside the weights),
so the shared `models/` directory keeps whatever `make models` recorded. Builds are made for
ONNX Runtime here whatever `TEXTWORKER_INT8_RUNTIME` says; the OpenVINO build of sequence
classifiers has `test_int8_openvino.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.documents import Document
from schemas.pipeline import ClassifyStage, QaStage, SpamStage
from tests.conftest import int8_runtime_setting, spam_runs_at
from worker.errors import ModelFormatError
from worker.lifecycle import precision as guard
from worker.models import int8, loading
from worker.models import precision as precisions
from worker.stages import build_stage

REPO = Path(__file__).resolve().parents[2]
SEQ = "AutoModelForSequenceClassification"
TEXTS = ["I loved every minute of this film.", "Terrible service, never again.", "The plot was fine but the acting was awful.",
         "What a wonderful surprise!", "Boring and far too long.", "An instant classic; I will watch it again."]


@pytest.fixture(scope="module", autouse=True)
def onnxruntime_builds() -> Any:
    yield from int8_runtime_setting("onnxruntime")


def _copy(models_dir: Path, family: str, target: Path) -> Path:
    source = Path(loading.resolve(str(models_dir / family)).location)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*int8.DIRS.values()))
    return target


@pytest.fixture(scope="module")
def spam_copy(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy(models_dir, "spam", tmp_path_factory.mktemp("int8") / "spam-v0")


@pytest.fixture(scope="module")
def spam_checked(spam_copy: Path) -> dict[str, Any]:
    """The guard run once on the copy (builds the int8 version, scores it against fp32 on the version's reference sets)."""
    return guard.check(SpamStage(name="spam", model=str(spam_copy)), spam_copy)


def test_auto_stays_fp32_until_an_int8_build_has_passed_its_check(spam_copy: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "unbuilt"
    shutil.copytree(spam_copy, fresh, ignore=shutil.ignore_patterns(*int8.DIRS.values()))
    choice = precisions.choose("auto", "cpu", fresh, SEQ)
    assert choice.precision == "fp32" and "no int8 version" in choice.reason
    assert precisions.choose("auto", "cuda", fresh, SEQ).precision == "bf16"
    assert precisions.choose("auto", "cpu", fresh, "AutoModelForSeq2SeqLM").precision == "fp32"
    with pytest.raises(ModelFormatError, match="CPU"):
        precisions.choose("int8", "cuda", fresh, SEQ)
    with pytest.raises(ModelFormatError, match="CUDA only"):
        precisions.choose("fp16", "cpu", fresh, SEQ)
    with pytest.raises(ModelFormatError, match="classification and extractive-QA"):
        precisions.choose("int8", "cpu", fresh, "AutoModelForSeq2SeqLM")


def test_guard_records_its_verdict_in_the_build(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    assert spam_checked["metric"] == "f1:spam" and spam_checked["rows"] > 100
    assert abs(spam_checked["fp32"] - spam_checked["int8"] - spam_checked["drop"]) < 1e-3
    info = int8.read_info(spam_copy)
    assert info is not None and info["quality"] == spam_checked and info["fused_attention"] is True
    assert info["last_layer_first_token_only"] is True  # the head reads the first token only
    assert info["batch_independent"] is True and "per document" in info["activations"]
    assert (spam_copy / int8.INT8_DIR / int8.ONNX_FILE).is_file()
    import onnx
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in onnx.load(str(spam_copy / int8.INT8_DIR / int8.ONNX_FILE)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    widest = max(int(abs(w.astype("int32")).max()) for w in weights)
    assert info["reduce_range"] == int8.reduce_range()
    assert (widest <= 64) if info["reduce_range"] else (widest > 64)  # the recorded range is the range the weights use


def test_auto_picks_only_a_passed_batch_independent_build(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    assert spam_checked["passed"]
    choice = precisions.choose("auto", "cpu", spam_copy, SEQ)
    assert choice.precision == "int8" and "passed its quality check" in choice.reason
    info = int8.read_info(spam_copy)
    assert info is not None
    int8.write_info(spam_copy, {**info, "batch_independent": False})  # what a per-batch build would record
    try:
        choice = precisions.choose("auto", "cpu", spam_copy, SEQ)
        assert choice.precision == "fp32" and "per batch" in choice.reason
    finally:
        int8.write_info(spam_copy, info)


def test_failed_check_keeps_auto_on_fp32_and_says_why(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    info = int8.read_info(spam_copy)
    assert info is not None
    failed = {**info, "quality": {**spam_checked, "int8": spam_checked["fp32"] - 0.05, "drop": 0.05, "passed": False}}
    int8.write_info(spam_copy, failed)
    try:
        choice = precisions.choose("auto", "cpu", spam_copy, SEQ)
        assert choice.precision == "fp32"
        assert "failed its quality check" in choice.reason and "f1:spam" in choice.reason
        # an explicit int8 still runs int8 (the user asked for it)
        assert precisions.choose("int8", "cpu", spam_copy, SEQ).precision == "int8"
    finally:
        int8.write_info(spam_copy, info)


def test_default_models_are_checked_on_held_out_data_when_it_is_here(spam_copy: Path, spam_checked: dict[str, Any], shared_data: Path,
                                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A default model learnt every seed row, so on those rows its int8 build looks as good as fp32; `make models`
    scores it on the shared data's held-out file instead, and says so when that file is not there."""
    from worker.lifecycle import defaults

    assert spam_checked["held_out"] is False and "of its training rows" in guard.describe(spam_checked)
    assert "training rows only" in precisions.choose("auto", "cpu", spam_copy, SEQ).reason
    model = tmp_path / "spam-v0"
    shutil.copytree(spam_copy, model)  # its int8 build comes along (same weights): no rebuild
    assert int8.read_info(model) is not None
    lines = (shared_data / "sms_spam" / "test.tsv").read_text(encoding="utf-8").splitlines()
    picked = [line for line in lines if line.startswith("spam\t")][:25] + [line for line in lines if line.startswith("ham\t")][:25]
    heldout = tmp_path / "shared" / "sms_spam" / "test.tsv"
    heldout.parent.mkdir(parents=True)
    heldout.write_text("\n".join(picked) + "\n", encoding="utf-8")
    monkeypatch.setenv("TEXTWORKER_SHARED_DATA", str(tmp_path / "shared"))
    said: list[str] = []
    defaults._check_int8("spam", defaults.RECIPES["spam"], model, said.append)
    quality = int8.read_info(model)["quality"]  # type: ignore[index]
    assert quality["held_out"] is True and quality["rows"] == 50 and str(heldout) in quality["data"]
    assert len(said) == 1 and "held out" in said[0] and "training rows" not in said[0]
    assert "training rows" not in precisions.choose("auto", "cpu", model, SEQ).reason

    heldout.write_text("\x00\x01 no label column here\n", encoding="utf-8")  # damaged: the check falls back and says why
    said.clear()
    defaults._check_int8("spam", defaults.RECIPES["spam"], model, said.append)
    assert "cannot read the held-out file" in said[0] and "of its training rows" in said[-1]

    monkeypatch.setenv("TEXTWORKER_SHARED_DATA", str(tmp_path / "nowhere"))
    said.clear()
    defaults._check_int8("spam", defaults.RECIPES["spam"], model, said.append)
    assert "no held-out file" in said[0] and "of its training rows" in said[-1]
    assert int8.read_info(model)["quality"]["held_out"] is False  # type: ignore[index]


def test_a_check_from_another_kind_of_int8_kernels_does_not_carry_over(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    """AVX2, VNNI and AMX kernels round differently (the same default model passed on one and failed on another), so
    `auto` trusts a verdict only on the kind of machine it was reached on."""
    assert spam_checked["kernels"] == int8.kernels()
    info = int8.read_info(spam_copy)
    assert info is not None
    elsewhere = "amx" if int8.kernels() != "amx" else "avx2"
    int8.write_info(spam_copy, {**info, "quality": {**spam_checked, "kernels": elsewhere}})
    try:
        choice = precisions.choose("auto", "cpu", spam_copy, SEQ)
        assert choice.precision == "fp32" and f"checked on a machine with {elsewhere} int8 kernels" in choice.reason
        assert precisions.choose("int8", "cpu", spam_copy, SEQ).precision == "int8"  # asked for explicitly: runs
    finally:
        int8.write_info(spam_copy, info)
    assert precisions.choose("auto", "cpu", spam_copy, SEQ).precision == "int8"


def test_a_read_only_version_is_checked_and_rebuilt_in_the_cache(spam_copy: Path, spam_checked: dict[str, Any], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An image's models are read-only to the user it runs as: a check on the machine it runs on (`models quantize`)
    records its verdict, with a copy of the build, in the cache, and that record is the one used from then on."""
    model = tmp_path / "read-only"
    shutil.copytree(spam_copy, model)
    beside = model.resolve() / int8.INT8_DIR
    shipped = json.loads((beside / int8.INFO_FILE).read_text(encoding="utf-8"))
    cache = tmp_path / "cache"
    monkeypatch.setenv("TEXTWORKER_CACHE_DIR", str(cache))
    writable = int8._writable
    monkeypatch.setattr(int8, "_writable", lambda d: not Path(d).resolve().is_relative_to(model.resolve()) and writable(d))
    assert int8.int8_dir(model) == beside and int8.read_info(model) == shipped
    verdict = guard.check(SpamStage(name="spam", model=str(model)), model, tolerance=0.5)
    assert int8.int8_dir(model).is_relative_to(cache) and int8.read_info(model)["quality"] == verdict  # type: ignore[index]
    assert json.loads((beside / int8.INFO_FILE).read_text(encoding="utf-8")) == shipped  # the shipped record is untouched
    assert int8.OnnxEncoder(model, SEQ, threads=1)._path.startswith(str(cache))
    assert precisions.choose("auto", "cpu", model, SEQ).precision == "int8"
    rebuilt = int8.build(model, SEQ, force=True)  # a forced rebuild goes to the cache too
    assert rebuilt["quality"] is None and int8.read_info(model) == rebuilt and int8.int8_dir(model).is_relative_to(cache)
    assert json.loads((beside / int8.INFO_FILE).read_text(encoding="utf-8")) == shipped


def test_build_is_cached_and_rebuilt_when_the_weights_change(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    before = int8.read_info(spam_copy)
    assert before is not None
    assert int8.build(spam_copy, SEQ) == before  # same weights: no rebuild
    weights = next(spam_copy.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, (stat.st_atime, stat.st_mtime + 10))
    try:
        assert int8.read_info(spam_copy) is None  # built from other weights: not used
        choice = precisions.choose("auto", "cpu", spam_copy, SEQ)
        assert choice.precision == "fp32" and "other weights" in choice.reason
    finally:
        os.utime(weights, (stat.st_atime, stat.st_mtime))
    assert int8.read_info(spam_copy) == before


def test_idle_session_threads_sleep(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    """A stage's pool threads must not spin between calls: the next stage, the sink and the broker need the cores."""
    encoder = int8.OnnxEncoder(spam_copy, SEQ, threads=2)
    assert len(encoder._sessions) == 2 and encoder.session not in encoder._sessions
    for session in (encoder.session, *encoder._sessions):
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_chunk_of_unpadded_documents_gets_the_outputs_each_gets_alone(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    """The classifier stages hand a whole chunk to `run_encoded`: one call per document, spread over the worker
    threads longest first (more threads than sessions share them in turn). Every document gets the logits it gets
    alone, in input order, and the hooks see every call."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spam_copy)
    texts = [TEXTS[0], TEXTS[1] * 7, TEXTS[2], "", TEXTS[3] * 3, TEXTS[4], TEXTS[5] * 2]
    encoded = tokenizer(texts, truncation=True, max_length=128)
    serial = int8.OnnxEncoder(spam_copy, SEQ, threads=1)
    alone = [serial(**tokenizer([text], return_tensors="pt")).logits[0].numpy() for text in texts]
    for threads in (1, 2, int8.MAX_SESSIONS + 2):
        encoder = serial if threads == 1 else int8.OnnxEncoder(spam_copy, SEQ, threads=threads)
        assert encoder.plans_calls and len(encoder._sessions) == min(threads, int8.MAX_SESSIONS)
        seen: list[int] = []
        handle = encoder.register_forward_pre_hook(lambda _m, _a, given, seen=seen: seen.append(int(given["input_ids"].shape[1])))
        outputs, calls = encoder.run_encoded(encoded["input_ids"], encoded.get("token_type_ids"), max_rows=2)
        handle.remove()
        lengths = [len(ids) for ids in encoded["input_ids"]]
        assert calls == [([row], length) for row, length in enumerate(lengths)]
        assert sorted(seen) == sorted(lengths)
        assert outputs["logits"].shape == (len(texts), encoder.config.num_labels)
        for row, expected in enumerate(alone):
            assert np.allclose(outputs["logits"][row], expected, atol=1e-6)
        padded = encoder(**tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")).logits
        assert torch.allclose(padded, torch.from_numpy(outputs["logits"]), atol=1e-6)
        empty, none = encoder.run_encoded([])
        assert empty["logits"].shape == (0, encoder.config.num_labels) and none == []
        nothing = torch.zeros((0, 5), dtype=torch.long)
        assert encoder(input_ids=nothing, attention_mask=nothing).logits.shape == (0, encoder.config.num_labels)


_ENCODERS: dict[Path, Any] = {}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=300), min_size=1, max_size=6), mates=st.lists(st.text(max_size=600), max_size=8))
def test_any_text_gets_the_same_logits_alone_and_in_any_chunk(spam_copy: Path, spam_checked: dict[str, Any], texts: list[str],
                                                             mates: list[str]) -> None:
    """Generated texts (empty, control characters, any script, long) handed over as one chunk with any mates: each
    gets the logits it gets alone, bit for bit, whichever thread and session ran it."""
    import numpy as np
    from transformers import AutoTokenizer

    if spam_copy not in _ENCODERS:
        _ENCODERS[spam_copy] = (int8.OnnxEncoder(spam_copy, SEQ, threads=2), AutoTokenizer.from_pretrained(spam_copy))
    encoder, tokenizer = _ENCODERS[spam_copy]
    encoded = tokenizer(mates + texts, truncation=True, max_length=128)
    together, _calls = encoder.run_encoded(encoded["input_ids"], encoded.get("token_type_ids"))
    assert np.isfinite(together["logits"]).all()
    for row, ids in enumerate(encoded["input_ids"][len(mates):], start=len(mates)):
        alone, _ = encoder.run_encoded([ids], None if encoded.get("token_type_ids") is None else [encoded["token_type_ids"][row]])
        assert np.array_equal(together["logits"][row], alone["logits"][0])


def test_the_classifier_stage_runs_whole_chunks_through_the_int8_build(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    stage = build_stage(SpamStage(name="spam", model=str(spam_copy), precision="int8", batch_size=2))
    stage.load()
    assert stage.precision == "int8" and stage.model.plans_calls
    docs = [Document(id=f"d{i}", text=text) for i, text in enumerate(TEXTS * 3)]
    before = stage.stats.batches
    results = stage.run(docs, {})
    assert [r.doc_id for r in results] == [d.id for d in docs]
    assert stage.stats.batches - before == len(docs)  # one call per document, not the stage's padded batches of 2
    assert stage.stats.padded_tokens == stage.stats.real_tokens  # nothing padded
    alone = [stage.run([doc], {})[0].output["spam_probability"] for doc in docs[:6]]
    assert [r.output["spam_probability"] for r in results[:6]] == alone


def test_int8_stage_agrees_with_fp32_and_says_its_precision(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    docs = TEXTS * 4
    runs = spam_runs_at(spam_copy, docs)
    fp32 = [r.output["spam_probability"] for r in runs["fp32"]]
    quantised = [r.output["spam_probability"] for r in runs["int8"]]
    assert max(abs(a - b) for a, b in zip(fp32, quantised, strict=True)) < 0.2
    assert sum(a.label == b.label for a, b in zip(runs["fp32"], runs["int8"], strict=True)) >= len(docs) - 2


def test_int8_scores_do_not_move_with_batch_mates_and_auto_then_runs_int8(models_dir: Path, tmp_path: Path) -> None:
    """Dynamic int8 quantises activations with one scale per tensor; run per document, the scale covers that
    document only, so the same text scores the same alone, beside long batch mates, and with padding."""
    model = _copy(models_dir, "sentiment", tmp_path / "sentiment-v0")
    spec = ClassifyStage(name="sentiment", model=str(model), labels=["negative", "positive"])
    verdict = guard.check(spec.model_copy(update={"precision": "int8"}), model, tolerance=1.0)
    assert verdict["passed"]
    target = Document(id="t", text=TEXTS[2])
    crowd = [Document(id=f"c{i}", text=text * 6) for i, text in enumerate(TEXTS)]  # long batch mates: other activation ranges
    spread, scores = {}, {}
    for wanted in ("fp32", "int8"):
        stage = build_stage(spec.model_copy(update={"precision": wanted}))
        stage.load()
        assert stage.precision == wanted
        alone = stage.run([target], {})[0].output["scores"]["positive"]
        together = stage.run([*crowd[:3], target, *crowd[3:]], {})[3].output["scores"]["positive"]
        spread[wanted], scores[wanted] = abs(alone - together), alone
    assert spread["fp32"] < 1e-4
    assert spread["int8"] < 1e-6
    assert scores["int8"] != scores["fp32"]  # it really ran the int8 build
    auto = build_stage(spec)
    auto.load()
    assert auto.precision == "int8" and "passed its quality check" in auto.precision_reason


def test_qa_runs_at_int8(models_dir: Path, tmp_path: Path) -> None:
    model = _copy(models_dir, "qa", tmp_path / "qa-v0")
    answers = {}
    for wanted in ("fp32", "int8"):
        stage = build_stage(QaStage(name="qa", model=str(model), questions=["Where is the meeting?"], precision=wanted))
        stage.load()
        answers[wanted] = stage.run([Document(id="q", text="The meeting is in Berlin on Monday. Lunch is at noon.")], {})[0]
    context = "The meeting is in Berlin on Monday. Lunch is at noon."
    for result in answers.values():
        span = result.output["answers"][0]
        assert span["question"] == "Where is the meeting?" and span["answer"] in context
    assert answers["int8"].output["answers"][0].keys() == answers["fp32"].output["answers"][0].keys()


def test_documents_run_side_by_side_give_the_scores_they_get_one_by_one(models_dir: Path, spam_copy: Path,
                                                                        spam_checked: dict[str, Any], tmp_path: Path) -> None:
    """A batch's documents run on several threads at once, one thread each; a lone document runs on all of them.
    Every way gives each document the outputs it gets alone, per-token outputs included (-10000 at padding)."""
    import torch
    from transformers import AutoTokenizer

    qa = _copy(models_dir, "qa", tmp_path / "qa-v0")
    int8.build(qa, "AutoModelForQuestionAnswering")
    for model_dir, auto_class in ((spam_copy, SEQ), (qa, "AutoModelForQuestionAnswering")):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        texts = [TEXTS[0], TEXTS[1] * 5, TEXTS[2], TEXTS[3] * 2, TEXTS[4]]
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        serial = int8.OnnxEncoder(model_dir, auto_class, threads=1)
        parallel = int8.OnnxEncoder(model_dir, auto_class, threads=2)
        one_by_one = [serial(**tokenizer([text], return_tensors="pt")) for text in texts]
        for encoder in (serial, parallel):
            outputs = encoder(**batch)
            for name in int8.OUTPUTS[auto_class]:
                together = getattr(outputs, name)
                assert together.shape[0] == len(texts)
                for row, alone in enumerate(one_by_one):
                    value = getattr(alone, name)[0]
                    length = int(batch["attention_mask"][row].sum())
                    got = together[row, :length] if name in int8.PER_TOKEN_OUTPUTS else together[row]
                    assert torch.allclose(got, value, atol=1e-6)
                    if name in int8.PER_TOKEN_OUTPUTS:
                        assert bool((together[row, length:] == -10000.0).all())
        lone = parallel(**tokenizer([texts[1]], return_tensors="pt"))
        for name in int8.OUTPUTS[auto_class]:
            assert torch.allclose(getattr(lone, name)[0], getattr(one_by_one[1], name)[0], atol=1e-6)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=600)


def test_quantize_and_eval_precision_commands(spam_copy: Path, spam_checked: dict[str, Any], tmp_path: Path, models_dir: Path) -> None:
    data = tmp_path / "spam.tsv"
    rows = [("WINNER!! Claim your free prize now, text WIN to 80086", "spam"), ("Are we still on for lunch tomorrow?", "ham"),
            ("URGENT: your account is suspended, call 0800 now", "spam"), ("Thanks, see you at six.", "ham")] * 5
    data.write_text("".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"version: 1\nname: p\nsource: {{type: file, path: {data}}}\nstages:\n"
                        f"  - {{name: spam, type: spam, model: {spam_copy}}}\nsink: {{url: 'sqlite:///{tmp_path}/x.db'}}\n", encoding="utf-8")
    done = _cli("models", "quantize", str(pipeline), "--stage", "spam", "--data", str(data), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    verdict = json.loads(done.stdout)
    assert verdict["rows"] == 20 and verdict["data"] == str(data) and verdict["metric"] == "f1:spam"
    assert int8.read_info(spam_copy)["quality"]["data"] == str(data)  # type: ignore[index]
    scored = {}
    for wanted in ("fp32", "int8"):
        done = _cli("eval", str(pipeline), "--stage", "spam", "--data", str(data), "--precision", wanted, "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        scored[wanted] = json.loads(done.stdout)
        assert scored[wanted]["precision"] == wanted
    assert abs(scored["fp32"]["metrics"]["per_label"]["spam"]["f1"] - verdict["fp32"]) < 1e-3
    assert abs(scored["int8"]["metrics"]["per_label"]["spam"]["f1"] - verdict["int8"]) < 1e-3
    bad = _cli("eval", str(pipeline), "--stage", "spam", "--data", str(data), "--precision", "fp16")
    assert bad.returncode != 0 and "CUDA only" in bad.stderr


def _sentences(shared_data: Path, limit: int) -> list[str]:
    rows = (shared_data / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    return [row.split("\t")[0] for row in rows[:limit]]


def _probabilities(path: Path, model_dir: Path, texts: list[str]) -> Any:
    import numpy as np
    import onnxruntime
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [item.name for item in session.get_inputs()]
    out = []
    for text in texts:
        encoded = tokenizer(text, return_tensors="np")
        logits = session.run(None, {name: encoded[name].astype(np.int64) for name in names})[0][0]
        out.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
    return np.array(out)


def test_smoothing_keeps_fp32_outputs_and_levels_the_feed_forward_inputs(models_dir: Path, tmp_path: Path, shared_data: Path) -> None:
    """The smoothed fp32 graph computes what the original does; the activations its int8 products read are far
    more level across channels (the reason for smoothing)."""
    import numpy as np
    import onnx

    from worker.models import smoothing

    model = _copy(models_dir, "sentiment", tmp_path / "sentiment")
    exported = int8._export(model, SEQ, tmp_path)
    original = tmp_path / "original.onnx"
    shutil.copy(tmp_path / "fp32.onnx", original)
    done = smoothing.smooth(tmp_path / "fp32.onnx", model, exported["inputs"])
    layers = json.loads((model / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"]
    assert done["smoothed_products"] == 2 * layers and done["smoothing_alpha"] == smoothing.ALPHA
    assert done["calibration_texts"] == smoothing.CALIBRATION_LIMIT
    texts = _sentences(shared_data, 40)
    before, after = (_probabilities(p, model, texts) for p in (original, tmp_path / "fp32.onnx"))
    assert np.abs(before - after).max() < 1e-4
    graph = onnx.load(str(tmp_path / "fp32.onnx")).graph
    muls = [node for node in graph.node if node.name.endswith("__smooth")]
    assert len(muls) == len({node.input[0] for node in muls}) >= layers + 1
    spread = {}
    for name, path, tensors in (("before", original, [m.input[0] for m in muls]), ("after", tmp_path / "fp32.onnx", [m.output[0] for m in muls])):
        maxima = smoothing._activation_maxima(onnx.load(str(path)), tensors, [
            {k: v for k, v in feed.items()} for feed in _feeds(model, exported["inputs"], texts)])
        spread[name] = np.median([m.max() / np.median(m) for m in maxima.values()])
    assert spread["after"] < spread["before"] / 2, spread


def _feeds(model_dir: Path, names: list[str], texts: list[str]) -> list[dict[str, Any]]:
    import numpy as np
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [{name: tokenizer(text, return_tensors="np")[name].astype(np.int64) for name in names} for text in texts]


def test_smoothed_int8_build_is_closer_to_fp32(models_dir: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built with and without smoothing, on the same weights: the smoothed int8 probabilities stay nearer fp32 on
    held-out sentences, and the build records what it did."""
    import numpy as np

    texts = _sentences(shared_data, 300)
    changes = {}
    for smoothed in (True, False):
        model = _copy(models_dir, "sentiment", tmp_path / f"sentiment-{smoothed}")
        monkeypatch.setenv("TEXTWORKER_INT8_SMOOTHING", "1" if smoothed else "0")
        info = int8.build(model, SEQ)
        assert (info["smoothed_products"] > 0) is smoothed
        reference = _probabilities_torch(model, texts)
        quantised = _probabilities(int8.int8_dir(model) / int8.ONNX_FILE, model, texts)
        changes[smoothed] = float(np.abs(quantised[:, 1] - reference[:, 1]).mean())
    assert changes[True] < changes[False], changes


def _probabilities_torch(model_dir: Path, texts: list[str]) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        return torch.cat([model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1) for text in texts]).numpy()


def test_build_splits_fused_layer_norms_and_sessions_keep_them_split(models_dir: Path, tmp_path: Path, shared_data: Path) -> None:
    """ONNX Runtime's fused SkipLayerNormalization is slow on CPU; the build writes Add + LayerNormalization instead
    (the same arithmetic) and sessions do not fuse them back."""
    import numpy as np
    import onnx
    import onnxruntime

    model = _copy(models_dir, "sentiment", tmp_path / "sentiment")
    exported = int8._export(model, SEQ, tmp_path)
    layers = json.loads((model / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"]
    assert exported["split_layer_norms"] == 2 * layers
    graph = onnx.load(str(tmp_path / "fp32.onnx")).graph
    assert not [n for n in graph.node if n.op_type == "SkipLayerNormalization"]
    texts = _sentences(shared_data, 20)
    assert np.abs(_probabilities(tmp_path / "fp32.onnx", model, texts) - _probabilities_torch(model, texts)).max() < 1e-4
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "as-run.onnx")
    int8.open_session(tmp_path / "fp32.onnx", options)
    ran = {node.op_type for node in onnx.load(str(tmp_path / "as-run.onnx")).graph.node}
    assert "SkipLayerNormalization" not in ran and "LayerNormalization" in ran
    info = int8.build(model, SEQ)
    assert info["split_layer_norms"] == 2 * layers


def test_a_build_of_an_earlier_format_is_not_used_and_auto_says_so(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    info_file = int8.int8_dir(spam_copy) / int8.INFO_FILE
    kept = info_file.read_text(encoding="utf-8")
    try:
        info_file.write_text(json.dumps({**json.loads(kept), "format": int8.FORMAT - 1}), encoding="utf-8")
        assert int8.read_info(spam_copy) is None
        choice = precisions.choose("auto", "cpu", spam_copy, SEQ)
        assert choice.precision == "fp32" and f"format {int8.FORMAT - 1}" in choice.reason and "models quantize" in choice.reason
    finally:
        info_file.write_text(kept, encoding="utf-8")
    assert int8.stale_reason(spam_copy) is None and "format" not in precisions.choose("auto", "cpu", spam_copy, SEQ).reason


def test_profile_script_splits_a_real_build_and_bounds_its_roofline_fraction(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    """`benchmarks/int8_profile.py` on a real build: every operator the session ran is there, the split adds up to the
    wall time, and the measured fraction and the bound (every product at the peak) are fractions."""
    from tests.conftest import benchmark_script

    script = benchmark_script("int8_profile")
    result = script.profile(spam_copy, SEQ, TEXTS, rounds=1, warmup=2)
    assert result["docs"] == len(TEXTS) and result["int8_build"]["format"] == int8.FORMAT
    ops = {row["op"] for row in result["operators"]}
    assert ops & {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"} and "LayerNormalization" in ops
    assert result["int8_products_us_per_doc"] > 0 and result["fp32_operators_us_per_doc"] > 0
    parts = result["int8_products_us_per_doc"] + result["fp32_operators_us_per_doc"] + result["between_operators_us_per_doc"]
    assert parts == pytest.approx(result["wall_us_per_doc"], abs=1.0)
    assert 0 < result["roofline_fraction"] < 1 and 0 < result["bound_if_products_at_peak"] < 1
    assert len(result["peak_samples"]) == 3 and result["machine"]["cpu"]
    assert "of the one-thread int8 roofline" in script.render(result)


def test_profile_script_times_the_build_on_every_thread_at_three_depths(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    """`int8_profile.py --depths`: the planned calls alone, the stage and the engine on the same texts, each a fraction
    of the all-core roofline, and the losses between them computed from the best of each."""
    from tests.conftest import benchmark_script

    script = benchmark_script("int8_profile")
    deep = script.depths(SpamStage(name="spam", model=str(spam_copy)), TEXTS * 3, rounds=1, chunk=8)
    assert deep["docs"] == len(TEXTS) * 3 and deep["sessions"] == min(deep["threads"], int8.MAX_SESSIONS)
    assert set(deep["docs_per_s"]) == {"roofline", "runtime", "stage", "engine"}
    assert all(0 < fraction < 1 for fraction in deep["roofline_fraction"].values())
    rates = deep["docs_per_s"]
    assert deep["lost_to"]["stage_work"] == pytest.approx(1 - rates["stage"] / rates["runtime"], abs=1e-3)
    assert deep["lost_to"]["engine_work"] == pytest.approx(1 - rates["engine"] / rates["stage"], abs=1e-3)
    assert len(deep["peak_samples"]) == 2
