"""Single-host embedding of images and texts, and image indexes for search."""
