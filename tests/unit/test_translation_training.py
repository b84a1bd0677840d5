"""Fast checks of worker.training.translation on a tiny model and generated pairs (no network, CPU only)."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from worker.training.translation import (
    CURRICULUM_START,
    BatchOrder,
    build_scratch_model,
    competence,
    evaluate_translation,
    load_pairs,
    set_dropout,
    train_translation,
    translate_texts,
)

SUBJECTS = {"a man": "ein Mann", "a woman": "eine Frau", "a dog": "ein Hund", "a child": "ein Kind",
            "a girl": "ein Mädchen", "a boy": "ein Junge", "an old man": "ein alter Mann"}
VERBS = {"runs": "läuft", "sits": "sitzt", "stands": "steht", "plays": "spielt", "sleeps": "schläft",
         "waits": "wartet"}
PLACES = {"on the street": "auf der Straße", "in the park": "im Park", "on the grass": "auf dem Gras",
          "in the water": "im Wasser", "near the house": "neben dem Haus"}


def make_pairs(n: int = 200) -> list[tuple[str, str]]:
    combos = itertools.islice(itertools.product(SUBJECTS.items(), VERBS.items(), PLACES.items()), n)
    return [(f"{s[0].capitalize()} {v[0]} {p[0]}.", f"{s[1][0].upper()}{s[1][1:]} {v[1]} {p[1]}.")
            for s, v, p in combos]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Single-threaded torch: faster than oversubscribed threads on small CI machines, and reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_dir(one_thread, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mt") / "model"
    calls: list[tuple[int, int, dict]] = []
    result = train_translation(make_pairs(), out, size="tiny", epochs=2, lr=3e-3, batch_tokens=512, seed=0,
                               eval_pairs=make_pairs(20), progress=lambda s, n, d: calls.append((s, n, d)))
    result["_calls"] = calls
    return out, result


def test_load_pairs_skips_bad_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([json.dumps({"en": "Hi.", "de": "Hallo."}), "", "not json", json.dumps({"en": "x"}),
                               json.dumps({"en": " ", "de": "leer"}), json.dumps({"en": "Yes.", "de": "Ja."})]),
                    encoding="utf-8")
    assert load_pairs(path) == [("Hi.", "Hallo."), ("Yes.", "Ja.")]
    assert load_pairs(path, limit=1) == [("Hi.", "Hallo.")]
    assert load_pairs(path, src="de", tgt="en")[0] == ("Hallo.", "Hi.")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\nnope\n", encoding="utf-8")
    with pytest.raises(ValueError):
        load_pairs(bad)


def test_scratch_build_is_standard_hf_dir(tmp_path):
    build_scratch_model(make_pairs(), tmp_path, size="tiny", vocab_size=500, seed=0)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.is_fast
    ids = tok("A dog runs.")["input_ids"]
    assert ids[-1] == tok.eos_token_id
    labels = tok(text_target="Ein Hund läuft.")["input_ids"]
    assert labels[-1] == tok.eos_token_id
    assert tok.decode(labels, skip_special_tokens=True) == "Ein Hund läuft."
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    gen = model.generation_config
    assert gen.decoder_start_token_id == tok.bos_token_id and gen.eos_token_id == tok.eos_token_id
    assert gen.pad_token_id == tok.pad_token_id
    out = model.generate(**tok(["A dog runs.", "A man sits in the park."], return_tensors="pt", padding=True),
                         max_new_tokens=4)
    assert out.shape[0] == 2


def test_scratch_build_deterministic(tmp_path):
    for name in ("a", "b"):
        build_scratch_model(make_pairs(), tmp_path / name, size="tiny", vocab_size=500, seed=3)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    ma, mb = (AutoModelForSeq2SeqLM.from_pretrained(tmp_path / n) for n in ("a", "b"))
    assert all(torch.equal(p, q) for p, q in zip(ma.state_dict().values(), mb.state_dict().values()))


def test_training_deterministic(tmp_path):
    runs = [train_translation(make_pairs(60), tmp_path / n, size="tiny", epochs=1, batch_tokens=256, seed=5)
            for n in ("a", "b")]
    assert runs[0]["steps"] == runs[1]["steps"]
    ma, mb = (AutoModelForSeq2SeqLM.from_pretrained(tmp_path / n) for n in ("a", "b"))
    assert all(torch.equal(p, q) for p, q in zip(ma.state_dict().values(), mb.state_dict().values()))


def test_time_budget_stops_early(tmp_path):
    calls: list[int] = []
    result = train_translation(make_pairs(60), tmp_path, size="tiny", epochs=50, batch_tokens=256, max_minutes=1e-4,
                               progress=lambda s, n, d: calls.append(s))
    assert 1 <= result["steps"] < 50 * 32 and calls[-1] == result["steps"]
    assert (tmp_path / "model.safetensors").exists()


def test_set_dropout_turns_a_marian_model_deterministic_in_training_mode(tmp_path):
    build_scratch_model(make_pairs(40), tmp_path, size="tiny", vocab_size=300, seed=0)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, attn_implementation="eager").train()
    ids = torch.tensor([[5, 6, 7, 8, 1]])
    batch = {"input_ids": ids, "decoder_input_ids": ids}
    torch.manual_seed(0)
    assert not torch.equal(model(**batch).logits, model(**batch).logits)  # the scratch model's own dropout 0.1
    set_dropout(model, 0.0)
    assert torch.equal(model(**batch).logits, model(**batch).logits)
    assert model.config.dropout == model.config.attention_dropout == 0.0
    with pytest.raises(ValueError):
        set_dropout(model, 1.5)


def test_training_dropout_is_recorded_and_saved(tmp_path):
    result = train_translation(make_pairs(60), tmp_path, size="tiny", epochs=1, batch_tokens=256, dropout=0.0)
    assert result["params"]["dropout"] == result["params"]["attention_dropout"] == 0.0
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path).config.dropout == 0.0
    default = train_translation(make_pairs(60), tmp_path / "d", size="tiny", epochs=1, batch_tokens=256)
    assert default["params"]["dropout"] == 0.1


def test_late_dropout_is_off_for_its_epochs_then_on(tmp_path, monkeypatch):
    import worker.training.translation as tt

    rates: list[float] = []
    real = tt.set_dropout
    monkeypatch.setattr(tt, "set_dropout", lambda model, p: (rates.append(p), real(model, p)))
    steps: list[int] = []
    result = train_translation(make_pairs(60), tmp_path, size="tiny", epochs=2, batch_tokens=256, dropout=0.2,
                               dropout_from_epoch=1, progress=lambda s, n, d: steps.append(n))
    total = steps[-1]  # two epochs of batches
    assert rates == [0.2, 0.0, 0.2]  # the rate asked for, off for the first epoch, then on
    assert result["params"]["dropout_from_step"] == total // 2 == math.ceil(total / result["epochs"])
    assert result["params"]["dropout"] == 0.2 and result["params"]["dropout_from_epoch"] == 1
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path).config.dropout == 0.2


def test_late_dropout_never_reached_trains_and_saves_without_dropout(tmp_path):
    result = train_translation(make_pairs(60), tmp_path, size="tiny", epochs=1, batch_tokens=256, dropout_from_epoch=3)
    assert result["params"]["dropout_from_step"] is None and result["params"]["dropout"] == 0.0
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path).config.dropout == 0.0
    with pytest.raises(ValueError, match="dropout_from_epoch"):
        train_translation(make_pairs(60), tmp_path / "bad", size="tiny", epochs=1, batch_tokens=256, dropout_from_epoch=-1)


def test_competence_grows_from_the_start_share_to_all_examples():
    shares = [competence(step, 100) for step in range(0, 101)]
    assert shares[0] == pytest.approx(CURRICULUM_START)
    assert all(a < b for a, b in itertools.pairwise(shares[:100]))
    assert shares[50] == pytest.approx(math.sqrt(CURRICULUM_START ** 2 + (1 - CURRICULUM_START ** 2) / 2))
    assert shares[100] == competence(500, 100) == competence(0, 0) == 1.0


def test_curriculum_draws_the_shortest_batches_first_then_plain_epochs():
    # batches in ascending length; the first holds 10 examples, the other 90 one each: 100 examples
    batches = [list(range(10))] + [[10 + i] for i in range(90)]
    order = BatchOrder(batches, random.Random(0), curriculum_steps=200)
    picks = [order.pick(step) for step in range(200)]
    assert picks[0] == 0  # competence 0.1: the first batch alone holds the shortest 10 %
    for step, k in enumerate(picks):  # batch k reaches (10 + k) % of the examples
        assert 10 + k <= competence(step, 200) * 100 + 1e-9
    assert sum(picks[:50]) < sum(picks[150:])
    epoch = [order.pick(step) for step in range(200, 291)]
    assert sorted(epoch) == list(range(91))  # after the curriculum, every batch once per epoch


def test_batch_order_without_curriculum_is_the_shuffled_epochs_it_always_was():
    batches = [[i] for i in range(7)]
    order, rng, expected = BatchOrder(batches, random.Random(3)), random.Random(3), []
    for _ in range(3):
        epoch = list(range(7))
        rng.shuffle(epoch)
        expected += epoch[::-1]
    assert [order.pick(step) for step in range(21)] == expected


def test_length_curriculum_trains_records_and_rejects_negative(tmp_path):
    result = train_translation(make_pairs(60), tmp_path, size="tiny", epochs=2, batch_tokens=256, curriculum_epochs=1)
    batches_per_epoch = result["steps"] / result["epochs"]
    assert result["params"]["curriculum_epochs"] == 1
    assert result["params"]["curriculum_steps"] == round(batches_per_epoch) and result["steps"] == 2 * batches_per_epoch
    assert "curriculum_epochs" not in train_translation(make_pairs(60), tmp_path / "p", size="tiny", epochs=1,
                                                        batch_tokens=256)["params"]
    with pytest.raises(ValueError, match="curriculum_epochs"):
        train_translation(make_pairs(60), tmp_path / "bad", size="tiny", epochs=1, batch_tokens=256, curriculum_epochs=-1)


def test_unknown_size_rejected(tmp_path):
    with pytest.raises(ValueError):
        build_scratch_model(make_pairs(20), tmp_path, size="huge")


def test_train_result_and_progress(trained_dir):
    out, result = trained_dir
    # 1 % of the pairs is held out to choose between the final weights and their average over the last quarter
    assert result["steps"] > 0 and result["train_pairs"] == 198 and result["seed"] == 0
    selection = result["selection"]
    assert selection["held_out_pairs"] == 2 and selection["averaged_steps"] >= 1
    assert selection["kept"] == ("average" if selection["average_loss"] <= selection["final_loss"] else "final")
    assert result["train_seconds"] >= 0 and result["epochs"] > 0
    assert result["params"]["size"] == "tiny" and result["params"]["lr"] == 3e-3
    assert set(result["metrics"]) >= {"bleu", "chrf", "n"}
    calls = result["_calls"]
    assert calls and calls[-1][0] == result["steps"] and "loss" in calls[-1][2]
    assert (out / "model.safetensors").exists()


def test_reload_translate_keeps_order(trained_dir):
    out, _ = trained_dir
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    texts = ["A dog sleeps in the water.", "", "A man runs.", "A child plays on the grass near the house."]
    batched = translate_texts(model, tok, texts, max_new_tokens=12, batch_size=2)
    single = [translate_texts(model, tok, [t], max_new_tokens=12)[0] for t in texts]
    assert len(batched) == len(texts) and all(isinstance(t, str) for t in batched)
    assert batched == single


def test_long_input_is_truncated(trained_dir):
    out, _ = trained_dir
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    long_text = "A dog runs in the park. " * 250
    assert len(long_text) > 5000
    result = translate_texts(model, tok, [long_text, "A boy waits."], max_new_tokens=1000)
    assert len(result) == 2 and all(isinstance(t, str) for t in result)


def test_evaluate_from_dir_and_finetune(trained_dir, tmp_path):
    out, _ = trained_dir
    metrics = evaluate_translation(out, make_pairs(10))
    assert set(metrics) == {"bleu", "chrf", "n"} and metrics["n"] == 10
    assert 0.0 <= metrics["bleu"] <= 100.0
    with pytest.raises(ValueError):
        evaluate_translation(AutoModelForSeq2SeqLM.from_pretrained(out), make_pairs(2))
    tuned = train_translation(make_pairs(40), tmp_path / "ft", base=out, epochs=1, lr=1e-4, batch_tokens=256)
    assert tuned["params"]["base"] == str(out) and tuned["params"]["size"] is None and tuned["steps"] > 0
    assert AutoTokenizer.from_pretrained(tmp_path / "ft").is_fast


@pytest.fixture(scope="module")
def warm_dir(one_thread, tmp_path_factory) -> tuple[Path, dict]:
    from worker.models import loading

    out = tmp_path_factory.mktemp("warm") / "model"
    result = train_translation(make_pairs(210), out, base=str(loading.builtin_dir("minilm")), size="tiny", epochs=6,
                               lr=3e-3, batch_tokens=512, seed=0)
    return out, result


def test_warm_start_keeps_the_pretrained_encoder_frozen_and_learns_a_decoder(warm_dir):
    from transformers import AutoModel

    from worker.models import loading

    out, result = warm_dir
    params = result["params"]
    assert params["start"] == "warm" and params["frozen_encoder"] and params["size"] == "tiny"
    assert 0 < params["n_trained"] < params["n_parameters"]
    assert 0.3 < params["embeddings_one_piece"] <= 1.0  # most BPE tokens are one MiniLM piece
    selection = result["selection"]
    assert selection["held_out_pairs"] == 2 and result["train_pairs"] == 208
    assert selection["kept"] in {"final", "average"}
    tokenizer = AutoTokenizer.from_pretrained(out)
    # learned: the held-out loss is far below a uniform guess over the vocabulary
    assert min(selection["final_loss"], selection.get("average_loss", 99.0)) < 0.5 * torch.log(torch.tensor(float(len(tokenizer))))
    model = AutoModelForSeq2SeqLM.from_pretrained(out)  # a plain HF directory (EncoderDecoderModel), no remote code
    assert model.config.model_type == "encoder-decoder"
    pretrained_dir = loading.builtin_dir("minilm")
    pretrained = AutoModel.from_pretrained(pretrained_dir)
    theirs = dict(pretrained.named_parameters())
    for name, mine in model.get_encoder().named_parameters():
        if name != "embeddings.word_embeddings.weight":
            assert torch.equal(mine, theirs[name]), name  # every other encoder weight is MiniLM's, untouched by training
    # a word-initial token starts from the pretrained embedding of that word
    base_tokenizer = AutoTokenizer.from_pretrained(pretrained_dir)
    new_id = tokenizer.convert_tokens_to_ids("\u2581dog")
    assert new_id != tokenizer.unk_token_id
    old_id = base_tokenizer.convert_tokens_to_ids("dog")
    assert torch.equal(model.get_encoder().get_input_embeddings().weight[new_id],
                       pretrained.get_input_embeddings().weight[old_id])


def test_warm_started_model_translates_and_fine_tunes_like_any_seq2seq_dir(warm_dir, tmp_path):
    out, _ = warm_dir
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    texts = ["A dog sleeps in the water.", "", "A man runs."]
    batched = translate_texts(model, tokenizer, texts, max_new_tokens=12, batch_size=2, num_beams=2)
    assert len(batched) == 3 and all(isinstance(t, str) for t in batched)
    assert batched == [translate_texts(model, tokenizer, [t], max_new_tokens=12, num_beams=2)[0] for t in texts]
    metrics = evaluate_translation(out, make_pairs(10))
    assert metrics["n"] == 10 and metrics["chrf"] > 10.0  # it has learned something of the toy language
    tuned = train_translation(make_pairs(40), tmp_path / "ft", base=out, epochs=1, lr=1e-5, batch_tokens=256)
    assert tuned["params"]["start"] == "finetune" and not tuned["params"]["frozen_encoder"]
    assert tuned["params"]["n_trained"] == tuned["params"]["n_parameters"]  # feedback fine-tuning moves every weight
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ft").config.model_type == "encoder-decoder"


@pytest.mark.parametrize("bf16", [False, True])
def test_cached_encoder_states_feed_the_decoder_with_and_without_bf16(warm_dir, bf16):
    """Warm training caches the frozen encoder's states once; the decoder must read them whether or not the CPU
    trains under bf16 autocast (the fp32 path is what CPUs without AVX512-BF16/AMX take)."""
    from worker.training.translation import _encode_sources, _teacher_forced_loss

    out, _ = warm_dir
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    pairs = make_pairs(6)
    src = tokenizer([p[0] for p in pairs])["input_ids"]
    tgt = tokenizer(text_target=[p[1] for p in pairs])["input_ids"]
    memory = _encode_sources(model.get_encoder(), src, tokenizer.pad_token_id, bf16)
    assert [m.dtype for m in memory] == [torch.bfloat16 if bf16 else torch.float32] * len(pairs)
    assert [m.size(0) for m in memory] == [len(s) for s in src]
    loss = _teacher_forced_loss(model, memory, src, tgt, list(range(len(pairs))), tokenizer.pad_token_id, bf16)
    assert 0.0 < loss < float(torch.log(torch.tensor(float(len(tokenizer)))))  # finite, and better than a uniform guess


def test_scratch_training_keeps_the_weights_with_the_lower_held_out_loss(tmp_path):
    """The saved model is the candidate the selection names: its held-out loss, recomputed from the saved directory,
    is the lower of the two losses the run reported."""
    from worker.training import cpu_has_bf16
    from worker.training.translation import _teacher_forced_loss

    pairs = make_pairs(210)
    result = train_translation(pairs, tmp_path, size="tiny", epochs=3, lr=3e-3, batch_tokens=256, seed=2)
    selection = result["selection"]
    assert selection["averaged_steps"] >= 1 and selection["held_out_pairs"] == 2
    shuffled = pairs[:]
    random.Random(2).shuffle(shuffled)
    held = shuffled[:2]
    tok = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, attn_implementation="eager")
    src = tok([p[0] for p in held])["input_ids"]
    tgt = tok(text_target=[p[1] for p in held])["input_ids"]
    loss = _teacher_forced_loss(model, None, src, tgt, [0, 1], tok.pad_token_id, cpu_has_bf16())
    assert loss == pytest.approx(min(selection["final_loss"], selection["average_loss"]), abs=2e-3)
