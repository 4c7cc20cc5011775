"""The emitted events' JSON Schemas and samples under events/pqlflow/ are current and agree."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pqlflow import cli
from pqlflow.contracts import schemas
from pqlflow.contracts.emitted import EMITTED

ROOT = Path(__file__).resolve().parents[3]


def test_generated_files_are_up_to_date() -> None:
    assert cli.main(["schemas", "--root", str(ROOT), "--check"]) == 0


@pytest.mark.parametrize("model", EMITTED, ids=lambda m: m.DETAIL_TYPE)
def test_each_sample_validates_against_its_schema_and_model(model: type) -> None:
    slug = schemas.slug(model)
    schema = json.loads((ROOT / "events" / "pqlflow" / f"{slug}.schema.json").read_text())
    sample = json.loads((ROOT / "events" / "pqlflow" / f"{slug}.json").read_text())
    assert sample["source"] == "pqlflow" and sample["detail-type"] == model.DETAIL_TYPE
    jsonschema.validate(sample["detail"], schema)
    model.model_validate(sample["detail"])


def test_a_qualification_sample_reads_like_a_person_wrote_it() -> None:
    sample = json.loads((ROOT / "events" / "pqlflow" / "pql-qualified.json").read_text())["detail"]
    texts = [r["text"] for r in sample["reasons"]]
    assert "3 teammates active in the last 7 days" in texts
    assert sample["definition"] == {"name": "scoring", "version": 1}
