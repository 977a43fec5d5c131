"""`python -m jaxrl.reproduce TABLE --out=DIR [--small]`: the papers' tables at a scale that
runs here (see jaxrl/reproduce/__main__.py and REPRODUCE.md)."""
