"""Procedural faces for the embedded corpus: 256×256 RGB drawn as polygons with PIL, plus five landmarks.

Geometry lives in a canonical head frame whose unit is the distance between the eye centres: origin
midway between the eyes, x to the image right, y down. Points on the face surface get a depth from a
head ellipsoid, so that a head turn (yaw) or nod (pitch) moves the nose more than the eyes and the
eyes more than the outline; the turned head is then rolled, scaled and shifted into the image. Shapes
are drawn at twice the size and box-filtered down for anti-aliasing. Placement is in fractions of the image
side, so the same draws give the same picture at any IMAGE_SIZE (256: sharp crops up to face_size=256).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 256
_SUPERSAMPLE = 2
# Placement at scale 1, in fractions of the image side (as first drawn at 128 px: 30 px between the eyes, their
# midpoint at pixel centre (63.5, 54.0), shifted by up to 7 px).
_EYE_DISTANCE, _EYES_AT, _SHIFT = 30 / 128, np.array([64.0, 54.5]) / 128, 7 / 128
LANDMARK_NAMES = (
    "left_eye",
    "right_eye",
    "nose",
    "mouth_left",
    "mouth_right",
)  # image-left first (MTCNN order)

HAIR_RGB = {
    "black": (28, 24, 22),
    "dark_brown": (62, 40, 26),
    "brown": (112, 74, 42),
    "blonde": (214, 180, 110),
    "red": (158, 66, 30),
}
EYE_RGB = {
    "dark": (40, 26, 18),
    "brown": (96, 58, 30),
    "blue": (64, 112, 168),
    "green": (78, 124, 76),
    "grey": (118, 128, 134),
}
# Skin tone 0 (dark) .. 1 (light), piecewise linear through these colours.
_SKIN_STOPS = np.array([(62, 40, 30), (118, 78, 52), (176, 124, 90), (222, 174, 140), (250, 222, 204)], float)
_LIP_RGB = np.array((176, 62, 74), float)


def skin_rgb(tone: float) -> np.ndarray:
    pos = np.clip(tone, 0, 1) * (len(_SKIN_STOPS) - 1)
    i = min(int(pos), len(_SKIN_STOPS) - 2)
    return _SKIN_STOPS[i] + (pos - i) * (_SKIN_STOPS[i + 1] - _SKIN_STOPS[i])


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


class _Head:
    """Canonical face geometry of one identity (from its traits) plus one image's pose and expression."""

    def __init__(self, traits: dict, rng: np.random.Generator):
        self.t = traits
        self.face_scale = 0.9 + 0.2 * traits["face_length"]  # vertical stretch of the lower face
        self.top = -1.38  # forehead top
        self.mid = 0.3 * self.face_scale  # widest line of the face (cheekbones), also the ear line
        self.chin = 1.62 * self.face_scale
        self.half_width = 0.98 + 0.06 * traits["jaw_width"]
        # Per-image pose (radians) and placement.
        self.yaw = rng.uniform(-0.3, 0.3)
        self.pitch = rng.uniform(-0.15, 0.15)
        roll = rng.uniform(-0.2, 0.2)
        self.scale = _EYE_DISTANCE * IMAGE_SIZE * rng.uniform(0.88, 1.12)  # pixels per head unit
        self.rot = self.scale * np.array([[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]])
        self.centre = (_EYES_AT + rng.uniform(-_SHIFT, _SHIFT, size=2)) * IMAGE_SIZE - 0.5  # pixel-centre coordinates
        # Per-image expression.
        self.smile = rng.uniform(-0.3, 1.0)
        self.mouth_open = rng.uniform(0.04, 0.16) if rng.random() < 0.3 else 0.0
        self.brow_raise = rng.uniform(-0.03, 0.08)
        self.eye_open = rng.uniform(0.8, 1.1)
        self.gaze = rng.uniform(-0.04, 0.04, size=2)

    def half_width_at(self, y: np.ndarray, grow: float = 0.0) -> np.ndarray:
        """Face outline half-width, optionally grown by `grow` all round: an ellipse above the cheekbones;
        below, a superellipse whose squareness and taper follow jaw_width (wide: square, narrow: pointed)."""
        jaw = self.t["jaw_width"]
        up = np.clip((self.mid - y) / (self.mid - self.top + grow), 0, 1)
        down = np.clip((y - self.mid) / (self.chin - self.mid + grow), 0, 1)
        n = 1.8 + 2.6 * jaw
        lower = (1 - down**n) ** (1 / n) * (1 - 0.3 * (1 - jaw) * down)
        return (self.half_width + grow) * np.where(y < self.mid, np.sqrt(1 - up**2), lower)

    def outline(self, grow: float = 0.0, y_to: float | None = None, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
        """Right and left edges, crown down to `y_to` (default: the chin), of the outline grown by `grow`."""
        y_top = self.top - grow
        y_end = self.chin + grow if y_to is None else y_to
        y = y_top + (y_end - y_top) * (1 - np.cos(np.linspace(0, np.pi / 2, n)))  # denser near the crown
        w = self.half_width_at(y, grow)
        return np.stack([w, y], 1), np.stack([-w, y], 1)

    def depth(self, p: np.ndarray) -> np.ndarray:
        """Depth of points on the face surface (a head ellipsoid), toward the camera."""
        r = (p[:, 0] / (self.half_width + 0.1)) ** 2 + ((p[:, 1] - self.mid) / 1.9) ** 2
        return 0.9 * np.sqrt(np.clip(1 - r, 0, 1))

    def project(self, p: np.ndarray, z: np.ndarray | float = 0.0) -> np.ndarray:
        """Canonical points [N,2] with depth -> image pixel-centre coordinates at IMAGE_SIZE."""
        z = np.broadcast_to(z, p.shape[:1])
        x = p[:, 0] * np.cos(self.yaw) + z * np.sin(self.yaw)
        y = p[:, 1] * np.cos(self.pitch) + z * np.sin(self.pitch)
        return np.stack([x, y], 1) @ self.rot.T + self.centre

    def on_surface(self, p: np.ndarray, lift: float = 0.0) -> np.ndarray:
        return self.project(p, self.depth(p) + lift)


class _Canvas:
    """A supersampled RGB canvas taking polygons in IMAGE_SIZE pixel-centre coordinates."""

    def __init__(self, background: np.ndarray):
        size = IMAGE_SIZE * _SUPERSAMPLE
        self.image = Image.fromarray(background.astype(np.uint8)).resize((size, size), Image.BILINEAR)
        self.draw = ImageDraw.Draw(self.image)

    def polygon(self, points: np.ndarray, rgb) -> None:
        pts = points * _SUPERSAMPLE + (_SUPERSAMPLE - 1) / 2
        self.draw.polygon([tuple(p) for p in pts.tolist()], fill=tuple(int(round(c)) for c in np.clip(rgb, 0, 255)))

    def line(self, points: np.ndarray, rgb, width: float) -> None:
        pts = points * _SUPERSAMPLE + (_SUPERSAMPLE - 1) / 2
        self.draw.line(
            [tuple(p) for p in pts.tolist()],
            fill=tuple(int(round(c)) for c in np.clip(rgb, 0, 255)),
            width=max(1, int(round(width * _SUPERSAMPLE))),
            joint="curve",
        )

    def result(self) -> np.ndarray:
        return np.asarray(self.image.reduce(_SUPERSAMPLE), dtype=np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A muted two-colour gradient with a few soft blobs: 32×32, upsampled by the canvas."""
    a, b = rng.uniform(30, 220, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0 - 0.5
    t = np.clip(0.5 + xx * np.cos(angle) + yy * np.sin(angle), 0, 1)[..., None]
    bg = a * (1 - t) + b * t
    for _ in range(rng.integers(0, 4)):
        cx, cy = rng.uniform(-0.5, 0.5, size=2)
        radius = rng.uniform(0.08, 0.3)
        weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))[..., None]
        bg = bg * (1 - 0.6 * weight) + rng.uniform(30, 220, size=3) * 0.6 * weight
    return bg


def _eye(head: _Head, canvas: _Canvas, cx: float, iris_rgb, skin) -> np.ndarray:
    """Draw one eye centred at (cx, 0); returns the projected iris centre (the landmark)."""
    t = head.t
    half_w = 0.18 + 0.1 * t["eye_size"]
    half_h = half_w * 0.55 * head.eye_open
    u = np.linspace(0, np.pi, 24)
    xs = cx + half_w * np.cos(u)

    def upper(x):
        return -half_h * np.sqrt(np.clip(1 - ((x - cx) / half_w) ** 2, 0, 1))

    def lower(x):
        return 0.75 * half_h * np.sqrt(np.clip(1 - ((x - cx) / half_w) ** 2, 0, 1))

    almond = np.concatenate([np.stack([xs, upper(xs)], 1), np.stack([xs[::-1], lower(xs[::-1])], 1)])
    canvas.polygon(head.on_surface(_ellipse(cx, 0.02, half_w * 1.25, half_h * 1.6)), skin * 0.9)  # eye socket shade
    canvas.polygon(head.on_surface(almond), (236, 234, 228))
    iris_c = np.array([cx + head.gaze[0] * half_w, head.gaze[1] * half_h])
    for radius, rgb in ((0.5 * half_w, iris_rgb), (0.22 * half_w, (12, 10, 10))):
        ring = _ellipse(iris_c[0], iris_c[1], radius, radius, 28)
        ring[:, 1] = np.clip(ring[:, 1], upper(ring[:, 0]), lower(ring[:, 0]))  # inside the eyelids
        canvas.polygon(head.on_surface(ring), rgb)
    canvas.line(head.on_surface(np.stack([xs, upper(xs) - 0.01], 1)), (30, 22, 20), 0.03 * head.scale)  # lid, lashes
    return head.on_surface(iris_c[None])[0]


def _brow(head: _Head, canvas: _Canvas, side: float, rgb) -> None:
    u = np.linspace(0, 1, 16)
    x = side * (0.17 + 0.63 * u)
    y = -0.36 - head.brow_raise - 0.1 * np.sin(np.pi * (0.2 + 0.8 * u)) + 0.04 * u
    thick = (0.04 + 0.12 * head.t["brow_thickness"]) * (1 - 0.45 * u)
    pts = np.concatenate([np.stack([x, y - thick / 2], 1), np.stack([x[::-1], (y + thick / 2)[::-1]], 1)])
    canvas.polygon(head.on_surface(pts), rgb)


def _nose(head: _Head, canvas: _Canvas, skin) -> np.ndarray:
    """Bridge shadow, tip, nostrils; returns the projected nose tip."""
    tip_y = 0.58 * head.face_scale
    lift = lambda p, k: head.on_surface(p, lift=k)  # noqa: E731 - nose points stand out of the surface
    side = 1.0 if head.yaw > 0 else -1.0  # the shaded flank faces away from the camera
    bridge = np.array([[0.07 * side, 0.0], [0.13 * side, tip_y - 0.12], [0.05 * side, tip_y - 0.1], [0.02 * side, 0.0]])
    canvas.polygon(lift(bridge, np.array([0.15, 0.35, 0.4, 0.2])), skin * 0.86)
    canvas.polygon(lift(_ellipse(0.0, tip_y + 0.02, 0.16, 0.09), 0.3), skin * 0.9)  # alae
    canvas.polygon(lift(_ellipse(0.0, tip_y - 0.01, 0.085, 0.075), 0.42), skin * 1.04)  # tip
    for x in (-0.075, 0.075):
        canvas.polygon(lift(_ellipse(x, tip_y + 0.065, 0.045, 0.024, 16), 0.3), skin * 0.42)
    return lift(np.array([[0.0, tip_y]]), 0.42)[0]


def _mouth(head: _Head, canvas: _Canvas, skin) -> np.ndarray:
    """Lips with smile and opening; returns the projected corners, image-left first."""
    y0 = 1.05 * head.face_scale
    half = 0.3 + 0.14 * head.t["mouth_width"]
    u = np.linspace(-1, 1, 25)
    x = half * u
    parting = y0 - 0.07 * head.smile * u**2  # corners rise with a smile
    body = (1 - u**2) ** 0.6
    top = parting - 0.075 * body * (1 - 0.3 * np.exp(-((u / 0.18) ** 2)))  # cupid's bow dip
    gap = head.mouth_open * (1 - u**2) ** 0.8
    bottom = parting + gap + 0.1 * body
    lip = (skin * 0.45 + _LIP_RGB * 0.55) * 0.85
    canvas.polygon(head.on_surface(np.concatenate([np.stack([x, top], 1), np.stack([x[::-1], bottom[::-1]], 1)])), lip)
    if head.mouth_open > 0:
        canvas.polygon(
            head.on_surface(np.concatenate([np.stack([x, parting], 1), np.stack([x[::-1], (parting + gap)[::-1]], 1)])),
            (45, 18, 22),
        )
        teeth = parting + np.minimum(gap, 0.035)
        canvas.polygon(
            head.on_surface(
                np.concatenate([np.stack([x[4:-4], parting[4:-4]], 1), np.stack([x[4:-4][::-1], teeth[4:-4][::-1]], 1)])
            ),
            (232, 228, 214),
        )
    canvas.line(head.on_surface(np.stack([x, parting], 1)), lip * 0.55, 0.023 * head.scale)
    corners = head.on_surface(np.array([[x[0], parting[0]], [x[-1], parting[-1]]]))
    return corners[np.argsort(corners[:, 0])]


def render_face(traits: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image of an identity: uint8 [IMAGE_SIZE, IMAGE_SIZE, 3] and landmarks [5, 2] (pixel-centre x, y;
    LANDMARK_NAMES).

    Identity traits fix the geometry and colours; `rng` draws this image's pose, placement, expression,
    lighting, background and clothes.
    """
    head = _Head(traits, rng)
    skin = skin_rgb(traits["skin_tone"])
    hair = np.array(HAIR_RGB[traits["hair_colour"]], float)
    hair_len = traits["hair_length"]
    canvas = _Canvas(_background(rng))
    volume = 0.08 + 0.12 * hair_len
    _behind_the_face(head, canvas, traits, hair, skin, volume, rng)

    # The face and its features.
    right, left = head.outline()
    canvas.polygon(head.project(np.concatenate([right, left[::-1]])), skin)
    for side in (-1.0, 1.0):  # a touch of colour on the cheeks
        canvas.polygon(
            head.on_surface(_ellipse(side * 0.55, 0.62 * head.face_scale, 0.2, 0.12)),
            skin * 0.95 + _LIP_RGB * 0.05,
        )
    brow_rgb = hair * 0.75 if traits["hair_colour"] != "blonde" else hair * 0.6
    eyes = [_eye(head, canvas, side * 0.5, EYE_RGB[traits["eye_colour"]], skin) for side in (-1.0, 1.0)]
    for side in (-1.0, 1.0):
        _brow(head, canvas, side, brow_rgb)
    nose = _nose(head, canvas, skin)
    mouth = _mouth(head, canvas, skin)

    _hair_on_top(head, canvas, hair, hair_len, volume)
    image = _lit(canvas.result(), rng)
    landmarks = np.array([*sorted(eyes, key=lambda p: p[0]), nose, *mouth])
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), landmarks


def _behind_the_face(head, canvas, traits: dict, hair, skin, volume: float, rng: np.random.Generator) -> None:
    """Clothes, long hair behind the head, neck, ears: back to front."""
    hair_len = traits["hair_length"]
    canvas.polygon(head.project(_ellipse(0.0, 3.35, 2.3, 1.15)), rng.uniform(20, 230, size=3))
    hair_end = head.mid + (hair_len - 0.25) * 3.4
    if hair_end > head.mid + 0.15:  # shorter hair hides behind the head
        right, left = head.outline(grow=volume + 0.06, y_to=head.mid)
        flare = 0.18 + 0.25 * hair_len
        tail = np.array([[right[-1, 0] + flare, hair_end], [0.0, hair_end + 0.08], [left[-1, 0] - flare, hair_end]])
        canvas.polygon(head.project(np.concatenate([right, tail, left[::-1]])), hair * 0.92)
    neck_w = 0.42 + 0.14 * traits["jaw_width"]
    neck = np.array([[neck_w, head.chin - 0.5], [neck_w * 1.1, 2.7], [-neck_w * 1.1, 2.7], [-neck_w, head.chin - 0.5]])
    canvas.polygon(head.project(neck), skin * 0.8)
    canvas.polygon(head.project(_ellipse(0.0, 2.85, 2.2, 0.62)), rng.uniform(20, 230, size=3))  # collar line
    for side in (-1.0, 1.0):
        ear_x, ear_y = side * head.half_width, head.mid + 0.05
        canvas.polygon(head.project(_ellipse(ear_x, ear_y, 0.17, 0.3), -0.3), skin * 0.95)
        canvas.polygon(head.project(_ellipse(ear_x + side * 0.04, ear_y, 0.08, 0.18), -0.3), skin * 0.72)


def _hair_on_top(head, canvas, hair, hair_len: float, volume: float) -> None:
    """Hair over the crown: follows the grown outline, closes along a hairline on the forehead."""
    temple = head.mid - 0.35 + 0.5 * hair_len
    right, left = head.outline(grow=volume, y_to=temple)
    line_y = -0.95 + 0.2 * hair_len
    inner = head.half_width_at(np.array([temple]))[0] - 0.14  # sideburns end square, inside the face edge
    hairline = np.array(
        [
            [-inner, temple],
            [-inner, temple - 0.25],
            [-0.75, line_y + 0.25],
            [0.25, line_y],
            [0.75, line_y + 0.25],
            [inner, temple - 0.25],
            [inner, temple],
        ]
    )
    canvas.polygon(head.project(np.concatenate([right, hairline[::-1], left[::-1]])), hair)


def _lit(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scene lighting: a linear gradient in a random direction, gain, tint and sensor noise. In float32 and in
    place: in float64 this was half the render's time at 256 px."""
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.18)
    u = (np.arange(IMAGE_SIZE, dtype=np.float32) - (IMAGE_SIZE - 1) / 2) / (IMAGE_SIZE / 2)
    light = rng.uniform(0.92, 1.08) * (1 + strength * (u[None, :] * np.cos(angle) + u[:, None] * np.sin(angle)))
    image *= light[..., None] * rng.uniform(0.97, 1.03, size=3).astype(np.float32)
    image += 1.5 * rng.standard_normal(image.shape, dtype=np.float32)
    return image
