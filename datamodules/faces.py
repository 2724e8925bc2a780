"""Face alignment: five landmarks -> a similarity transform -> a size×size uint8 RGB crop.

Two crops (`align`): `arcface`, the least-squares similarity (Umeyama) onto ArcFace's five-point template, a tight
face; `ffhq`, the oriented square of NVlabs' FFHQ (ffhq-dataset's `recreate_aligned_images`), the whole head with
some background, as a StyleGAN2 pretrained on FFHQ draws it.

Landmarks are (x, y) in pixel-centre coordinates (pixel i covers [i-0.5, i+0.5]), ordered left eye,
right eye, nose, mouth left, mouth right ("left" = image-left, as MTCNN returns them).
Detectors: `mtcnn` (facenet-pytorch, weights ship in its wheel), `file` (a landmarks CSV, as the embedded
corpus writes), `none` (pre-aligned folders: resize only). Faces are stored as uint8 and normalised to
[-1, 1] by `normalize` when loaded.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from datamodules.files import read_table, refuse_repeats, unreadable_reason

# ArcFace's five-point template for a 112×112 crop; scaled to any crop size.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
LANDMARK_COLUMNS = (
    "left_eye_x",
    "left_eye_y",
    "right_eye_x",
    "right_eye_y",
    "nose_x",
    "nose_y",
    "mouth_left_x",
    "mouth_left_y",
    "mouth_right_x",
    "mouth_right_y",
)
DETECTORS = ("mtcnn", "file", "none")
ALIGNS = ("arcface", "ffhq")
MIN_IMAGE_SIDE = 32  # smaller images hold no usable face at any crop size we train on
MAX_IMAGE_PIXELS = 40_000_000  # larger ones (a 10000² photo: > 600 s and 4.7 GB in the blur) are refused per file


class FaceError(ValueError):
    """An image that yields no face; message `"<path>: <reason>"`."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def template(size: int = 64) -> np.ndarray:
    """The canonical five points [5, 2] in pixel-centre coordinates of a size×size crop."""
    return (TEMPLATE_112 + 0.5) * (size / 112.0) - 0.5  # scale pixel edges, not centres


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) with dst ≈ M @ [src, 1]; M [2, 3]."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching [N>=2, 2] point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("source points coincide")
    U, S, Vt = np.linalg.svd(d.T @ s / len(src))
    D = np.diag([1.0, np.sign(np.linalg.det(U) * np.linalg.det(Vt)) or 1.0])  # no reflections
    R = U @ D @ Vt
    scale = (S * np.diag(D)).sum() / var_s
    return np.concatenate([scale * R, (mu_d - scale * R @ mu_s)[:, None]], axis=1)


def ffhq_quad(points: np.ndarray) -> np.ndarray:
    """FFHQ's crop square of five landmarks [5, 2]: its corners [4, 2], top-left, bottom-left, bottom-right,
    top-right, in the landmarks' coordinates. From the eye centres and the mouth corners, which dlib's 68 points
    give FFHQ (eye contour means, outer mouth corners) and our five points give directly."""
    eye_left, eye_right, _, mouth_left, mouth_right = np.asarray(points, np.float64)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]  # the eye line and the face axis turned onto it, summed
    if np.hypot(*x) < 1e-9:  # an upside-down face whose eye line and axis cancel: no direction
        raise ValueError("landmarks give no crop direction")
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)  # half the side
    y = np.flipud(x) * [-1, 1]  # x turned by 90°, toward the chin (y points down)
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def ffhq_transform(points: np.ndarray, size: int) -> np.ndarray:
    """The similarity M [2, 3] taking FFHQ's crop square onto a size×size crop: its corners onto the crop's outer
    pixel edges, as ffhq-dataset's PIL QUAD transform of `quad + 0.5` (pixel centres to PIL's pixel edges) does.
    The square maps exactly, so the least-squares fit is the map.

    Where the square leaves the image, FFHQ pads with the image reflected, blurred (σ = 2 % of the square) and faded
    to its median colour; we replicate the edge pixels (warp samples with padding_mode="border"), so the crop stays
    a pass over the window it samples (FFHQ's padding is a reflection and a Gaussian over the whole padded photo)
    and no pixel inside the image changes. Crops differ from FFHQ's only past the image's edges: streaks of the edge
    colour there, not a blurred mirror. Tight photos (VGGFace's, the embedded corpus') show them at the corners."""
    lo, hi = -0.5, size - 0.5
    return umeyama(ffhq_quad(points), np.array([[lo, lo], [lo, hi], [hi, hi], [hi, lo]]))


