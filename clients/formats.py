"""Output formats of a batch job, written chunk by chunk with whole-array operations.

A chunk's rows become one block of bytes appended to the job's part file: CSV and
JSON Lines are built as a ``uint8`` matrix, one row per image, every column a
fixed-width slab padded with zero bytes that are dropped in one pass at the end (no
Python loop over rows for array inputs). Parquet goes through pyarrow: each chunk is
appended as a length-prefixed Arrow IPC stream, and the Parquet file is written from
them when the job finishes (a Parquet file cannot be appended to after a kill; the
part file can, truncated to what the journal recorded).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.sources import IdRange
from fashion.contract import CLASS_NAMES

COLUMNS = ("id", "label", "class_id", "confidence", "backend", "model_version", "true_label")
FORMATS = (".csv", ".jsonl", ".parquet")
# Confidences are written with six decimals: the same figures whatever the chunking or the path
# (service or --local), and exact integers in the journal-free formatting below.
CONFIDENCE_SCALE = 10**6
ROW_GROUP_ROWS = 65_536


@dataclass(frozen=True)
class Rows:
    """One chunk's classified rows, as columns."""

    ids: IdRange | tuple[str, ...]
    class_ids: np.ndarray  # uint8[n]
    micro_confidences: np.ndarray  # int64[n], confidence x 10^6, rounded
    labels: np.ndarray  # int8[n], -1 unknown
    backend: str
    model_version: str

    def __len__(self) -> int:
        return len(self.class_ids)


def micro(confidences: np.ndarray) -> np.ndarray:
    """Confidences as whole millionths (rounded half to even, as ``round(c, 6)`` does)."""
    return np.rint(confidences.astype(np.float64) * CONFIDENCE_SCALE).astype(np.int64)


def text_table(values: list[bytes]) -> np.ndarray:
    """``uint8[len(values), longest]``: each value left-aligned, padded with zero bytes."""
    width = max(1, max((len(v) for v in values), default=1))
    return np.array(values, dtype=f"S{width}").view(np.uint8).reshape(len(values), width)


def constant(text: bytes, rows: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text, np.uint8), (rows, len(text)))


def digits(values: np.ndarray, width: int, pad: bool = True) -> np.ndarray:
    """``uint8[n, width]`` decimal digits of non-negative integers; leading zeros become padding unless ``pad``."""
    # One column at a time, each a division by the scalar 10: numpy divides an array by a scalar with SIMD
    # (libdivide), where the broadcast array-by-array division of every digit at once ran a third slower.
    out = np.empty((len(values), width), np.uint8)
    rest = values.astype(np.int64, copy=False)
    for column in range(width - 1, -1, -1):
        rest, out[:, column] = np.divmod(rest, 10)
    out += 48
    if pad:
        for column in range(width - 1):
            out[values < 10 ** (width - 1 - column), column] = 0
    return out


def join_rows(columns: list[np.ndarray]) -> bytes:
    """The rows of the side-by-side columns, padding bytes removed."""
    flat = np.concatenate(columns, axis=1).ravel()
    return flat[flat != 0].tobytes()


def csv_field(text: str) -> str:
    """A CSV field as the csv module's minimal quoting writes it."""
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\r\n') else text


def id_column(ids: IdRange | tuple[str, ...], escape) -> np.ndarray:
    """The ids as a padded byte matrix; an :class:`IdRange` is built from its numbers, never row by row."""
    if isinstance(ids, IdRange):
        positions = np.arange(ids.first, ids.first + ids.count, dtype=np.int64)
        # "name#" escaped once; the text ends in "#", so a trailing quote is the escaping's closing one.
        escaped = escape(f"{ids.name}#")
        prefix, tail = (escaped[:-1], '"') if escaped.endswith('"') else (escaped, "")
        width = len(str(max(ids.first + ids.count - 1, 0)))
        return np.concatenate([constant(prefix.encode(), ids.count), digits(positions, width),
                               constant(tail.encode(), ids.count)], axis=1)
    return text_table([escape(i).encode() for i in ids])


