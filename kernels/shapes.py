"""The one shape check of the ops in `kernels/`: errors name the op and argument, and show rank and sizes."""


def assert_shape(tensor, shape, what):
    """Raise ValueError unless `tensor` has shape `shape`, a list of sizes with None for "any".

    `what` names the op and argument, e.g. "modulated_conv2d: weight":
    "modulated_conv2d: weight must be [*, 512, 3, 3], got [4, 256, 3, 3]"."""
    got = list(tensor.shape)
    if len(got) == len(shape) and all(want is None or want == size for want, size in zip(shape, got)):
        return
    expected = "[" + ", ".join("*" if want is None else str(want) for want in shape) + "]"
    if len(got) != len(shape):  # say the ranks: "[*, *]" and "[3, 4, 5]" alone read as a size mismatch
        raise ValueError(f"{what} must be {len(shape)}-D {expected}, got {len(got)}-D {got}")
    raise ValueError(f"{what} must be {expected}, got {got}")
