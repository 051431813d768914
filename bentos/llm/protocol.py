"""OpenAI's request and response shapes for the routes the language-model service offers.

Requests are checked here (ranges, types, what this server cannot do) so that a bad
request is a 400 in OpenAI's error shape, ``{"error": {"message", "type", "param",
"code"}}``, never a 500.  Fields OpenAI defines that change nothing here (``user``,
zero penalties) are accepted; ones that would change the answer and are not supported
(``n`` > 1, ``logprobs``, tools, ``logit_bias``, ``response_format``, ``suffix``, ``best_of``,
functions …: ``UNSUPPORTED``) are refused by name, and types are not coerced.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_TOKENS = 65_536
"""Tokens one embeddings request may hold in all: bounds the work one request asks for (OpenAI's
limit of 2,048 inputs of up to 8k tokens each would be minutes of a CPU's time)."""
MAX_MESSAGES = 1024
CHARS_PER_TOKEN_BOUND = 64
"""A text longer than this many characters per token of the context is refused before it is
tokenized: no tokenizer turns so many characters into one token, and tokenizing a body-sized
text would hold a CPU for seconds."""


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    # field: the values that change nothing here (anything else would change the answer)
    "logit_bias": (None, {}), "response_format": (None, {"type": "text"}), "suffix": (None, ""),
    "best_of": (None, 1), "functions": (None, []), "function_call": (None, "none"), "tool_choice": (None, "none"),
    "top_logprobs": (None, 0), "prediction": (None,), "audio": (None,), "modalities": (None, ["text"]),
    "guided_json": (None,), "guided_regex": (None,), "guided_choice": (None,), "guided_grammar": (None,),
}
"""Fields of OpenAI's (and vLLM's) requests that this server does not implement: refused by name,
never silently ignored."""


class _Request(BaseModel):
    # strict: "stream": "yes", "max_tokens": true or "10" are 400s, not coerced into something else
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1, max_length=512)
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for field, harmless in UNSUPPORTED.items():
                if field in data and data[field] not in harmless:
                    raise ValueError(f"{field} is not supported by this server: it would change the answer, so "
                                     "the request is refused rather than answered without it")
        return data


class _Sampling(_Request):
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(1 << 63), le=(1 << 64) - 1, description="what torch's generator takes")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request: concurrent requests share forward passes")
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0)
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stops)):
            raise ValueError(f"at most {MAX_STOP} stop sequences of at most {MAX_STOP_CHARS} characters")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True)

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Literal[False] | None = None
    tools: None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: Literal[False] = False
    logprobs: None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request (concurrent requests share forward passes)")
        return value

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(_Request):
    input: str | list[str] = Field(description="a text or a list of texts (token ids are not accepted)")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= MAX_EMBEDDING_INPUTS:
            raise ValueError(f"send between 1 and {MAX_EMBEDDING_INPUTS} inputs")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def parse(model: type[BaseModel], body: bytes) -> Any:
    """The request, or ApiError(400) naming the first bad field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "json_invalid":
            raise ApiError(400, f"the body is not valid JSON: {first['msg']}") from None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ApiError(400, f"{where}: {message}" if where else message, param=where) from None
