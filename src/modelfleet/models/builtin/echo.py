"""A model that returns its input: the floor against which serving overhead is measured."""

from __future__ import annotations

from pydantic import BaseModel, Field

from modelfleet.models.model import Model


class EchoInput(BaseModel):
    text: str = Field(max_length=100_000)


class EchoOutput(BaseModel):
    text: str
    length: int


class Echo(Model[EchoInput, EchoOutput]):
    """Returns the text and its length; no model cost, so benchmarks see pure serving overhead."""

    input_type = EchoInput
    output_type = EchoOutput
    description = "Returns its input text and the text's length."
    inline = True

    def predict(self, inputs: list[EchoInput]) -> list[EchoOutput]:
        return [EchoOutput(text=i.text, length=len(i.text)) for i in inputs]
