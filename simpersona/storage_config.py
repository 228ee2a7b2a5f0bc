"""Config of the storage layer (simpersona.storage): the endpoint and credentials of s3:// URIs, the
`data.s3` section. Apart from storage.py so that a config can be built without importing pyarrow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class S3Config:
    """Endpoint and credentials for s3:// URIs; empty values fall back to the AWS environment."""

    endpoint_url: str = ""
    region: str = ""
    access_key: str = ""
    secret_key: str = ""
    session_token: str = ""
    allow_http: bool = False
    # attempts per S3 request (the AWS SDK's standard retry: 5xx answers, throttling such as 503 SlowDown and
    # broken connections are retried with backoff); what still fails after them is an OSError, never a gap
    max_attempts: int = 10
