"""Generation speed with one clamp hook vs. without, on the real SmolLM2-135M-Instruct.

Three variants, interleaved in one run (so machine load hits them alike), each generating
exactly ``--tokens`` greedy tokens with the KV cache:

- ``no hook``: ``hf.generate`` as is (the floor);
- ``naive hook``: the pre-hook a researcher writes by hand (clone the activation, set one
  neuron, return it), registered and removed around the call;
- ``conceptvec``: ``with conceptvec.intervene(hf, conceptvec.clamp(...))`` around the same
  call (a pass-tracker pre-hook on the model, the clamp pre-hook, firing counts, the
  never-fired check and hook removal).

Prints a Markdown table with the median and best time per generated token and the overhead
relative to ``no hook``. Usage::

    python benchmarks/bench_hook_overhead.py --tokens 64 --repeat 7

``--random-init FOLDER`` builds the model from ``FOLDER/config.json`` with random weights
(the same shapes, so the same compute) and its tokenizer files, for machines without the
model's weights; ``--device cuda`` runs on a GPU.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import conceptvec as cv

NEURON, LAYER, INDEX, VALUE = "L29.808", 29, 808, 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt", default="I went to the park and saw a")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--random-init", metavar="FOLDER", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if args.random_init:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(args.random_init)
        hf = AutoModelForCausalLM.from_config(config).eval()
        tok = AutoTokenizer.from_pretrained(args.random_init)
        args.model = f"{config.model_type} from {args.random_init} (random weights)"
    else:
        model = cv.load(args.model, quiet=True)
        hf, tok = model.hf, model.tokenizer
    hf.to(args.device)
    ids = tok(args.prompt, return_tensors="pt")["input_ids"].to(args.device)
    mask = torch.ones_like(ids)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def run() -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )

    def no_hook() -> torch.Tensor:
        return run()

    def naive_hook() -> torch.Tensor:
        def pre_hook(_module, inputs):
            x = inputs[0].clone()
            x[..., INDEX] = VALUE
            return (x,)

        handle = hf.model.layers[LAYER].mlp.down_proj.register_forward_pre_hook(pre_hook)
        try:
            return run()
        finally:
            handle.remove()

    def conceptvec_hook() -> torch.Tensor:
        with cv.intervene(hf, cv.clamp(NEURON, VALUE)):
            return run()

    variants = {"no hook": no_hook, "naive hook": naive_hook, "conceptvec": conceptvec_hook}
    outputs = {name: fn() for name, fn in variants.items()}  # warm-up, and a correctness check
    assert torch.equal(outputs["naive hook"], outputs["conceptvec"]), "hooks disagree"
    assert outputs["no hook"].shape[1] == ids.shape[1] + args.tokens
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name, fn in variants.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - start) / args.tokens * 1e3)

    floor = statistics.median(times["no hook"])
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"model {args.model}, {args.tokens} new tokens after a {ids.shape[1]}-token prompt, "
        f"{args.repeat} interleaved repeats; torch {torch.__version__}, device {device}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}, Python "
        f"{platform.python_version()}\n"
    )
    print("| variant | median ms/token | best ms/token | overhead (median) |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} | {min(ts):.2f} | {100 * (med / floor - 1):+.1f}% |")


if __name__ == "__main__":
    main()
