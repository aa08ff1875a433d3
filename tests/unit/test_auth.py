"""API keys (service.auth): key lines, scopes by route, refusals, per-key token buckets, the key-making command."""

from __future__ import annotations

import re

import pytest

from service.auth import (
    KEY_STATE,
    KeyRing,
    TokenBucket,
    main,
    new_key,
    parse_key_line,
    parse_keys,
    presented_key,
    required_scope,
    without_key_headers,
)
from service.config import ConfigError, ServiceConfig


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(path: str, key: str | None = None, header: bytes = b"authorization") -> dict:
    value = f"Bearer {key}" if header == b"authorization" else key
    return {"type": "http", "method": "POST", "path": path,
            "headers": [(header, value.encode())] if key is not None else []}


def headers_of(refusal) -> dict[bytes, bytes]:
    return dict(refusal.headers)


def test_a_new_key_is_found_by_its_line_and_a_changed_one_is_not():
    key, entry = new_key(["inference"])
    ring = KeyRing(parse_keys(entry.line()))
    assert ring.identify(key).key_id == entry.key_id
    prefix, key_id, secret = key.split("_")
    changed = "0" if secret[0] != "0" else "1"
    for wrong in (f"{prefix}_{key_id}_{changed}{secret[1:]}", f"{prefix}_{'f' * 8}_{secret}", f"xx_{key_id}_{secret}",
                  secret, "", None, f"{prefix}_{key_id}_"):
        assert ring.identify(wrong) is None, wrong


def test_the_line_holds_no_secret_and_the_entry_prints_no_hash():
    key, entry = new_key(["inference", "tasks"], "50/s")
    secret = key.split("_")[2]
    assert secret not in entry.line() and entry.digest.hex() not in repr(entry) and secret not in repr(entry)
    assert parse_key_line(entry.line()) == entry


