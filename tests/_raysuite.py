"""Which test modules run Ray, shared by ``conftest.py`` and ``integration/test_ray_suite.py``
(a module of its own: ``from conftest import`` would find whichever ``conftest`` pytest loaded
last, e.g. ``browser/conftest.py``)."""

RAY_MODULES = ("unit/test_cluster.py", "integration/test_ray_cluster.py",
               "integration/test_ray_indexing.py", "integration/test_sharded_ray.py")
"""Test modules that run Ray in the test process. They run in a child pytest of their own
(``integration/test_ray_suite.py``), never in the process of the other tests: after Ray had
run in a process that also ran the JVM, a later Lucene test in it died with SIGSEGV."""
RAY_CHILD = "GENSEEK_RAY_TESTS_CHILD"
