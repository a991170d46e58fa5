"""medalign: 3D medical vision-language pretraining.

Stages, each a subpackage, data flowing one way::

    io -> prep -> data -> models + losses -> train -> tasks -> cli

``synth`` writes phantom DICOM data sets for demos and tests and sits beside ``io``.
"""

__version__ = "0.1.0"
