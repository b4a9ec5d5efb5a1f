"""Reading /metrics back: prometheus-client's own parser, flattened to samples."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

CHAT_URL = "/v1/chat/completions"
ROUTE_FAMILIES = (
    "loragate_requests_total",
    "loragate_request_duration_seconds_count",
    "loragate_time_to_first_token_seconds_count",
    "loragate_prompt_tokens_total",
)


@dataclass(frozen=True)
class Scrape:
    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    types: dict[str, str]  # family -> counter, gauge, histogram...

    def get(self, name: str, /, **labels: str) -> float | None:
        """The sample with exactly these labels, or None."""
        return self.samples.get((name, frozenset(labels.items())))

    def sum(self, name: str, /, **labels: str) -> float:
        """All samples of ``name`` whose labels include these, added up."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def label_values(self) -> set[str]:
        return {value for (_, labels) in self.samples for _, value in labels}


def parse(text: str) -> Scrape:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return Scrape(text, samples, types)


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics", headers={"Authorization": ""})  # no key needed
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)
