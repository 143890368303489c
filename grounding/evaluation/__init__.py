"""Evaluation: IoU top-1 metrics, Table 1, bootstrap intervals, severity cross-validation,
reports, figures and the localization diagnostics.
"""
