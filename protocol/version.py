"""The tracklog release version, in one place.

pyproject.toml reads it from here (`[tool.setuptools.dynamic]`, parsed without importing),
the client exports it as `tracklog.__version__` and the daemon names it in its `welcome`
and `Server` header. It lives in the protocol package because both sides import that one
and neither imports the other.
"""

__version__ = "0.1.0"
