"""Detection: the frozen RetinaNet, its training loop, ROI extraction (the ROI cache) and the CAM
baseline.
"""
