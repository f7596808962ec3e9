"""Train fm eval's MNIST classifier on the full training split; print test accuracy and time.

    FM_DATA_DIR=/path/to/mnist python bench/classifier_accuracy.py [--epochs 2] [--threads 2]

The ``classifier`` feature extractor must reach at least 99% test accuracy on MNIST, training
on two CPU cores in a few minutes. Nothing is cached or downloaded by this script.
"""

import argparse
import time

import torch

from fmcli.data.base import LoadOptions
from fmcli.data.mnist import load_mnist
from fmcli.eval.classifier import accuracy, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = load_mnist(LoadOptions(split="train", download=False))
    test = load_mnist(LoadOptions(split="test", download=False))
    start, cpu_start = time.perf_counter(), time.process_time()
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 15 or done == total:
            last[0] = time.perf_counter()
            print(f"  {stage}: step {done}/{total} ({last[0] - start:.0f} s)", flush=True)

    network = train_classifier(train.data, train.labels, 10, epochs=args.epochs, seed=args.seed, progress=progress)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    test_accuracy = accuracy(network, test.data, test.labels)
    # CPU seconds / threads is the wall time on idle cores; wall time grows when other work shares them.
    print(
        f"MNIST classifier: test accuracy {test_accuracy:.2%} on {len(test)} images; "
        f"trained on {len(train)} images, {args.epochs} epochs, {args.threads} threads: "
        f"{seconds:.0f} s wall, {cpu_seconds:.0f} CPU s "
        f"(~{cpu_seconds / args.threads:.0f} s on {args.threads} idle cores)"
    )


if __name__ == "__main__":
    main()
