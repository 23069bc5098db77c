"""Property-based fuzzing of every parser that reads outside input: hints, the YAML config, SDP offers, and
the HTTP API's JSON and SDP bodies (the real app on the real pipeline).

Whatever the input, a parser returns a value or raises the package's own error (a ``ChromastreamError``
subclass, whose message is fit to show), an HTTP request is answered 2xx or 4xx with a JSON error, never
5xx, and nothing runs past a time bound. Where a value can be written back (hints), it reads back equal.

``CHROMASTREAM_FUZZ=long`` runs many more examples (see :mod:`tests.fuzzing`). The ``@example`` inputs are
ones that once broke a parser: they run first, every time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import string
import typing
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import event, example, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from chromastream.models.colorizer.hints import (
    AB_LIMIT,
    MAX_HINTS,
    MAX_RADIUS,
    Hint,
    HintError,
    load_hints_file,
    parse_hint,
    parse_hints,
)
from chromastream.stream.config import (
    ConfigError,
    EventsConfig,
    PipelineConfig,
    RecordConfig,
    ServeConfig,
    StreamConfig,
    WebRTCConfig,
    load_config,
    parse_config,
)
from chromastream.stream.server import API_STREAM_KEYS, MAX_BODY, create_app
from chromastream.stream.webrtc import CODECS, WebRTCError, offered_codec
from tests.fuzzing import (
    HINT_KEYS,
    WHEP_OFFER,
    WHIP_OFFER,
    bounded,
    fuzz,
    hint_like,
    huge_integers,
    json_values,
    keys_from,
    numbers,
    offers,
    scalars,
    unlimited_requests,
)
from tests.test_server import add_pattern, make_pipeline

JSON = {"Content-Type": "application/json"}
#: The data channel's m= line lost: its attributes fall into the video section, and the BUNDLE group names
#: a section that is not there (aiortc then fails to answer, and failed to close the peer: a 500).
BUNDLE_WITHOUT_SECTION = WHEP_OFFER.replace("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\n", "")
NO_FINGERPRINT = "".join(line for line in WHEP_OFFER.splitlines(True) if not line.startswith("a=fingerprint"))
DEEP_JSON = "[" * 60_000  # within the 64 KiB body cap, far past Python's recursion limit
HUGE = 10**400  # a JSON integer no float can hold


# ------------------------------------------------------------------------------------------------ hints

unit = st.one_of(st.floats(min_value=0.0, max_value=1.0), st.integers(min_value=0, max_value=1))
ab = st.floats(min_value=-AB_LIMIT, max_value=AB_LIMIT)
radii = st.floats(min_value=0.0, max_value=MAX_RADIUS, exclude_min=True)
channel = st.one_of(st.integers(min_value=0, max_value=255), st.floats(min_value=0.0, max_value=255.0))
hex6 = st.builds(
    lambda digits, prefix, pad: f"{pad}{prefix}{digits}{pad}",
    st.text(alphabet=string.hexdigits, min_size=6, max_size=6),
    st.sampled_from(["#", ""]),
    st.sampled_from(["", " "]),
)
colours = st.one_of(
    st.fixed_dictionaries({"a": ab, "b": ab}),
    st.fixed_dictionaries({"rgb": st.lists(channel, min_size=3, max_size=3)}),
    st.fixed_dictionaries({"rgb": st.tuples(channel, channel, channel)}),
    st.fixed_dictionaries({"rgb": hex6}),
)
valid_hints = st.builds(
    lambda x, y, colour, radius: {"x": x, "y": y, **colour, **({} if radius is None else {"radius": radius})},
    unit,
    unit,
    colours,
    st.none() | radii,
)


def _check_hint(hint: Hint) -> None:
    """What every accepted hint satisfies, whatever form it came in."""
    assert 0.0 <= hint.x <= 1.0 and 0.0 <= hint.y <= 1.0
    assert abs(hint.a) <= AB_LIMIT and abs(hint.b) <= AB_LIMIT
    assert 0.0 < hint.radius <= MAX_RADIUS
    assert all(isinstance(v, float) for v in (hint.x, hint.y, hint.a, hint.b, hint.radius))


@fuzz(150)
@given(st.one_of(hint_like, json_values(keys_from(*HINT_KEYS)), valid_hints))
@example({"x": HUGE, "y": 0, "a": 0, "b": 0})
@example({"x": 0.5, "y": 0.5, "a": 0, "b": -HUGE})
@example({"x": 0.5, "y": 0.5, "rgb": "#12345"})
def test_any_hint_object_is_a_valid_hint_or_a_hint_error(obj: Any) -> None:
    with bounded(2.0):
        try:
            hint = parse_hint(obj)
        except HintError as exc:
            assert str(exc).startswith("hint: ")  # the message says which hint
            return
    _check_hint(hint)


@fuzz(100)
@given(st.one_of(json_values(keys_from(*HINT_KEYS)), st.lists(hint_like, max_size=4), st.lists(valid_hints)))
@example({"hints": [{"x": 0, "y": 0, "radius": HUGE, "a": 0, "b": 0}]})
@example([{"x": 0, "y": 0, "a": 0, "b": 0}] * (MAX_HINTS + 1))
def test_any_hints_document_is_a_list_of_valid_hints_or_a_hint_error(doc: Any) -> None:
    with bounded(2.0):
        try:
            hints = parse_hints(doc)
        except HintError:
            return
    assert len(hints) <= MAX_HINTS
    for hint in hints:
        _check_hint(hint)


@fuzz(100)
@given(st.lists(valid_hints, max_size=12), st.booleans())
def test_valid_hints_survive_writing_and_reading_back(raw: list[dict[str, Any]], wrapped: bool) -> None:
    """A hint list the server or a file hands out (its ``to_json``) parses back to the same hints: what a
    client reads from ``GET .../hints`` can be PUT back unchanged, in either accepted form."""
    hints = parse_hints(raw)
    assert len(hints) == len(raw)
    written = [h.to_json() for h in hints]
    text = json.dumps({"hints": written} if wrapped else written)
    assert parse_hints(json.loads(text)) == hints


@fuzz(60)
@given(st.lists(valid_hints, max_size=8))
def test_a_hints_file_reads_back_what_was_written(tmp_path: Path, raw: list[dict[str, Any]]) -> None:
    hints = parse_hints(raw)
    path = tmp_path / "hints.json"
    path.write_text(json.dumps([h.to_json() for h in hints]), encoding="utf-8")
    assert load_hints_file(path) == hints


hint_file_bytes = st.one_of(
    st.binary(max_size=200),
    json_values(keys_from(*HINT_KEYS)).map(lambda v: json.dumps(v).encode()),
    st.lists(hint_like, max_size=3).map(lambda v: json.dumps(v).encode()[:-1]),  # cut short
    st.text(max_size=100).map(lambda t: t.encode("utf-8")),
)


@fuzz(100)
@given(hint_file_bytes)
@example(b"\xff\xfe[]")
@example(DEEP_JSON.encode())
@example(b"[" + b"1" * 5000 + b"]")
def test_any_hints_file_loads_or_says_what_is_wrong_with_it(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "hints.json"
    path.write_bytes(data)
    with bounded(3.0):
        try:
            hints = load_hints_file(path)
        except HintError as exc:
            assert "hint" in str(exc)
            return
    for hint in hints:
        _check_hint(hint)


# ----------------------------------------------------------------------------------------------- config

paths = st.one_of(
    st.sampled_from(["rec/gate.mp4", "/rec/gate.mkv", "~/rec/x.mp4", "~nosuchuser-x9/m.onnx", "", "a\x00b"]),
    st.text(max_size=20),
)
urls = st.one_of(
    st.sampled_from(
        ["synthetic:", "clip.mp4", "file:///clips/a.mp4", "rtsp://127.0.0.1:1/x", "~nosuchuser-x9/a.mp4"]
    ),
    st.text(max_size=20),
)
stream_ids = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=8), st.text()
)


def _value_for(annotation: Any, depth: int) -> st.SearchStrategy[Any]:
    """Values mostly of the right type for a config field (in range or not), sometimes of any type."""
    options = typing.get_args(annotation)
    if type(None) in options:
        (annotation,) = [a for a in options if a is not type(None)]
    right: st.SearchStrategy[Any]
    if annotation is bool:
        right = st.booleans()
    elif annotation is int:
        right = st.one_of(st.integers(min_value=-5, max_value=70_000), huge_integers)
    elif annotation is float:
        right = numbers
    elif annotation is Path:
        right = paths
    elif annotation == tuple[Hint, ...]:
        right = st.lists(st.one_of(valid_hints, hint_like), max_size=3)
    elif annotation == tuple[StreamConfig, ...]:
        right = st.lists(_mapping(StreamConfig, depth + 1), max_size=3) if depth < 2 else st.just([])
    elif dataclasses.is_dataclass(annotation):
        right = _mapping(typing.cast(type[Any], annotation), depth + 1) if depth < 2 else st.just({})
        if annotation is RecordConfig:
            right = right | paths
    elif annotation is str:
        right = st.one_of(stream_ids, urls, st.sampled_from(["auto", "onnx", "tcp", "udp", "127.0.0.1"]))
    elif typing.get_origin(annotation) is tuple:  # a list in the file, e.g. of host names or folders
        right = st.lists(_value_for(typing.get_args(annotation)[0], depth), max_size=3)
    else:  # a type this strategy does not know yet: still fuzzed, with any JSON value
        right = json_values(max_leaves=6)
    return st.one_of(right, right, right, scalars)


def _mapping(cls: type[Any], depth: int = 0) -> st.SearchStrategy[dict[Any, Any]]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: _value_for(hints[f.name], depth) for f in dataclasses.fields(cls)}
    known = st.fixed_dictionaries({}, optional=fields)
    unknown = st.dictionaries(st.text(max_size=8) | st.integers(), scalars, max_size=1)
    return st.one_of(known, known, known, st.builds(lambda a, b: {**a, **b}, known, unknown))


config_data = st.one_of(_mapping(ServeConfig), _mapping(ServeConfig), json_values(), scalars)


def _names_where(message: str, data: Any) -> bool:
    """A config error starts with the key that is wrong (``pipeline.size: ...``), or with ``config`` when
    the whole document is not a mapping."""
    keys = [str(k) for k in data] if isinstance(data, dict) else []
    return message.startswith("config") or any(message.startswith(k) for k in keys)


@fuzz(200)
@given(config_data)
@example({"pipeline": {"max_wait_ms": HUGE}})
@example({"pipeline": {"model": "~nosuchuser-x9/colorizer.onnx"}})
@example({"streams": [{"id": "a", "url": "b", "record": {"path": "r.mp4", "segment_s": -HUGE}}]})
@example({"streams": [{"id": "a", "url": "b", "hints": [{"x": HUGE, "y": 0, "a": 0, "b": 0}]}]})
def test_any_config_data_is_a_valid_config_or_a_config_error_naming_the_key(
    tmp_path: Path, data: Any
) -> None:
    with bounded(3.0):
        try:
            config = parse_config(data, tmp_path)
        except ConfigError as exc:
            assert _names_where(str(exc), data), str(exc)
            return
    assert isinstance(config, ServeConfig)
    assert isinstance(config.pipeline, PipelineConfig) and isinstance(config.webrtc, WebRTCConfig)
    assert isinstance(config.events, EventsConfig)
    assert len({s.id for s in config.streams}) == len(config.streams)


@fuzz(80)
@given(_mapping(ServeConfig))
def test_a_config_file_means_what_its_data_means(tmp_path: Path, data: dict[Any, Any]) -> None:
    """``load_config`` on a YAML dump of some data builds what ``parse_config`` builds from the data (or
    both refuse it): the file adds no meaning of its own."""
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    try:
        expected: ServeConfig | str = parse_config(data, tmp_path)
    except ConfigError as exc:
        expected = str(exc)
    with bounded(3.0):
        try:
            loaded: ServeConfig | str = load_config(path)
        except ConfigError as exc:
            loaded = str(exc).removeprefix(f"{path}: ")
    assert loaded == expected


yaml_lines = st.sampled_from(
    [
        "port: 8080",
        "pipeline: {size: 256, max_wait_ms: 1" + "0" * 400 + "}",
        "streams:",
        "  - id: gate",
        "    url: synthetic:",
        "    hints: [{x: 0.5, y: 0.2, rgb: '#3070c0'}]",
        "    record: {path: rec/gate.mp4, segment_s: 60}",
        "webrtc: {bitrate: 2500000}",
        "token: change-me",
        "a: &anchor [*anchor]",
        "? [1]\n: 2",
        "when: 2024-13-45",
        "host: !!binary aGVsbG8=",
        "x: !!python/object:os.system {}",
        "- [",
        "\t",
        "%YAML 1.1\n---",
    ]
)
yaml_texts = st.one_of(
    st.text(max_size=200),
    st.lists(yaml_lines | st.text(max_size=30), max_size=8).map("\n".join),
    config_data.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
)


@fuzz(150)
@given(yaml_texts)
@example("[" * 20_000)
@example("a:\n" + "".join(" " * i + "b:\n" for i in range(1, 2000)))
@example("port: 1" + "0" * 5000)
@example("when: 2024-13-45")
def test_any_config_file_text_loads_or_fails_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(text, encoding="utf-8")
    with bounded(5.0):
        try:
            config = load_config(path)
        except ConfigError as exc:
            assert str(path) in str(exc), str(exc)  # the person reading it knows which file to fix
            return
    assert isinstance(config, ServeConfig)


@fuzz(40)
@given(st.binary(max_size=100))
@example(b"\xff\xfeport: 1")
def test_a_config_file_that_is_not_text_fails_naming_the_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "serve.yaml"
    path.write_bytes(data)
    with bounded(3.0):
        try:
            load_config(path)
        except ConfigError as exc:
            assert str(path) in str(exc)


# -------------------------------------------------------------------------------------------------- SDP


@fuzz(200)
@given(offers(WHEP_OFFER, WHIP_OFFER))
@example("v=0\r\nm=video")
@example("hello")
def test_any_offer_names_a_codec_it_has_or_a_webrtc_error(sdp: str) -> None:
    with bounded(2.0):
        try:
            codec = offered_codec(sdp)
        except WebRTCError as exc:
            assert str(exc)
            return
    assert codec in CODECS
    assert codec in sdp.upper()


# ------------------------------------------------------------------------------------- the HTTP API


class LiveApp:
    """The real app on the real pipeline (one synthetic pattern stream, ``cam1``) on an event loop of its own,
    driven from hypothesis's plain functions one request at a time, each bounded in time. The pipeline
    runs while a request is in flight; between examples it waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pipeline: Any = None
        self.client: TestClient[Any, Any] | None = None
        self.run(self._start)

    async def _start(self) -> None:
        self.pipeline = make_pipeline()
        await self.pipeline.start()
        await add_pattern(self.pipeline, "cam1")
        config = parse_config(unlimited_requests())
        self.client = TestClient(TestServer(create_app(self.pipeline, config)))
        await self.client.start_server()

    def run(self, work: Callable[[], Awaitable[Any]], seconds: float = 20.0) -> Any:
        """Run ``work`` on the app's loop; a request that does not finish in time fails the example."""
        try:
            return self.loop.run_until_complete(asyncio.wait_for(work(), seconds))
        except TimeoutError:
            raise AssertionError(f"the server took more than {seconds} s to answer") from None

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, ClientResponse]:
        """Send one request; its status, its body (JSON when it says so, else text) and the response."""
        assert self.client is not None
        response = await self.client.request(method, path, allow_redirects=False, **kwargs)
        if response.headers.get("Content-Type", "").startswith("text/event-stream"):
            response.close()  # the events of a stream never end: the answer is the status
            return response.status, None, response
        body: Any = await response.read()
        if body and response.content_type == "application/json":
            body = json.loads(body)
        if currently_in_test_context():
            event(f"{method} {response.status}")  # shown by --hypothesis-show-statistics
        return response.status, body, response

    async def restore(self) -> None:
        """Undo what an example changed: remove every stream but ``cam1`` (re-adding it if it was removed),
        clear its hints."""
        for info in list(self.pipeline.streams()):
            if info.id != "cam1":
                await self.pipeline.remove_stream(info.id)
        if "cam1" not in {s.id for s in self.pipeline.streams()}:
            await add_pattern(self.pipeline, "cam1")
        self.pipeline.clear_hints("cam1")

    def close(self) -> None:
        async def stop() -> None:
            if self.client is not None:
                await self.client.close()
            await self.pipeline.stop()

        async def drain() -> None:
            """End what peers closed by the last examples still had in flight, as asyncio.run does."""
            leftover = asyncio.all_tasks() - {asyncio.current_task()}
            for task in leftover:
                task.cancel()
            await asyncio.gather(*leftover, return_exceptions=True)

        try:
            self.run(stop, 30.0)
            self.loop.run_until_complete(drain())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


