"""The cost of a candidate pod (estimated TTFT there, ``CostModel``) and the stable (key, pod) rank that breaks ties."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from axon_router.knobs import Knobs
from axon_router.pod_view import PodView
from sharder.pods import pod_rank


@dataclasses.dataclass(frozen=True, slots=True)
class PickInput:
    """What the picker needs from a request (computed once per request)."""

    slice_key: int
    prefix_hashes: Sequence[int]
    prompt_tokens: int
    max_tokens: int
    session_chunks: int = 0
    """Leading chunks a pod must hold to hold this session's own cache (not just a shared prefix); 0: any."""


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Admission limits a pod must be under to take a request (None: no limit, e.g. for retries)."""

    max_outstanding: float
    ttft_slo_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class Scored:
    """One candidate with its estimated TTFT (``cost``), queue depth, expected prefix hit, the prompt tokens it
    would have to compute there (``miss_tokens``) and what the pick ranks it by (``rank``: the TTFT plus
    ``miss_weight`` x that prefill's time, the work it adds to the pod)."""

    pod: PodView
    cost: float
    outstanding: int
    hit_chunks: int
    miss_tokens: int
    rank: float


#: Stable rank of a pod for a SliceKey: every router replica computes the same one.
tie_rank = pod_rank


class CostModel:
    """Estimated TTFT of a request on a pod, modelled on a continuous-batching engine with chunked prefill:

    prefill = prefill tokens ahead + prompt tokens the pod does not hold (its uncached part)
    cost    = prefill / prefill_tokens_per_s
              + (1 + ceil(prefill / prefill_chunk_tokens)) x (step_s + running x decode_seq_s
                                                              + context tokens x context_token_s)
              + kv_usage_penalty_s x max(0, kv_usage - kv_usage_knee) / (1 - kv_usage_knee)

    What delays a first token is prefill work ahead of it (this router's own requests routed to the pod that
    have no first token yet, plus the waiting queue the pod reported) and its own uncached prefill; requests
    already decoding only lengthen each engine step a little. So a pod holding a session's prefix keeps it
    unless real prefill work is queued there, and a burst of misses spreads (each dispatched miss is prefill
    ahead for the next). Running requests and context are the pod's last report plus the router's own
    dispatches since (``PodView.outstanding``: never zero between reports). ``axon_router.pick`` ranks by

    rank    = cost + miss_weight x (prompt tokens the pod does not hold) / prefill_tokens_per_s

    the TTFT plus the work the request adds there, which delays whatever queues behind it and copies a prefix
    another pod may hold.
    """

    def __init__(self, knobs: Knobs) -> None:
        self.k = knobs

    def score(self, pod: PodView, req: PickInput, now: float) -> Scored:
        k = self.k
        reqs, toks = pod.outstanding(now, k.report_stale_s)
        _, ahead = pod.prefill_ahead(now, k.report_stale_s)
        hit = (
            pod.matched_chunks(req.prefix_hashes, now, k.prefix_memory_s, k.prefix_memory_trust_s)
            if req.prefix_hashes
            else 0
        )
        miss = req.prompt_tokens - int(hit * pod.cache_chunk_bytes / k.bytes_per_token)
        if miss < 1:
            miss = 1  # the last prompt token is always computed
        prefill = ahead + miss
        steps = 1 + -(-prefill // k.prefill_chunk_tokens)
        cost = prefill / k.prefill_tokens_per_s + steps * (k.step_s + reqs * k.decode_seq_s + toks * k.context_token_s)
        kv = pod.kv_usage(now, k.report_stale_s)
        if kv > k.kv_usage_knee:
            cost += k.kv_usage_penalty_s * (kv - k.kv_usage_knee) / (1.0 - k.kv_usage_knee)
        return Scored(pod, cost, reqs, hit, miss, cost + k.miss_weight * miss / k.prefill_tokens_per_s)
