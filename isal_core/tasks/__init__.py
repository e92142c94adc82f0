"""Task adapters: the one plug-in point (base.TaskAdapter), classification, frozen features, detection (FCOS, mmdet)."""
