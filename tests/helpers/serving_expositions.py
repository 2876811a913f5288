"""What vLLM and MindIE Server expose on /metrics, rendered as they render it.

The names, types, labels and histogram buckets are those of shared/reference/serving-metrics.md (§1.2-1.3 for
vLLM 0.12 and the older aliases vllm-ascend still ships, §2.2 for MindIE Server). The rendering is the servers'
own library: vLLM's is prometheus_client (counters exposed with ``_total``, a ``*_created`` gauge beside
every counter and histogram, ``1.0``-style values), so its text is made here by prometheus_client itself;
MindIE Server is C++ (prometheus-cpp), whose text serializer is followed line by line in :func:`mindie`:
values in fixed notation (``1532.000000``), ``le="0.001000"``, ``_count`` and ``_sum`` before the buckets,
NaN spelt ``Nan``, a ``+Inf`` bucket added after the configured ones.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)
ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

VLLM_MODEL = "qwen3-8b"

#: TTFT observations of each engine (seconds): engine 0 is healthy, engine 1 has a slow tail.
VLLM_TTFT = {"0": [0.03, 0.05, 0.07, 0.09, 0.2, 0.3, 0.6, 0.9], "1": [0.05, 0.2, 0.9, 3.0, 6.0, 12.0]}


def vllm(ttft: Dict[str, Sequence[float]] = VLLM_TTFT, old_names: bool = False) -> str:
    """A vLLM /metrics page with two data-parallel engines; ``old_names``: the aliases of vllm-ascend
    releases that trail vLLM (``gpu_cache_usage_perc``, ``time_per_output_token_seconds``)."""
    reg = CollectorRegistry()
    labels = ["model_name", "engine"]
    running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", labels,
                    registry=reg)
    waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels, registry=reg)
    kv = Gauge("vllm:gpu_cache_usage_perc" if old_names else "vllm:kv_cache_usage_perc",
               "KV-cache usage. 1 means 100 percent usage.", labels, registry=reg)
    preempt = Counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", labels,
                      registry=reg)
    prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=reg)
    gen = Counter("vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=reg)
    success = Counter("vllm:request_success", "Count of successfully processed requests.",
                      [*labels, "finished_reason"], registry=reg)
    ttft_h = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", labels,
                       buckets=TTFT_BUCKETS, registry=reg)
    itl = Histogram("vllm:time_per_output_token_seconds" if old_names else "vllm:inter_token_latency_seconds",
                    "Histogram of inter-token latency in seconds.", labels, buckets=ITL_BUCKETS, registry=reg)
    e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", labels,
                    buckets=E2E_BUCKETS, registry=reg)
    iteration = Histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", labels,
                          buckets=ITERATION_BUCKETS, registry=reg)
    info = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                 ["block_size", "cache_dtype", "enable_prefix_caching", "gpu_memory_utilization", "num_gpu_blocks"],
                 registry=reg)
    info.labels("128", "auto", "True", "0.9", "5120").set(1)
    for engine, observed in ttft.items():
        lv = (VLLM_MODEL, engine)
        running.labels(*lv).set(3 + int(engine))
        waiting.labels(*lv).set(int(engine) * 2)
        kv.labels(*lv).set(0.42 + 0.5 * int(engine))
        preempt.labels(*lv).inc(int(engine) * 7)
        prompt.labels(*lv).inc(51234 + int(engine))
        gen.labels(*lv).inc(20480 + int(engine))
        for reason, n in (("stop", 90), ("length", 8), ("abort", 2)):
            success.labels(*lv, reason).inc(n)
        for t in observed:
            ttft_h.labels(*lv).observe(t)
            itl.labels(*lv).observe(0.03)
            e2e.labels(*lv).observe(t + 2.0)
            iteration.labels(*lv).observe(256)
    return generate_latest(reg).decode()


# ---------------------------------------------------------------------------
# MindIE Server (prometheus-cpp's text serializer)
# ---------------------------------------------------------------------------

MINDIE_MODEL = "deepseek-r1"
MINDIE_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
MINDIE_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
MINDIE_E2E_BUCKETS = (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
MINDIE_TOKEN_BUCKETS = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0)


def _value(x: float) -> str:
    """prometheus-cpp's WriteValue: ``Nan``, ``+Inf``/``-Inf``, else std::fixed (six decimals)."""
    if math.isnan(x):
        return "Nan"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return f"{x:.6f}"


