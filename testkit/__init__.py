"""Stand-ins that the tests and the benchmarks both build on, so that neither imports the other.

Not part of the installed package (``pyproject.toml`` ships ``service`` and ``adapters``): like
``tests`` and ``loadtests``, it is imported from the repository root.
"""
