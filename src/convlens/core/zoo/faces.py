"""A real face detector that loads offline: MTCNN with facenet-pytorch's weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from convlens.core.detector import Detector
from convlens.core.zoo.registry import register


class MTCNNFaces(torch.nn.Module):
    """MTCNN (Zhang et al. 2016), the real weights shipped in ``facenet-pytorch``, behind
    torchvision's detection convention: pictures in [0, 1] in, one dict of face boxes, labels
    (0, "face") and probabilities out. The three networks' weights are read with
    ``torch.load(weights_only=True)``; the cascade is facenet-pytorch's ``detect_face``."""

    def __init__(self, min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7)):
        super().__init__()
        from facenet_pytorch.models import mtcnn as fm

        folder = Path(fm.__file__).resolve().parent.parent / "data"
        self.pnet, self.rnet, self.onet = fm.PNet(False), fm.RNet(False), fm.ONet(False)
        for net, name in ((self.pnet, "pnet"), (self.rnet, "rnet"), (self.onet, "onet")):
            path = folder / f"{name}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"MTCNN weights missing: {path} (facenet-pytorch)")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.min_face_size = min_face_size
        self.thresholds = list(thresholds)
        self.eval()

    def forward(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        from facenet_pytorch.models.utils.detect_face import detect_face

        batch = torch.stack(list(images)).permute(0, 2, 3, 1) * 255  # (N, H, W, 3) in 0..255
        device = next(self.pnet.parameters()).device
        found, _points = detect_face(
            batch,
            self.min_face_size,
            self.pnet,
            self.rnet,
            self.onet,
            self.thresholds,
            0.709,
            device,
        )
        out = []
        for boxes in found:
            b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 5)
            out.append(
                {
                    "boxes": b[:, :4],
                    "labels": torch.zeros(len(b), dtype=torch.long),
                    "scores": b[:, 4],
                }
            )
        return out


@register(
    "mtcnn-faces",
    "MTCNN face detector, facenet-pytorch's weights (offline)",
    task="detect",
    install="pip install --no-deps facenet-pytorch==2.6.0",
)
def mtcnn_faces() -> Detector:
    return Detector(MTCNNFaces(), ["face"], name="mtcnn-faces", score_threshold=0.9)
