"""Reading metrics the way Prometheus does: fetch the text exposition and parse it."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def fetch(url: str) -> str:
    """GET the metrics URL (what `curl` does) and return the body."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


class Scrape:
    """Parsed exposition text: metric types by family, sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.append((sample.name, dict(sample.labels), sample.value))

    def value(self, name: str, **labels: Any) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
        wanted = {k: str(v) for k, v in labels.items()}
        return sum(value for sample_name, sample_labels, value in self.samples
                   if sample_name == name
                   and all(sample_labels.get(k) == v for k, v in wanted.items()))

    def labels(self, name: str) -> list[dict[str, str]]:
        """The label sets of every sample called `name`."""
        return [labels for sample_name, labels, _ in self.samples if sample_name == name]
