"""The OpenVINO int8 build of sequence classifiers (`worker.models.int8_openvino`): built, checked, picked by
`precision: auto`, and giving every document the same scores, bit for bit, whatever its batch mates.

The tests work on a copy of the default spam version, so `models/` keeps what `make models` recorded.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.pipeline import SpamStage
from tests.conftest import int8_runtime_setting, spam_runs_at
from worker.errors import ModelFormatError
from worker.lifecycle import precision as guard
from worker.models import int8, int8_openvino, loading
from worker.models import precision as precisions

SEQ = int8.SEQ_CLASS


@pytest.fixture(scope="module", autouse=True)
def openvino_builds() -> Any:
    yield from int8_runtime_setting("openvino")


@pytest.fixture(scope="module")
def spam_copy(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = Path(loading.resolve(str(models_dir / "spam")).location)
    target = tmp_path_factory.mktemp("int8-openvino") / "spam-v0"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*int8.DIRS.values()))
    return target


@pytest.fixture(scope="module")
def spam_checked(spam_copy: Path) -> dict[str, Any]:
    return guard.check(SpamStage(name="spam", model=str(spam_copy)), spam_copy)


@pytest.fixture(scope="module")
def messages(shared_data: Path) -> list[str]:
    rows = (shared_data / "sms_spam" / "test.tsv").read_text(encoding="utf-8").splitlines()
    return [row.split("\t", 1)[-1] for row in rows[:96]]


@pytest.fixture(scope="module")
def tokenizer(spam_copy: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spam_copy)


def test_runtime_choice_follows_the_model_kind_and_the_override(spam_copy: Path) -> None:
    assert int8.runtime_for(SEQ, env={}) == "onnxruntime"  # the default
    assert int8.runtime_for(SEQ) == "openvino"  # this module's setting
    assert int8.runtime_for(model_dir=spam_copy) == "openvino"  # the kind read from config.json
    assert int8.runtime_for("AutoModelForQuestionAnswering") == "onnxruntime"  # QA stays on ONNX Runtime
    assert int8.runtime_for("AutoModelForQuestionAnswering", env={"TEXTWORKER_INT8_RUNTIME": "openvino"}) == "onnxruntime"
    assert int8.runtime_for(SEQ, env={"TEXTWORKER_INT8_RUNTIME": "onnxruntime"}) == "onnxruntime"
    with pytest.raises(ModelFormatError, match="TEXTWORKER_INT8_RUNTIME"):
        int8.runtime_for(SEQ, env={"TEXTWORKER_INT8_RUNTIME": "tensorrt"})
    with pytest.raises(ModelFormatError, match="sequence classifiers"):
        int8.build(spam_copy, "AutoModelForQuestionAnswering", runtime="openvino")


def test_build_is_recorded_checked_and_picked_by_auto(spam_copy: Path, spam_checked: dict[str, Any]) -> None:
    info = int8.read_info(spam_copy)
    assert info is not None and info["runtime"] == "openvino" and info["quality"] == spam_checked
    assert info["batch_independent"] is True and info["length_bucket"] == int8_openvino.LENGTH_BUCKET
    assert "static scales" in info["activations"] and info["calibration_texts"] > 100
    assert info["last_layer_first_token_only"] is True
    directory = spam_copy / int8.DIRS["openvino"]
    assert all((directory / name).is_file() for name in int8.MODEL_FILES["openvino"])
    assert int8.read_info(spam_copy, "onnxruntime") is None  # no ONNX Runtime build was made
    assert spam_checked["passed"] and spam_checked["rows"] > 100
    choice = precisions.choose("auto", "cpu", spam_copy, SEQ)
    assert choice.precision == "int8" and "passed its quality check" in choice.reason
    assert int8.build(spam_copy, SEQ)["built_at"] == info["built_at"]  # cached, not rebuilt


def test_int8_stage_agrees_with_fp32(spam_copy: Path, spam_checked: dict[str, Any], messages: list[str]) -> None:
    docs = messages[:48]
    runs = spam_runs_at(spam_copy, docs)
    assert all(r.label in ("spam", "ham") for r in runs["int8"])
    assert sum(a.label == b.label for a, b in zip(runs["fp32"], runs["int8"], strict=True)) >= len(docs) - 2
    moved = [abs(a.output["spam_probability"] - b.output["spam_probability"]) for a, b in zip(runs["fp32"], runs["int8"], strict=True)]
    assert 0 < max(moved) < 0.2  # really int8, and close


def _logits(encoder: Any, tokenizer: Any, texts: list[str], side: str = "right") -> torch.Tensor:
    tokenizer.padding_side = side
    try:
        return encoder(**tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)).logits
    finally:
        tokenizer.padding_side = "right"


def test_scores_do_not_move_with_batch_mates_threads_or_padding(spam_copy: Path, spam_checked: dict[str, Any], messages: list[str],
                                                               tokenizer: Any) -> None:
    one = int8_openvino.OpenVinoEncoder(spam_copy, threads=1)
    two = int8_openvino.OpenVinoEncoder(spam_copy, threads=2)
    alone = torch.cat([_logits(one, tokenizer, [text]) for text in messages])
    lengths = {len(ids) for ids in tokenizer(messages, truncation=True, max_length=128)["input_ids"]}
    assert len({int8_openvino.bucket(n, 512) for n in lengths}) > 3  # the batches mix buckets
    for encoder in (one, two):
        assert torch.equal(_logits(encoder, tokenizer, messages), alone)
        assert torch.equal(_logits(encoder, tokenizer, messages, side="left"), alone)
        reversed_rows = _logits(encoder, tokenizer, messages[::-1])
        assert torch.equal(reversed_rows.flip(0), alone)
    empty = torch.zeros((0, 5), dtype=torch.long)
    assert one(input_ids=empty, attention_mask=empty).logits.shape == (0, one.config.num_labels)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(min_size=0, max_size=300), min_size=1, max_size=6), mates=st.lists(st.text(max_size=400), max_size=6))
def test_any_text_scores_the_same_alone_and_among_any_mates(spam_copy: Path, spam_checked: dict[str, Any], tokenizer: Any,
                                                            texts: list[str], mates: list[str]) -> None:
    encoder = _shared_encoder(spam_copy)
    alone = torch.cat([_logits(encoder, tokenizer, [text]) for text in texts])
    mixed = _logits(encoder, tokenizer, mates + texts)
    assert torch.isfinite(mixed).all()
    assert torch.equal(mixed[len(mates):], alone)


_ENCODERS: dict[Path, Any] = {}


def _shared_encoder(model_dir: Path) -> Any:
    if model_dir not in _ENCODERS:
        _ENCODERS[model_dir] = int8_openvino.OpenVinoEncoder(model_dir, threads=2)
    return _ENCODERS[model_dir]


def test_a_read_only_version_records_its_verdict_with_a_copy_of_the_build_in_the_cache(
        spam_copy: Path, spam_checked: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "read-only"
    shutil.copytree(spam_copy, model)  # with its OpenVINO build beside the weights
    beside = model.resolve() / int8.DIRS["openvino"]
    cache = tmp_path / "cache"
    monkeypatch.setenv("TEXTWORKER_CACHE_DIR", str(cache))
    writable = int8._writable
    monkeypatch.setattr(int8, "_writable", lambda d: not Path(d).resolve().is_relative_to(model.resolve()) and writable(d))
    shipped = int8.read_info(model)
    assert shipped is not None and int8.int8_dir(model) == beside
    int8.write_info(model, {**shipped, "quality": {**spam_checked, "rows": 7}})
    moved = int8.int8_dir(model)
    assert moved.is_relative_to(cache) and all((moved / name).is_file() for name in int8.MODEL_FILES["openvino"])
    assert int8.read_info(model)["quality"]["rows"] == 7  # type: ignore[index]
    assert int8.read_info(spam_copy)["quality"] == spam_checked  # type: ignore[index]  # the shipped record is untouched
    assert int8_openvino.OpenVinoEncoder(model, threads=1)._path.startswith(str(cache))


def test_runtime_comparison_script_runs_both_builds_side_by_side(spam_copy: Path, spam_checked: dict[str, Any],
                                                                  messages: list[str]) -> None:
    from tests.conftest import benchmark_script

    script = benchmark_script("int8_runtimes")
    result = script.compare(SpamStage(name="spam", model=str(spam_copy)), messages[:40], rounds=1)
    assert set(result["docs_per_s"]) == {"onnxruntime", "openvino"} and all(v > 0 for v in result["docs_per_s"].values())
    assert result["builds"]["openvino"]["runtime"] == "openvino" and result["builds"]["onnxruntime"]["runtime"] == "onnxruntime"
    assert result["int8_peak_gops"] == max(max(v) for v in result["int8_peaks_gops"].values())
    assert set(result["int8_peaks_gops"]) == {"onnxruntime", "openvino"}
    assert all(0.9 <= v <= 1.0 for v in result["labels_as_fp32"].values())
    assert 0 < result["roofline_fraction"]["openvino"] < 1.5
    rendered = script.render(result)
    assert "OpenVINO / ONNX Runtime" in rendered and "GOP/s" in rendered
    assert int8.read_info(spam_copy)["runtime"] == "openvino"  # type: ignore[index]  # still the build this setting picks
    assert os.environ["TEXTWORKER_INT8_RUNTIME"] == "openvino"  # the script restores the setting it changes


def test_the_stage_hands_a_whole_chunk_over_and_gets_each_document_s_own_scores(spam_copy: Path, spam_checked: dict[str, Any],
                                                                                 messages: list[str], tokenizer: Any) -> None:
    from worker.stages.base import StageStats
    from worker.stages.classify import classify_texts

    encoder = _shared_encoder(spam_copy)
    assert encoder.plans_calls
    alone = torch.softmax(torch.cat([_logits(encoder, tokenizer, [text]) for text in messages]).float(), dim=-1).tolist()
    rows_seen: list[int] = []
    handle = encoder.register_forward_pre_hook(lambda _m, _a, given: rows_seen.append(int(given["input_ids"].shape[0])))
    try:
        stats = StageStats()
        probs, lengths = classify_texts(encoder, tokenizer, messages, max_length=128, max_batch=5, stats=stats)
    finally:
        handle.remove()
    assert probs == alone  # bit for bit, in input order
    assert lengths == [len(ids) for ids in tokenizer(messages, truncation=True, max_length=128)["input_ids"]]
    assert sum(rows_seen) == len(messages) and max(rows_seen) <= 5  # the stage's batch size caps a call
    assert stats.batches == len(rows_seen) and stats.real_tokens == sum(lengths)
    assert stats.real_tokens <= stats.padded_tokens < stats.real_tokens + len(messages) * int8_openvino.LENGTH_BUCKET
    outputs, calls = encoder.run_encoded([])
    assert outputs["logits"].shape == (0, encoder.config.num_labels) and calls == []


def test_loading_prepares_every_call_shape_without_changing_a_score(spam_copy: Path, spam_checked: dict[str, Any], messages: list[str],
                                                                    tokenizer: Any, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TEXTWORKER_OPENVINO_WARM_TOKENS", "0")
    cold = int8_openvino.OpenVinoEncoder(spam_copy, threads=2)
    monkeypatch.setenv("TEXTWORKER_OPENVINO_WARM_TOKENS", "64")
    fed: list[tuple[int, int]] = []
    infer = int8_openvino.OpenVinoEncoder._infer

    def counting(self: Any, feeds: list[dict[str, Any]]) -> Any:
        fed.extend(tuple(feed["input_ids"].shape) for feed in feeds)
        return infer(self, feeds)

    monkeypatch.setattr(int8_openvino.OpenVinoEncoder, "_infer", counting)
    with caplog.at_level(logging.INFO, logger="worker.models.int8_openvino"):
        warm = int8_openvino.OpenVinoEncoder(spam_copy, threads=2)
    prepared = [record for record in caplog.records if record.getMessage() == "int8 call shapes prepared"]
    assert len(prepared) == 1 and prepared[0].shapes == 8 * 5 and prepared[0].streams == 2  # type: ignore[attr-defined]
    assert sorted(set(fed)) == sorted(int8_openvino.warm_shapes(warm.limit, 64)) and len(fed) == 2 * 8 * 5  # each in both streams
    assert cold.warm_tokens == 0 and warm.warm_tokens == 64
    assert torch.equal(_logits(warm, tokenizer, messages), _logits(cold, tokenizer, messages))
    fed.clear()
    short = [text for text in messages if len(tokenizer(text)["input_ids"]) <= 64]
    _logits(warm, tokenizer, short)
    assert fed and set(fed) <= set(int8_openvino.warm_shapes(warm.limit, 64))  # every call of these texts was prepared
    fed.clear()
    from worker.stages import build_stage

    stage = build_stage(SpamStage(name="spam", model=str(spam_copy), precision="int8", max_length=20))
    stage.load()
    assert stage.model.warm_tokens == 20  # no shape longer than the stage's inputs
    assert sorted(set(fed)) == sorted(int8_openvino.warm_shapes(stage.model.limit, 20)) and {w for _, w in fed} == {8, 16}


def test_warm_up_script_compares_fresh_builds_with_and_without_it(spam_copy: Path, spam_checked: dict[str, Any],
                                                                  messages: list[str]) -> None:
    from tests.conftest import benchmark_script

    script = benchmark_script("openvino_warmup")
    result = script.compare(SpamStage(name="spam", model=str(spam_copy)), messages[:24], rounds=1)
    assert set(result["best"]) == {"warm_up", "no_warm_up"}
    assert all(value > 0 for values in result["best"].values() for value in values.values())
    assert result["best"]["warm_up"]["load_s"] > result["best"]["no_warm_up"]["load_s"]  # it ran the 80 shapes at load
    assert set(result["warm_up_over_none"]) == {"first_pass", "second_pass", "engine"} and result["machine"]["cores"] >= 1
    assert "warm-up / none" in script.render(result)
    assert os.environ["TEXTWORKER_INT8_RUNTIME"] == "openvino" and "TEXTWORKER_OPENVINO_WARM_TOKENS" not in os.environ


def test_ceiling_script_measures_the_runtime_the_stage_and_the_engine_on_the_same_calls(spam_copy: Path, spam_checked: dict[str, Any],
                                                                                          messages: list[str], tokenizer: Any,
                                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import benchmark_script

    script = benchmark_script("openvino_ceiling")
    monkeypatch.delenv("TEXTWORKER_INT8_RUNTIME", raising=False)
    result = script.compare(SpamStage(name="spam", model=str(spam_copy)), messages[:30], rounds=1, chunk=16)
    assert "TEXTWORKER_INT8_RUNTIME" not in os.environ  # the script restores the setting it changes
    assert set(result["docs_per_s"]) == {"roofline", "runtime", "stage", "engine"} and all(v > 0 for v in result["docs_per_s"].values())
    assert set(result["roofline_fraction"]) == {"runtime", "stage", "engine"} and len(result["samples"]["engine"]) == 1
    lengths = [len(ids) for ids in tokenizer(messages[:30], truncation=True, max_length=128)["input_ids"]]
    assert result["mean_tokens"] == round(sum(lengths) / len(lengths), 1)
    assert result["length_bucket"] == int8_openvino.LENGTH_BUCKET and 0 <= result["padding_share"] < 0.5
    assert result["padded_gflop_per_doc"] >= result["forward_gflop_per_doc"] > 0
    split = result["operator_split"]
    assert split["products"] > 0 and split["attention"] >= 0 and split["products"] + split["attention"] + split["other"] == pytest.approx(1, abs=1e-3)
    assert any(row["op"] == "FullyConnected" for row in split["operators"])  # the int8 products are where OpenVINO puts them
    assert 0 < result["bound_if_products_at_peak"] <= 1 - result["padding_share"] + 1e-3
    assert "of the int8 roofline" in script.render(result) and "fused attention" in script.render(result)


def test_plan_feeds_pads_each_document_to_its_bucket_in_the_calls_run_encoded_makes(spam_copy: Path, spam_checked: dict[str, Any],
                                                                                     messages: list[str], tokenizer: Any) -> None:
    encoder = _shared_encoder(spam_copy)
    encoded = tokenizer(messages[:20], truncation=True, max_length=128)
    calls, feeds = encoder.plan_feeds(encoded["input_ids"], encoded.get("token_type_ids"), max_rows=4)
    assert sorted(row for members, _ in calls for row in members) == list(range(20))
    for (members, width), feed in zip(calls, feeds, strict=True):
        assert set(feed) == set(encoder.inputs) and feed["input_ids"].shape == (len(members), width) and len(members) <= 4
        for slot, row in enumerate(members):
            real = len(encoded["input_ids"][row])
            assert width == int8_openvino.bucket(real, encoder.limit)
            assert feed["input_ids"][slot, :real].tolist() == encoded["input_ids"][row] and feed["attention_mask"][slot].sum() == real
    _outputs, made = encoder.run_encoded(encoded["input_ids"], encoded.get("token_type_ids"), max_rows=4)
    assert made == calls
