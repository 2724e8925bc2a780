"""ResNet18-style audio encoder with squeeze-and-excitation (r = 16) and Mish over the feature × time map.

Utterances of different lengths share a padded batch: a time mask follows the feature map through every
stride, activations in the padding are zeroed after each layer and the SE squeeze and the final pooling
average over valid frames only, so (in eval mode) an utterance's embedding does not depend on how much
padding it got.
"""

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"mish": nn.Mish, "relu": nn.ReLU}


def masked_mean(x, mask):
    """Mean of x [B, C, F, T] over (F, T) where mask [B, 1, 1, T] is 1."""
    return (x * mask).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) * x.shape[2]).clamp(min=1)


class SqueezeExcitation(nn.Module):
    """Global average pool → FC C→C/r → ReLU → FC → sigmoid → channel rescale (Hu et al.)."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x, mask):
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(masked_mean(x, mask)))))
        return x * scale[:, :, None, None]


class BasicBlock(nn.Module):
    """ResNet basic block: conv3×3-BN-act-conv3×3-BN, [SE], + shortcut, act."""

    def __init__(self, in_channels, out_channels, stride=1, se=True, se_reduction=16, act="mish"):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = ACTIVATIONS[act]()
        self.se = SqueezeExcitation(out_channels, se_reduction) if se else None
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x, mask):
        out_mask = mask[..., :: self.stride]  # a k3/s2/p1 conv centres output t on input 2t
        y = self.act(self.bn1(self.conv1(x))) * out_mask
        y = self.bn2(self.conv2(y))
        if self.se is not None:
            y = self.se(y, out_mask)
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.act(y + skip) * out_mask, out_mask


class AudioEncoder(nn.Module):
    def __init__(
        self,
        in_features=64,  # Feature bands F (64 log-mel, or MFCC+Δ+ΔΔ).
        embed_dim=512,  # Output embedding size.
        widths=(64, 128, 256, 512),  # Channels of the four stages.
        blocks=(2, 2, 2, 2),  # Basic blocks per stage (ResNet18).
        se=True,  # Squeeze-and-excitation in every block?
        se_reduction=16,  # SE reduction ratio r.
        act="mish",  # mish | relu.
        num_classes=0,  # Speakers of the classification head (0 = none).
        stem_stride=1,  # 1 keeps the 10 ms frame rate; 2 quarters the cost (CPU-sized runs).
        stem_pool=False,  # ResNet18's 3×3 stride-2 max-pool after the stem: another 4× less cost.
    ):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"AudioEncoder: act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        if len(widths) != len(blocks):
            raise ValueError(f"AudioEncoder: widths {widths} and blocks {blocks} differ in length")
        self.in_features, self.embed_dim, self.num_classes = in_features, embed_dim, num_classes
        # The input is one image channel of F × T; a 3×3 stride-1 stem keeps the 10 ms frame resolution.
        self.stem_stride = stem_stride
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, stem_stride, 1, bias=False), nn.BatchNorm2d(widths[0]), ACTIVATIONS[act]()
        )
        self.stem_pool = stem_pool
        layers, in_ch = [], widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_ch, width, stride, se, se_reduction, act))
                in_ch = width
        self.layers = nn.ModuleList(layers)
        self.fc = nn.Linear(in_ch, embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes) if num_classes > 0 else None

    def forward(self, feats, lengths=None):
        """feats [B, F, T] (padded), lengths [B] valid frames (None = all) -> emb [B, embed_dim]."""
        if feats.ndim != 3 or feats.shape[1] != self.in_features:
            raise ValueError(f"AudioEncoder: expected features [B, {self.in_features}, T], got {list(feats.shape)}")
        b, _, t = feats.shape
        if lengths is None:
            lengths = torch.full([b], t, device=feats.device)
        if lengths.shape != (b,) or bool((lengths < 1).any()) or bool((lengths > t).any()):
            raise ValueError(f"AudioEncoder: lengths must be [B={b}] in 1..{t}, got {lengths.tolist()}")
        mask = (torch.arange(t, device=feats.device)[None] < lengths[:, None]).to(feats.dtype)[:, None, None]
        x = self.stem(feats.unsqueeze(1) * mask)
        mask = mask[..., :: self.stem_stride]  # same centring rule as the strided blocks
        x = x * mask
        if self.stem_pool:  # padding must never win the max: it enters as -inf and leaves as 0
            x = F.max_pool2d(x.masked_fill(mask == 0, float("-inf")), 3, 2, 1)
            mask = mask[..., ::2]
            x = torch.where(mask > 0, x, 0.0)
        for layer in self.layers:
            x, mask = layer(x, mask)
        return self.fc(masked_mean(x, mask))

    def classify(self, emb):
        """Speaker logits [B, num_classes] from embeddings (pretraining head)."""
        if self.classifier is None:
            raise RuntimeError("AudioEncoder.classify: needs num_classes > 0")
        return self.classifier(emb)
