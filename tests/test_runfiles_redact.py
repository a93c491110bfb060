"""``redact_url``: the secrets of a URL shown in status output, state files and the dashboard
(a storage URL's password, a gateway's ``?api-key=`` in the LLM autopilot's base URL)."""

from __future__ import annotations

import pytest

from hotcb.runfiles import redact_url, url_secrets

#: Query parameter names whose values are secrets (matched whatever their case).
SECRET_NAMES = ("password", "passwd", "pwd", "secret", "token", "key", "api-key", "api_key",
                "apikey", "access_token", "auth", "sig", "signature", "ApiKey", "SIGNATURE")  # fmt: skip
CASES = [
    # user:password@, as before
    ("postgresql://hotcb:s3cret@db:5432/hpo", "postgresql://hotcb:***@db:5432/hpo"),
    ("mysql://u:p@ss/w@rd@host/db", "mysql://u:***@host/db"),
    ("sqlite:////runs/a/hotcb.tune.db", "sqlite:////runs/a/hotcb.tune.db"),
    ("study@postgresql://u:pw@h/db", "study@postgresql://u:***@h/db"),
    # query (and fragment) parameters named like a secret
    ("http://user:PASS@host/v1?api-key=QSECRET", "http://user:***@host/v1?api-key=***"),
    ("https://h/v1?API_KEY=a1&model=m", "https://h/v1?API_KEY=***&model=m"),
    ("https://h/x?a=1&Token=t0k&sig=abc#access_token=at",
     "https://h/x?a=1&Token=***&sig=***#access_token=***"),
    *[(f"https://h/?{n}=v4lue&x=1", f"https://h/?{n}=***&x=1") for n in SECRET_NAMES],
    # names that only contain one, and empty values, are left alone
    ("https://h/?monkey=1&keys=2&tokenizer=bpe&key=",
     "https://h/?monkey=1&keys=2&tokenizer=bpe&key="),
    # inside a longer text, up to the quote or blank that ends the URL
    ("is base_url 'http://h/v1?key=S3' right?", "is base_url 'http://h/v1?key=***' right?"),
]  # fmt: skip


@pytest.mark.parametrize(("given", "shown"), CASES)
def test_redact_url(given: str, shown: str) -> None:
    assert redact_url(given) == shown


def test_url_secrets_are_what_redact_url_hides() -> None:
    url = "http://user:PASS@host/v1?api-key=QSECRET&x=1&token=T0K"
    assert url_secrets(url) == ["PASS", "QSECRET", "T0K"]
    assert url_secrets("https://h/v1?model=m") == []