@pytest.fixture(scope="module")
def app() -> Iterator[LiveApp]:
    live = LiveApp()
    try:
        yield live
    finally:
        live.close()


def _assert_client_error(status: int, body: Any, allowed: set[int]) -> None:
    assert status < 500, (status, body)
    assert status in allowed, (status, body)
    if status >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body


def _outbound(url: Any) -> bool:
    """A URL the server would connect out to (a camera): never sent, the test stays on this machine."""
    return isinstance(url, str) and url.partition(":")[0].strip().lower() in ("rtsp", "rtsps")


synthetic_params = st.lists(
    st.tuples(
        st.sampled_from(["width", "height", "fps", "pattern", "colour"]),
        st.one_of(
            st.integers(min_value=-2, max_value=400).map(str),
            st.sampled_from(
                ["0", "8193", "1e9", "nan", "inf", "-inf", "0.0001", "1e-300", "still", "moving", ""]
            ),
            st.text(alphabet=string.printable, max_size=6),
        ),
    ),
    max_size=4,
).map(
    lambda pairs: "synthetic:" + ("?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs) if pairs else "")
)
api_urls = st.one_of(
    synthetic_params,
    synthetic_params,
    st.sampled_from(["", " ", "file:///no/such/clip.mp4", "file://elsewhere/clip.mp4", "whip://x", "/", "."]),
    st.text(max_size=30).filter(lambda u: not _outbound(u)),
)
stream_bodies = st.one_of(
    st.fixed_dictionaries(
        {"id": stream_ids, "url": api_urls},
        optional={
            "loop": st.booleans() | scalars,
            "realtime": st.booleans() | scalars,
            "transport": st.sampled_from(["tcp", "udp"]) | scalars,
            "hints": st.lists(valid_hints | hint_like, max_size=3) | scalars,
            "record": paths,
            "rtsp_push": st.just("rtsp://127.0.0.1:1/out"),
        },
    ),
    json_values(keys_from(*sorted(API_STREAM_KEYS))).filter(
        lambda body: not (isinstance(body, dict) and _outbound(body.get("url")))
    ),
)


@fuzz(60)
@given(stream_bodies)
@example({"id": "fz", "url": "synthetic:?fps=0.0001&width=32&height=32"})
@example({"id": "fz", "url": "synthetic:", "hints": [{"x": HUGE, "y": 0, "a": 0, "b": 0}]})
@example({"id": "fz", "url": "synthetic:", "hints": [{"x": 0, "y": 0, "a": 0, "b": 0}] * (MAX_HINTS + 1)})
def test_any_stream_body_adds_a_running_stream_or_is_refused_with_4xx(app: LiveApp, body: Any) -> None:
    async def attempt() -> None:
        try:
            status, answer, response = await app.request(
                "POST", "/api/streams", data=json.dumps(body), headers=JSON
            )
            _assert_client_error(status, answer, {201, 400, 403, 409, 503})
            if status != 201:
                return
            # Accepted: the stream exists under its id, runs (a synthetic source is never "failed"), and goes.
            location = response.headers["Location"]
            assert location == f"/api/streams/{body['id']}"
            await asyncio.sleep(0.3)
            status, info, _ = await app.request("GET", location)
            assert status == 200 and info["id"] == body["id"]
            assert info["state"] != "failed", info
            status, _, _ = await app.request("DELETE", location)
            assert status == 200
        finally:
            await app.restore()

    app.run(attempt)


@fuzz(60)
@given(
    st.sampled_from(["POST", "PUT"]),
    st.one_of(st.lists(valid_hints, max_size=4), valid_hints, json_values(keys_from(*HINT_KEYS)), hint_like),
)
@example("POST", {"x": HUGE, "y": 0.5, "rgb": "#ff0000"})
@example("PUT", {"hints": [{"x": 0.5, "y": 0.5, "a": 0, "b": -HUGE}]})
def test_any_hints_body_is_applied_whole_or_refused_whole(app: LiveApp, method: str, body: Any) -> None:
    """A hints request either changes the stream's hints to exactly what it answered, or is refused with
    a 400 and changes nothing; what it answered can be PUT back unchanged."""
    path = "/api/streams/cam1/hints"

    async def attempt() -> None:
        try:
            await app.request("PUT", path, json=[{"x": 0.5, "y": 0.5, "a": 10, "b": 10}])
            _, before, _ = await app.request("GET", path)
            status, answer, _ = await app.request(method, path, data=json.dumps(body), headers=JSON)
            _assert_client_error(status, answer, {200, 400})
            _, after, _ = await app.request("GET", path)
            if status == 400:
                assert after == before
                return
            assert after == answer
            status, again, _ = await app.request("PUT", path, data=json.dumps(answer), headers=JSON)
            assert status == 200 and again == answer
        finally:
            await app.restore()

    app.run(attempt)


@fuzz(60)
@given(
    st.sampled_from(["/api/streams", "/api/streams/cam1/hints"]),
    st.sampled_from(["POST", "PUT"]),
    st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
    st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain", "", "application/sdp"]
    ),
)
@example("/api/streams", "POST", DEEP_JSON.encode(), "application/json")
@example("/api/streams/cam1/hints", "POST", DEEP_JSON.encode(), "application/json")
@example("/api/streams", "POST", b'{"id": "x", "url": 1' + b"0" * 5000 + b"}", "application/json")
@example("/api/streams", "POST", b"\xff\xfe{}", "application/json")
def test_any_raw_json_body_gets_a_json_answer_and_never_5xx(
    app: LiveApp, path: str, method: str, data: bytes, content_type: str
) -> None:
    async def attempt() -> None:
        try:
            headers = {"Content-Type": content_type} if content_type else {}
            status, answer, _ = await app.request(method, path, data=data, headers=headers)
            _assert_client_error(status, answer, {200, 201, 400, 403, 405, 409, 413, 415, 503})
        finally:
            await app.restore()

    app.run(attempt)


