"""How a stream's URL is shown: the one redaction used by logs, errors, the API, metrics and sinks.

Camera and media-server URLs routinely carry credentials (``rtsp://admin:pass@10.0.0.7/stream1``) and
sometimes a secret in the query (``?token=...``). Everything that shows a URL to a person or another
program goes through :func:`redact_url`, so one camera reads the same everywhere and no place shows more
than another. The user name is hidden along with the password: it is half of the login, and what tells
streams apart is their id and host, not the account they log in with.
"""

from __future__ import annotations

#: Query parameters whose value is a secret (compared without regard to case).
SECRET_PARAMETERS = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "auth",
        "key",
        "pass",
        "passwd",
        "password",
        "pwd",
        "secret",
        "sig",
        "signature",
        "token",
    }
)
HIDDEN = "***"


def redact_url(url: str) -> str:
    """``url`` without its secrets: ``user:password@`` becomes ``***@`` and the value of a secret query
    parameter (:data:`SECRET_PARAMETERS`) becomes ``***``; anything else is kept as written.

    ``rtsp://admin:s3cret@10.0.0.7:554/live?channel=1&token=abc`` is shown as
    ``rtsp://***@10.0.0.7:554/live?channel=1&token=***``. Text without ``scheme://`` (a file path,
    ``synthetic:``) is returned unchanged. The redaction does not parse the URL strictly, so a malformed
    one cannot slip through: the credentials end at the *last* ``@`` after ``scheme://``, which also hides
    a password with an unescaped ``/``, ``?`` or ``#`` in it (at the price of hiding a little too much of
    the rare URL with an ``@`` in its path). Redacting a redacted URL changes nothing.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or not scheme or "/" in scheme:
        return url
    if "@" in rest and not rest.startswith("/"):
        rest = f"{HIDDEN}@{rest.rpartition('@')[2]}"
    return f"{scheme}://{_redact_query(rest)}"


def _redact_query(rest: str) -> str:
    before, question, after = rest.partition("?")
    if not question:
        return rest
    query, hash_, fragment = after.partition("#")
    pairs = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        pairs.append(f"{name}={HIDDEN}" if equals and name.lower() in SECRET_PARAMETERS else pair)
    return f"{before}?{'&'.join(pairs)}{hash_}{fragment}"
