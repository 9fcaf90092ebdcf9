"""Loading any supported checkpoint by path, name or Hub id; the open_clip-style factory."""