def _head(name: str, labels: Dict[str, str]) -> str:
    if not labels:
        return f"{name} "
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "} "


def _histogram(name: str, help_text: str, labels: Dict[str, str], buckets: Sequence[float],
               observed: Sequence[float]) -> List[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram",
             _head(f"{name}_count", labels) + str(len(observed)),
             _head(f"{name}_sum", labels) + _value(sum(observed))]
    for bound in buckets:
        lines.append(_head(f"{name}_bucket", {**labels, "le": _value(bound)}) +
                     str(sum(1 for x in observed if x <= bound)))
    lines.append(_head(f"{name}_bucket", {**labels, "le": "+Inf"}) + str(len(observed)))
    return lines


#: TTFT observations (pure inference time, seconds); two above MindIE's top bucket land only in +Inf.
MINDIE_TTFT = [0.08, 0.09, 0.2, 0.2, 0.3, 0.45, 0.6, 0.7, 1.2, 2.0, 4.0, 11.0, 15.0]


def mindie(ttft: Sequence[float] = MINDIE_TTFT, kv_usage: float = 0.97) -> str:
    """A MindIE Server /metrics page (``MIES_SERVICE_MONITOR_MODE=1``): the §2.2 set, label ``model_name`` only."""
    lab = {"model_name": MINDIE_MODEL}
    families: List[Tuple[str, str, str, float]] = [
        ("request_received_total", "counter", "Number of requests received so far.", 1532),
        ("request_success_total", "counter", "Number of requests proceed successfully so far.", 1498),
        ("request_failed_total", "counter", "Number of requests failed so far.", 34),
        ("num_requests_running", "gauge", "Number of requests currently running on NPU.", 12),
        ("num_requests_waiting", "gauge", "Number of requests waiting to be processed.", 5),
        ("num_requests_swapped", "gauge", "Number of requests swapped to CPU.", 0),
        ("num_preemptions_total", "counter", "Cumulative number of preemption from the engine.", 41),
        ("prompt_tokens_total", "counter", "Number of prefill tokens processed.", 2456789),
        ("generation_tokens_total", "counter", "Number of generation tokens processed.", 987654),
        ("avg_prompt_throughput_toks_per_s", "gauge", "Average prefill throughput in tokens/s.", 1520.5),
        ("avg_generation_throughput_toks_per_s", "gauge", "Average generation throughput in tokens/s.", 845.25),
        ("failed_request_perc", "gauge", "Requests failure rate. 1 means 100 percent usage.", 34 / 1532),
        ("npu_cache_usage_perc", "gauge", "NPU KV-cache usage. 1 means 100 percent usage.", kv_usage),
        ("cpu_cache_usage_perc", "gauge", "CPU KV-cache usage. 1 means 100 percent usage.", 0.0),
        ("npu_prefix_cache_hit_rate", "gauge", "NPU prefix cache block hit rate.", float("nan")),
    ]
    lines: List[str] = []
    for name, typ, help_text, value in families:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {typ}", _head(name, lab) + _value(value)]
    lines += _histogram("time_to_first_token_seconds", "Histogram of time to first token in seconds.", lab,
                        MINDIE_TTFT_BUCKETS, ttft)
    lines += _histogram("time_per_output_token_seconds", "Histogram of time per output token in seconds.", lab,
                        MINDIE_TPOT_BUCKETS, [0.04] * 20 + [0.3] * 3)
    lines += _histogram("e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", lab,
                        MINDIE_E2E_BUCKETS, [3.0, 8.0, 12.0, 70.0])
    lines += _histogram("request_prompt_tokens", "Number of prefill tokens processed.", lab, MINDIE_TOKEN_BUCKETS,
                        [120.0, 900.0, 4000.0])
    lines += _histogram("request_generation_tokens", "Number of generation tokens processed.", lab,
                        MINDIE_TOKEN_BUCKETS, [60.0, 300.0, 2048.0])
    return "\n".join(lines) + "\n"
