"""The Ray layer, and the only package that imports Ray: start-up, each stage's Ray job
(Ray Data prepare, ROI extraction, Ray Train, Ray Tune, evaluation tasks), the pipeline and
the Ray benchmarks. The math it runs lives in the other packages and takes explicit arguments.
"""
