"""Realism: targets as data (``realism.targets``), the real datasets' protocols that make them
(``realism.data``), the simulator's protocols (``realism.protocols``) and its scorecard
(``realism.scorecard``), and calibration (``realism.fit``, ``realism.calibration``,
``realism.fromlogs``, ``realism.staging``): the library of ``python calibrate.py``."""
