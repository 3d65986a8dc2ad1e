"""U-Net segmentation toolkit: pure, tested logic used by the top-level scripts."""
