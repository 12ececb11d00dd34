"""The model: its spec declared once, the U-Net builder, loading and saving, bundles."""
