"""Faces in the wild: detectors (the ``detector`` component kind), alignment, and the face-first
paths of ``fer predict`` (photos, video), ``fer serve`` and ``fer data pack --detect``."""
