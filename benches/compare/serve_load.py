"""A seeded, bounded load on an OpenAI-compatible server: streaming text completions from
`concurrency` clients at once, each request's TTFT and inter-token gaps measured client-side.

    python serve_load.py BASE_URL MODEL --concurrency C [--requests N] [--seed S]

The workload is ShareGPT-like and the same for every server given the seed: prompt and output
lengths drawn from log-normal distributions fitted to ShareGPT's (median prompt ~ 3x the
median output, long tails), scaled down for a 2-core CPU and clipped to [16, 512] prompt
words and [8, 128] output tokens. Each request asks for exactly its output length
(`ignore_eos`, which vLLM and llama.cpp's server take). Prompts are seeded random English
words, so no prefix is shared and no cache helps.

Prints one JSON line: TTFT and inter-token latency p50/p99 (ms), aggregate output tokens/s
(output tokens over the wall time from the first request sent to the last token), requests,
errors.
"""

import argparse
import asyncio
import json
import math
import random
import time

import openai

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them these so some her "
    "would make like him into time has look two more write go see number no way could people "
    "my than first water been call who oil its now find long down day did get come made may "
    "part over new sound take only little work know place year live me back give most very "
    "after thing our just name good sentence man think say great where help through much "
    "before line right too mean old any same tell boy follow came want show also around form "
    "three small set put end does another well large must big even such because turn here "
    "why ask went men read need land different home us move try kind hand picture again "
    "change off play spell air away animal house point page letter mother answer found study"
).split()


def workload(count, seed):
    """(prompt, output tokens) pairs: log-normal lengths, clipped."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(count):
        prompt_words = min(512, max(16, int(rng.lognormvariate(math.log(96), 0.8))))
        output = min(128, max(8, int(rng.lognormvariate(math.log(48), 0.7))))
        prompt = " ".join(rng.choice(WORDS) for _ in range(prompt_words))
        jobs.append((prompt, output))
    return jobs


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("model")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--requests", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    count = args.requests or max(8, 2 * args.concurrency)
    jobs = workload(count, args.seed)
    client = openai.AsyncOpenAI(
        base_url=args.base_url, api_key="unused", max_retries=0, timeout=600
    )
    queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    ttft, itl, outputs, errors = [], [], [], []
    last_token = [0.0]

    async def one(prompt, max_tokens):
        sent = time.perf_counter()
        previous = None
        tokens = 0
        try:
            stream = await client.completions.create(
                model=args.model,
                prompt=prompt,
                max_tokens=max_tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            usage = None
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                if not chunk.choices or not chunk.choices[0].text:
                    continue
                now = time.perf_counter()
                if previous is None:
                    ttft.append(now - sent)
                else:
                    itl.append(now - previous)
                previous = now
                tokens += 1
            last_token[0] = max(last_token[0], time.perf_counter())
            outputs.append(usage.completion_tokens if usage else tokens)
        except Exception as error:  # noqa: BLE001 - counted and reported
            errors.append(repr(error))

    async def worker():
        while not queue.empty():
            prompt, max_tokens = queue.get_nowait()
            await one(prompt, max_tokens)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    wall = max(last_token[0], started) - started
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    print(
        json.dumps(
            {
                "concurrency": args.concurrency,
                "requests": count,
                "errors": len(errors),
                "output_tokens": sum(outputs),
                "output_tokens_per_s": round(sum(outputs) / wall, 2) if wall > 0 else None,
                "ttft_p50_ms": ms(percentile(ttft, 0.5)),
                "ttft_p99_ms": ms(percentile(ttft, 0.99)),
                "itl_p50_ms": ms(percentile(itl, 0.5)),
                "itl_p99_ms": ms(percentile(itl, 0.99)),
                "wall_s": round(wall, 2),
                "first_error": errors[0] if errors else None,
            }
        )
    )


asyncio.run(main())