@fuzz(40)
@given(
    st.sampled_from(["/whep/cam1"] * 3 + ["/whip/pub1"] * 2 + ["/whip/cam1", "/whep/nope"]),
    offers(WHEP_OFFER, WHIP_OFFER),
    st.sampled_from(["application/sdp"] * 6 + ["text/plain", "application/json"]),
)
@example("/whep/cam1", WHEP_OFFER, "application/sdp")
@example("/whip/pub1", WHIP_OFFER, "application/sdp")
@example("/whep/cam1", "v=0\r\nm=video", "application/sdp")
@example("/whep/cam1", BUNDLE_WITHOUT_SECTION, "application/sdp")
@example("/whip/pub1", BUNDLE_WITHOUT_SECTION, "application/sdp")
def test_any_offer_is_answered_or_refused_with_4xx_and_leaves_no_session(
    app: LiveApp, path: str, sdp: str, content_type: str
) -> None:
    """WHEP and WHIP with offers near real ones: a 201 comes with an SDP answer and a session that DELETE
    ends (no viewer or publisher stays behind); everything else is a 4xx that says what is wrong."""

    async def attempt() -> None:
        try:
            data = sdp.encode("utf-8", "surrogatepass")
            status, answer, response = await app.request(
                "POST", path, data=data, headers={"Content-Type": content_type}
            )
            if status == 201:
                assert response.content_type == "application/sdp"
                assert answer.startswith(b"v=0")
                location = response.headers["Location"]
                status, closed, _ = await app.request("DELETE", location)
                assert status == 200, closed
            else:
                _assert_client_error(status, answer, {400, 403, 404, 409, 415, 503})
            _, info, _ = await app.request("GET", "/api/streams/cam1")
            assert info["viewers"] == 0
            _, streams, _ = await app.request("GET", "/api/streams")
            assert [s["id"] for s in streams["streams"]] == ["cam1"]  # a publisher's stream left with it
        finally:
            await app.restore()

    app.run(attempt, 30.0)


