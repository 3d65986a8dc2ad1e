"""Training throughput: steady-state patches/s and conv GFLOP/s, fed from memory and through the real input pipeline.

For each model (the default one of configuration.txt, the classic 32-64-128 one on 48x48 patches, and
optionally the original orobix graph), model.fit runs on
  (a) memory: random float32 patch arrays held in memory (as the classic method fed them), and
  (b) stream: lib.pipeline.PatchStream over a temporary dataset.h5 written by lib.storage.write_prepared
      (float16 patches, read one HDF5 slice per batch, flipped/rotated on the fly, as train.py uses it),
with the same loss, metrics and NaN guard as train.py. Each timed epoch of --steps batches gives one rate
(the first batch of an epoch is left out, so the rate is the steady state); the table shows the median.
GFLOP/s counts the convolutions only (bench.common.conv_flops), training = 3x forward; "% of peak" is
relative to the float32 matmul peak (bench/peak.py) measured in this same run: a short peak sample is taken
before each timed epoch and after the last, and each epoch's rate is divided by the mean of the samples on
either side of it, so a shared or throttled machine slows both sides of the ratio alike. The table shows
the median ratio over epochs.

    python bench/train.py                      # default and classic, 60 steps, 3 repeats
    python bench/train.py --models classic --steps 100 --repeats 5
    KERAS_BACKEND=jax python bench/train.py --steps 3 --repeats 1     # a quick check
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

MODELS = ("default", "classic", "orobix")
FEEDS = ("memory", "stream")


def build(name: str, config) -> tuple:
    """(model, patch size, loss, metrics) of a named benchmark model."""
    from lib.losses import loss_and_metrics
    from lib.unet import unet_from_config
    training = config["training settings"]
    if name == "default":
        model, patch = unet_from_config(config), config["data attributes"]["patch_size"]
        loss, metrics = loss_and_metrics(training["loss"], config["model"]["n_classes"])
    elif name == "classic":
        model, patch = common.classic_unet(), 48
        loss, metrics = loss_and_metrics("bce_dice", 1)
    else:
        model, patch = common.orobix_unet(), 48
        loss, metrics = loss_and_metrics("cce", 2)
    return model, patch, loss, metrics


class StepTimer:
    """Callback recording when each batch ends (after the NaN guard has read the loss, as in train.py).

    probe, when given, is called before each epoch and after the last one (outside the timed span); its
    results are kept in `probes`.
    """

    def __new__(cls, probe=None):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.epochs: list[list[float]] = []
                self.probes: list = []

            def on_epoch_begin(self, epoch, logs=None):
                if probe is not None:
                    self.probes.append(probe())
                self.epochs.append([])

            def on_train_end(self, logs=None):
                if probe is not None:
                    self.probes.append(probe())

            def on_train_batch_end(self, batch, logs=None):
                self.epochs[-1].append(time.perf_counter())

            def on_epoch_end(self, epoch, logs=None):
                for value in (logs or {}).values():  # wait for the last step (asynchronous backends)
                    float(value)
                self.epochs[-1].append(time.perf_counter())

        return _Timer()


def rates(timer, batch_size: int) -> list[float]:
    """Steady-state patches/s of each epoch: from the end of its first batch to its end."""
    out = []
    for stamps in timer.epochs:
        batches = len(stamps) - 2  # stamps: one per batch end, plus the epoch end (same as the last batch)
        if batches >= 1:
            out.append(batches * batch_size / (stamps[-1] - stamps[0]))
    return out


def write_random_dataset(path: Path, n: int, patch: int, channels: int, seed: int = 0) -> None:
    """A dataset.h5 of random patches (throughput does not depend on the values), via lib.storage."""
    import numpy as np
    from lib.storage import write_prepared

    rng = np.random.default_rng(seed)
    image = rng.standard_normal((patch * 2, patch * 2, channels)).astype(np.float32)
    sample = {"name": "random.png", "id": 1, "image": image, "label": image[..., 0] > 1.0,
              "fov": np.ones(image.shape[:2], bool)}

    def fill(images, labels, positions):
        block = 4096
        for start in range(0, n, block):
            count = min(block, n - start)
            images[start: start + count] = rng.standard_normal((count, patch, patch, channels)).astype(np.float16)
            labels[start: start + count] = (rng.random((count, patch, patch, 1)) < 0.12).astype(np.uint8)
            positions[start: start + count] = 0

    write_prepared(path, {"train": [sample], "val": [], "test": []}, {"dataset": "random"}, n, patch,
                   channels, fill)


def peak_ratios(per_epoch: list[float], peaks: list[float], flops_per_patch: float) -> list[float]:
    """Percent of peak of each epoch: its training GFLOP/s over the mean of the peak samples around it."""
    return [100 * rate * 3 * flops_per_patch / 1e9 / ((before + after) / 2)
            for rate, before, after in zip(per_epoch, peaks, peaks[1:])]


def measure(name: str, feed: str, config, args, tmp: Path) -> dict:
    import keras
    import numpy as np
    from lib.callbacks import EpochSetter, NaNGuard
    from lib.pipeline import PatchStream

    from lib.backend import configure_precision
    keras.backend.clear_session()  # this also resets the global dtype policy: set it after
    policy = configure_precision(config["training settings"]["mixed_precision"])  # as train.py
    keras.utils.set_random_seed(0)
    model, patch, loss, metrics = build(name, config)
    channels = model.inputs[0].shape[-1]
    batch = args.batch_size or config["training settings"]["batch_size"]
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    model.compile(optimizer=keras.optimizers.Adam(config["training settings"]["learning_rate"]),
                  loss=loss, metrics=metrics, jit_compile=jit)
    from bench.peak import matmul_peak
    timer = StepTimer(lambda: matmul_peak(args.peak_size, args.probe_repeats)["gflops"])
    if feed == "memory":
        rng = np.random.default_rng(0)
        n = batch * max(args.steps, args.warmup_steps)
        x = rng.standard_normal((n, patch, patch, channels)).astype(np.float32)
        y = (rng.random((n, patch, patch, 1)) < 0.12).astype(np.float32)
        model.fit(x[: batch * args.warmup_steps], y[: batch * args.warmup_steps], batch_size=batch, epochs=1,
                  verbose=0, callbacks=[NaNGuard()])
        model.fit(x[: batch * args.steps], y[: batch * args.steps], batch_size=batch, epochs=args.repeats,
                  shuffle=True, verbose=0, callbacks=[NaNGuard(), timer])
    else:
        path = tmp / f"{patch}x{channels}" / "dataset.h5"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_random_dataset(path, max(args.stream_patches, batch * 2), patch, channels)
        n = args.stream_patches

        def stream(steps):
            return PatchStream(path, 0, n, batch, steps=steps, shuffle=True, augment=config["augmentation"], seed=0,
                               workers=args.workers)
        warm = stream(args.warmup_steps)
        model.fit(warm, epochs=1, verbose=0, callbacks=[NaNGuard(), EpochSetter([warm])])
        data = stream(args.steps)
        model.fit(data, epochs=args.repeats, verbose=0, callbacks=[NaNGuard(), EpochSetter([data]), timer])
    flops = common.conv_flops(model, patch, channels)
    per_epoch = rates(timer, batch)
    ratios = peak_ratios(per_epoch, timer.probes, flops["forward"])
    return {"model": name, "feed": feed, "patch": patch, "batch": batch, "params": model.count_params(),
            "forward_flops": flops["forward"], "rates": per_epoch, "rate": common.median(per_epoch),
            "peaks": timer.probes, "percent_of_peak": common.median(ratios), "percents": ratios,
            "jit_compile": getattr(model, "jit_compile", None), "policy": policy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configuration.txt", help="configuration of the default model "
                        "(patch size, batch size, loss, learning rate); default configuration.txt")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a configuration value (repeatable)")
    parser.add_argument("--models", default="default,classic",
                        help=f"comma-separated, from {','.join(MODELS)} (default: default,classic)")
    parser.add_argument("--feeds", default="memory,stream", help="comma-separated, from memory,stream")
    parser.add_argument("--steps", type=int, default=60, help="batches per timed epoch (default 60)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs; the median is shown (default 3)")
    parser.add_argument("--warmup-steps", type=int, default=5,
                        help="batches of an untimed first fit (tracing, compilation) (default 5)")
    parser.add_argument("--batch-size", type=int, default=0, help="patches per batch (default: the configuration's)")
    parser.add_argument("--workers", type=int, default=2, help="PatchStream threads (default 2, as train.py)")
    parser.add_argument("--stream-patches", type=int, default=8192,
                        help="patches in the temporary dataset.h5 the stream reads (default 8192)")
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul side for the peak (default 2048)")
    parser.add_argument("--peak-repeats", type=int, default=5, help="matmul peak samples at the start (default 5)")
    parser.add_argument("--probe-repeats", type=int, default=3,
                        help="matmul peak samples taken around each timed epoch (default 3)")
    parser.add_argument("--jit-compile", choices=("auto", "true", "false"), default="auto",
                        help="model.compile(jit_compile=...) (default auto, as train.py)")
    parser.add_argument("--tmp", help="folder for the temporary dataset.h5 (default: the system's)")
    common.add_common_arguments(parser)
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    feeds = [f.strip() for f in args.feeds.split(",") if f.strip()]
    for value, allowed in [(m, MODELS) for m in models] + [(f, FEEDS) for f in feeds]:
        if value not in allowed:
            parser.error(f"unknown choice {value!r}; expected one of {', '.join(allowed)}")
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first batch of each epoch is not timed)")
    common.quiet_logs()

    from bench.peak import matmul_peak
    from lib.config import load_config
    config = load_config(common.repo_path(args.config), args.overrides)

    peak = matmul_peak(args.peak_size, args.peak_repeats)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_train_", dir=args.tmp) as tmp:
        for name in models:
            for feed in feeds:
                print(f"... {name} / {feed}", file=sys.stderr, flush=True)
                results.append(measure(name, feed, config, args, Path(tmp)))

    rows = []
    memory_rate = {r["model"]: r["rate"] for r in results if r["feed"] == "memory"}
    for r in results:
        gflops = r["rate"] * 3 * r["forward_flops"] / 1e9
        overhead = (memory_rate[r["model"]] / r["rate"] - 1) * 100 if r["feed"] == "stream" and \
            r["model"] in memory_rate else None
        r.update(train_gflops=gflops, pipeline_overhead=overhead)
        rows.append([r["model"], f"{r['patch']}x{r['patch']}", r["batch"], r["forward_flops"] / 1e6, r["feed"],
                     r["rate"], min(r["rates"], default=None), max(r["rates"], default=None), gflops,
                     f"{min(r['peaks']):.0f}-{max(r['peaks']):.0f}", r["percent_of_peak"],
                     None if overhead is None else f"{overhead:+.1f}%"])
    notes = [f"float32 matmul peak at the start of this run: {peak['gflops']:.1f} GFLOP/s "
             f"({args.peak_size}x{args.peak_size}, median of {args.peak_repeats}); \"peak around\" is the range of "
             f"the samples (median of {args.probe_repeats}) taken before each timed epoch and after the last",
             "% of peak = median over epochs of the epoch's GFLOP/s / mean of the peak samples on either side"
             f" (dtype policy {results[0]['policy'] if results else None}: a bfloat16 model can pass 100% of the "
             "float32 peak)",
             f"timed: {args.repeats} epoch(s) of {args.steps} batches after a {args.warmup_steps}-batch warm-up fit; "
             "patches/s = median over epochs, first batch of each epoch excluded",
             "GFLOP/s = patches/s x 3 x forward conv FLOPs/patch; pipeline overhead = memory rate / stream rate - 1",
             f"stream: PatchStream(augment=[augmentation] of the configuration, workers={args.workers}) over {args.stream_patches} float16 "
             "patches in a temporary dataset.h5; jit_compile=" + str(results[0]["jit_compile"] if results else None)]
    common.report("Training throughput",
                  ["model", "patch", "batch", "MFLOP fwd/patch", "feed", "patches/s", "min", "max",
                   "GFLOP/s", "peak around", "% of peak", "pipeline overhead"], rows, notes, args.json,
                  extra={"peak": peak, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