@pytest.mark.parametrize(("line", "reason"), [
    ("id=abcd1234 scopes=inference salt=00 sha256=00 colour=red", "unknown fields ['colour']"),
    ("id=abcd1234 scopes=inference salt=" + "00" * 16, "missing ['sha256']"),
    ("id=abcd1234 scopes=root salt=" + "00" * 16 + " sha256=" + "00" * 32, "scopes must be among"),
    ("id=abcd1234 scopes=inference rate=5/day salt=" + "00" * 16 + " sha256=" + "00" * 32, "rate must be"),
    ("id=abcd1234 scopes=inference salt=00 sha256=" + "00" * 32, "salt 16+ bytes"),
])
def test_a_bad_key_line_is_refused_naming_what_is_wrong(line, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_key_line(line)


def test_keys_come_from_a_file_or_a_variable_and_a_set_but_empty_one_fails_closed(tmp_path):
    _, first = new_key(["inference"])
    _, second = new_key(["admin"], "10/min")
    path = tmp_path / "keys"
    path.write_text(f"# our keys\n{first.line()}\n\n{second.line()}\n")
    assert ServiceConfig.from_env({"FASHION_API_KEYS_FILE": str(path)}).api_keys == (first, second)
    assert ServiceConfig.from_env({"FASHION_API_KEYS": first.line()}).api_keys == (first,)
    assert ServiceConfig.from_env({}).api_keys == ()
    for env, reason in [({"FASHION_API_KEYS_FILE": str(path), "FASHION_API_KEYS": first.line()}, "not both"),
                        ({"FASHION_API_KEYS": "# none\n"}, "holds no key line"),
                        ({"FASHION_API_KEYS_FILE": str(tmp_path / "missing")}, "cannot read"),
                        ({"FASHION_API_KEYS": f"{first.line()}\n{first.line()}"}, "unique")]:
        with pytest.raises(ConfigError, match=reason):
            ServiceConfig.from_env(env)


@pytest.mark.parametrize(("path", "scope"), [
    ("/classify", "inference"), ("/classify_array", "inference"), ("/parity", "inference"),
    ("/model_info", "inference"), ("/v2/models/onnx-torch/infer", "inference"), ("/v2", "inference"),
    ("/anything-new", "inference"), ("/classify_dataset/submit", "tasks"), ("/classify_dataset/get", "tasks"),
    ("/metrics", "admin"), ("/v2/repository/index", "admin"), ("/v2/repository/models/onnx-torch/load", "admin"),
    ("/v2/models/onnx-torch/stats", "inference"), ("/livez", None), ("/readyz", None), ("/healthz", None),
    ("/v2/health/ready", None),
    ("/v2/health/live", None), ("/ui/", None), ("/ui/app.js", None), ("/docs.json", None), ("/", None),
])
def test_each_route_needs_its_scope_and_the_probes_none(path, scope):
    assert required_scope(path) == scope


def test_the_key_is_read_from_bearer_or_x_api_key_and_nothing_else():
    assert presented_key([(b"Authorization", b"Bearer abc")]) == "abc"
    assert presented_key([(b"authorization", b"bearer  abc ")]) == "abc"
    assert presented_key([(b"X-API-Key", b"abc")]) == "abc"
    assert presented_key([(b"authorization", b"Basic YWJjOmRlZg==")]) is None
    assert presented_key([(b"authorization", b"Bearer ")]) is None
    assert presented_key([]) is None


def test_refusals_401_403_and_what_they_carry():
    key, entry = new_key(["inference"])
    ring = KeyRing([entry])
    missing = ring.check(request("/classify"))
    assert missing.status == 401 and headers_of(missing)[b"www-authenticate"].startswith(b"Bearer")
    wrong = ring.check(request("/classify", key[:-1] + ("0" if key[-1] != "0" else "1")))
    assert wrong.status == 401 and b'error="invalid_token"' in headers_of(wrong)[b"www-authenticate"]
    forbidden = ring.check(request("/classify_dataset/submit", key))
    assert forbidden.status == 403 and "'tasks' scope" in forbidden.message
    assert ring.check(request("/metrics", key)).status == 403
    for refusal in (missing, wrong, forbidden):
        text = refusal.message + repr(refusal.headers)
        assert key.split("_")[2] not in text and entry.digest.hex() not in text and entry.salt.hex() not in text
    scope = request("/classify", key, b"x-api-key")
    assert ring.check(scope) is None and scope["state"][KEY_STATE] == entry.key_id
    assert ring.check(request("/readyz")) is None and ring.check(request("/v2/health/live")) is None


def test_a_key_over_its_rate_gets_429_with_retry_after_and_another_key_is_not_slowed():
    clock = Clock()
    flood_key, flooder = new_key(["inference"], "2/s", burst=4)
    calm_key, calm = new_key(["inference"], "2/s", burst=4)
    ring = KeyRing([flooder, calm], clock)
    assert [ring.check(request("/classify", flood_key)) for _ in range(4)] == [None] * 4
    refused = [ring.check(request("/classify", flood_key)) for _ in range(1000)]
    assert {r.status for r in refused} == {429}
    assert headers_of(refused[0])[b"retry-after"] == b"1"
    # The flood took none of the other key's tokens: its whole burst is there.
    assert [ring.check(request("/classify", calm_key)) for _ in range(4)] == [None] * 4
    clock.now += 0.5  # one token back for each key
    assert ring.check(request("/classify", flood_key)) is None
    assert ring.check(request("/classify", flood_key)).status == 429


def test_retry_after_is_the_whole_seconds_until_a_token():
    clock = Clock()
    bucket = TokenBucket(new_key(["inference"], "6/min", burst=1)[1].rate, clock)
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(10.0)
    key, entry = new_key(["inference"], "6/min", burst=1)
    ring = KeyRing([entry], clock)
    ring.check(request("/classify", key))
    assert headers_of(ring.check(request("/classify", key)))[b"retry-after"] == b"10"


def test_a_key_without_a_rate_is_never_limited():
    key, entry = new_key(["inference"])
    ring = KeyRing([entry])
    assert all(ring.check(request("/classify", key)) is None for _ in range(10_000))


def test_key_headers_are_dropped_before_bentoml_stores_a_task():
    scope = {"headers": [(b"authorization", b"Bearer k"), (b"X-API-Key", b"k"), (b"content-type", b"x")],
             "state": {}}
    assert without_key_headers(scope)["headers"] == [(b"content-type", b"x")]
    assert without_key_headers(scope)["state"] is scope["state"]


def test_the_command_prints_the_key_once_and_a_line_the_service_accepts(capsys):
    assert main(["new-key", "--scopes", "inference,tasks", "--rate", "50/s"]) == 0
    out, err = capsys.readouterr()
    key = err.strip().rsplit(" ", 1)[1]
    entry = parse_keys(out)[0]
    assert entry.scopes == {"inference", "tasks"} and entry.rate.per_second == 50 and entry.rate.burst == 50
    assert KeyRing([entry]).identify(key) == entry and key not in out
    with pytest.raises(SystemExit):
        main(["new-key", "--scopes", "root"])