@pytest.mark.parametrize("path", ["/whep/cam1", "/whip/pub2"])
def test_an_offer_without_a_dtls_fingerprint_is_refused_not_answered(app: LiveApp, path: str) -> None:
    """aiortc would answer it and then fail in the background when connecting: a viewer that waits for
    nothing, and an error in the log. The client hears why at once instead."""

    async def attempt() -> None:
        try:
            status, answer, _ = await app.request(
                "POST", path, data=NO_FINGERPRINT.encode(), headers={"Content-Type": "application/sdp"}
            )
            assert status == 400
            assert "fingerprint" in answer["error"]
        finally:
            await app.restore()

    app.run(attempt)


path_segments = st.one_of(
    st.sampled_from(["cam1", "nope", "", "..", "%2e%2e", "a" * 65, "0123"]),
    st.text(max_size=12).map(lambda s: quote(s, safe="")),
)
routes = st.one_of(
    st.builds(
        lambda template, a, b: template.format(a=a, b=b),
        st.sampled_from(
            [
                "/",
                "/healthz",
                "/metrics",
                "/api/streams",
                "/api/streams/{a}",
                "/api/streams/{a}/hints",
                "/api/streams/{a}/reset",
                "/api/streams/{a}/events",
                "/whep/{a}",
                "/whep/{a}/{b}",
                "/whip/{a}",
                "/whip/{a}/{b}",
                "/web/{a}",
                "/{a}/{b}",
            ]
        ),
        path_segments,
        path_segments,
    ),
    st.text(max_size=30).map(lambda s: quote(s, safe="/?=&")),
).map(lambda path: "/" + path.lstrip("/"))  # "//host/..." would name another server, not a path


