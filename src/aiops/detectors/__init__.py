"""Anomaly detectors; each scores feature rows, higher meaning more anomalous."""
