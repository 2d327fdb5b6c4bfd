"""Realism: targets as data (``realism.targets``) and the real datasets' protocols that make
them (``realism.data``)."""
