"""Offline model weights: where they come from and how they are mapped onto the layouts libraries load."""
