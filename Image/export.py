"""``python -m Image.export CKPT --out DIR``: the merged plain timm ViT (safetensors, .pt2, ONNX) + export.json."""
import sys

from pathway.export import main

if __name__ == "__main__":
    sys.exit(main())
