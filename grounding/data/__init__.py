"""Data: the manifest schema and box convention (xyxy, pixels of the original image), storage,
dataset adapters, DICOM/raster decoding, the prepared-image table, input checks and run locks.
"""
