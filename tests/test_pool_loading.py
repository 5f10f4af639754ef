"""Loading pools: every accepted file type and shape, column mapping, ids, fingerprints, Arrow storage."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_rows, write_jsonl

from selectbench.data import load_pool, pool_from_records
from selectbench.data.formats import content_id
from selectbench.errors import SelectbenchError


def test_alpaca_jsonl_becomes_canonical_records(tmp_path: Path) -> None:
    rows = alpaca_rows(5)
    rows[0]["category"] = "science"
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", rows))
    assert len(pool) == 5 and pool.format == "alpaca"
    first = pool[0]
    assert first["instruction"] == rows[0]["instruction"]
    assert first["input"] == "Context 0"
    assert first["response"] == rows[0]["output"]
    assert first["meta"] == {"category": "science"}
    assert "messages" not in first
    assert first["id"] == content_id(rows[0]["instruction"], "Context 0", rows[0]["output"])


def test_json_list_parquet_and_csv_give_the_same_pool(tmp_path: Path) -> None:
    rows = alpaca_rows(8)
    (tmp_path / "p.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)
    jsonl = load_pool(write_jsonl(tmp_path / "p.jsonl", rows))
    for name in ("p.json", "p.parquet", "p.csv"):
        other = load_pool(tmp_path / name)
        assert other.fingerprint == jsonl.fingerprint, name
        assert other.ids == jsonl.ids, name


def test_json_file_holding_json_lines_is_read_as_json_lines(tmp_path: Path) -> None:
    rows = alpaca_rows(3)
    path = write_jsonl(tmp_path / "really_lines.json", rows)
    assert len(load_pool(path)) == 3


@pytest.mark.parametrize(
    ("row", "fmt", "instruction", "response"),
    [
        ({"prompt": "Say hi", "response": "Hi!"}, "prompt-response", "Say hi", "Hi!"),
        ({"prompt": "Say hi", "completion": "Hello."}, "prompt-completion", "Say hi", "Hello."),
        ({"instruction": "Say hi", "response": "Hey"}, "canonical", "Say hi", "Hey"),
    ],
)
def test_flat_shapes_are_recognised(tmp_path: Path, row: dict, fmt: str, instruction: str, response: str) -> None:
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", [row]))
    assert pool.format == fmt
    assert (pool[0]["instruction"], pool[0]["input"], pool[0]["response"]) == (instruction, "", response)


def test_messages_take_the_last_user_turn_and_final_assistant_turn(tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    pool = load_pool(write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages, "lang": "en"}]))
    record = pool[0]
    assert pool.format == "messages"
    assert (record["instruction"], record["response"]) == ("And 3+3?", "6")
    assert record["messages"] == messages
    assert record["meta"] == {"lang": "en"}


def test_sharegpt_conversations_are_mapped_to_roles(tmp_path: Path) -> None:
    conv = [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}]
    pool = load_pool(write_jsonl(tmp_path / "sg.jsonl", [{"id": "a1", "conversations": conv}]))
    record = pool[0]
    assert pool.format == "sharegpt" and record["id"] == "a1"
    assert record["messages"] == [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]


def test_column_mapping_reads_any_shape(tmp_path: Path) -> None:
    rows = [{"uid": 7, "question": "Why?", "answer": "Because.", "ctx": "c"}]
    pool = load_pool(
        write_jsonl(tmp_path / "p.jsonl", rows), columns="instruction=question,response=answer,input=ctx,id=uid"
    )
    assert pool[0] == {"id": "7", "instruction": "Why?", "input": "c", "response": "Because.", "meta": {}}


def test_bad_column_mapping_is_an_error() -> None:
    with pytest.raises(SelectbenchError, match="unknown field 'answer'"):
        load_pool("x.jsonl", columns="answer=response")
    with pytest.raises(SelectbenchError, match="map both instruction and response"):
        load_pool("x.jsonl", columns="instruction=q")


def test_explicit_ids_are_kept_and_content_ids_are_stable(tmp_path: Path) -> None:
    rows = alpaca_rows(4)
    first = load_pool(write_jsonl(tmp_path / "a.jsonl", rows))
    second = load_pool(write_jsonl(tmp_path / "b.jsonl", rows))
    assert first.ids == second.ids and len(set(first.ids)) == 4
    with_ids = load_pool(write_jsonl(tmp_path / "c.jsonl", [{**r, "id": f"r{i}"} for i, r in enumerate(rows)]))
    assert with_ids.ids == ["r0", "r1", "r2", "r3"]


def test_exact_duplicate_rows_without_ids_get_distinct_stable_ids(tmp_path: Path) -> None:
    row = alpaca_rows(1)[0]
    pool = load_pool(write_jsonl(tmp_path / "d.jsonl", [row, row, row]))
    base = pool.ids[0]
    assert pool.ids == [base, f"{base}#2", f"{base}#3"]


def test_fingerprint_depends_on_content_not_location(tmp_path: Path) -> None:
    rows = alpaca_rows(6)
    a = load_pool(write_jsonl(tmp_path / "a.jsonl", rows))
    b = load_pool(write_jsonl(tmp_path / "b.jsonl", rows))
    rows[3]["output"] += " changed"
    c = load_pool(write_jsonl(tmp_path / "c.jsonl", rows))
    reordered = load_pool(write_jsonl(tmp_path / "d.jsonl", rows[::-1]))
    assert a.fingerprint == b.fingerprint
    assert len({a.fingerprint, c.fingerprint, reordered.fingerprint}) == 3


def test_pool_is_a_memory_mapped_arrow_file_reused_while_unchanged(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", alpaca_rows(5))
    pool = load_pool(path)
    assert pool.path.suffix == ".arrow" and pool.path.exists()
    assert load_pool(path).path == pool.path
    dataset = pool.dataset
    assert dataset.num_rows == 5 and dataset.cache_files[0]["filename"] == str(pool.path)
    write_jsonl(path, alpaca_rows(6))
    assert len(load_pool(path)) == 6


def test_records_come_back_in_the_requested_order(tmp_path: Path) -> None:
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", alpaca_rows(10)))
    picked = pool.records([7, 2, 9])
    assert [r["id"] for r in picked] == [pool.ids[7], pool.ids[2], pool.ids[9]]
    assert [r["response"] for r in pool][:2] == [pool[0]["response"], pool[1]["response"]]


def test_hf_dataset_ids_go_through_datasets_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(name: str, split: str) -> datasets.Dataset:
        calls.append((name, split))
        return datasets.Dataset.from_list(alpaca_rows(4))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pool = load_pool("someone/alpaca-like:validation")
    assert calls == [("someone/alpaca-like", "validation")]
    assert len(pool) == 4 and pool.format == "alpaca" and pool.source == "someone/alpaca-like:validation"


def test_unreachable_hf_dataset_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(name: str, split: str) -> None:
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SelectbenchError, match="could not load it as a Hugging Face dataset"):
        load_pool("someone/missing")


def test_pool_from_records_builds_the_same_pool_as_a_file(tmp_path: Path) -> None:
    rows = alpaca_rows(5)
    assert pool_from_records(rows).fingerprint == load_pool(write_jsonl(tmp_path / "p.jsonl", rows)).fingerprint