@fuzz(80)
@given(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
    routes,
    st.one_of(st.none(), st.binary(max_size=100), json_values().map(lambda v: json.dumps(v).encode())),
    st.sampled_from([None, "application/json", "application/sdp", "text/plain", "multipart/form-data"]),
)
@example("GET", "/web/../../etc/passwd", None, None)
@example("POST", "/api/streams", b"x" * (MAX_BODY + 1), "application/json")
def test_any_request_to_any_route_is_never_a_server_error(
    app: LiveApp, method: str, path: str, data: bytes | None, content_type: str | None
) -> None:
    async def attempt() -> None:
        try:
            headers = {"Content-Type": content_type} if content_type else {}
            status, answer, response = await app.request(method, path, data=data, headers=headers)
            assert status < 500, (method, path, status, answer)
            if status == 201 and "Location" in response.headers:
                await app.request("DELETE", response.headers["Location"])
            # Errors say what is wrong in JSON; a missing static asset is aiohttp's own bare 404.
            if status >= 400 and method != "HEAD" and not (status == 404 and path.startswith("/web/")):
                assert isinstance(answer, dict) and answer.get("error"), (status, answer)
        finally:
            await app.restore()

    app.run(attempt, 30.0)
    assert app.pipeline.info("cam1").state != "failed"


def test_the_pattern_stream_kept_flowing_through_the_fuzzing(app: LiveApp) -> None:
    """After every request above, the stream the server started with still produces frames."""

    async def frames_rise() -> None:
        before = app.pipeline.info("cam1").frames_out
        deadline = asyncio.get_running_loop().time() + 10
        while app.pipeline.info("cam1").frames_out <= before + 3:
            assert asyncio.get_running_loop().time() < deadline, "no frames out"
            await asyncio.sleep(0.05)
        status, health, _ = await app.request("GET", "/healthz")
        assert status == 200 and health["ok"] is True

    app.run(frames_rise)
