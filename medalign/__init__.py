"""medalign: 3D medical vision-language pretraining.

Rooms, each a subpackage, data flowing one way (docs/architecture.md)::

    io -> config -> reports -> prep -> synth -> data -> models, losses -> train -> tasks -> cli
"""

__version__ = "0.1.0"
