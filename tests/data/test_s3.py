"""s3:// input and output against a real S3 API (moto's server) on loopback."""

from __future__ import annotations

import io as pyio

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from s3_server import FlakyS3Proxy, MotoS3Server

from simpersona import storage
from simpersona.data import io
from simpersona.data.config import DataConfig
from simpersona.data.validate import InputNotFoundError, ValidationReport, read_canonical
from simpersona.storage_config import S3Config


@pytest.fixture(scope="module")
def s3():
    with MotoS3Server() as server:
        client = server.client()
        client.create_bucket(Bucket="raw")
        yield server


def read_all(cfg: DataConfig, quarantine: str | None = None) -> tuple[pa.Table, ValidationReport]:
    report = ValidationReport()
    tables = list(read_canonical(cfg, quarantine, report))
    return pa.concat_tables(tables), report


def test_csv_and_parquet_round_trip(s3, tmall_csv):
    client = s3.client()
    lines = tmall_csv.read_text().splitlines()
    client.put_object(Bucket="raw", Key="tmall/part-1.csv", Body="\n".join(lines[:100_001]) + "\n")
    tail = pacsv.read_csv(pyio.BytesIO(("\n".join([lines[0]] + lines[100_001:]) + "\n").encode()))
    buf = pyio.BytesIO()
    pq.write_table(tail, buf)
    client.put_object(Bucket="raw", Key="tmall/part-2.parquet", Body=buf.getvalue())
    client.put_object(Bucket="raw", Key="tmall/_SUCCESS", Body=b"")

    cfg = DataConfig(input="s3://raw/tmall", s3=s3.s3_config())
    events, report = read_all(cfg, "s3://raw/out/quarantine.parquet")
    assert events.num_rows == 182_880 and report.rows_bad == 0
    assert list(report.files) == ["s3://raw/tmall/part-1.csv", "s3://raw/tmall/part-2.parquet"]
    assert report.skipped_files == ["s3://raw/tmall/_SUCCESS"]
    assert events["seq"].to_pylist() == list(range(182_880))
    local, _ = read_all(DataConfig(input=str(tmall_csv)))
    assert events.equals(local)

    # output: one Parquet file and a streamed object, read back through the same URIs
    storage.write_parquet(events, "s3://raw/out/events.parquet", cfg.s3)
    assert io.read_parquet("s3://raw/out/events.parquet", cfg.s3).equals(events)
    with storage.open_output_stream("s3://raw/out/note.txt", cfg.s3) as out:
        out.write(b"hello")
    assert client.get_object(Bucket="raw", Key="out/note.txt")["Body"].read() == b"hello"
    quarantine = client.get_object(Bucket="raw", Key="out/quarantine.parquet")["Body"].read()
    assert pq.read_table(pyio.BytesIO(quarantine)).num_rows == 0  # written even when nothing was bad
    again, _ = read_all(DataConfig(adapter="canonical", input="s3://raw/out/events.parquet", s3=cfg.s3))
    assert again.equals(events)


def test_glob_and_environment_credentials(s3, tmall_csv, monkeypatch):
    body = tmall_csv.read_bytes()[:20_000].rsplit(b"\n", 1)[0]  # whole lines, the last without "\n"
    s3.client().put_object(Bucket="raw", Key="glob/a.csv", Body=body)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    listing = io.list_inputs("s3://raw/glob/*.csv", S3Config())
    assert [f.uri for f in listing.files] == ["s3://raw/glob/a.csv"]
    events, _ = read_all(DataConfig(input="s3://raw/glob/*.csv"))
    assert events.num_rows == body.count(b"\n")  # lines minus the header


def test_missing_object_and_bucket(s3):
    cfg = s3.s3_config()
    with pytest.raises(InputNotFoundError, match=r"^input not found: s3://raw/nothing/here.csv$"):
        io.list_inputs("s3://raw/nothing/here.csv", cfg)
    with pytest.raises(InputNotFoundError, match=r"^input not found: s3://no-such-bucket/x.csv$"):
        io.list_inputs("s3://no-such-bucket/x.csv", cfg)


@pytest.mark.parametrize("status, code", [(503, "SlowDown"), (500, "InternalError")])
def test_s3_throttling_and_5xx_answers_are_retried_with_nothing_lost(s3, tmp_path, status, code):
    """Every third S3 request answered with throttling or a server error: an upload and a fetch of a stage
    folder still carry every byte (the standard retry, data.s3.max_attempts); with one attempt the same
    fault is an OSError naming it, not a silent gap."""
    folder = tmp_path / "stage"
    (folder / "part").mkdir(parents=True)
    files = {f"part/{i}.bin": bytes([i]) * (1000 * (i + 1)) for i in range(6)}
    files["manifest.json"] = b'{"stage": "x"}'
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with FlakyS3Proxy(s3, every=3, status=status, code=code) as proxy:
        uri = f"s3://raw/flaky-{status}"
        storage.upload(folder, uri, proxy.s3_config())
        back = tmp_path / "back"
        assert storage.fetch_folder(uri, back, "manifest.json", files["manifest.json"].decode(), proxy.s3_config())
        assert proxy.injected >= 5
        assert {str(p.relative_to(back)): p.read_bytes() for p in back.rglob("*") if p.is_file()} == files
        with pytest.raises(OSError, match=code.upper().replace("SLOWDOWN", "SLOW_DOWN") + "|" + code + "|" + str(status)):
            for _ in range(3):  # one of three requests in a row meets the fault
                storage.upload(folder, uri, proxy.s3_config(max_attempts=1))
