"""The HTTP query API (FastAPI) over a folder of collections lands here (issue 3).

Until then, the Python API is :class:`genseek.Collection` and the CLI ``genseek``.
"""