def box_blur(img: torch.Tensor, k: int) -> torch.Tensor:
    """[N, C, H, W] -> the mean over each k×k window (odd k), edges replicated; same size.

    A column pass then a row pass: H·W·2k operations instead of H·W·k² (a 4000² photo aligned to 64 px took
    minutes in one k×k pass)."""
    img = torch.nn.functional.pad(img, (k // 2,) * 4, mode="replicate")
    return torch.nn.functional.avg_pool2d(torch.nn.functional.avg_pool2d(img, (k, 1), stride=1), (1, k), stride=1)


def window(coords: np.ndarray, reach: int, n: int) -> tuple[int, int]:
    """[lo, hi) of the pixels of an axis of length n that samples at `coords` (and `reach` pixels around them) use;
    at least `reach` pixels deep where every sample lies beyond an edge, so the edge pixel keeps its neighbours."""
    lo = int(np.clip(np.floor(coords.min()) - reach, 0, max(n - 1 - reach, 0)))
    hi = int(np.clip(np.ceil(coords.max()) + reach + 1, min(reach + 1, n), n))
    return lo, hi


def warp(image: np.ndarray, M: np.ndarray, size: int) -> np.ndarray:
    """The size×size crop whose pixel (x, y) shows image at M⁻¹(x, y); bilinear, edges replicated.

    image uint8 [H, W, 3] -> uint8 [3, size, size]. Only the window of the image that the crop samples is turned
    into floats. A large shrink is first an integer one (f×f means, O(H·W) whatever f), so that the box blur
    against aliasing handles only the remaining factor of 2 to 4 (a 6000² photo aligned to 64 px blurred with a
    93-pixel box before)."""
    H, W, _ = image.shape
    A = np.vstack([M, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(A)[:2]
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    src = inv @ np.stack([xs.ravel(), ys.ravel(), np.ones(size * size)])  # [2, size²] input pixel centres
    scale = 1.0 / max(abs(np.linalg.det(M[:, :2])) ** 0.5, 1e-8)  # input pixels per output pixel
    shrink = max(int(scale) // 2, 1)  # integer part of the shrink; the rest (< 4) is blurred below
    reach = 4 * shrink  # the pooling window, the blur's half-width (<= 1 after pooling) and the bilinear tap
    (x0, x1), (y0, y1) = window(src[0], reach, W), window(src[1], reach, H)
    img = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
    src = src - np.array([[x0], [y0]])
    if shrink > 1:  # ceil_mode: a last partial window is the mean of the pixels it has
        img = torch.nn.functional.avg_pool2d(img, shrink, stride=shrink, ceil_mode=True)
        src = (src - (shrink - 1) / 2) / shrink  # pooled pixel j is centred on input pixel f·j + (f - 1) / 2
    if scale / shrink > 1.5:  # shrinking: pre-blur so the bilinear taps do not alias
        img = box_blur(img, int(scale / shrink) | 1)
    h, w = img.shape[-2:]
    grid = torch.from_numpy(np.stack([src[0] / max(w - 1, 1), src[1] / max(h - 1, 1)], -1) * 2 - 1).float()
    out = torch.nn.functional.grid_sample(
        img, grid.view(1, size, size, 2), mode="bilinear", padding_mode="border", align_corners=True
    )
    return out[0].round().clamp(0, 255).to(torch.uint8).numpy()


def load_image(path) -> np.ndarray:
    """uint8 RGB [H, W, 3] as the image is displayed: EXIF orientation applied, 16-bit and float greyscale scaled
    to 8 bits (not clipped; a float image whose values lie in 0-1 is read as 0-1), palette, RGBA and CMYK
    converted. Corrupt, tiny or over-large (MAX_IMAGE_PIXELS, a decompression bomb included) images raise FaceError
    before their pixels are decoded; a float image with NaN or infinity after."""
    reason = unreadable_reason(path)
    if reason:
        raise FaceError(path, "file not found" if reason == "no such file" else reason)
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise FaceError(
                    path,
                    f"image is {im.width}×{im.height} ({im.width * im.height / 1e6:.0f} MP), more "
                    f"than the {MAX_IMAGE_PIXELS / 1e6:.0f} MP this pipeline decodes; shrink it first",
                )
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # convert("RGB") would clip these at 255
                grey = np.asarray(im, dtype=np.float64)
                if not np.isfinite(grey).all():
                    raise FaceError(path, f"{im.mode} image holds NaN or infinity; save it as an 8-bit image")
                top = 65535.0 if im.mode.startswith("I;16") or grey.max() > 255 else 255.0
                if im.mode == "F" and grey.max() <= 1.0:  # float images store 0-1 (else 0-255 or 0-65535)
                    top = 1.0
                im = Image.fromarray(np.clip(grey / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
            rgb = im.convert("RGB")
    except FaceError:
        raise
    except FileNotFoundError:
        raise FaceError(path, "file not found") from None
    except Image.DecompressionBombError as e:
        raise FaceError(path, f"refused as a decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise FaceError(path, f"unreadable or corrupt image ({e})") from None
    if min(rgb.size) < MIN_IMAGE_SIDE:
        raise FaceError(path, f"image is {rgb.size[0]}×{rgb.size[1]}, smaller than {MIN_IMAGE_SIDE} px")
    return np.array(rgb, dtype=np.uint8)  # a writable copy


def read_landmarks(csv_path) -> dict[str, np.ndarray]:
    """landmarks.csv -> {relative image path: [5, 2]}; read as `files.read_table` reads (byte order mark, encoding,
    unbalanced quotes); a bad column or number, or an image on two lines, names the file and line(s)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FaceError(csv_path, "landmarks file not found (detector=file needs one; use mtcnn or none otherwise)")
    _, numbered, columns = read_table(csv_path)
    missing = [c for c in ("path",) + LANDMARK_COLUMNS if c not in columns]
    if missing:
        raise FaceError(csv_path, f"missing columns {missing}")
    refuse_repeats(csv_path, numbered, "path", "image")
    out = {}
    for line, row in numbered:
        try:
            out[row["path"]] = np.array([float(row[c]) for c in LANDMARK_COLUMNS]).reshape(5, 2)
        except (TypeError, ValueError):
            raise FaceError(csv_path, f"line {line}: landmarks are not numbers") from None
    return out


class FaceAligner:
    """aligner(path, key=None) -> uint8 [3, size, size]; raises FaceError when no face can be had.

    `key` is the image's path relative to the face root, the lookup key of `detector="file"`. detector=none
    only resizes, whatever `align`: its images are aligned already (`align` then names how, for the config)."""

    def __init__(
        self,
        detector: str = "mtcnn",  # DETECTORS: where the landmarks come from; none: pre-aligned, only resized
        size: int = 64,  # crop side, pixels
        landmarks_csv=None,  # the landmarks file of detector=file
        min_face_prob: float = 0.9,  # mtcnn: weaker detections count as no face
        align: str = "arcface",  # ALIGNS: the crop the landmarks are mapped to (see the module docstring)
    ):
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        if align not in ALIGNS:
            raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
        self.detector, self.size, self.min_face_prob, self.align = detector, size, min_face_prob, align
        self.template = template(size)
        self.landmarks = read_landmarks(landmarks_csv) if detector == "file" else None
        self._mtcnn = None

    def _mtcnn_points(self, image: np.ndarray, path) -> np.ndarray:
        if self._mtcnn is None:
            try:
                from facenet_pytorch import MTCNN
            except ImportError as e:
                raise ImportError(
                    "detector=mtcnn needs facenet-pytorch: `pip install --no-deps facenet-pytorch` "
                    "(or use detector=file / none)"
                ) from e
            self._mtcnn = MTCNN(keep_all=False, select_largest=True, device="cpu")
        boxes, probs, points = self._mtcnn.detect(Image.fromarray(image), landmarks=True)
        if boxes is None or probs[0] is None or probs[0] < self.min_face_prob:
            raise FaceError(path, "no face detected")
        return np.asarray(points[0], np.float64) - 0.5  # MTCNN works in pixel-edge coordinates

    def points(self, image: np.ndarray, path, key=None) -> np.ndarray:
        """The five landmarks [5, 2] of an image, pixel-centre coordinates."""
        if self.detector == "file":
            k = str(key if key is not None else path).replace("\\", "/")
            if k not in self.landmarks:
                raise FaceError(path, f"no landmarks for {k!r} in the landmarks file")
            return self.landmarks[k]
        return self._mtcnn_points(image, path)

    def transform(self, points: np.ndarray) -> np.ndarray:
        """The similarity M [2, 3] from image to crop coordinates for these landmarks."""
        if self.align == "ffhq":
            return ffhq_transform(points, self.size)
        return umeyama(points, self.template)

    def __call__(self, path, key=None) -> np.ndarray:
        image = load_image(path)
        if self.detector == "none":  # pre-aligned: only resize
            H, W, _ = image.shape
            M = np.array([[self.size / W, 0, 0.5 * self.size / W - 0.5], [0, self.size / H, 0.5 * self.size / H - 0.5]])
            return warp(image, M, self.size)
        return warp(image, self.transform(self.points(image, path, key)), self.size)


def faces_sha256(faces: dict[str, torch.Tensor]) -> str:
    """SHA-256 of {name: uint8 faces} (names sorted): the exact images a shipped file was made from, so that a rerun
    elsewhere can be checked against them."""
    digest = hashlib.sha256()
    for name in sorted(faces):
        digest.update(name.encode() + faces[name].numpy().tobytes())
    return digest.hexdigest()


def normalize(faces: torch.Tensor) -> torch.Tensor:
    """uint8 faces -> float in [-1, 1]: (x − 127.5) / 127.5."""
    return (faces.float() - 127.5) / 127.5


def mean_face(faces: dict[str, torch.Tensor], mirror: bool = False) -> torch.Tensor:
    """{name: uint8 [K, 3, S, S]} -> the mean of every face in [-1, 1], [3, S, S]; `mirror` also averages each
    face's mirror image (for training with x-flip, whose faces are mirrored half the time)."""
    total = sum(normalize(f).sum(0) for f in faces.values())
    mean = total / sum(len(f) for f in faces.values())
    return (mean + mean.flip(-1)) / 2 if mirror else mean


class SkipReport:
    """Skipped inputs with their reasons, for the preprocessing manifest."""

    def __init__(self, items: list[tuple[str, str]] | None = None):
        self.items = [tuple(i) for i in items or []]

    def add(self, path, reason: str) -> None:
        self.items.append((str(path), reason))

    def extend(self, other: SkipReport) -> None:
        self.items.extend(other.items)

    def counts(self) -> dict[str, int]:
        """Skips per kind of reason: the reason before any parenthesis, numbers replaced by '#'."""
        return dict(Counter(re.sub(r"\d+(\.\d+)?", "#", r.split("(")[0]).strip() for _, r in self.items))

    def __len__(self) -> int:
        return len(self.items)
