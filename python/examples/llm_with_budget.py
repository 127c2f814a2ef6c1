"""Wrapping an OpenAI- or Anthropic-style call with a budget and a breaker.

`fake_completion` stands in for the vendor SDK (no network): it answers with a
usage block like the real APIs and fails now and then with a retryable error.
The wrapper admits the call with an estimate of its cost (the daemon reserves
it against the budgets, and refuses it when the service's breaker is open or a
budget would overrun), then reports the actual cost from the usage, so the
budget is charged what the call really cost, and the breaker learns about
failures from every agent on the host.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import automation_framework as af

#: USD per token, as the vendor publishes it (per million / 1e6).
INPUT_PRICE = 2.50 / 1e6
OUTPUT_PRICE = 10.00 / 1e6


class RateLimitedByVendor(Exception):
    """The vendor's 429/529: worth retrying after a pause."""

    retryable = True


@dataclass
class Completion:
    text: str
    input_tokens: int
    output_tokens: int


def fake_completion(prompt: str, max_tokens: int, rng: random.Random) -> Completion:
    """A stand-in for `client.chat.completions.create(...)` / `messages.create(...)`."""
    if rng.random() < 0.3:
        raise RateLimitedByVendor("429 Too Many Requests")
    output = min(max_tokens, 12 + len(prompt) // 2)
    return Completion(text="...", input_tokens=len(prompt.split()) * 2, output_tokens=output)


def complete(client: af.Client, prompt: str, *, max_tokens: int = 256, rng: random.Random) -> str:
    input_estimate = len(prompt.split()) * 2
    estimate = input_estimate * INPUT_PRICE + max_tokens * OUTPUT_PRICE

    def attempt(call: af.Call) -> str:
        completion = fake_completion(prompt, max_tokens, rng)
        call.cost = completion.input_tokens * INPUT_PRICE + completion.output_tokens * OUTPUT_PRICE
        call.input_units = completion.input_tokens
        call.output_units = completion.output_tokens
        return completion.text

    # Denials with a retry_after are waited out; RateLimitedByVendor is retried
    # when and as often as the daemon advises (its backoff, the breaker, the
    # retry budget shared by every agent); anything else, or a denial that
    # waiting cannot cure (budget spent, breaker forced open), is raised.
    return client.retrying(attempt, service="openai", cost=estimate, model="gpt-4o")


def main() -> None:
    client = af.Client(agent="summarizer")
    rng = random.Random(7)
    for prompt in ["summarize the meeting notes", "draft a reply to the customer"]:
        try:
            print(complete(client, prompt, rng=rng))
        except af.Denied as denied:
            print(f"not now: {denied.reason} (retry after {denied.retry_after}s)")
        except RateLimitedByVendor:
            print("the vendor kept refusing; giving up on this one")
    budget = client.budget()
    print(f"spent ${budget.spent:.6f} of ${budget.limit:.2f}")
    for breaker in client.breakers("openai"):
        print(f"breaker {breaker.service}: {breaker.state}")


if __name__ == "__main__":
    main()
