"""The preprocess -> vq feature contract: column names, feature_spec.json, validation, Arrow -> arrays.

One row per history (see notes/contracts.md): four left-padded int8 token sequences of length L
(event, price bucket, gap bucket, flags), a z-scored float32 aggregate vector of width F, three
behaviour labels and the planted type (-1 when unknown). Everything that reads feature Parquet in
simpersona.vq goes through `arrays_from_arrow`, so a wrong width, a NaN or an out-of-range token is
reported once, in one line, naming the column — instead of surfacing as a shape error deep in torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from simpersona import storage
from simpersona.storage_config import S3Config

ID_COLUMNS: tuple[str, ...] = ("history_id", "buyer_id", "merchant_id")
SEQ_COLUMNS: tuple[str, ...] = ("seq_event", "seq_price", "seq_gap", "seq_flags")
LABEL_COLUMNS: tuple[str, ...] = ("label_purchase", "label_cart_abandon", "label_depth")
MODEL_COLUMNS: tuple[str, ...] = SEQ_COLUMNS + ("agg",) + LABEL_COLUMNS + ("planted_type",)
FEATURE_COLUMNS: tuple[str, ...] = ID_COLUMNS + MODEL_COLUMNS
FLAG_VALUES = 4  # two bits: repeat product, category changed


class FeatureError(ValueError):
    """Feature data that does not match the contract; the message is one line naming the column."""


@dataclass(frozen=True)
class FeatureSpec:
    """DIR/preprocess/feature_spec.json."""

    seq_len: int
    price_buckets: int
    gap_buckets: int
    agg_names: tuple[str, ...]
    agg_mean: tuple[float, ...]
    agg_std: tuple[float, ...]
    events: tuple[str, ...]
    unit: str

    @property
    def agg_width(self) -> int:
        return len(self.agg_names)

    @property
    def event_tokens(self) -> int:
        """Token values of seq_event: 0 = pad, 1..len(events)."""
        return len(self.events) + 1

    def token(self, event: str) -> int:
        """The seq_event value of `event` (its EVENTS index + 1)."""
        if event not in self.events:
            raise FeatureError(f"feature_spec.json: event {event!r} not in events {list(self.events)}")
        return self.events.index(event) + 1

    def to_dict(self) -> dict:
        return {
            "seq_len": self.seq_len, "price_buckets": self.price_buckets, "gap_buckets": self.gap_buckets,
            "agg_names": list(self.agg_names), "agg_mean": list(self.agg_mean), "agg_std": list(self.agg_std),
            "events": list(self.events), "unit": self.unit,
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "feature_spec.json") -> FeatureSpec:
        missing = [k for k in ("seq_len", "price_buckets", "gap_buckets", "agg_names", "events") if k not in d]
        if missing:
            raise FeatureError(f"{where}: missing keys {missing}")
        names = tuple(str(n) for n in d["agg_names"])
        mean = tuple(float(x) for x in d.get("agg_mean", [0.0] * len(names)))
        std = tuple(float(x) for x in d.get("agg_std", [1.0] * len(names)))
        if len(mean) != len(names) or len(std) != len(names):
            raise FeatureError(f"{where}: agg_mean/agg_std must have one value per agg_names entry ({len(names)})")
        spec = cls(int(d["seq_len"]), int(d["price_buckets"]), int(d["gap_buckets"]), names, mean, std,
                   tuple(str(e) for e in d["events"]), str(d.get("unit", "buyer_merchant")))
        if spec.seq_len < 1 or spec.price_buckets < 1 or spec.gap_buckets < 1 or not names or not spec.events:
            raise FeatureError(f"{where}: seq_len, price_buckets, gap_buckets, agg_names, events must be non-empty")
        return spec


def features_uri(run_dir: str) -> str:
    return storage.join_uri(run_dir, "preprocess", "features")


def spec_uri(run_dir: str) -> str:
    return storage.join_uri(run_dir, "preprocess", "feature_spec.json")


def load_spec(run_dir: str, s3: S3Config | None = None) -> FeatureSpec:
    uri = spec_uri(run_dir)
    fs, path = storage.resolve(uri, s3)
    if fs.get_file_info(path).type.name != "File":
        raise FeatureError(f"no feature spec at {uri} (run the preprocess stage first)")
    with fs.open_input_stream(path) as fh:
        try:
            return FeatureSpec.from_dict(json.loads(fh.read().decode()), uri)
        except json.JSONDecodeError as exc:
            raise FeatureError(f"{uri}: not JSON ({exc})") from None


def _stored_width(typ: pa.DataType, name: str, where: str) -> int:
    """Values per row of a feature column: a fixed-size list, or, for the int8 sequence columns, also
    fixed-size binary (one byte per token; what preprocess writes, as Parquet decodes it about ten
    times faster than a nested list)."""
    if pa.types.is_fixed_size_list(typ):
        return typ.list_size
    if name in SEQ_COLUMNS and pa.types.is_fixed_size_binary(typ):
        return typ.byte_width
    allowed = "fixed_size_binary or fixed_size_list<int8>" if name in SEQ_COLUMNS else "fixed_size_list"
    raise FeatureError(f"{where}column {name!r} must be {allowed}, got {typ}")


def check_schema(schema: pa.Schema, spec: FeatureSpec, where: str) -> None:
    """Column presence, list widths and element types of a feature table's schema."""
    missing = [c for c in FEATURE_COLUMNS if c not in schema.names]
    if missing:
        raise FeatureError(f"{where}: missing feature columns {missing}")
    for name in SEQ_COLUMNS + ("agg",):
        width = spec.agg_width if name == "agg" else spec.seq_len
        what = "agg_names" if name == "agg" else "seq_len"
        stored = _stored_width(schema.field(name).type, name, f"{where}: ")
        if stored != width:
            raise FeatureError(f"{where}: column {name!r} has width {stored}, "
                               f"feature_spec.json says {width} ({what})")


