"""Offline simulation of active learning: protocol, dataset, run loop, run directory, report, box costs."""
