"""Where a batch-1 request's time goes inside the engine, stage by stage, at full depth and under BEEM-A.

    python -m bench.profile_request [--bundle DIR] [--texts 200] [--policies beem-a gate beem-a+vote ...]

Times, per text (median over texts, in this thread): tokenization, embedding, each encoder layer, each exit head,
the array-form observation and decision, as the engine's step loop runs them, one layer after the other (so the
Python after each layer runs with the caches the layer left, as it does in the engine). It explains the gap between
the layer speed-up (layers skipped) and the wall-clock speed-up (time saved): the stages that do not shrink with
depth are paid by every request, and every exit BEEM reads costs a head and a decision.

With `--policies`, each policy's decision cost per step (the observation the policy's rule reads, from one exit's
logits, and the array-form decision, as the host path runs them) is also timed on the same recorded logits, at
batch 1 and 16, the policies taking turns text by text, against the first one named (`+vote`: a BEEM policy with its
vote above chance).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import resolve_bundle_dir
from beem.policies.array_policies import ExitObservations, RowPolicies, RowStates, decide
from beem.policies.exit_policies import BeemPolicy, ExitPolicy
from beem.policies.policy_table import RULE_OF_CLASS, rules_read_entropy, rules_read_margin
from loadtest.workload import text_workload
from service.settings import DEFAULT_BUNDLE


@torch.inference_mode()
def profile(bundle_dir: Path, count: int) -> dict[str, object]:
    bundle = load_bundle(bundle_dir)
    model, tokenizer = bundle.model, bundle.tokenizer
    policy = bundle.policies["beem-a"]
    policies = RowPolicies.of([policy], [bundle.num_layers], bundle.num_layers, "cpu")
    rules = frozenset({RULE_OF_CLASS[type(policy)]})
    texts = text_workload().texts[:count]
    stages: dict[str, list[float]] = {"tokenize": [], "embed": []}
    exit_layers = []

    def timed(name: str, started: float) -> float:
        now = time.perf_counter()
        stages.setdefault(name, []).append(now - started)
        return now

    for text in texts:
        started = time.perf_counter()
        encoded = tokenizer(text, return_tensors="pt")
        started = timed("tokenize", started)
        state = model.embed(encoded["input_ids"], encoded["attention_mask"], encoded.get("token_type_ids"))
        started = timed("embed", started)
        states, exit_layer = RowStates.fresh(1), None
        for layer in range(1, bundle.num_layers + 1):
            state = model.run_layer(state)
            started = timed(f"layer {layer}", started)
            logits = model.exit_logits(state)
            started = timed(f"exit head {layer}", started)
            observed = ExitObservations.from_logits(logits, with_entropy=False)
            states, exits = decide(states, observed, policies, rules)
            leaves = bool(exits.cpu().numpy()[0])
            timed(f"observe + decide {layer}", started)
            if leaves and exit_layer is None:
                exit_layer = layer
        exit_layers.append(exit_layer or bundle.num_layers)
    median_ms = {name: statistics.median(values) * 1000 for name, values in stages.items()}
    layers = range(1, bundle.num_layers + 1)
    per_layer = statistics.mean(median_ms[f"layer {i}"] for i in layers)
    per_head = statistics.mean(median_ms[f"exit head {i}"] for i in layers)
    per_decision = statistics.mean(median_ms[f"observe + decide {i}"] for i in layers)
    fixed = median_ms["tokenize"] + median_ms["embed"]
    mean_layer = statistics.mean(exit_layers)
    # Full depth reads only the last head; BEEM-A reads one head and decides once per layer it runs.
    full_ms = fixed + bundle.num_layers * per_layer + per_head + per_decision
    beem_ms = fixed + mean_layer * (per_layer + per_head + per_decision)
    return {
        "median_ms": median_ms,
        "mean_exit_layer_beem_a": mean_layer,
        "model_of_time_ms": {"fixed (tokenize + embed)": fixed, "per layer": per_layer, "per exit head": per_head,
                             "per observation + decision": per_decision, "full": full_ms, "beem-a": beem_ms},
        "layer_speedup": bundle.num_layers / mean_layer,
        "modelled_wall_clock_speedup": full_ms / beem_ms,
    }  # fmt: skip


def named_policy(policies: dict[str, ExitPolicy], name: str, num_labels: int) -> ExitPolicy:
    """A bundle policy by name; "<beem policy>+vote" is it with its vote above chance."""
    base, _, variant = name.partition("+")
    policy = policies[base]
    if variant == "vote" and isinstance(policy, BeemPolicy):
        return replace(policy, vote_above_chance=True, num_labels=num_labels)
    if variant:
        raise SystemExit(f"unknown variant {name!r}: only a BEEM policy takes '+vote'")
    return policy


@torch.inference_mode()
def decision_costs(bundle_dir: Path, names: list[str], count: int, batch_sizes: tuple[int, ...] = (1, 16)) -> dict:
    """Median microseconds per step of observation + decision for each named policy, on every exit's logits of
    `count` texts recorded once; the policies take turns on each group of texts, so drift hits them alike."""
    bundle = load_bundle(bundle_dir)
    model, tokenizer, num_layers = bundle.model, bundle.tokenizer, bundle.num_layers
    policies = {name: named_policy(bundle.policies, name, len(bundle.labels)) for name in names}
    recorded = []  # per text: (L, C) logits of every exit
    for text in text_workload().texts[:count]:
        encoded = tokenizer(text, return_tensors="pt")
        state = model.embed(encoded["input_ids"], encoded["attention_mask"], encoded.get("token_type_ids"))
        exits = []
        for _ in range(num_layers):
            state = model.run_layer(state)
            exits.append(model.exit_logits(state)[0])
        recorded.append(torch.stack(exits))
    logits = torch.stack(recorded)  # (N, L, C)
    result: dict[str, dict[str, float]] = {}
    for batch in batch_sizes:
        prepared = {}
        for name, policy in policies.items():
            rules = frozenset({RULE_OF_CLASS[type(policy)]})
            rows = RowPolicies.of([policy] * batch, [num_layers] * batch, num_layers, "cpu")
            prepared[name] = (rows, rules, rules_read_entropy(rules), rules_read_margin(rules))
        steps: dict[str, list[float]] = {name: [] for name in names}
        for turn, start in enumerate(range(0, logits.shape[0] - batch + 1, batch)):
            group = logits[start : start + batch]  # (B, L, C)
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                rows, rules, reads_entropy, reads_margin = prepared[name]
                states = RowStates.fresh(batch)
                for layer in range(num_layers):
                    started = time.perf_counter()
                    observed = ExitObservations.from_logits(group[:, layer], reads_entropy, reads_margin)
                    states, leaves = decide(states, observed, rows, rules)
                    leaves.cpu().numpy()
                    steps[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(values) * 1e6 for name, values in steps.items()}
        result[f"batch {batch}"] = {
            **{f"{name} us per step": medians[name] for name in names},
            **{f"{name} / {names[0]}": medians[name] / medians[names[0]] for name in names[1:]},
        }
    return result


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    arguments.add_argument("--texts", type=int, default=200)
    arguments.add_argument("--policies", nargs="+", help="also time each one's decision per step, against the first")
    args = arguments.parse_args()
    bundle_dir = resolve_bundle_dir(Path(args.bundle))
    result = profile(bundle_dir, args.texts)
    if args.policies:
        result["decision_cost"] = decision_costs(bundle_dir, args.policies, args.texts)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
