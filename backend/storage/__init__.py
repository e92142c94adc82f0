"""What the backend keeps on disk: file names (layout), project folders, model versions, retention."""
