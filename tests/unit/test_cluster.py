"""genseek.cluster without a running Ray: addresses, the payload codec, the CLI options, and
the one-line errors for a missing Ray or an unreachable cluster."""

from __future__ import annotations

import importlib.util
import socket
import sys
import time

import numpy as np
import pytest

from genseek import cluster
from genseek.docwork import DocumentWork, pack, unpack
from genseek.errors import GenseekError, UnavailableError


@pytest.mark.parametrize("bad", ["", "nowhere", "host:0", "host:99999", "ray://h:10001",
                                 "a b:1", "[::1:80", "1.2.3.4.5:80", ":80", "host:"])
def test_bad_addresses_are_one_line_errors(bad):
    with pytest.raises(GenseekError) as err:
        cluster.parse_address(bad)
    assert "\n" not in str(err.value)


def test_good_addresses():
    assert cluster.parse_address("local") == "local"
    assert cluster.parse_address(" auto ") == "auto"
    assert cluster.parse_address("127.0.0.3:6379") == ("127.0.0.3", 6379)
    assert cluster.parse_address("head.example.org:6379") == ("head.example.org", 6379)
    assert cluster.parse_address("[::1]:6379") == ("::1", 6379)


def test_payloads_round_trip_bit_for_bit():
    rng = np.random.default_rng(0)
    for payload in (rng.standard_normal(384).astype(np.float32),
                    rng.standard_normal((7, 384)).astype(np.float16),
                    (np.arange(5, dtype=np.int64), rng.random(5).astype(np.float32)),
                    (np.zeros(0, np.int64), np.zeros(0, np.float32))):
        back = unpack(pack(payload))
        for a, b in zip(payload if isinstance(payload, tuple) else (payload,),
                        back if isinstance(back, tuple) else (back,), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_work_keys_name_the_computation():
    dense = DocumentWork("text", "all-MiniLM-L6-v2", None, 32)
    assert DocumentWork("text", "all-MiniLM-L6-v2", None, 64).key == dense.key  # batch size
    assert DocumentWork("text", "all-MiniLM-L6-v2", 128).key != dense.key
    assert DocumentWork("tokens", "all-MiniLM-L6-v2", None).key != dense.key
    assert (DocumentWork("tokens", "m", 256, seed=1).key
            == DocumentWork("tokens", "m", 256, seed=2).key)  # no projection: no seed
    assert (DocumentWork("tokens", "m", 256, proj_dim=64, seed=1).key
            != DocumentWork("tokens", "m", 256, proj_dim=64, seed=2).key)
    with pytest.raises(ValueError):
        DocumentWork("image", "m")  # type: ignore[arg-type]


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(GenseekError) as err:
        cluster.import_ray()
    assert "pip install 'genseek[ray]'" in str(err.value) and "\n" not in str(err.value)


def test_cli_refuses_ray_options_before_anything_runs(monkeypatch, capsys, tmp_path):
    from genseek import cli

    parser = cli.build_parser()
    args = parser.parse_args(["index", str(tmp_path / "c"), "--from", "x.jsonl",
                              "--ray", "local", "--ray-actors", "3",
                              "--ray-cpus-per-actor", "0.25", "--ray-resource", "gpu_box=2"])
    assert (args.ray, args.ray_actors, args.ray_cpus_per_actor) == ("local", 3, 0.25)
    assert args.ray_resource == [("gpu_box", 2.0)]
    plain = parser.parse_args(["add", "c", "--from", "x"])
    assert plain.ray_cpus_per_actor is None  # 0.5 per encoder actor, 0.25 per shard actor
    assert cli._shard_placement(plain) == {"cpus_per_shard": 0.25, "resources": {}}
    assert cli._shard_placement(args) == {"cpus_per_shard": 0.25, "resources": {"gpu_box": 2.0}}
    for bad in (["--ray", "nowhere"], ["--ray-cpus-per-actor", "0"], ["--ray-actors", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["add", "c", "--from", "x", *bad])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(SystemExit):
        parser.parse_args(["add", "c", "--from", "x", "--ray", "local"])
    assert "pip install 'genseek[ray]'" in capsys.readouterr().err


def test_help_shows_the_ray_defaults(capsys):
    from genseek.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["index", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--ray ADDRESS" in out and "--ray-actors N" in out
    assert "default 0.5)" in out and "default: one per CPU of each node" in out
    assert "shard's actor (default 0.25)" in out


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
def test_unreachable_cluster_fails_fast():
    """A HOST:PORT where nothing listens: a one-line error within the connect timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    started = time.perf_counter()
    with pytest.raises(UnavailableError) as err, cluster.connect(f"127.0.0.1:{port}",
                                                                  timeout=5):
        pass
    # far sooner than Ray's own retries (minutes); generous, so a loaded machine passes too
    assert time.perf_counter() - started < 60
    assert "not reachable" in str(err.value) and "\n" not in str(err.value)


def test_a_connection_that_never_answers_is_given_up_and_undone():
    """``ray.init`` against a port that accepts connections but is no Ray retries for
    minutes: the caller gives up after its bound, and a late success is undone."""
    undone = []
    started = time.perf_counter()
    outcome = cluster._bounded(lambda: time.sleep(3.0), lambda: undone.append(1), 0.2)
    assert outcome is not None and "within 0.2 s" in outcome
    assert time.perf_counter() - started < 2.9  # given up before the call returned
    assert not undone
    deadline = time.monotonic() + 60
    while not undone and time.monotonic() < deadline:
        time.sleep(0.05)
    assert undone == [1]
    assert cluster._bounded(lambda: None, lambda: undone.append(2), 5) is None
    failed = cluster._bounded(lambda: 1 / 0, lambda: None, 5)
    assert failed is not None and "division" in failed
