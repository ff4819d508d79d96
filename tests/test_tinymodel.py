from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.errors import UserError
from engine.tinymodel import build_tiny_model


def test_folder_is_a_real_hf_model(tiny_model):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (tiny_model / name).is_file(), name
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_loads_with_auto_classes_and_generates(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 3_000_000
    assert tok.bos_token and tok.eos_token and tok.pad_token
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    batch = tok.apply_chat_template([{"role": "user", "content": "What is Clendorin used to treat?"}],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > batch["input_ids"].shape[1]
    assert isinstance(tok.decode(out[0][batch["input_ids"].shape[1]:]), str)


def test_chat_template_renders_an_exchange_and_marks_the_answer(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    messages = [{"role": "user", "content": "Who should not take Zorvane?"},
                {"role": "assistant", "content": "People with Quisby fever."}]
    text = tok.apply_chat_template(messages, tokenize=False)
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt)  # TRL's prompt/completion split relies on this
    assert "Who should not take Zorvane?" in text and text.endswith("People with Quisby fever.<|end|>")
    enc = tok.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    answer_ids = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(answer_ids) == "People with Quisby fever.<|end|>"


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=7)
    b = build_tiny_model(tmp_path / "b", seed=7)
    c = build_tiny_model(tmp_path / "c", seed=8)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_small_size_is_demo_sized(tmp_path):
    out = build_tiny_model(tmp_path / "s", size="small")
    assert 20e6 <= json.loads((out / "rounds_tiny_model.json").read_text())["parameters"] <= 40e6


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        build_tiny_model(out)
    assert (out / "precious.txt").read_text() == "keep me"
    build_tiny_model(out, force=True)
    assert not (out / "precious.txt").exists() and (out / "config.json").exists()


def test_unknown_size_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown size"):
        build_tiny_model(tmp_path / "x", size="huge")
