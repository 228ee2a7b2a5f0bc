"""The feature contract in isolation: spec, validation messages, the k-means summary vector, profiles."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from simpersona.data.schema import EVENTS
from simpersona.vq.features import FeatureError, FeatureSpec, arrays_from_arrow, check_schema
from simpersona.vq.kmeans import summary_vectors
from simpersona.vq.profiles import describe

SPEC = FeatureSpec(seq_len=4, price_buckets=3, gap_buckets=3, agg_names=("a", "b"), agg_mean=(0.0, 0.0),
                   agg_std=(1.0, 1.0), events=EVENTS, unit="buyer_merchant")


def table(events, prices, gaps, flags, agg, **extra) -> pa.Table:
    def fixed(rows, typ):
        rows = np.asarray(rows)
        return pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel(), typ), rows.shape[1])

    n = len(events)
    return pa.table({
        "history_id": [f"h{i}" for i in range(n)], "buyer_id": [f"b{i}" for i in range(n)],
        "merchant_id": ["m"] * n, "seq_event": fixed(events, pa.int8()), "seq_price": fixed(prices, pa.int8()),
        "seq_gap": fixed(gaps, pa.int8()), "seq_flags": fixed(flags, pa.int8()), "agg": fixed(agg, pa.float32()),
        "label_purchase": pa.array([0] * n, pa.int8()), "label_cart_abandon": pa.array([0] * n, pa.int8()),
        "label_depth": pa.array([0.5] * n, pa.float32()), "planted_type": pa.array([-1] * n, pa.int32()), **extra,
    })


GOOD = dict(events=[[0, 1, 2, 5], [0, 0, 0, 1]], prices=[[0, 1, 3, 3], [0, 0, 0, 0]],
            gaps=[[0, 1, 2, 2], [0, 0, 0, 1]], flags=[[0, 0, 1, 3], [0, 0, 0, 0]], agg=[[0.1, 0.2], [0.3, 0.4]])


def test_valid_batch_round_trip():
    arrays = arrays_from_arrow(table(**GOOD), SPEC)
    assert arrays["seq_event"].dtype == np.int8 and arrays["seq_event"].shape == (2, 4)
    assert arrays["agg"].dtype == np.float32 and np.allclose(arrays["agg"], [[0.1, 0.2], [0.3, 0.4]])
    check_schema(table(**GOOD).schema, SPEC, "t")


@pytest.mark.parametrize("change, message", [
    (dict(agg=[[0.1, 0.2, 0.0], [0.3, 0.4, 0.0]]),
     "column 'agg' has width 3, feature_spec.json says 2 (agg_names)"),
    (dict(events=[[0, 1, 2, 5, 1], [0, 0, 0, 1, 1]]), "column 'seq_event' has width 5, feature_spec.json says 4 (seq_len)"),
    (dict(agg=[[np.nan, 0.2], [0.3, np.inf]]), "column 'agg' has 2 NaN/inf values in 2 rows (features ['a', 'b'])"),
    (dict(events=[[0, 1, 2, 9], [0, 0, 0, 1]]), "column 'seq_event' has values outside 0..6 (min 0, max 9)"),
    (dict(prices=[[0, 1, 4, 3], [0, 0, 0, 0]]), "column 'seq_price' has values outside 0..3 (min 0, max 4)"),
])
def test_bad_batches(change, message):
    bad = table(**{**GOOD, **change})
    with pytest.raises(FeatureError) as err:
        arrays_from_arrow(bad, SPEC)
    assert str(err.value) == message


def as_binary(t: pa.Table, width: int | None = None) -> pa.Table:
    """The seq_* columns as fixed-size binary (the format preprocess writes); `width` forces a wrong one."""
    from simpersona.data.features import as_fixed_binary

    for name in ("seq_event", "seq_price", "seq_gap", "seq_flags"):
        rows = np.asarray(t[name].to_pylist(), dtype=np.int8)
        if width is not None:
            rows = np.zeros((len(rows), width), dtype=np.int8)
        t = t.set_column(t.schema.get_field_index(name), name, as_fixed_binary(rows))
    return t


def test_binary_sequences_read_as_lists():
    listed, packed = table(**GOOD), as_binary(table(**GOOD))
    assert pa.types.is_fixed_size_binary(packed.schema.field("seq_event").type)
    check_schema(packed.schema, SPEC, "t")
    a, b = arrays_from_arrow(listed, SPEC), arrays_from_arrow(packed, SPEC)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    # a slice of a binary column starts at its own row (the buffer offset is honoured)
    assert np.array_equal(arrays_from_arrow(packed.slice(1, 1), SPEC)["seq_event"], a["seq_event"][1:])
    with pytest.raises(FeatureError, match=r"^column 'seq_event' has width 5, feature_spec.json says 4 \(seq_len\)$"):
        arrays_from_arrow(as_binary(table(**GOOD), width=5), SPEC)
    with pytest.raises(FeatureError, match=r"^t: column 'seq_event' has width 5, feature_spec.json says 4"):
        check_schema(as_binary(table(**GOOD), width=5).schema, SPEC, "t")
    strings = table(**GOOD).set_column(3, "seq_event", pa.array(["ab", "cd"]))
    with pytest.raises(FeatureError, match=r"^t: column 'seq_event' must be fixed_size_binary or "
                                           r"fixed_size_list<int8>, got string$"):
        check_schema(strings.schema, SPEC, "t")


def test_schema_errors():
    t = table(**GOOD).drop_columns(["label_depth"])
    with pytest.raises(FeatureError, match=r"^x.parquet: missing feature columns \['label_depth'\]$"):
        check_schema(t.schema, SPEC, "x.parquet")
    with pytest.raises(FeatureError, match="agg_mean/agg_std must have one value per agg_names entry"):
        FeatureSpec.from_dict({**SPEC.to_dict(), "agg_mean": [0.0]})


def test_summary_vector_is_token_shares():
    arrays = arrays_from_arrow(table(**GOOD), SPEC)
    x = summary_vectors(arrays, SPEC)
    # agg (2) + events 1..6 (6) + prices 1..3 (3) + gaps 1..3 (3) + 2 flag bits + log length
    assert x.shape == (2, 2 + 6 + 3 + 3 + 2 + 1)
    first = x[0]
    assert first[2:8].tolist() == pytest.approx([1 / 3, 1 / 3, 0, 0, 1 / 3, 0])  # view, cart, purchase
    assert first[8:11].tolist() == pytest.approx([1 / 3, 0, 2 / 3])  # unknown price not counted
    assert first[11:14].tolist() == pytest.approx([1 / 3, 2 / 3, 0])
    assert first[14:16].tolist() == pytest.approx([2 / 3, 1 / 3])  # repeat: flags 1, 3; category: 3
    assert first[16] == pytest.approx(np.log1p(3))


def test_description_relative_to_population():
    pop = {"conversion": 0.1, "events_per_session": 3.0, "cart_rate": 0.05, "favorite_rate": 0.02,
           "price_level": 0.5, "repeat_share": 0.1}
    p = {"histories": 10, "share": 0.05, "conversion": 0.4, "cart_abandon_rate": 0.1, "events_per_session": 6.0,
         "events": 9.0, "cart_rate": 0.5, "favorite_rate": 0.0, "price_level": 0.8, "repeat_share": 0.3}
    text = describe(p, pop)
    assert text.startswith("5% of buyer histories. Converts often: 40% make a purchase (population 10%), "
                           "with long sessions of about 6.0 events")
    assert "Uses the cart (50% of histories, 10% leave it without buying)" in text
    assert "prefers the merchant's pricier products" in text
    assert describe({**p, "histories": 0}, pop) == "Unused type: no buyer history was assigned to this code."