def confidence_column(micros: np.ndarray) -> np.ndarray:
    """``0.123456``: a whole digit, a point and six decimals per row."""
    return np.concatenate([digits(micros // CONFIDENCE_SCALE, 1), constant(b".", len(micros)),
                           digits(micros % CONFIDENCE_SCALE, 6, pad=False)], axis=1)


LABELS = text_table([name.encode() for name in CLASS_NAMES])
JSON_LABELS = text_table([json.dumps(name).encode() for name in CLASS_NAMES])
# True labels: index 0-9 a class id, index 10 (NO_LABEL, -1 wrapped) unknown.
CSV_TRUTH = text_table([str(i).encode() for i in range(10)] + [b""])
JSON_TRUTH = text_table([str(i).encode() for i in range(10)] + [b"null"])


class CsvFormat:
    """``id,label,class_id,confidence,backend,model_version,true_label`` with a header line."""

    suffix = ".csv"

    def header(self) -> bytes:
        return (",".join(COLUMNS) + "\n").encode()

    def encode(self, rows: Rows) -> bytes:
        n, comma = len(rows), constant(b",", len(rows))
        fixed = f",{csv_field(rows.backend)},{csv_field(rows.model_version)},".encode()
        return join_rows([id_column(rows.ids, csv_field), comma, LABELS[rows.class_ids], comma,
                          digits(rows.class_ids.astype(np.int64), 1), comma, confidence_column(rows.micro_confidences),
                          constant(fixed, n), CSV_TRUTH[rows.labels], constant(b"\n", n)])

    def finish(self, part: Path, out: Path) -> None:
        os.replace(part, out)


class JsonlFormat:
    """One JSON object per line, keys in :data:`COLUMNS` order."""

    suffix = ".jsonl"

    def header(self) -> bytes:
        return b""

    def encode(self, rows: Rows) -> bytes:
        n = len(rows)

        def key(name: str, first: bool = False) -> np.ndarray:
            return constant(("{" if first else ", ") .encode() + f'"{name}": '.encode(), n)

        fixed = f', "backend": {json.dumps(rows.backend)}, "model_version": {json.dumps(rows.model_version)}'
        return join_rows([key("id", True), id_column(rows.ids, json.dumps), key("label"), JSON_LABELS[rows.class_ids],
                          key("class_id"), digits(rows.class_ids.astype(np.int64), 1), key("confidence"),
                          confidence_column(rows.micro_confidences), constant(fixed.encode(), n), key("true_label"),
                          JSON_TRUTH[rows.labels], constant(b"}\n", n)])

    def finish(self, part: Path, out: Path) -> None:
        os.replace(part, out)


class ParquetFormat:
    """The same columns in a Parquet file (pyarrow; ``pip install fashion-serve[parquet]``)."""

    suffix = ".parquet"

    def __init__(self) -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError("Parquet output needs pyarrow: pip install 'fashion-serve[parquet]'") from None

    def header(self) -> bytes:
        return b""

    def table(self, rows: Rows):
        """The chunk as an Arrow table; the ids built as one string buffer, not row by row."""
        import pyarrow as pa

        matrix = id_column(rows.ids, lambda text: text)
        lengths = (matrix != 0).sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        flat = matrix.ravel()
        ids = pa.StringArray.from_buffers(len(rows), pa.py_buffer(offsets), pa.py_buffer(flat[flat != 0].tobytes()))
        n = len(rows)
        return pa.table({
            "id": ids,
            "label": pa.DictionaryArray.from_arrays(rows.class_ids.astype(np.int8), list(CLASS_NAMES)),
            "class_id": pa.array(rows.class_ids, pa.uint8()),
            "confidence": pa.array(rows.micro_confidences / CONFIDENCE_SCALE, pa.float64()),
            "backend": pa.DictionaryArray.from_arrays(np.zeros(n, np.int8), [rows.backend]),
            "model_version": pa.DictionaryArray.from_arrays(np.zeros(n, np.int8), [rows.model_version]),
            "true_label": pa.array(rows.labels, pa.int8(), mask=rows.labels < 0),
        })

    def encode(self, rows: Rows) -> bytes:
        import pyarrow as pa

        table = self.table(rows)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue().to_pybytes()
        return len(data).to_bytes(8, "little") + data

    def read_parts(self, part: Path):
        """The chunk tables of a part file, in order."""
        import pyarrow as pa

        with part.open("rb") as fh:
            while size := int.from_bytes(fh.read(8) or b"\0", "little"):
                yield pa.ipc.open_stream(fh.read(size)).read_all()

    def finish(self, part: Path, out: Path) -> None:
        """Row groups of :data:`ROW_GROUP_ROWS` whatever the chunk sizes, so a resumed job writes the same file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        writer, pending = None, []
        for table in self.read_parts(part):
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            pending.append(table)
            if sum(len(t) for t in pending) >= ROW_GROUP_ROWS:
                merged = pa.concat_tables(pending).unify_dictionaries().combine_chunks()
                writer.write_table(merged.slice(0, ROW_GROUP_ROWS))
                pending = [merged.slice(ROW_GROUP_ROWS)]
        if writer is None:
            writer = pq.ParquetWriter(tmp, self.table(Rows((), np.zeros(0, np.uint8), np.zeros(0, np.int64),
                                                           np.zeros(0, np.int8), "", "")).schema)
        if pending and sum(len(t) for t in pending):
            writer.write_table(pa.concat_tables(pending).unify_dictionaries().combine_chunks())
        writer.close()
        os.replace(tmp, out)
        part.unlink()


def output_format(out: Path) -> CsvFormat | JsonlFormat | ParquetFormat:
    """The format named by the output file's suffix."""
    formats = {".csv": CsvFormat, ".jsonl": JsonlFormat, ".parquet": ParquetFormat}
    if out.suffix not in formats:
        raise ValueError(f"--out must end in {', '.join(FORMATS)}; got {out.name!r}")
    return formats[out.suffix]()


def error_lines(failed: tuple[tuple[str, str], ...]) -> bytes:
    """``id,reason`` CSV lines of the inputs that could not be read (few: written with the csv module)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(failed)
    return buffer.getvalue().encode()
