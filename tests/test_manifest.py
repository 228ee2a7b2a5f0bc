"""Stage manifests (simpersona.manifest): identity sees the real config, what is written is redacted."""

from __future__ import annotations

import json

from simpersona import manifest

SECRET = "AKIA-very-secret-value"


def sections(max_prompt_tokens=480, tokenizer_examples=20000, secret_key=SECRET):
    return {"persona": {"max_prompt_tokens": max_prompt_tokens,
                        "model": {"small": {"tokenizer_examples": tokenizer_examples}}},
            "data": {"s3": {"access_key": "AKIA-id", "secret_key": secret_key, "session_token": ""}}}


def test_a_change_under_a_token_named_key_changes_the_config_hash():
    base = manifest.build("finetune", sections(), {})
    # both keys contain "token", which redaction matches: the stage must still see them change
    assert manifest.build("finetune", sections(max_prompt_tokens=256), {})["config_hash"] != base["config_hash"]
    assert manifest.build("finetune", sections(tokenizer_examples=10), {})["config_hash"] != base["config_hash"]
    assert manifest.build("finetune", sections(), {})["config_hash"] == base["config_hash"]


def test_the_written_manifest_shows_real_counts_and_hides_credentials(tmp_path):
    m = manifest.build("finetune", sections(max_prompt_tokens=256), {})
    manifest.write(tmp_path, m)
    text = (tmp_path / "manifest.json").read_text()
    assert SECRET not in text and "AKIA-id" not in text
    written = json.loads(text)["config"]
    assert written["data"]["s3"] == {"access_key": "***", "secret_key": "***", "session_token": ""}
    # counts under *token* names are not credentials: written as they are
    assert written["persona"]["max_prompt_tokens"] == 256
    assert written["persona"]["model"]["small"]["tokenizer_examples"] == 20000


def test_a_credential_under_a_nested_secret_key_is_redacted_whole():
    assert manifest.redact({"credentials": {"user": "u", "pass": "p"}, "api_key": "k", "token": ""}) == \
        {"credentials": "***", "api_key": "***", "token": ""}


def test_a_credential_inside_a_url_is_redacted_whatever_its_key():
    """Keys in an endpoint's user:password or a presigned URL's query leak under any key name."""
    m = manifest.build("preprocess", {"data": {"s3": {"endpoint": f"http://AKIA-id:{SECRET}@127.0.0.1:9000"},
                                               "input": f"https://h/logs.csv?X-Amz-Signature={SECRET}&page=2"}},
                       {}, sources=[f"s3://AKIA-id:{SECRET}@bucket/logs/part-0.csv"])
    text = manifest.dumps(m)
    assert SECRET not in text and "AKIA-id" not in text
    assert m["config"]["data"]["s3"]["endpoint"] == "http://***@127.0.0.1:9000"
    assert m["config"]["data"]["input"] == "https://h/logs.csv?X-Amz-Signature=***&page=2"
    assert m["sources"] == ["s3://***@bucket/logs/part-0.csv"]
    # identity still sees the real values
    other = manifest.build("preprocess", {"data": {"s3": {"endpoint": "http://AKIA-id:other@127.0.0.1:9000"},
                                                   "input": f"https://h/logs.csv?X-Amz-Signature={SECRET}&page=2"}}, {})
    assert other["config_hash"] != m["config_hash"]
