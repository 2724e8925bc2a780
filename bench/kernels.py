"""Triton modulated convolution vs the PyTorch paths, at every layer of the 64 px StyleGAN2 generator.

    python bench/kernels.py [--batch 32] [--reps 20] [--markdown FILE]

Each layer runs its whole StyleGAN2 op (modulated conv, demodulation, noise, bias, lrelu·√2; ToRGB: no
demodulation, bias only) three ways: NVlabs' non-fused training path (scale input, conv, scale output),
NVlabs' grouped-conv path (per-sample weights as one grouped conv) and the fused Triton kernel. Forward and
forward+backward (gradients for input, weight, styles, noise, bias), float32 and bfloat16. The ratio is the
best PyTorch time over the Triton time (> 1: Triton is faster). Every layer is also checked: the relative
error (‖a − b‖ / ‖b‖) of Triton against the non-fused path, for the output and for each gradient, must stay
within TOLERANCE of its dtype (float32 under cuDNN's default TF32), else the script exits 1 after the table.
Without a CUDA device nothing is measured.
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import bias_act, modulated_conv2d, setup_filter, upfirdn2d  # noqa: E402


def generator_layers(resolution=64, channel_base=16384, channel_max=512):
    """(name, in_channels, out_channels, in_res, kernel, up, demodulate) for each synthesis layer."""
    ch = lambda r: min(channel_base // r, channel_max)  # noqa: E731
    layers, r = [("b4.conv1", ch(4), ch(4), 4, 3, 1, True), ("b4.torgb", ch(4), 3, 4, 1, 1, False)], 8
    while r <= resolution:
        layers += [
            (f"b{r}.conv0", ch(r // 2), ch(r), r // 2, 3, 2, True),
            (f"b{r}.conv1", ch(r), ch(r), r, 3, 1, True),
            (f"b{r}.torgb", ch(r), 3, r, 1, 1, False),
        ]
        r *= 2
    return layers


def nvlabs_nonfused(x, w, s, noise, bias, up, demod):
    y = modulated_conv2d(x, w, s, demodulate=demod, up=up, padding=w.shape[-1] // 2, impl="torch")
    if noise is not None:
        y = y + noise
    return bias_act(y, bias.to(y.dtype), act="lrelu" if demod else "linear", impl="torch")


def nvlabs_grouped(x, w, s, noise, bias, up, demod):
    n, i, h, _ = x.shape
    o, k = w.shape[0], w.shape[-1]
    wn = w[None] * s[:, None, :, None, None]  # [N, O, I, k, k]
    if demod:
        wn = wn * (wn.square().sum([2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    wn, xg = wn.to(x.dtype), x.reshape(1, n * i, h, h)
    if up == 1:
        y = F.conv2d(xg, wn.reshape(n * o, i, k, k), padding=k // 2, groups=n)
    else:  # transposed conv per sample, then the [1,3,3,1] blur (k=3, padding=1 as in the generator)
        wt = wn.transpose(1, 2).reshape(n * i, o, k, k)
        y = F.conv_transpose2d(xg, wt, stride=2, groups=n)
        y = upfirdn2d(y, setup_filter([1, 3, 3, 1], device=x.device), padding=1, gain=4, impl="torch")
    y = y.reshape(n, o, *y.shape[2:])
    if noise is not None:
        y = y + noise
    return bias_act(y, bias.to(y.dtype), act="lrelu" if demod else "linear", impl="torch")


def triton_fused(x, w, s, noise, bias, up, demod):
    return modulated_conv2d(
        x,
        w,
        s,
        demodulate=demod,
        up=up,
        padding=w.shape[-1] // 2,
        impl="triton",
        noise=noise,
        bias=bias.to(x.dtype),
        act="lrelu" if demod else "linear",
    )


TOLERANCE = {"float32": 5e-3, "bfloat16": 5e-2}  # TF32 / bf16 rounding of a K·K·C_in-term dot product


def max_rel_err(layer_args):
    """Largest relative error of Triton vs the non-fused path over the output and every input gradient."""
    leaves = [t for t in layer_args if torch.is_tensor(t)]
    for t in leaves:
        t.requires_grad_(True)
    outs = [impl(*layer_args) for impl in (triton_fused, nvlabs_nonfused)]
    g = torch.randn_like(outs[1])
    grads = [torch.autograd.grad(y, leaves, g) for y in outs]
    pairs = [(outs[0], outs[1])] + list(zip(grads[0], grads[1]))
    pairs = [(a.detach().float(), b.detach().float()) for a, b in pairs]
    return max(float((a - b).norm() / b.norm().clamp_min(1e-12)) for a, b in pairs)


def time_ms(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_layer(impl, args, backward, reps):
    """Median ms of impl(*args), or of impl plus the gradients of all its tensor inputs."""
    leaves = [t for t in args if torch.is_tensor(t)]
    for t in leaves:
        t.requires_grad_(backward)
    if not backward:
        with torch.no_grad():
            return time_ms(lambda: impl(*args), reps)
    g = torch.randn_like(impl(*args))
    return time_ms(lambda: torch.autograd.grad(impl(*args), leaves, g), reps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--markdown", type=Path, help="also write the summary as a markdown table here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/kernels.py: unmeasured: no CUDA device on this machine (the Triton kernels need a GPU).")
        return 0
    print(f"device: {torch.cuda.get_device_name()}, batch {args.batch}, median of {args.reps} runs, ms")
    header = f"{'layer':<10} {'dtype':<9} {'pass':<8} {'non-fused':>10} {'grouped':>10} {'triton':>10} "
    header += f"{'best torch/triton':>18} {'rel err':>9}"
    print(header + "\n" + "-" * len(header))
    ratios, errors = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        dtype_name = str(dtype).split(".")[-1]
        for name, i, o, res, k, up, demod in generator_layers():
            n = args.batch
            x = torch.randn(n, i, res, res, device="cuda", dtype=dtype)
            w = torch.randn(o, i, k, k, device="cuda")
            s = torch.randn(n, i, device="cuda") + 1
            noise = torch.randn(n, 1, res * up, res * up, device="cuda", dtype=dtype) if demod else None
            bias = torch.randn(o, device="cuda")
            layer_args = (x, w, s, noise, bias, up, demod)
            err = max_rel_err(layer_args)
            errors.setdefault(dtype_name, []).append((name, err))
            for pass_ in ("fwd", "fwd+bwd"):
                row = [
                    time_layer(impl, layer_args, pass_ == "fwd+bwd", args.reps)
                    for impl in (nvlabs_nonfused, nvlabs_grouped, triton_fused)
                ]
                ratio = min(row[:2]) / row[2]
                ratios.setdefault((dtype_name, pass_), []).append(ratio)
                times = " ".join(f"{t:>10.3f}" for t in row)
                print(f"{name:<10} {dtype_name:<9} {pass_:<8} {times} {ratio:>17.2f}x {err:>9.1e}")
    lines = [
        f"modulated conv, {torch.cuda.get_device_name()}, batch {args.batch}, 64 px paper-width generator "
        f"({len(generator_layers())} layers), median of {args.reps} runs",
        "",
        "| dtype | pass | best PyTorch / Triton (geometric mean) | range over layers | worst rel. error |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (dtype_name, pass_), values in ratios.items():
        worst = max(e for _, e in errors[dtype_name])
        lines.append(
            f"| {dtype_name} | {pass_} | {statistics.geometric_mean(values):.2f}x | "
            f"{min(values):.2f}-{max(values):.2f}x | {worst:.1e} |"
        )
    print("\n" + "\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    failed = [(d, n, e) for d, rows in errors.items() for n, e in rows if e > TOLERANCE[d]]
    for dtype_name, name, err in failed:
        print(f"DISAGREES: {name} {dtype_name}: relative error {err:.2e} > {TOLERANCE[dtype_name]:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
