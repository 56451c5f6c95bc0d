"""The lowest layer: what every other package may import and which imports nothing of the project.

``sharding`` holds the mesh axes, the logical axis names every parameter carries and the rules
that map one onto the other; ``adapters`` holds ``AdapterParam``, the base class of every
parameter that is not a teacher weight (ReHyAt's feature maps today, LoRA factors tomorrow).
"""
