"""The batch output formats (clients.formats) against reference writers: the csv and json modules, row by row."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from clients.formats import COLUMNS, CsvFormat, JsonlFormat, ParquetFormat, Rows, digits, micro
from clients.sources import IdRange
from fashion.contract import CLASS_NAMES

RNG = np.random.default_rng(0)


def sample_rows(ids, n: int) -> Rows:
    confidences = RNG.random(n).astype(np.float32)
    confidences[:3] = [1.0, 0.1, 0.0000004]  # a whole one, a short one, one that rounds to zero
    labels = RNG.integers(-1, 10, n).astype(np.int8)
    return Rows(ids, RNG.integers(0, 10, n).astype(np.uint8), micro(confidences), labels, "onnx-torch", "v1")


def expected(rows: Rows) -> list[tuple]:
    """The rows as Python values, the way the formats must spell them."""
    ids = ([f"{rows.ids.name}#{i}" for i in range(rows.ids.first, rows.ids.first + rows.ids.count)]
           if isinstance(rows.ids, IdRange) else list(rows.ids))
    return [(ids[i], CLASS_NAMES[c], int(c), f"{m / 1e6:.6f}", rows.backend, rows.model_version,
             None if label < 0 else int(label))
            for i, (c, m, label) in enumerate(zip(rows.class_ids, rows.micro_confidences, rows.labels, strict=True))]


CASES = {
    "array rows": lambda: sample_rows(IdRange("test.npy", 99_990, 40), 40),
    "array rows, a name that needs quoting": lambda: sample_rows(IdRange('my "data", v2.npy', 0, 12), 12),
    "files with awkward names": lambda: sample_rows(("a.png", "dir/with,comma.png", 'q"uote.png', "ünï.png",
                                                     "line\nbreak.png"), 5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_csv_reads_back_as_the_csv_module_writes_it(case):
    rows = CASES[case]()
    text = (CsvFormat().header() + CsvFormat().encode(rows)).decode()
    reference = io.StringIO()
    writer = csv.writer(reference, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(tuple("" if v is None else v for v in row) for row in expected(rows))
    assert text == reference.getvalue()


@pytest.mark.parametrize("case", list(CASES))
def test_jsonl_lines_are_json_objects_with_every_column(case):
    rows = CASES[case]()
    lines = JsonlFormat().encode(rows).decode().splitlines()
    assert len(lines) == len(rows)
    for line, row in zip(lines, expected(rows), strict=True):
        parsed = json.loads(line)
        assert list(parsed) == list(COLUMNS)
        assert parsed == {**dict(zip(COLUMNS, row, strict=True)), "confidence": float(row[3])}


@pytest.mark.parametrize("case", list(CASES))
def test_parquet_chunks_hold_the_same_values(case, tmp_path):
    pytest.importorskip("pyarrow", reason="Parquet output needs the [parquet] extra")
    rows = CASES[case]()
    fmt = ParquetFormat()
    part = tmp_path / "part"
    part.write_bytes(fmt.encode(rows) + fmt.encode(rows))
    fmt.finish(part, tmp_path / "out.parquet")
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    want = [{**dict(zip(COLUMNS, row, strict=True)), "confidence": float(row[3])} for row in expected(rows)] * 2
    assert table == want
    assert not part.exists()


def test_confidences_round_half_to_even_like_round():
    values = np.array([0.1234565, 0.9999995, 0.5, 1.0], np.float32)
    assert (micro(values) / 1e6).tolist() == [round(float(v), 6) for v in values]


@pytest.mark.parametrize("pad", [True, False])
def test_digits_spell_numbers_as_str_does(pad):
    values = np.array([0, 7, 9, 10, 99, 100, 123_456, 999_999, 1_000_000, 9_999_999], np.int64)
    spelled = [bytes(row[row != 0]).decode() for row in digits(values, 7, pad)]
    assert spelled == [str(v) if pad else f"{v:07d}" for v in values]
