"""Rule-based English sentiment (VADER): no weights to download, ~0.1 ms a text."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from modelfleet.models.model import Model


class SentimentInput(BaseModel):
    text: str = Field(max_length=100_000)


class SentimentOutput(BaseModel):
    label: Literal["positive", "neutral", "negative"]
    compound: float
    positive: float
    neutral: float
    negative: float


class VaderSentiment(Model[SentimentInput, SentimentOutput]):
    """VADER polarity scores with the usual +/-0.05 compound thresholds for the label."""

    input_type = SentimentInput
    output_type = SentimentOutput
    description = "English sentiment from the VADER lexicon: label and polarity scores."
    # VADER costs well under a millisecond; a thread hop would cost more than the work.
    inline = True

    def __init__(self, threshold: float = 0.05) -> None:
        if not 0 <= threshold < 1:
            raise ValueError("threshold must be in [0, 1)")
        self.threshold = threshold
        self._analyzer: Any = None

    def load(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def predict(self, inputs: list[SentimentInput]) -> list[SentimentOutput]:
        outputs = []
        for item in inputs:
            scores = self._analyzer.polarity_scores(item.text)
            compound = scores["compound"]
            label: Literal["positive", "neutral", "negative"] = (
                "positive"
                if compound >= self.threshold
                else "negative"
                if compound <= -self.threshold
                else "neutral"
            )
            outputs.append(
                SentimentOutput(
                    label=label,
                    compound=compound,
                    positive=scores["pos"],
                    neutral=scores["neu"],
                    negative=scores["neg"],
                )
            )
        return outputs
