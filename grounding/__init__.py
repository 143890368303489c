"""Pneumonia localization from images and reports (Bhalodia et al., MICCAI 2021), as Ray jobs.

Packages by stage: ``data`` -> ``text`` -> ``detection`` -> ``model`` -> ``evaluation``, with
``synth`` (the built-in dataset), ``config`` (one typed config), ``bench`` and ``distributed``
(the Ray layer, the only package that imports Ray). README "Layout" has the map.
"""
