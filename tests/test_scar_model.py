"""SCAR's StyleRanker: the architecture exactly as ALGORITHMS.md, the official checkpoint layout, strict loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scar_helpers import make_tiny_bert, make_tiny_ranker

from selectbench.errors import SelectbenchError
from selectbench.selectors.scar.model import (
    StyleRanker,
    load_ranker,
    pad_batch,
    ranker_instruction,
    save_ranker,
    score_pairs,
    tokenize_texts,
)

INSTRUCTIONS = ["write a function to sort the list", "why is the sky blue", "sort", "print the string"]
ANSWERS = [
    "just use sorted lol it works fine honestly",
    "**summary** blue light is scattered . **steps** 1. light 2. sky",
    "use sorted",
    "here is the answer . print the string with print ( text ) . it returns the value .",
]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), dropout=0.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, encoder_dir: Path) -> Path:
    return make_tiny_ranker(tmp_path_factory.mktemp("ranker") / "ckpt", encoder_dir)


def _batch(tokenizer, texts):  # type: ignore[no-untyped-def]
    return pad_batch(tokenizer, tokenize_texts(tokenizer, texts, 512), "cpu")


def test_forward_is_the_scar_architecture(checkpoint: Path) -> None:
    loaded = load_ranker(checkpoint, device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    ins_ids, ins_mask = _batch(tokenizer, INSTRUCTIONS)
    ans_ids, ans_mask = _batch(tokenizer, ANSWERS)
    with torch.no_grad():
        score, v_c, v_p = model(ins_ids, ins_mask, ans_ids, ans_mask)
        # By hand: e = pooler_output (the BERT encoder has a pooler); v_p = max over real answer tokens only.
        ins_out = model.encoder(input_ids=ins_ids, attention_mask=ins_mask)
        ans_out = model.encoder(input_ids=ans_ids, attention_mask=ans_mask)
        v_p_hand = torch.stack(
            [ans_out.last_hidden_state[b, ans_mask[b].bool()].max(dim=0).values for b in range(len(ANSWERS))]
        )
        v_c_hand = model.relation_network(torch.cat([ins_out.pooler_output, ans_out.pooler_output], dim=-1))
        score_hand = model.output_layer(torch.cat([v_c_hand, v_p_hand], dim=-1)).view(-1)
    assert score.shape == (4,) and v_c.shape == (4, 32) and v_p.shape == (4, 32)
    torch.testing.assert_close(v_p, v_p_hand)
    torch.testing.assert_close(v_c, v_c_hand)
    torch.testing.assert_close(score, score_hand)
    # The padded positions of the shorter answers must not win the max-pool.
    assert ans_mask.sum(dim=1).min() < ans_mask.shape[1]
    # Module shapes: Linear(2H->L) -> ReLU -> Linear(L->H); Linear(2H->L) -> ReLU -> Linear(L->1).
    shapes = [tuple(m.weight.shape) for m in (*model.relation_network[::2], *model.output_layer[::2])]
    assert shapes == [(16, 64), (32, 16), (16, 64), (1, 16)]


def test_an_encoder_without_a_pooler_uses_the_cls_state(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    # gte-v1.5 has no pooling layer; a BERT built without one stands in for it.
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    encoder = BertModel(config, add_pooling_layer=False)
    assert encoder.pooler is None
    ranker = StyleRanker(encoder, 32, 8, "tiny").eval()
    ids = torch.tensor([[2, 10, 11, 3]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        e, hidden = ranker.embed(ids, mask)
    torch.testing.assert_close(e, hidden[:, 0])


def test_a_batch_of_one_scores_as_a_vector(checkpoint: Path) -> None:
    loaded = load_ranker(checkpoint, device="cpu")
    scores = score_pairs(loaded.model, loaded.tokenizer, INSTRUCTIONS[:1], ANSWERS[:1], batch_size=4)
    assert scores.shape == (1,)


def test_scores_do_not_depend_on_batching_or_length_sorting(checkpoint: Path) -> None:
    loaded = load_ranker(checkpoint, device="cpu")
    args = (loaded.model, loaded.tokenizer, INSTRUCTIONS, ANSWERS)
    alone = [
        score_pairs(loaded.model, loaded.tokenizer, [q], [a])[0] for q, a in zip(INSTRUCTIONS, ANSWERS, strict=True)
    ]
    for batch_size in (1, 3, 4):
        for sort in (True, False):
            got = score_pairs(*args, batch_size=batch_size, sort_by_length=sort)
            assert got == pytest.approx(alone, abs=1e-5)


def test_checkpoint_has_the_official_layout_and_round_trips(checkpoint: Path, tmp_path: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "style_ranker"
    assert (config["hidden_dim"], config["linear_dim"]) == (32, 16)
    assert "encoder_name" in config
    state = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    prefixes = {
        k.split(".")[0] if not k.startswith(("relation", "output")) else ".".join(k.split(".")[:2]) for k in state
    }
    assert prefixes == {"encoder", "relation_network.0", "relation_network.2", "output_layer.0", "output_layer.2"}

    first = load_ranker(checkpoint, device="cpu")
    before = score_pairs(first.model, first.tokenizer, INSTRUCTIONS, ANSWERS)
    save_ranker(first.model, first.tokenizer, tmp_path / "again")
    second = load_ranker(tmp_path / "again", device="cpu")
    after = score_pairs(second.model, second.tokenizer, INSTRUCTIONS, ANSWERS)
    assert after.tolist() == before.tolist()  # identical, not merely close
    assert second.fingerprint != "" and second.ignored_buffers == []


def _copy_with_state(src: Path, dst: Path, state: dict) -> Path:  # type: ignore[type-arg]
    dst.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    torch.save(state, dst / "pytorch_model.bin")
    return dst


def test_a_missing_key_is_an_error_naming_the_key(checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    del state["output_layer.2.weight"]
    folder = _copy_with_state(checkpoint, tmp_path / "missing", state)
    with pytest.raises(SelectbenchError, match=r"missing 1 key\(s\): output_layer\.2\.weight"):
        load_ranker(folder, device="cpu")


def test_an_unexpected_key_is_an_error_naming_the_key(checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    state["classifier.weight"] = torch.zeros(2, 2)
    folder = _copy_with_state(checkpoint, tmp_path / "extra", state)
    with pytest.raises(SelectbenchError, match=r"unexpected 1 key\(s\): classifier\.weight"):
        load_ranker(folder, device="cpu")


def test_a_wrongly_shaped_weight_is_an_error(checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    state["output_layer.0.weight"] = torch.zeros(3, 3)
    folder = _copy_with_state(checkpoint, tmp_path / "shape", state)
    with pytest.raises(SelectbenchError, match="do not fit"):
        load_ranker(folder, device="cpu")


def test_recomputed_buffers_from_older_transformers_are_tolerated(checkpoint: Path, tmp_path: Path) -> None:
    # Checkpoints written by older transformers versions carry position_ids; it holds no learned value.
    state = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    state["encoder.embeddings.position_ids"] = torch.arange(128).unsqueeze(0)
    folder = _copy_with_state(checkpoint, tmp_path / "old", state)
    loaded = load_ranker(folder, device="cpu")
    assert loaded.ignored_buffers == ["encoder.embeddings.position_ids"]
    reference = load_ranker(checkpoint, device="cpu")
    a = score_pairs(loaded.model, loaded.tokenizer, INSTRUCTIONS, ANSWERS)
    b = score_pairs(reference.model, reference.tokenizer, INSTRUCTIONS, ANSWERS)
    assert a.tolist() == b.tolist()


def test_an_official_style_folder_builds_its_encoder_from_encoder_name(
    checkpoint: Path, encoder_dir: Path, tmp_path: Path
) -> None:
    # The official config.json has only model_type, encoder_name, hidden_dim, linear_dim (no encoder config), and
    # the folder may lack tokenizer files: the encoder's architecture and tokenizer come from encoder_name.
    folder = tmp_path / "official"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "style_ranker",
                "architectures": ["StyleRanker"],
                "encoder_name": str(encoder_dir),
                "hidden_dim": 32,
                "linear_dim": 16,
                "transformers_version": "4.42.0.dev0",
                "torch_dtype": "float32",
            }
        )
    )
    (folder / "pytorch_model.bin").write_bytes((checkpoint / "pytorch_model.bin").read_bytes())
    official = load_ranker(folder, device="cpu")
    ours = load_ranker(checkpoint, device="cpu")
    a = score_pairs(official.model, official.tokenizer, INSTRUCTIONS, ANSWERS)
    b = score_pairs(ours.model, ours.tokenizer, INSTRUCTIONS, ANSWERS)
    assert a.tolist() == b.tolist()


def test_not_a_ranker_folder_is_a_clear_error(encoder_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SelectbenchError, match="model_type 'bert', expected 'style_ranker'"):
        load_ranker(encoder_dir)
    with pytest.raises(SelectbenchError, match="not a checkpoint folder"):
        load_ranker(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SelectbenchError, match=r"no config\.json"):
        load_ranker(tmp_path / "empty")


def test_hub_ids_go_through_the_hub_and_fail_clearly_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SelectbenchError, match=r"lizhuang144/scar-gte-base.*could not fetch it from the Hugging Face"):
        load_ranker("lizhuang144/scar-gte-base")


def test_hidden_dim_must_match_the_encoder(encoder_dir: Path) -> None:
    from transformers import AutoModel

    with pytest.raises(SelectbenchError, match="hidden_dim is 64 but encoder"):
        StyleRanker(AutoModel.from_pretrained(encoder_dir), 64, 16, "tiny")


def test_inputs_join_the_instruction_as_in_scar_data() -> None:
    assert ranker_instruction("Summarise.", "") == "Summarise."
    assert ranker_instruction("Summarise.", "Some text") == "Summarise.\n\n### Input:\nSome text"
