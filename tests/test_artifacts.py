"""Artefact tables: schema header, validation errors naming file/line/field, atomic writes."""

from __future__ import annotations

import json

import pytest

from rspo.artifacts import ArtifactError, atomic_path, read_table, write_json, write_table

ROW = {"prompt_id": "p1", "prompt": "hi"}


def test_round_trip_with_header(tmp_path):
    f = tmp_path / "sub" / "prompts.jsonl"
    assert write_table(f, [ROW, {"prompt_id": "p2", "prompt": "yo", "extra": 1}], "prompts") == 2
    first = json.loads(f.read_text().splitlines()[0])
    assert first == {"rspo_schema": "prompts", "version": 1}
    rows = read_table(f, "prompts")
    assert [r["prompt_id"] for r in rows] == ["p1", "p2"] and rows[1]["extra"] == 1


def test_reader_names_file_line_and_field(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"rspo_schema": "prompts", "version": 1}\n{"prompt_id": "a", "prompt": "x"}\n{"prompt_id": "b"}\n')
    with pytest.raises(ArtifactError, match=r"p.jsonl: line 3: missing field 'prompt'"):
        read_table(f, "prompts")
    f.write_text('{"rspo_schema": "responses", "version": 1}\n')
    with pytest.raises(ArtifactError, match="line 1: expected header"):
        read_table(f, "prompts")
    f.write_text('{"rspo_schema": "prompts", "version": 9}\n')
    with pytest.raises(ArtifactError, match="version 9 is not supported"):
        read_table(f, "prompts")
    with pytest.raises(ArtifactError, match="file not found"):
        read_table(tmp_path / "missing.jsonl", "prompts")
    f.write_text('{"rspo_schema": "prompts", "version": 1}\n{"prompt_id": 3, "prompt": "x"}\n')
    with pytest.raises(ArtifactError, match="field 'prompt_id' has type int"):
        read_table(f, "prompts")


def test_writer_validates_and_leaves_nothing_on_failure(tmp_path):
    f = tmp_path / "p.jsonl"
    write_table(f, [ROW], "prompts")
    before = f.read_text()
    with pytest.raises(ArtifactError, match="row 2: missing field 'prompt'"):
        write_table(f, [ROW, {"prompt_id": "x"}], "prompts")
    assert f.read_text() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]  # no temporary left behind


def test_atomic_path_only_renames_on_success(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
