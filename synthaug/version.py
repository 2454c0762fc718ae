"""The version of synthaug (the package and every file it writes record it)."""

__version__ = "0.3.0.dev1"