def _fixed_list(col: pa.ChunkedArray | pa.Array, width: int, name: str, dtype) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    stored = _stored_width(arr.type, name, "")
    if stored != width:
        what = "agg_names" if name == "agg" else "seq_len"
        raise FeatureError(f"column {name!r} has width {stored}, feature_spec.json says {width} ({what})")
    if arr.null_count:
        raise FeatureError(f"column {name!r} has {arr.null_count} null rows")
    if pa.types.is_fixed_size_binary(arr.type):  # the bytes are the int8 tokens (zero-copy)
        buf = arr.buffers()[1]
        data = np.frombuffer(buf, dtype=np.int8) if buf is not None else np.zeros(0, dtype=np.int8)
        return data[arr.offset * width:(arr.offset + len(arr)) * width].reshape(len(arr), width)
    # .values ignores the array's slice offset: slice the child by hand (zero-copy)
    flat = arr.values.slice(arr.offset * width, len(arr) * width)
    return flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(len(arr), width)


def _scalar(table: pa.Table, name: str, dtype) -> np.ndarray:
    col = table.column(name)
    if col.null_count:
        raise FeatureError(f"column {name!r} has {col.null_count} null rows")
    return col.to_numpy().astype(dtype, copy=False)


def arrays_from_arrow(table: pa.Table, spec: FeatureSpec, labels: bool = True) -> dict[str, np.ndarray]:
    """Validated numpy arrays of one feature batch: seq_* (n, L) int8 (as stored: no copy), agg (n, F)
    float32, labels."""
    for name in SEQ_COLUMNS + ("agg",) + (LABEL_COLUMNS if labels else ()):
        if name not in table.column_names:
            raise FeatureError(f"feature batch lacks column {name!r} (has {table.column_names})")
    out: dict[str, np.ndarray] = {}
    limits = {"seq_event": spec.event_tokens, "seq_price": spec.price_buckets + 1,
              "seq_gap": spec.gap_buckets + 1, "seq_flags": FLAG_VALUES}
    for name in SEQ_COLUMNS:
        a = _fixed_list(table.column(name), spec.seq_len, name, np.int8)
        if a.size and (a.min() < 0 or a.max() >= limits[name]):
            raise FeatureError(f"column {name!r} has values outside 0..{limits[name] - 1} "
                               f"(min {a.min()}, max {a.max()})")
        out[name] = a
    agg = _fixed_list(table.column("agg"), spec.agg_width, "agg", np.float32)
    bad = ~np.isfinite(agg)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        cols = sorted({spec.agg_names[j] for j in np.flatnonzero(bad.any(axis=0))})
        raise FeatureError(f"column 'agg' has {int(bad.sum())} NaN/inf values in {len(rows)} rows "
                           f"(features {cols[:5]})")
    out["agg"] = agg
    if labels:
        out["label_purchase"] = _scalar(table, "label_purchase", np.float32)
        out["label_cart_abandon"] = _scalar(table, "label_cart_abandon", np.float32)
        out["label_depth"] = _scalar(table, "label_depth", np.float32)
        if not np.isfinite(out["label_depth"]).all():
            raise FeatureError("column 'label_depth' has NaN/inf values")
    if "planted_type" in table.column_names:
        out["planted_type"] = _scalar(table, "planted_type", np.int64)
    return out


def concat_arrays(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def take_rows(arrays: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in arrays.items()}
